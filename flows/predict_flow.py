"""Batch prediction: score image files with the champion (or any registry version or model file).

    python flows/predict_flow.py photos/ more/*.jpg one.png
    python flows/predict_flow.py photos/ --model v2 --out scored.parquet --data-dir /srv/cifar [--no-log]

Writes a Parquet file, one row per file, and a contact sheet beside it. Exit status: 0 when at least one
file was scored, 1 when none could be, 2 for unusable arguments.
"""

from __future__ import annotations

import cifarflow.environment  # the defaults, before Prefect is imported

import argparse
import secrets
import sys
from datetime import UTC, datetime
from pathlib import Path

from prefect import flow, get_run_logger

from cifarflow.cli import ArgumentParser, done, ensure_prefect_api, fail, print_problems, run_cli
from cifarflow.errors import PipelineInputError
from cifarflow.files import ensure_writable
from cifarflow.inference.batch import BATCH_SIZE, BatchResult
from cifarflow.inference.predictor import locate
from cifarflow.inference.sources import select_files
from cifarflow.layout import DataLayout
from cifarflow.orchestration.names import run_name
from cifarflow.paths import from_printable, printable
from tasks.predict import find_images, score_images


class NothingScored(RuntimeError):
    """Not one file could be scored; args: (message, the Parquet file that says why, file by file)."""

    def __str__(self) -> str:
        return self.args[0]


def default_out(layout: DataLayout, model: str) -> Path:
    """data/predictions/<UTC time>-<model>-<random>/: two runs in the same second never share a folder."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    name = Path(model).stem if "/" in model or model.endswith(".keras") else model
    return layout.predictions / f"{stamp}-{name}-{secrets.token_hex(3)}" / "predictions.parquet"


@flow(name="predict", flow_run_name=run_name("predict", "model", "champion"), log_prints=True)
def predict(
    paths: list[str],
    data_dir: Path = Path("data"),
    model: str = "champion",
    out: Path | None = None,
    batch_size: int = BATCH_SIZE,
    log_predictions: bool = True,
) -> BatchResult | None:
    """Score every image file under `paths` with `model` (None: no files); NothingScored when none could be."""
    layout = DataLayout(Path(from_printable(str(data_dir))).resolve())  # names arrive as printable text
    out = Path(from_printable(str(out))).resolve() if out else default_out(layout, model)
    files = find_images(paths)
    if not files:
        get_run_logger().info("no image files in %s: nothing to score", ", ".join(paths))
        return None
    result = score_images(
        files, model, layout.registry, out, batch_size, layout.prediction_log if log_predictions else None
    )
    get_run_logger().info(
        "%d of %d files scored by %s, %d could not be: %s",
        result.scored,
        result.files,
        result.model_version,
        result.failed,
        printable(result.out),
    )
    if result.scored == 0:
        raise NothingScored(f"none of the {result.files} files could be scored; {result.out} says why", result.out)
    return result


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="+", metavar="PATH", help="image files, folders and glob patterns")
    parser.add_argument("--data-dir", type=Path, default=Path("data"), help="the pipeline's data directory")
    parser.add_argument("--model", default="champion", help="champion (default), a version (v1, …) or a model path")
    parser.add_argument("--out", type=Path, help="the Parquet file to write (default data/predictions/<run>/)")
    parser.add_argument("--batch-size", type=int, default=BATCH_SIZE, help=f"images per batch (default {BATCH_SIZE})")
    parser.add_argument("--no-log", action="store_true", help="do not append the scored images to the prediction log")
    return parser


def check_arguments(args: argparse.Namespace) -> None:
    """Unusable arguments raise PipelineInputError (exit 2) before any flow starts."""
    if args.batch_size < 1:
        raise PipelineInputError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.out is not None and args.out.suffix != ".parquet":
        raise PipelineInputError(f"--out must name a .parquet file, got {args.out}")
    try:
        select_files(args.paths)  # UnusableArguments for a PATH that names nothing
        layout = DataLayout(args.data_dir.resolve())
        locate(args.model, layout.registry)  # ModelNotFound, before TensorFlow loads
        ensure_writable(args.out.resolve().parent if args.out else layout.predictions)  # StorageError
    except OSError as error:  # not one the checks name: a name too long for the file system, say
        raise PipelineInputError(f"{printable(error.filename or '')}: {error.strerror}") from None


def run_prediction(args: argparse.Namespace, _: None) -> int:
    out = args.out.resolve() if args.out else None
    ensure_prefect_api()
    paths, data_dir, out = [printable(p) for p in args.paths], printable(args.data_dir), out and printable(out)
    state = predict(paths, data_dir, args.model, out, args.batch_size, not args.no_log, return_state=True)
    try:
        result = state.result()
    except NothingScored as error:
        print(f"predictions at {printable(error.args[1])}")
        return fail(f"{error}")
    if result is None:  # the files were removed between the argument check and the run
        raise PipelineInputError("no image files left to score")
    print(
        f"{result.scored:,} of {result.files:,} files scored by {result.model_version}; {result.failed:,} could not be"
    )
    failures = [(e["path"], e["error"]) for e in result.errors]  # the first ones: the Parquet file has them all
    print_problems(f"{result.failed:,} files not scored", failures, result.out, total=result.failed)
    return done(f"predictions at {result.out}")


def main(argv: list[str] | None = None) -> int:
    return run_cli(build_parser(), check_arguments, run_prediction, argv, what="batch prediction")


if __name__ == "__main__":
    sys.exit(main())

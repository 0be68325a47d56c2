"""Add labeled images to the training data as a new, immutable batch (a new dataset version).

    python flows/add_images.py incoming/                 # incoming/<class name>/<image file>
    python flows/add_images.py incoming/ --data-dir /srv/cifar
    python flows/add_images.py --withdraw 20261126T120000Z-1a2b3c4d   # take a batch out again
    python flows/add_images.py --list                    # the batches in the training data

The class folders must be the data dir's classes (a data dir holds one data set); each image is converted to the
data dir's image size as ingest converts it. Every file is accounted for in
`<data-dir>/reports/additions/<id>/summary.json`: added, a duplicate, or rejected with its reason. The inbox is only
read. A new batch emits `cifar10.dataset.updated`.
Exit status: 0 when the run completed (even with files rejected), 2 for unusable arguments, 1 on failure.
"""

from __future__ import annotations

import cifarflow.environment  # the defaults, before Prefect is imported

import argparse
import sys
from pathlib import Path

from prefect import flow, get_run_logger

from cifarflow.cli import ArgumentParser, done, ensure_prefect_api, print_problems, run_cli
from cifarflow.data.dataset_versions import (
    active_batch_dir,
    batch_with_origin,
    current_version,
    is_withdrawn,
    new_batch_id,
)
from cifarflow.errors import PipelineInputError
from cifarflow.files import ensure_writable, read_json, text_digest
from cifarflow.intake.batch_report import build_summary
from cifarflow.journal import begin, end, kill_point
from cifarflow.layout import DataLayout
from cifarflow.lock import DEFAULT_LOCK_TIMEOUT_S, data_dir_lock
from cifarflow.orchestration.names import run_name
from cifarflow.paths import from_printable, printable
from tasks.additions import (
    announce_withdrawal,
    finish_killed_run,
    publish_addition_report,
    scan,
    screen_images,
    withdraw,
    write,
)

LOCK_TIMEOUT_S = 600.0  # for another add_images or withdraw on the same data dir
INTAKE = "add_images or withdraw run"


@flow(name="add-images", flow_run_name=run_name("add", "inbox", "inbox"), log_prints=True)
def add_images(inbox: Path, data_dir: Path = Path("data"), origin: dict | None = None) -> str:
    """Scan INBOX/<class>/…, screen every image, write the new ones as a batch, publish the summary (one journaled
    write); returns the path of summary.json. `origin` is kept in the batch record; a batch of the same origin,
    active or withdrawn, is not added again: its summary is returned."""
    inbox = Path(from_printable(str(inbox)))  # names arrive as printable text (Prefect's parameters are UTF-8)
    layout = DataLayout(Path(from_printable(str(data_dir))).resolve())
    logger = get_run_logger()
    with data_dir_lock(layout.intake_lock, LOCK_TIMEOUT_S, log=logger.info, holder_kind=INTAKE):
        recovered = finish_killed_run(layout)
        if origin and (earlier := batch_with_origin(layout, origin)):
            withdrawn = " (withdrawn since: not added again)" if is_withdrawn(layout, earlier) else ""
            logger.warning("the images of this origin are batch %s%s: its summary stands", earlier.batch_id, withdrawn)
            return str(layout.additions_reports / earlier.batch_id / "summary.json")
        before = current_version(layout)
        found = scan(inbox, before.label_names)
        screening = screen_images(found, layout)
        batch_id = new_batch_id(text_digest([a.digest for a in screening.accepted])) if screening.accepted else None
        summary = build_summary(
            addition_id=batch_id or new_batch_id(text_digest(str(inbox.resolve()), found.files)),
            batch_id=batch_id,
            inbox=inbox.resolve(),
            files=found.files,
            screening=screening,
            previous_version=before.version,
        ) | ({"origin": origin} if origin else {})
        if batch_id:
            begin(layout.intake_journal, {"run": "add-images", "batch_id": batch_id, "summary": summary})
            kill_point("add-images:journal-written")
            write(layout, batch_id, screening, before.label_names, inbox, origin)
            kill_point("add-images:batch-written")
        summary |= {"recovered": recovered} if recovered else {}
        path = publish_addition_report(layout, summary, [a.pixels for a in screening.accepted])
        end(layout.intake_journal)
        return str(path)


@flow(name="withdraw-batch", log_prints=True)
def withdraw_images(
    batch_id: str, data_dir: Path = Path("data"), lock_timeout_s: float = DEFAULT_LOCK_TIMEOUT_S
) -> dict[str, str]:
    """Move a batch to batches-withdrawn/ under the pipeline's lock (a run may read it), journaled like an addition."""
    layout = DataLayout(Path(data_dir).resolve())
    log = get_run_logger().info
    with data_dir_lock(layout.intake_lock, LOCK_TIMEOUT_S, log=log, holder_kind=INTAKE):
        recovered = finish_killed_run(layout)
        with data_dir_lock(layout.lock_file, lock_timeout_s, log=log):
            before = current_version(layout)
            active_batch_dir(layout, batch_id)  # an unknown batch: refused before the journal names it
            intent = {"run": "withdraw", "batch_id": batch_id, "previous_dataset_version": before.version}
            begin(layout.intake_journal, intent)
            moved = withdraw(layout, batch_id)
            kill_point("withdraw:batch-moved")
            after = current_version(layout)
        announce_withdrawal(layout, batch_id, before.version, after)
        end(layout.intake_journal)
    return {
        "kept_in": str(moved),
        "previous_dataset_version": before.version,
        "dataset_version": after.version,
        "recovered": recovered or "",
    }


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("inbox", nargs="?", type=Path, help="folder of INBOX/<class name>/<image files>")
    parser.add_argument(
        "--data-dir", type=Path, default=Path("data"), help="the pipeline's data directory (default data)"
    )
    parser.add_argument("--withdraw", metavar="BATCH_ID", help="take this batch out of the training data")
    parser.add_argument("--list", action="store_true", help="list the batches in the training data and exit")
    return parser


def check_arguments(args: argparse.Namespace) -> DataLayout:
    """Unusable arguments raise PipelineInputError (exit 2) before any flow starts."""
    if sum(bool(x) for x in (args.inbox, args.withdraw, args.list)) != 1:
        raise PipelineInputError("give exactly one of INBOX, --withdraw BATCH_ID or --list")
    try:
        if args.inbox is not None and not args.inbox.is_dir():
            raise PipelineInputError(
                f"no such folder: {printable(args.inbox)} (expected INBOX/<class name>/<image files>)"
            )
        layout = DataLayout(args.data_dir.resolve())
        current_version(layout)  # says which command to run first when nothing was ingested there
        if not args.list:
            ensure_writable(layout.root)
    except OSError as error:  # not one the checks name: a name too long for the file system, say
        raise PipelineInputError(f"{printable(error.filename or '')}: {error.strerror}") from None
    if args.withdraw:
        active_batch_dir(layout, args.withdraw)  # an unknown or already withdrawn batch
    return layout


def run_additions(args: argparse.Namespace, layout: DataLayout) -> int:
    """List the batches, or withdraw one, or add the inbox (the last two as Prefect flows)."""
    if args.list:
        version = current_version(layout)
        for batch in version.batches:
            print(f"{batch.batch_id}  {batch.rows:6d} images  {batch.class_counts}")
        return done(
            f"dataset version {version.version}: {version.train_images:,} training images "
            f"({version.base_train_images:,} ingested + {len(version.batches)} batches)"
        )
    ensure_prefect_api()
    if args.withdraw:
        withdrawn = withdraw_images(args.withdraw, layout.root)
        return done(
            f"withdrew {args.withdraw} (kept in {withdrawn['kept_in']}); dataset version "
            f"{withdrawn['previous_dataset_version']} → {withdrawn['dataset_version']}"
            + (f"; first {withdrawn['recovered']}" if withdrawn["recovered"] else "")
        )
    summary = add_images(Path(printable(args.inbox)), Path(printable(layout.root)))
    rejected = [(r["path"], r["reason"]) for r in read_json(summary)["rejected"]]
    print_problems(f"{len(rejected):,} files rejected", rejected, summary)
    recovered = read_json(summary).get("recovered")
    return done(f"summary at {summary}" + (f"; first {recovered}" if recovered else ""))


def action(args: argparse.Namespace) -> str:
    """What the command was doing, for `error: <action> failed: …`."""
    return "listing the batches" if args.list else "withdrawing the batch" if args.withdraw else "adding images"


def main(argv: list[str] | None = None) -> int:
    return run_cli(build_parser(), check_arguments, run_additions, argv, what=action)


if __name__ == "__main__":
    sys.exit(main())

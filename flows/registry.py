"""The model registry: list its versions, move the champion by hand.

    python flows/registry.py list                                  # the versions, as a table
    python flows/registry.py promote v2 --reason "v3 misreads night photos"   # roll back (or forward)

Every promoted model is a version (v1, v2, …) that keeps its number; `champion` is the alias the
pipeline, batch prediction and the service use. A move by hand is a Prefect flow run (visible in the
UI) and is recorded in registry/aliases.jsonl with its reason; the nightly run does not promote a
model a person rolled back from again. The service switches to the new champion without a restart.

Exit status: 0 on success, 2 for unusable arguments (an unknown version, no reason), 1 on failure.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cifarflow.environment import apply_defaults

apply_defaults()  # before Prefect reads the environment

from prefect import flow  # noqa: E402

from cifarflow.errors import PipelineInputError  # noqa: E402
from cifarflow.layout import DataLayout  # noqa: E402
from cifarflow.registry import store  # noqa: E402
from cifarflow.registry.listing import alias_rows, format_table, version_rows  # noqa: E402
from tasks.registry import move_champion, publish  # noqa: E402


@flow(name="registry-promote", flow_run_name="champion-to-{version}", log_prints=True)
def promote_version(version: str, reason: str, data_dir: Path = Path("data")) -> dict:
    """Make registry version `version` the champion, with the reason recorded."""
    registry = DataLayout(Path(data_dir).resolve()).registry
    move = move_champion(registry, version, reason)
    publish(registry)
    return move


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=Path("data"), help="the pipeline's data directory")
    commands = parser.add_subparsers(dest="command", required=True)
    listing = commands.add_parser("list", help="the versions as a table, and the latest moves of the alias")
    listing.add_argument("--data-dir", type=Path, default=argparse.SUPPRESS, help="the pipeline's data directory")
    promote = commands.add_parser("promote", help="make a version the champion (a rollback or roll-forward)")
    promote.add_argument("version", help="v1, v2, …")
    promote.add_argument("--reason", required=True, help="why; recorded with the move")
    promote.add_argument("--data-dir", type=Path, default=argparse.SUPPRESS, help="the pipeline's data directory")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    registry = DataLayout(args.data_dir.resolve()).registry
    if args.command == "list":
        print(format_table(version_rows(registry)))
        moves = alias_rows(registry, last=5)
        if moves:
            print("\nlatest moves of the champion alias:")
            for move in moves:
                print(f"  {move['at']}  {move['from'] or '(none)'} → {move['to']}  by {move['by']}: {move['reason']}")
        return 0
    try:
        if not args.reason.strip():
            raise PipelineInputError("--reason is empty; say why the champion moves (it is recorded)")
        store.read_version(registry, args.version)
    except PipelineInputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if store.champion_name(registry) == args.version:
        print(f"{args.version} is the champion already; nothing to do")
        return 0
    try:
        move = promote_version(args.version, args.reason, args.data_dir)
    except Exception as error:  # the flow already logged the traceback
        print(f"error: moving the champion failed: {type(error).__name__}: {error}", file=sys.stderr)
        return 1
    print(f"done: champion {move['from'] or '(none)'} → {move['to']} ({move['reason']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

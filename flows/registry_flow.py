"""The model registry: list its versions, move the champion by hand.

    python flows/registry_flow.py list                                  # the versions, as a table
    python flows/registry_flow.py promote v2 --reason "v3 misreads night photos"   # roll back (or forward)

Every promoted model is a version (v1, v2, …) that keeps its number; `champion` is the alias the
pipeline, batch prediction and the service use. A move by hand is a Prefect flow run (visible in the
UI) and is recorded in registry/aliases.jsonl with its reason; the nightly run does not promote a
model a person rolled back from again. The service switches to the new champion without a restart.
`list` also names every damaged registry file and what to do about it (every file of a version is
checked against the sha256 recorded when it was registered); `promote` is how a damaged or lost
champion alias is chosen again. Both first finish or undo what a killed command left (a version half
built, a move half recorded) and say which.

Exit status: 0 on success, 2 for unusable arguments (an unknown or damaged version, no reason), 1 on
failure. The last line on stdout is `done: …` or `error: …`.
"""

from __future__ import annotations

import cifarflow.environment  # the defaults, before Prefect is imported

import argparse
import sys
from pathlib import Path

from prefect import flow

from cifarflow.cli import ArgumentParser, done, ensure_prefect_api, run_cli, run_command
from cifarflow.errors import PipelineInputError, StorageError
from cifarflow.layout import DataLayout
from cifarflow.orchestration.names import run_name
from cifarflow.registry import store
from cifarflow.registry.listing import DAMAGED, alias_rows, format_table, version_rows
from tasks.champion import move_champion, publish_registry_artifact


@flow(name="registry-promote", flow_run_name=run_name("champion-to", "version", "?"), log_prints=True)
def promote_version(version: str, reason: str, data_dir: Path = Path("data")) -> dict:
    """Make registry version `version` the champion, with the reason recorded."""
    registry = DataLayout(Path(data_dir).resolve()).registry
    move = move_champion(registry, version, reason)
    publish_registry_artifact(registry)
    return move


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=Path("data"), help="the pipeline's data directory")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=ArgumentParser)
    listing = commands.add_parser("list", help="the versions as a table, and the latest moves of the alias")
    listing.add_argument("--data-dir", type=Path, default=argparse.SUPPRESS, help="the pipeline's data directory")
    promote = commands.add_parser("promote", help="make a version the champion (a rollback or roll-forward)")
    promote.add_argument("version", help="v1, v2, …")
    promote.add_argument("--reason", required=True, help="why; recorded with the move")
    promote.add_argument("--data-dir", type=Path, default=argparse.SUPPRESS, help="the pipeline's data directory")
    return parser


def recover(registry: Path) -> None:
    """Finish or undo what a killed command left in the registry, saying which (`store.recover`); a
    damaged alias is left for `list` to name and `promote` to repair, a read-only registry as it is."""
    try:
        store.recover(registry)
    except (store.RegistryDamaged, StorageError):
        pass


def list_registry(registry: Path) -> int:
    """Print what was finished or undone, the table, what is damaged (file and fix), and the latest
    moves; exit 0 even when damaged."""
    recover(registry)
    rows = version_rows(registry)
    print(format_table(rows))
    problems = store.problems(registry)
    if problems:
        print("\ndamaged (not used until repaired):")
        for damage in problems:
            print(f"  {damage}")
    try:
        moves = alias_rows(registry, last=5)
    except store.RegistryDamaged:
        moves = []  # named among the problems above
    if moves:
        print("\nlatest moves of the champion alias:")
        for move in moves:
            print(f"  {move['at']}  {move['from'] or '(none)'} → {move['to']}  by {move['by']}: {move['reason']}")
    champion = next((row["version"] for row in rows if row["champion"]), None)
    healthy = sum(row["model"] != DAMAGED for row in rows)
    damaged = f"; {len(problems)} damaged (see above)" if problems else ""
    return done(f"{healthy} version{'s' * (healthy != 1)}, champion {champion or '(none)'}{damaged}")


def check_arguments(args: argparse.Namespace) -> Path:
    """The registry folder. For `promote`, unusable arguments (no reason, an unknown or damaged version,
    a place where the champion link cannot go) raise PipelineInputError (exit 2) before any flow starts."""
    registry = DataLayout(args.data_dir.resolve()).registry
    if args.command == "promote":
        if not args.reason.strip():
            raise PipelineInputError("--reason is empty; say why the champion moves (it is recorded)")
        store.read_version(registry, args.version)
        store.check_link_place(registry)
    return registry


def run_registry(args: argparse.Namespace, registry: Path) -> int:
    """`list`, or `promote` in a Prefect flow run (nothing to do when the version is the champion already)."""
    if args.command == "list":
        return list_registry(registry)
    try:
        current = store.champion_name(registry)
    except store.RegistryDamaged:
        current = None  # a damaged alias is what a move by hand repairs
    recover(registry)
    if current == args.version:
        return done(f"{args.version} is the champion already; nothing to do")
    ensure_prefect_api()
    move = promote_version(args.version, args.reason, args.data_dir)
    return done(f"champion {move['from'] or '(none)'} → {move['to']} ({move['reason']})")


def action(args: argparse.Namespace) -> str:
    """What the command was doing, for `error: <action> failed: …`."""
    return "listing the registry" if args.command == "list" else "moving the champion"


def main(argv: list[str] | None = None) -> int:
    return run_cli(build_parser(), check_arguments, run_registry, argv, what=action)


if __name__ == "__main__":
    sys.exit(run_command(main))

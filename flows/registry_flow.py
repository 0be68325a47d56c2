"""The model registry: list its versions, print a version's SavedModel folder, move the champion by hand.

    python flows/registry_flow.py list                                  # the versions, as a table
    python flows/registry_flow.py path [champion|v2]                    # the folder tf.saved_model.load reads
    python flows/registry_flow.py promote v2 --reason "v3 misreads night photos"   # roll back (or forward)

A move by hand is a Prefect flow run, recorded in registry/aliases.jsonl with its reason and announced as the event
`cifar10.model.promoted`; the nightly run does not promote a model rolled back from. Exit status: 0 done, 2 unusable
arguments (an unknown or damaged version, no reason, no champion yet), 1 failure; the last line on stdout is `done: …`
or `error: …`.
"""

from __future__ import annotations

import cifarflow.environment  # the defaults, before Prefect is imported

import argparse
import contextlib
import sys
from pathlib import Path

from prefect import flow

from cifarflow.cli import ArgumentParser, done, ensure_prefect_api, run_cli
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
    path = commands.add_parser("path", help="print the SavedModel folder of the champion or a version")
    path.add_argument("version", nargs="?", default=store.ALIAS, help="champion (default), v1, v2, …")
    promote = commands.add_parser("promote", help="make a version the champion (a rollback or roll-forward)")
    promote.add_argument("version", help="v1, v2, …")
    promote.add_argument("--reason", required=True, help="why; recorded with the move")
    for command in (listing, path, promote):
        command.add_argument("--data-dir", type=Path, default=argparse.SUPPRESS, help="the pipeline's data directory")
    return parser


def list_registry(registry: Path) -> int:
    """Print the table, what is damaged (file and fix), the latest moves; exit 0 even when damaged."""
    with contextlib.suppress(StorageError):  # a read-only registry is listed as it is
        store.recover(registry)
    rows = version_rows(registry)
    print(format_table(rows))
    problems = store.problems(registry)
    if problems:
        print("\ndamaged (not used until repaired):")
        print("\n".join(f"  {damage}" for damage in problems))
    moves = alias_rows(registry, last=5)
    if moves:
        print("\nlatest moves of the champion alias:")
        for move in moves:
            print(f"  {move['at']}  {move['from'] or '(none)'} → {move['to']}  by {move['by']}: {move['reason']}")
    champion = next((row["version"] for row in rows if row["champion"]), None)
    healthy = sum(row["model"] != DAMAGED for row in rows)
    damaged = f"; {len(problems)} damaged (see above)" if problems else ""
    return done(f"{healthy} version{'s' * (healthy != 1)}, champion {champion or '(none)'}{damaged}")


def check_arguments(args: argparse.Namespace) -> Path:
    """The registry folder; PipelineInputError (exit 2) for an empty reason, an unknown or damaged version."""
    registry = DataLayout(args.data_dir.resolve()).registry
    if args.command == "promote" and not args.reason.strip():
        raise PipelineInputError("--reason is empty; say why the champion moves (it is recorded)")
    if args.command == "promote":
        store.read_version(registry, args.version)
    if args.command == "path":
        champion = args.version == store.ALIAS
        args.found = store.read_champion_version(registry) if champion else store.read_version(registry, args.version)
        if args.found is None:
            raise PipelineInputError(f"no champion in {registry} yet: run the pipeline first")
    return registry


def run_registry(args: argparse.Namespace, registry: Path) -> int:
    """`list`, `path`, or `promote` in a Prefect flow run (nothing to do when the version is the champion)."""
    if args.command == "list":
        return list_registry(registry)
    if args.command == "path":
        print(args.found.export_dir)
        return done(f"{args.found.name}'s SavedModel, the folder above: tf.saved_model.load(…) reads it")
    store.recover(registry)
    if store.readable_champion(registry) == args.version:  # a damaged alias is what a move by hand repairs
        return done(f"{args.version} is the champion already; nothing to do")
    ensure_prefect_api()
    move = promote_version(args.version, args.reason, args.data_dir)
    return done(f"champion {move['from'] or '(none)'} → {move['to']} ({move['reason']})")


def main(argv: list[str] | None = None) -> int:
    what = {"list": "listing the registry", "path": "finding the version", "promote": "moving the champion"}
    return run_cli(build_parser(), check_arguments, run_registry, argv, what=lambda args: what[args.command])


if __name__ == "__main__":
    sys.exit(main())

"""Corrections into the training data: the reviewers' new answers become a screened batch.

    python flows/feedback_flow.py [--data-dir /srv/cifar]

The report lands in <data dir>/feedback/exports/<id>/. Exit status: 0 when the run completed (even with
nothing new), 2 for unusable arguments, 1 on failure.
"""

from __future__ import annotations

import cifarflow.environment  # the defaults, before Prefect is imported

import argparse
import sys
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger

from cifarflow.cli import ArgumentParser, done, ensure_prefect_api, print_problems, run_cli
from cifarflow.data.dataset_versions import current_version
from cifarflow.errors import PipelineInputError
from cifarflow.feedback.corrections import ExportPlan, new_export_id, read_exported
from cifarflow.files import ensure_writable, read_json
from cifarflow.journal import begin, damaged, end, kill_point, unfinished
from cifarflow.layout import DataLayout
from cifarflow.lock import data_dir_lock
from cifarflow.orchestration.names import run_name
from cifarflow.paths import from_printable, printable
from flows.add_images import add_images
from tasks import feedback

PROBLEM_VERDICTS = ("conflict", "refused", "lost")  # printed one by one; `duplicate` is in the training data already
LOCK_TIMEOUT_S = 600.0  # for another feedback export on the same data dir


@flow(name="feedback", flow_run_name=run_name("feedback", "data_dir", "data"), log_prints=True)
def export_feedback(data_dir: Path = Path("data")) -> dict[str, Any]:
    """The new answers → an inbox → the add-images screening → one batch; the export's summary (`path`: its
    summary.json). Journaled from the inbox on: the next run finishes one a kill left (`resumed`)."""
    layout = DataLayout(Path(from_printable(str(data_dir))).resolve())
    logger = get_run_logger()
    with data_dir_lock(layout.feedback_lock, LOCK_TIMEOUT_S, log=logger.info, holder_kind="feedback export"):
        killed = unfinished(layout.feedback_journal, ("export_id", "plan"))
        if killed:
            try:
                export_id, plan = str(killed["export_id"]), ExportPlan.from_json(killed["plan"])
            except (KeyError, TypeError, AttributeError) as error:
                raise damaged(
                    layout.feedback_journal, f"its `plan` is not one: {type(error).__name__}: {error}"
                ) from None
            exported = read_exported(layout.feedback_exported, layout.feedback_exports)
            logger.warning("finishing export %s, which a killed run left unfinished", export_id)
        else:
            plan, exported = feedback.gather_answers(layout)
            feedback.remove_unfinished_exports(layout, exported)
            if not (plan.ready or plan.lost or plan.held):
                return {"export_id": None, "headline": "no new answers since the last export", "path": None}
            export_id = new_export_id(plan.ready)
            if plan.ready:
                feedback.write_feedback_inbox(layout.feedback_exports / export_id / "inbox", plan.ready)
            begin(layout.feedback_journal, {"export_id": export_id, "plan": plan.to_json()})
        directory = layout.feedback_exports / export_id
        addition = None
        if plan.ready:
            inbox, root = Path(printable(directory / "inbox")), Path(printable(layout.root))
            reviewers = sorted({r.answer.reviewer for r in plan.ready})
            ids = [r.answer.prediction_id for r in plan.ready]
            origin = {"kind": "feedback", "export_id": export_id, "prediction_ids": ids, "reviewers": reviewers}
            addition = read_json(add_images(inbox, root, origin))
        kill_point("feedback:batch-added")
        summary = feedback.record_outcome(layout, exported, export_id, plan, addition)
        if killed:
            summary["resumed"] = f"resumed export {export_id}, which a killed run had left unfinished"
        summary["path"] = str(feedback.publish_feedback_report(directory, summary))
        end(layout.feedback_journal)
        return summary


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=Path("data"), help="the pipeline's data directory")
    return parser


def check_arguments(args: argparse.Namespace) -> DataLayout:
    """An unusable data dir raises PipelineInputError (exit 2) before any flow starts."""
    layout = DataLayout(args.data_dir.resolve())
    try:
        current_version(layout)  # says which command to run first when nothing was ingested there
        ensure_writable(layout.feedback)
    except OSError as error:
        raise PipelineInputError(f"{printable(error.filename or '')}: {error.strerror}") from None
    return layout


def run_export(args: argparse.Namespace, layout: DataLayout) -> int:
    ensure_prefect_api()
    summary = export_feedback(Path(printable(layout.root)))
    where = f"; report at {Path(summary['path']).parent}" if summary["path"] else ""
    not_taken = [
        (f"{a['prediction_id']} ({a['label']})", f"{a['verdict']}: {a['reason']}")
        for a in summary.get("answers", [])
        if a["verdict"] in PROBLEM_VERDICTS
    ]
    print_problems(f"{len(not_taken):,} answers not added", not_taken, summary["path"] or "")
    resumed = f"; {summary['resumed']}" if summary.get("resumed") else ""
    return done(f"{summary['headline']}{where}{resumed}")


def main(argv: list[str] | None = None) -> int:
    return run_cli(build_parser(), check_arguments, run_export, argv, what="the feedback export")


if __name__ == "__main__":
    sys.exit(main())

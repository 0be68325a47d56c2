"""Corrections into the training data: the reviewers' new answers become a screened batch.

    python flows/feedback_flow.py                      # the data dir ./data
    python flows/feedback_flow.py --data-dir /srv/cifar

Takes each logged prediction's current answer (POST /feedback, the review page) that no earlier run
handled, writes the exact pixels the model saw as an inbox (`<class>/<prediction_id>.png`) and runs
the add-images flow on it: copies of test images are refused as leaks, images the training data holds
are skipped, and the new ones become one batch whose record names its origin (the export, the
prediction ids, the reviewers). A new batch emits `cifar10.dataset.updated`, which starts the
retraining deployment. One image given different classes by two answers is held back, and listed,
until a new answer makes them agree. Running it again adds nothing: each answer is handled once
(`cifarflow.feedback.corrections`). The report lands in <data dir>/feedback/exports/<id>/ and the UI; the
last line is `done: …`.

Exit status: 0 when the run completed (even when nothing was new or every answer was refused), 2 for
unusable arguments, 1 on failure.
"""

from __future__ import annotations

import cifarflow.environment  # the defaults, before Prefect is imported

import argparse
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger

from cifarflow.cli import ArgumentParser, done, ensure_prefect_api, print_problems, run_cli, run_command
from cifarflow.data.dataset_versions import current_version
from cifarflow.errors import PipelineInputError
from cifarflow.feedback.corrections import LOST, VERDICTS, ExportPlan, new_export_id, read_exported
from cifarflow.files import ensure_writable, read_json
from cifarflow.journal import begin, damaged, end, kill_point, unfinished
from cifarflow.layout import DataLayout
from cifarflow.lock import data_dir_lock
from cifarflow.orchestration.names import run_name
from cifarflow.paths import from_printable, printable
from flows.add_images import add_images
from tasks.feedback import (
    gather_answers,
    publish_feedback_report,
    record_outcome,
    remove_unfinished_exports,
    write_feedback_inbox,
)

PROBLEM_VERDICTS = ("conflict", "refused", "lost")  # printed one by one; `duplicate` is in the training data already
LOCK_TIMEOUT_S = 600.0  # for another feedback export on the same data dir


@flow(name="feedback", flow_run_name=run_name("feedback", "data_dir", "data"), log_prints=True)
def export_feedback(data_dir: Path = Path("data")) -> dict[str, Any]:
    """The new answers → an inbox → the add-images screening → one batch; the export's summary
    (also in <data dir>/feedback/exports/<id>/summary.json; `path` says where).

    From the inbox on, an export is journaled (cifarflow/journal.py): a run that finds an export a kill
    left unfinished finishes that one, with the same answers and id (its batch is recognised by its
    origin, so its answers are `added`, and its event is emitted if it was not), and says so
    (`resumed`); an export folder a kill left before its journal was written is removed."""
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
            plan, exported = gather_answers(layout)
            remove_unfinished_exports(layout, exported)
            if not (plan.ready or plan.lost or plan.held or plan.waiting):
                return {"export_id": None, "headline": "no new answers since the last export", "path": None}
            export_id = new_export_id(plan.ready)
            if plan.ready:
                write_feedback_inbox(layout.feedback_exports / export_id / "inbox", plan.ready)
            begin(layout.feedback_journal, {"export_id": export_id, "plan": plan.to_json()})
        directory = layout.feedback_exports / export_id
        addition = None
        if plan.ready:
            addition = read_json(
                add_images(Path(printable(directory / "inbox")), Path(printable(layout.root)), origin(export_id, plan))
            )
        kill_point("feedback:batch-added")
        verdicts = record_outcome(layout, exported, export_id, plan, addition)
        summary = export_summary(export_id, plan, verdicts, addition)
        if killed:
            summary["resumed"] = f"resumed export {export_id}, which a killed run had left unfinished"
        summary["path"] = str(publish_feedback_report(directory, summary))
        end(layout.feedback_journal)
        return summary


def origin(export_id: str, plan: ExportPlan) -> dict[str, Any]:
    """What the batch record keeps of where its images came from."""
    return {
        "kind": "feedback",
        "export_id": export_id,
        "prediction_ids": [r.answer.prediction_id for r in plan.ready],
        "reviewers": sorted({r.answer.reviewer for r in plan.ready}),
    }


def export_summary(
    export_id: str, plan: ExportPlan, verdicts: dict[str, tuple[str, str]], addition: dict[str, Any] | None
) -> dict[str, Any]:
    answers = [
        {"prediction_id": r.answer.prediction_id, "label": r.answer.label, "reviewer": r.answer.reviewer}
        | dict(zip(("verdict", "reason"), verdicts[r.answer.prediction_id]))
        for r in plan.ready
    ] + [
        {
            "prediction_id": a.prediction_id,
            "label": a.label,
            "reviewer": a.reviewer,
            "verdict": "lost",
            "reason": LOST,
        }
        for a in plan.lost
    ]
    tally = Counter(a["verdict"] for a in answers)
    counts = {verdict: tally.get(verdict, 0) for verdict in VERDICTS}
    counts["held"] = sum(a["new"] for c in plan.held for a in c["answers"])  # this run's answers only
    counts["waiting"] = len(plan.waiting)
    moved = addition is not None and addition["dataset_version"] != addition["previous_dataset_version"]
    batch = f"batch {addition['batch_id']} (dataset version {addition['dataset_version']})" if moved else "no batch"
    total = len(answers) + counts["held"] + counts["waiting"]
    headline = (
        f"{total} answers: {counts['added']} added as {batch}, {counts['duplicate']} "
        f"already in the training data, {counts['conflict']} contradicting it, {counts['refused']} refused, "
        f"{counts['held']} held back (conflicting), {counts['lost']} lost"
    ) + (f", {counts['waiting']} waiting (a prediction log file could not be read)" if plan.waiting else "")
    return {
        "export_id": export_id,
        "headline": headline,
        "waiting": [a.prediction_id for a in plan.waiting],
        "counts": counts,
        "batch_id": addition["batch_id"] if moved else None,
        "dataset_version": addition["dataset_version"] if addition else None,
        "addition": addition and addition["addition_id"],
        "answers": answers,
        "held": plan.held,
    }


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--data-dir", type=Path, default=Path("data"), help="the pipeline's data directory (default data)"
    )
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
    sys.exit(run_command(main))

"""The promote stage's logic: score the challenger, decide against the champion, write the decision
into the run's report, and install the challenger in the registry when it wins."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from cifarflow.data.transform import load_split
from cifarflow.files import atomic_path
from cifarflow.promotion.champions import baseline_id, install_champion, read_champion, record_decision
from cifarflow.promotion.decision import Score, decide, score_from_evaluation, test_set_id
from cifarflow.promotion.outcome import Promotion, record_outcome
from cifarflow.promotion.section import comparison_markdown, confusion_difference, write_section


def challenger_score(evaluation_dir: Path, features, train, report, model: str, dataset_version: str) -> Score:
    """The challenger's score; `features` (the preprocess output) says which batches and transform it saw."""
    score = score_from_evaluation(
        evaluation_dir,
        load_split(features.directory, "test", "labels"),
        model_id=train.model_sha256,
        run_name=report.run_name,
        model=model,
        dataset_sha256=dataset_version,
        test_set_sha256=test_set_id(features.directory),
    )
    return replace(score, batch_ids=features.batch_ids, normalization=features.normalization.kind)


def promote_challenger(
    challenger: Score,
    model_path: Path,
    report,
    registry: Path,
    alpha: float,
    key: str,
    log=print,
    min_accuracy: float | None = None,
):
    """Decide, write promotion.md/.json and the report section, and move the champion if promoted."""
    from cifarflow.evaluation import plots

    champion = read_champion(registry)
    decision = decide(challenger, champion, alpha=alpha, min_accuracy=min_accuracy)
    log(decision.summary)
    out = Path(report.directory)
    diff_plot = None
    if champion is not None and decision.comparable and decision.reason != "already-champion":
        plots.confusion_matrix_plot(
            confusion_difference(challenger, champion),
            challenger.metrics["class_names"],
            out / "confusion_diff.png",
            title="Confusion matrix change (challenger − champion)",
            cmap="RdBu",
            center_zero=True,
        )
        diff_plot = "confusion_diff.png"
    section = comparison_markdown(decision, challenger, champion, diff_plot)
    with atomic_path(out / "promotion.md") as tmp:
        tmp.write_text(section)
    write_section(report.report_path, section)
    # the decision is written before the registry changes: a crash in between makes the next run
    # see a registry that disagrees with promotion.json, and decide again
    baseline = baseline_id(registry, challenger.model_id)
    outcome = record_outcome(out / "promotion.json", key, baseline, decision, registry)
    if decision.promoted:
        install_champion(registry, model_path, challenger, decision)
        log(f"champion is now {challenger.model_id[:12]} ({report.run_name})")
    record_decision(registry, decision, report.run_name)
    return outcome


__all__ = ["Promotion", "challenger_score", "promote_challenger"]

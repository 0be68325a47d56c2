"""The promote stage's logic: decide (`decision.decide`), export and smoke-test a winner into a new registry version,
write the report section and promotion.json, then move the champion alias (`cifarflow.registry.build.make_champion`)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from cifarflow.data.transform import load_split
from cifarflow.errors import PipelineInputError
from cifarflow.files import atomic_path, read_json, write_json
from cifarflow.promotion.decision import IDENTITY, Decision, Score, decide, score_from_evaluation, test_set_id
from cifarflow.promotion.outcome import Promotion, baseline_of, record_outcome
from cifarflow.promotion.rollback import respect_rollback
from cifarflow.promotion.section import (
    comparison_markdown,
    confusion_difference,
    robustness_markdown,
    test_set_paragraph,
    write_section,
)
from cifarflow.registry.build import Canary, StagedVersion, VersionRejected, make_champion, stage_next_version
from cifarflow.registry.saved_model import canary_indices
from cifarflow.registry.store import (
    Version,
    VersionRecord,
    decisions_on_test_set,
    read_champion_version,
    read_results,
    record_decision,
    version_of_model,
)
from cifarflow.reporting.model_card import render_model_card

if TYPE_CHECKING:  # the upstream stages' output types, for annotations only
    from cifarflow.data.transform import Features
    from cifarflow.reporting.report import Report
    from cifarflow.training.run import TrainResult


class PromotionRefused(PipelineInputError):
    """The champion is of another data set (classes or image size): the two cannot be compared."""


def challenger_score(
    evaluation_dir: Path, features: Features, train: TrainResult, report: Report, preset: str, dataset_version: str
) -> Score:
    """The challenger's score, with the batches and the transform kind of `features` and the report's metrics."""
    return score_from_evaluation(
        evaluation_dir,
        report.metrics_path,
        load_split(features.directory, "test", "labels"),
        model_id=train.model_sha256,
        run_name=report.run_name,
        preset=preset,
        dataset_version=dataset_version,
        test_set_sha256=test_set_id(features.directory),
        batch_ids=features.batch_ids,
        normalization=features.normalization.kind,
        label_names=tuple(features.label_names),
        image_size=features.image_size,
        dataset=features.dataset,
    )


def version_score(version: Version) -> Score:
    """A registry version's score on its own test set; RegistryDamaged when its files are damaged."""
    identity = {name: getattr(version, name) for name in IDENTITY}
    return Score(**identity, **read_results(version), version=version.name)


def canary_set(calibrated: Path, features_dir: Path) -> Canary:
    """The canary images and the calibrate stage's probabilities for them (`calibrated`: (N, classes) float32)."""
    indices = canary_indices(load_split(features_dir, "test", "labels"))
    pixels = np.asarray(load_split(features_dir, "test", "pixels")[indices])
    probabilities = np.load(Path(calibrated), mmap_mode="r")
    return Canary(pixels, np.asarray(probabilities[indices]))


def version_record(
    challenger: Score,
    decision: Decision,
    model_path: Path,
    now: datetime,
    data_dir: Path | None = None,
    temperature: float | None = None,
    test_set_decisions: int | None = None,
) -> VersionRecord:
    """A promoted challenger's version.json less name and smoke test; `source_model` relative to `data_dir`."""
    return VersionRecord(
        **{name: getattr(challenger, name) for name in IDENTITY},
        accuracy=challenger.accuracy,
        temperature=temperature,
        test_set_decisions=test_set_decisions,
        test_images=int(len(challenger.labels)),
        promoted_at=now.isoformat(timespec="seconds"),
        replaced=decision.champion_id,
        decision=decision.summary,
        source_model=_relative(model_path, data_dir),
    )


def stage_challenger(
    challenger: Score,
    decision: Decision,
    model_path: Path,
    registry: Path,
    canary: Canary,
    log,
    temperature: float | None = None,
    test_set_decisions: int | None = None,
    model_card: dict | None = None,
) -> tuple[Decision, StagedVersion | Version | None]:
    """A promoted challenger staged (exported, smoke-tested; README.md from `model_card`, model_card.json's facts)
    or its version if registered already; None when kept. A failed smoke test turns the decision into
    "smoke-test-failed" and leaves no trace in the registry."""
    if not decision.promoted:
        return decision, None
    registered = version_of_model(registry, challenger.model_id)
    if registered is not None:
        return decision, registered
    data_dir = Path(registry).parent  # the layout's: <data dir>/registry
    record = version_record(
        challenger, decision, model_path, datetime.now(UTC), data_dir, temperature, test_set_decisions
    )
    try:
        scores = (challenger.metrics, challenger.predictions, challenger.labels)
        readme = partial(render_model_card, model_card, challenger.metrics) if model_card else None
        staged = stage_next_version(registry, model_path, record, *scores, canary, log, model_card=readme)
    except VersionRejected as rejected:
        kept = "kept champion" if decision.champion_id else "kept no champion"
        summary = f"{kept}: the challenger won ({decision.summary}), but {rejected}"
        return replace(decision, promoted=False, reason="smoke-test-failed", summary=summary), None
    log(staged.smoke.summary)
    return decision, staged


def registry_paragraph(candidate: StagedVersion | Version | None, champion: str | None) -> str:
    if isinstance(candidate, StagedVersion):
        return f"\n**Registry:** registered as **{candidate.name}** and made the champion; {candidate.smoke.summary}.\n"
    if candidate is not None:
        return f"\n**Registry:** already registered as {candidate.name}.\n"
    return f"\n**Registry:** the champion stays {champion or '(none)'}.\n"


def promote_challenger(
    challenger: Score,
    model_path: Path,
    report,
    registry: Path,
    alpha: float,
    key: str,
    canary: Canary,
    log=print,
    min_accuracy: float | None = None,
    temperature: float | None = None,
) -> Promotion:
    """Decide, stage the winner, write promotion.md/.json and the report section, then register it and move the
    champion unless someone moved it meanwhile (store.AliasMoved); before any write, RegistryDamaged, or
    PromotionRefused when the champion classifies other classes or another image size."""
    from cifarflow.evaluation import plots

    current = read_champion_version(registry)
    if current and (difference := current.data_set_difference(challenger.label_names, challenger.image_size)):
        raise PromotionRefused(
            f"the champion {current.name} in {registry} {difference}: a champion is never compared with a model of "
            f"another data set; use another --data-dir for this data set (or move {registry} away to start anew)"
        )
    judged_against = current.name if current else None
    champion = version_score(current) if current else None
    decision = respect_rollback(decide(challenger, champion, alpha=alpha, min_accuracy=min_accuracy), registry)
    earlier, unattributed = decisions_on_test_set(registry, challenger.test_set_sha256)
    judged = decision.reason != "already-champion"
    served = earlier + judged  # this decision included, when it judged anything
    out = Path(report.directory)
    card = None  # the run's model card records how many decisions its test set served
    if (out / "model_card.json").is_file():
        card = read_json(out / "model_card.json") | {"test_set_decisions": served}
    decision, candidate = stage_challenger(
        challenger, decision, model_path, registry, canary, log, temperature, served, card
    )
    log(decision.summary)
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
    section = (
        comparison_markdown(decision, challenger, champion, diff_plot)
        + robustness_markdown(challenger, champion if decision.comparable else None)
        + test_set_paragraph(served, judged, unattributed)
        + registry_paragraph(candidate, judged_against)
    )
    with atomic_path(out / "promotion.md") as tmp:
        tmp.write_text(section)
    write_section(report.report_path, section)
    if card is not None:
        write_json(out / "model_card.json", card)
        registered = candidate or version_of_model(registry, challenger.model_id)
        with atomic_path(out / "README.md") as tmp:
            tmp.write_text(render_model_card(card, challenger.metrics, registered.name if registered else None))
    # the decision is written before the alias moves: a crash in between makes the next run see a
    # registry that disagrees with promotion.json, and decide again (reusing the registered version)
    baseline = baseline_of(current, challenger.model_id)  # what the stage's key read (`baseline_id`)
    champion_now = (candidate.name if candidate is not None else None) if decision.promoted else judged_against
    outcome = record_outcome(out / "promotion.json", key, baseline, decision, registry, served, champion_now)
    if decision.promoted:
        version = make_champion(registry, candidate, reason=decision.summary, expected_from=judged_against)
        log(f"champion is now {version.name} ({challenger.model_id[:12]}, {report.run_name})")
    record_decision(registry, decision, report.run_name, test_set_sha256=challenger.test_set_sha256)
    return outcome


def _relative(path: Path, root: Path | None) -> str:
    path = Path(path)
    if root is not None and path.is_absolute() and path.is_relative_to(Path(root).resolve()):
        return str(path.relative_to(Path(root).resolve()))
    return str(path)

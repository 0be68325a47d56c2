"""Champion/challenger, the promote stage's logic: keep the best model so far, and replace it only
when a new model (the challenger) is *significantly* better on the very same test images.

Plain functions, no Prefect: the `promote` task in `tasks/promote.py` is a thin wrapper. The statistics
are in `mcnemar.py`, the rule in `decision.py`, the rollback rule in `rollback.py`, the report section
in `section.py`. The versions, the `champion` alias and the decision log live in the model registry,
which promotion uses only through its API (`cifarflow/registry/api.py`).

The rule (`decision.decide`):

* no champion yet: the challenger is promoted (first run);
* the challenger *is* the champion (same model sha256): nothing changes;
* champion and challenger were scored on the same test set (the same test images and labels in
  the same order, `test_set_id`): McNemar's test on the paired per-image correctness; promote only if the
  challenger is more accurate and p < alpha (default 0.05; exact binomial test by default,
  mid-p optionally);
* the test sets differ (the data changed): a paired test is impossible and the accuracies
  are not comparable, so the challenger, the only model scored on the current data, is promoted,
  and the decision says so.

A promoted model becomes a new registry version only after its exported artifact passed the smoke
test (`cifarflow/registry/build.py`); a model a person rolled back from is not promoted again by a
later run (`rollback.py`).
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from cifarflow.data.transform import load_split
from cifarflow.files import atomic_path, read_json, write_json
from cifarflow.promotion.champions import baseline_of
from cifarflow.promotion.decision import Decision, Score, decide, score_from_evaluation, test_set_id
from cifarflow.promotion.outcome import Promotion, record_outcome
from cifarflow.promotion.rollback import respect_rollback
from cifarflow.promotion.section import (
    comparison_markdown,
    confusion_difference,
    robustness_markdown,
    test_set_paragraph,
    write_section,
)
from cifarflow.registry.api import (
    Canary,
    StagedVersion,
    Version,
    VersionRecord,
    VersionRejected,
    canary_indices,
    check_link_place,
    decisions_on_test_set,
    make_champion,
    read_champion_version,
    read_results,
    record_decision,
    stage_next_version,
    version_of_model,
)

if TYPE_CHECKING:  # the upstream stages' output types, for annotations only
    from cifarflow.data.transform import Features
    from cifarflow.reporting.report import Report
    from cifarflow.training.run import TrainResult


def challenger_score(
    evaluation_dir: Path, features: Features, train: TrainResult, report: Report, preset: str, dataset_version: str
) -> Score:
    """The challenger's score; `features` (the preprocess output) says which batches and transform it
    saw. Its metrics are the report's (evaluation's, the calibration and the corruption table)."""
    score = score_from_evaluation(
        evaluation_dir,
        report.metrics_path,
        load_split(features.directory, "test", "labels"),
        model_id=train.model_sha256,
        run_name=report.run_name,
        preset=preset,
        dataset_version=dataset_version,
        test_set_sha256=test_set_id(features.directory),
    )
    return replace(score, batch_ids=features.batch_ids, normalization=features.normalization.kind)


def version_score(version: Version) -> Score:
    """A registry version's score on its own test set; RegistryDamaged when its files are damaged."""
    results = read_results(version)
    return Score(
        model_id=version.model_id,
        run_name=version.run_name,
        preset=version.preset,
        dataset_version=version.dataset_version,
        test_set_sha256=version.test_set_sha256,
        predictions=results.predictions,
        labels=results.labels,
        metrics=results.metrics,
        batch_ids=version.batch_ids,
        normalization=version.normalization,
        version=version.name,
    )


def champion_score(registry: Path) -> Score | None:
    """The champion as a Score, or None when there is none yet; RegistryDamaged (which names the file
    and what to do) when the champion or the alias is damaged."""
    version = read_champion_version(registry)
    return version_score(version) if version else None


def canary_set(calibrated: Path, features_dir: Path) -> Canary:
    """The smoke test's canary images and the calibrated probabilities (the calibrate stage's
    `probabilities.npy`: evaluation's, scaled by the temperature) the export must return for them."""
    indices = canary_indices(load_split(features_dir, "test", "labels"))
    pixels = np.asarray(load_split(features_dir, "test", "pixels")[indices])
    probabilities = np.load(Path(calibrated), mmap_mode="r")
    return Canary(pixels, np.asarray(probabilities[indices]))


def version_record(
    challenger: Score,
    decision: Decision,
    label_names: list[str],
    model_path: Path,
    now: datetime,
    data_dir: Path | None = None,
    *,
    temperature: float | None = None,
    test_set_decisions: int | None = None,
) -> VersionRecord:
    """What version.json says about a promoted challenger (the registry adds its name and smoke test).
    `source_model` is recorded relative to `data_dir` when it lies in it: nothing in the registry
    names an absolute path, so a data dir can move."""
    return VersionRecord(
        model_id=challenger.model_id,
        run_name=challenger.run_name,
        preset=challenger.preset,
        accuracy=challenger.accuracy,
        temperature=temperature,
        test_set_decisions=test_set_decisions,
        label_names=tuple(label_names),
        dataset_version=challenger.dataset_version,
        batch_ids=tuple(challenger.batch_ids),
        normalization=challenger.normalization,
        test_set_sha256=challenger.test_set_sha256,
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
    label_names,
    log,
    *,
    temperature: float | None = None,
    test_set_decisions: int | None = None,
) -> tuple[Decision, StagedVersion | Version | None]:
    """Export and smoke-test a promoted challenger into a staged version (not yet in the registry), or
    find the version it was registered as already (a run killed before the alias moved); None when it
    is kept. A failure turns the decision into "kept" with the reason, and leaves no trace in the registry."""
    if not decision.promoted:
        return decision, None
    registered = version_of_model(registry, challenger.model_id)
    if registered is not None:
        return decision, registered
    data_dir = Path(registry).parent  # the layout's: <data dir>/registry
    record = version_record(
        challenger,
        decision,
        label_names,
        model_path,
        datetime.now(UTC),
        data_dir,
        temperature=temperature,
        test_set_decisions=test_set_decisions,
    )
    try:
        staged = stage_next_version(
            registry, model_path, record, challenger.metrics, challenger.predictions, challenger.labels, canary, log
        )
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
    label_names: list[str],
    log=print,
    min_accuracy: float | None = None,
    temperature: float | None = None,
):
    """Decide, stage the winner (export with `temperature`, the calibrate stage's, + smoke test),
    write promotion.md/.json and the report section, then register it and move the champion alias
    (only if nobody moved it meanwhile: see registry.api.AliasMoved). RegistryDamaged, before anything
    is written, when the champion, the alias, or (for a promotion) what stands at `registry/champion`
    is damaged: the message names the file and what to do."""
    from cifarflow.evaluation import plots

    current = read_champion_version(registry)
    judged_against = current.name if current else None
    champion = version_score(current) if current else None
    decision = respect_rollback(decide(challenger, champion, alpha=alpha, min_accuracy=min_accuracy), registry)
    earlier, unattributed = decisions_on_test_set(registry, challenger.test_set_sha256)
    judged = decision.reason != "already-champion"
    served = earlier + judged  # this decision included, when it judged anything
    if decision.promoted:
        check_link_place(registry)  # the alias could not be moved: stop before registering anything
    decision, candidate = stage_challenger(
        challenger,
        decision,
        model_path,
        registry,
        canary,
        label_names,
        log,
        temperature=temperature,
        test_set_decisions=served,
    )
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
    section = (
        comparison_markdown(decision, challenger, champion, diff_plot)
        + robustness_markdown(challenger, champion if decision.comparable else None)
        + test_set_paragraph(served, judged, unattributed)
        + registry_paragraph(candidate, judged_against)
    )
    with atomic_path(out / "promotion.md") as tmp:
        tmp.write_text(section)
    write_section(report.report_path, section)
    note_test_set_use(out / "model_card.json", served)
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


def note_test_set_use(card_path: Path, served: int) -> None:
    """Record in the run's model card (when the report has one) how many promotion decisions its test
    set has served."""
    if card_path.is_file():
        write_json(card_path, read_json(card_path) | {"test_set_decisions": served})


def _relative(path: Path, root: Path | None) -> str:
    path = Path(path)
    if root is not None and path.is_absolute() and path.is_relative_to(Path(root).resolve()):
        return str(path.relative_to(Path(root).resolve()))
    return str(path)


__all__ = ["Promotion", "canary_set", "challenger_score", "champion_score", "promote_challenger", "respect_rollback"]

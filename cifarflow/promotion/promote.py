"""The promote stage's logic: score the challenger, decide against the champion, write the decision
into the run's report, and, when it wins and its export passes the smoke test, register it as the
next version and move the `champion` alias to it."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from cifarflow.data.transform import load_split
from cifarflow.files import atomic_path
from cifarflow.promotion.champions import (
    baseline_id,
    read_champion,
    record_decision,
    version_record,
)
from cifarflow.promotion.decision import Decision, Score, decide, score_from_evaluation, test_set_id
from cifarflow.promotion.outcome import Promotion, record_outcome
from cifarflow.promotion.section import comparison_markdown, confusion_difference, write_section
from cifarflow.registry import store
from cifarflow.registry.build import Canary, StagedVersion, VersionRejected, stage_version
from cifarflow.registry.smoke import canary_indices


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


def canary_set(evaluation_dir: Path, features_dir: Path) -> Canary:
    """The smoke test's canary images and the probabilities evaluation gave them."""
    indices = canary_indices(load_split(features_dir, "test", "labels"))
    pixels = np.asarray(load_split(features_dir, "test", "pixels")[indices])
    probabilities = np.load(Path(evaluation_dir) / "probabilities.npy", mmap_mode="r")
    return Canary(pixels, np.asarray(probabilities[indices]))


def respect_rollback(decision: Decision, registry: Path) -> Decision:
    """A model a person rolled back from stays out: the nightly run must not undo a rollback."""
    demotion = store.demoted_by_hand(registry, decision.challenger_id) if decision.promoted else None
    if demotion is None:
        return decision
    name = demotion["from"]
    return replace(
        decision,
        promoted=False,
        reason="rolled-back",
        summary=f"kept champion: this model is {name}, which was rolled back by hand on {demotion['at']} "
        f"({demotion['reason']}); `python flows/registry.py promote {name}` makes it the champion again",
    )


def register(
    challenger: Score, decision: Decision, model_path: Path, registry: Path, canary: Canary, label_names, log
) -> tuple[Decision, StagedVersion | None]:
    """Export and smoke-test a promoted challenger into a staged version; a failure turns the decision
    into "kept" with the reason, and leaves no trace in the registry."""
    if not decision.promoted or store.find_model(registry, challenger.model_id):
        return decision, None  # kept, or registered already (a run killed before the alias moved)
    name = store.next_name(registry)
    data_dir = Path(registry).parent  # the layout's: <data dir>/registry
    record = version_record(challenger, decision, label_names, model_path, datetime.now(UTC), data_dir)
    try:
        staged = stage_version(
            store.new_staging(registry),
            name,
            model_path,
            record,
            challenger.metrics,
            challenger.predictions,
            challenger.labels,
            canary,
            log,
        )
    except VersionRejected as rejected:
        kept = "kept champion" if decision.champion_id else "kept no champion"
        summary = f"{kept}: the challenger won ({decision.summary}), but {rejected}"
        return replace(decision, promoted=False, reason="smoke-test-failed", summary=summary), None
    log(staged.smoke.summary)
    return decision, staged


def registry_paragraph(decision: Decision, staged: StagedVersion | None, registry: Path) -> str:
    if staged is not None:
        return f"\n**Registry:** registered as **{staged.name}** and made the champion; {staged.smoke.summary}.\n"
    if decision.promoted:
        return f"\n**Registry:** already registered as {store.find_model(registry, decision.challenger_id).name}.\n"
    champion = store.champion_name(registry)
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
):
    """Decide, register the winner (export + smoke test), write promotion.md/.json and the report
    section, then move the champion alias (only if nobody moved it meanwhile: see store.AliasMoved).
    RegistryDamaged, before anything is written, when the champion, the alias, or (for a promotion)
    what stands at `registry/champion` is damaged: the message names the file and what to do."""
    from cifarflow.evaluation import plots

    judged_against = store.champion_name(registry)
    champion = read_champion(registry)
    decision = respect_rollback(decide(challenger, champion, alpha=alpha, min_accuracy=min_accuracy), registry)
    if decision.promoted:
        store.check_link_place(registry)  # the alias could not be moved: stop before registering anything
    decision, staged = register(challenger, decision, model_path, registry, canary, label_names, log)
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
    section = comparison_markdown(decision, challenger, champion, diff_plot) + registry_paragraph(
        decision, staged, registry
    )
    with atomic_path(out / "promotion.md") as tmp:
        tmp.write_text(section)
    write_section(report.report_path, section)
    # the decision is written before the alias moves: a crash in between makes the next run see a
    # registry that disagrees with promotion.json, and decide again (reusing the registered version)
    baseline = baseline_id(registry, challenger.model_id)
    outcome = record_outcome(out / "promotion.json", key, baseline, decision, registry)
    if decision.promoted:
        version = store.find_model(registry, challenger.model_id)
        if staged is not None:
            version = store.commit_version(registry, staged.directory, staged.name)
        store.move_alias(registry, version.name, by="promotion", reason=decision.summary, expected_from=judged_against)
        log(f"champion is now {version.name} ({challenger.model_id[:12]}, {report.run_name})")
    record_decision(registry, decision, report.run_name)
    return outcome


__all__ = ["Promotion", "canary_set", "challenger_score", "promote_challenger"]

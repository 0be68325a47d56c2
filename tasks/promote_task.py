"""The `promote` Prefect task: champion/challenger after the report (the rules are in `tasks.promote`).

It runs after `report`, inside the flow's data-directory lock, and:

* scores the challenger (this run's model) from its evaluation's `probabilities.npy` against the
  test labels, and the champion from the registry;
* decides (McNemar's test on the same test images; see `tasks.promote.decide`);
* writes `promotion.md`, `promotion.json` and, when the two are comparable, `confusion_diff.png`
  into the run's report directory, and adds the champion-vs-challenger section to its report.md;
* installs the challenger as champion when promoted, and appends the decision to the registry's
  `decisions.jsonl`.

Its cache key is the challenger's model sha256, the champion it is judged against (the current
one, or the one it replaced when it is the champion already), the report directory, alpha and
the code: an identical rerun is `Cached`, a changed champion or model is not. Like the stages,
an on-disk check (`existing_promotion`) refuses a cache hit the registry no longer agrees with.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import CachePolicy

from tasks.cache import module_digest
from tasks.files import atomic_path, read_json, text_digest, write_json
from tasks.promote import (
    SECTION_BEGIN,
    baseline_id,
    champion_id,
    comparison_markdown,
    confusion_difference,
    decide,
    install_champion,
    read_champion,
    record_decision,
    score_from_evaluation,
    test_set_id,
    write_section,
)

PROMOTE_MODULES = ("tasks.promote", "tasks.promote_task", "tasks.plots")
UPSTREAM = ("ingest", "preprocess", "train", "evaluate", "report")


@dataclass(frozen=True)
class Promotion:
    directory: Path  # the registry
    decision_path: Path  # <report dir>/promotion.json
    promoted: bool
    summary: str
    champion_id: str  # the champion after the decision


def promote_key(config: Any, train: Any, report: Any, baseline: str) -> str:
    return text_digest(
        "promote",
        train.model_sha256,
        baseline,
        str(report.directory),
        config.promotion_alpha,
        {m: module_digest(m) for m in PROMOTE_MODULES},
    )[:32]


@dataclass
class PromoteCachePolicy(CachePolicy):
    """Prefect cache key: challenger model + the champion it is judged against + report dir + rule."""

    def compute_key(self, task_ctx, inputs: dict[str, Any], flow_parameters: dict[str, Any], **kwargs) -> str:
        return "promote-" + promote_key(inputs["config"], inputs["train"], inputs["report"], inputs["baseline"])


def existing_promotion(config: Any, train: Any, report: Any, baseline: str) -> Promotion | None:
    """The decision already written for this key, if the registry and the report still agree with it."""
    path = Path(report.directory) / "promotion.json"
    try:
        record = read_json(path)
        if record.get("key") != promote_key(config, train, report, baseline):
            return None
        decision = record["decision"]
        if decision["resulting_champion"] != champion_id(config.layout.registry):
            return None  # the registry was changed or wiped since: decide again
        if SECTION_BEGIN not in Path(report.report_path).read_text():
            return None
    except (OSError, ValueError, KeyError):
        return None
    return Promotion(
        config.layout.registry, path, decision["promoted"], decision["summary"], decision["resulting_champion"]
    )


@task(
    name="promote",
    task_run_name="promote-{config.model}",
    cache_policy=PromoteCachePolicy(),
    persist_result=True,
    retries=1,
    retry_delay_seconds=2,
    tags=["champion-challenger"],
)
def promote(
    config: Any,
    ingest: Any,
    preprocess: Any,
    train: Any,
    evaluate: Any,
    report: Any,
    baseline: str,
    force: bool = False,
) -> Promotion:
    """Champion/challenger: promote this run's model if it is significantly better (McNemar)."""
    from tasks import plots
    from tasks.preprocess import load_split

    logger = get_run_logger()
    if not force and (found := existing_promotion(config, train, report, baseline)):
        logger.info("decision already made: %s", found.summary)
        return found
    registry = config.layout.registry
    challenger = score_from_evaluation(
        evaluate.directory,
        load_split(preprocess.directory, "test", "labels"),
        model_id=train.model_sha256,
        run_name=report.run_name,
        model=config.model,
        dataset_sha256=ingest.dataset_sha256,
        test_set_sha256=test_set_id(preprocess.directory),
    )
    champion = read_champion(registry)
    decision = decide(challenger, champion, alpha=config.promotion_alpha)
    logger.info(decision.summary)

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
    key = promote_key(config, train, report, baseline)
    # the decision is written before the registry changes: a crash in between makes the next run
    # see a registry that disagrees with promotion.json, and decide again
    write_json(out / "promotion.json", {"key": key, "baseline": baseline, "decision": decision.to_json()})
    if decision.promoted:
        install_champion(registry, train.model_path, challenger, decision)
        logger.info("champion is now %s (%s)", challenger.model_id[:12], report.run_name)
    record_decision(registry, decision, report.run_name)
    return Promotion(registry, out / "promotion.json", decision.promoted, decision.summary, decision.resulting_champion)


def run_promote(config: Any, results: dict[str, Any]) -> Promotion:
    """Call `promote` from the flow: judge against the registry's current champion, reuse a
    still-valid decision (shown as Cached), decide afresh otherwise."""
    upstream = {name: results[name] for name in UPSTREAM}
    baseline = baseline_id(config.layout.registry, upstream["train"].model_sha256)
    refresh = existing_promotion(config, upstream["train"], upstream["report"], baseline) is None
    task_ = promote.with_options(refresh_cache=refresh, result_storage=config.layout.prefect_results)
    return task_(config=config, baseline=baseline, **upstream)

"""Stage 5, report: evaluation + training facts → `data/reports/<run-name>/` (report.md,
metrics.json, plots, model card) and the `latest` link. Prefect artifacts are published from
these files by the flow (see `cifarflow.orchestration.artifacts`)."""

from __future__ import annotations

import os
import platform
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cifarflow.files import atomic_directory, atomic_path, file_digest, point_symlink, read_json, write_json
from cifarflow.markdown import escape, join_wrapped
from cifarflow.outputs import StageOutput

if TYPE_CHECKING:  # the upstream stages' output types, for annotations only: their code is not the report's
    from cifarflow.config import PipelineConfig
    from cifarflow.data.ingest import IngestResult
    from cifarflow.data.transform import Features
    from cifarflow.training.run import TrainResult
    from cifarflow.validation.validate import ValidatedData

PLOTS = ("confusion_matrix.png", "training_curves.png", "sample_predictions.png")
RELIABILITY = "reliability.png"  # the calibrate stage's diagram
LIBRARIES = ("tensorflow-cpu", "tensorflow", "keras", "numpy", "pyarrow", "scikit-learn", "prefect")
SEED_PUBLISHED_ACCURACY = 0.615


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


@dataclass(frozen=True)
class Report(StageOutput):
    directory: Path
    report_path: Path
    metrics_path: Path
    run_name: str
    metrics_sha256: str

    @property
    def location(self) -> Path:
        return self.directory

    @property
    def fingerprint(self) -> str:
        return self.metrics_sha256


def run_name_for(model: str, epochs: int, key: str, now: datetime | None = None) -> str:
    """Time first so names sort by age; the key's head keeps reports written in the same second
    (parallel sweep trials) apart."""
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%SZ")
    return f"{stamp}-{model}-e{epochs}-{key[:8]}"


def build_metrics(
    evaluation: dict[str, Any], card: dict[str, Any], calibration: dict[str, Any], robustness: dict[str, Any]
) -> dict[str, Any]:
    """The stable metrics.json contract: evaluation results (`test_loss` is the NLL of the network's
    own probabilities), the calibrated probabilities' scores (`ece`, `nll`, `brier`: what the model
    returns, cross-fitted) with the temperature, the corruption table, and the run's identifying facts."""
    after = calibration["after"]
    return evaluation | {
        "temperature": calibration["temperature"],
        "ece": after["ece"],
        "nll": after["nll"],
        "brier": after["brier"],
        "calibration": calibration,
        "mean_corruption_accuracy": robustness["mean_corruption_accuracy"],
        "robustness": robustness,
        "model": card["model"],
        "epochs": card["epochs"],
        "batch_size": card["batch_size"],
        "train_seconds": card["train_seconds"],
        "source_sha256": card["source_sha256"],
        "dataset_version": card["dataset_version"],
        "train_images": card["train_images"],
        "params": card["params"],
        "run_name": card["run_name"],
    }


def per_class_rows(metrics: dict[str, Any]) -> list[dict[str, Any]]:
    report = metrics["classification_report"]
    return [
        {
            "class": name,
            "precision": round(report[name]["precision"], 4),
            "recall": round(report[name]["recall"], 4),
            "f1": round(report[name]["f1-score"], 4),
            "support": int(report[name]["support"]),
        }
        for name in metrics["class_names"]
    ]


def describe_normalization(fitted: dict[str, Any]) -> str:
    """'standardize: mean (0.491, 0.482, 0.447), std (…)', fitted on the training split."""
    if fitted["kind"] == "unit":
        return "unit: pixels / 255, in the model's first layer"
    mean, std = (", ".join(f"{v:.4f}" for v in fitted[k]) for k in ("mean", "std"))
    return f"{fitted['kind']}: (pixels / 255 − ({mean})) / ({std}), fitted on train, in the model's first layer"


def describe_lineage(lineage: dict[str, Any]) -> str:
    batches = lineage["batches"]
    added = "".join(f" + `{b['batch_id']}` ({b['images']:,})" for b in batches)
    return f"{lineage['train_images']:,}: ingested {lineage['base']['images']:,}{added}"


def describe_temperature(calibration: dict[str, Any]) -> str:
    """The model card's temperature row: the one in the exported model, and whether it is the fit."""
    if not calibration["unsupported"]:
        return f"{calibration['temperature']:.4f} (fitted; in the exported model)"
    return (
        f"{calibration['temperature']:.4f} (in the exported model: the network's own probabilities; the fitted "
        f"{calibration['fitted']['temperature']:.4f} is unsupported: {'; '.join(calibration['unsupported'])})"
    )


def describe_warm_start(warm: dict[str, Any] | None) -> str:
    if not warm or warm.get("requested") in (None, "none"):
        return "no (trained from scratch)"
    if warm.get("applied"):
        version = warm.get("champion_version")  # recorded since versions were named in the model card
        sha = f"`{warm['champion_id'][:12]}`"
        return f"from the champion {version} (model sha256 {sha})" if version else f"from the champion {sha}"
    return f"requested, trained from scratch: {escape(warm['reason'])}"


def corruption_table(summary: dict[str, Any]) -> str:
    """The report's corruption table: one row per corruption, one column per severity."""
    lines = [
        f"Accuracy on the first {summary['images']:,} test images (clean {summary['clean_accuracy']:.4f}); "
        f"mean over every corruption and severity **{summary['mean_corruption_accuracy']:.4f}**, "
        f"mean ECE {summary['mean_corruption_ece']:.4f} (clean {summary['clean_ece']:.4f}).",
        "",
        "| corruption | severity 1 | severity 2 | severity 3 | mean |",
        "|---|---|---|---|---|",
    ]
    for name, entry in summary["corruptions"].items():
        cells = " | ".join(f"{a:.3f} ({s})" for a, s in zip(entry["accuracy"], entry["severities"]))
        lines.append(f"| {name} | {cells} | {sum(entry['accuracy']) / len(entry['accuracy']):.3f} |")
    return "\n".join(lines) + "\n"


def temperature_verdict(calibration: dict[str, Any]) -> str:
    """What the exported model does with its probabilities, in the report's words: the fitted T, or,
    when calibration.json lists why the fit is `unsupported`, that it was not deployed and why."""
    images, errors = calibration["images"], calibration["errors"]
    if not calibration["unsupported"]:
        return (
            f"The exported model (what the service and batch prediction run) scales the network's probabilities by "
            f"a temperature **T = {calibration['temperature']:.3f}** (temperature scaling, Guo et al. 2017), "
            f"fitted by minimising NLL on the {images:,} test images ({errors:,} misclassified)."
        )
    why = "".join(f"\n- {reason}" for reason in calibration["unsupported"])
    return (
        f"**Temperature not deployed: the {images:,} test images ({errors:,} misclassified) cannot support "
        f"a fit.** Minimising NLL found T = {calibration['fitted']['temperature']:.3f}, but{why}\n\n"
        f"The exported model keeps **T = {calibration['temperature']:g}**: the network's own probabilities, "
        "uncalibrated. Calibrate on a test set with more errors (more images, or a model that is not right "
        "on all of them) to fit one."
    )


def calibration_section(calibration: dict[str, Any], plot_prefix: str = "") -> str:
    before, after = calibration["before"], calibration["after"]
    rows = "\n".join(
        f"| {label} | {before[key]:.4f} | {after[key]:.4f} |"
        for label, key in (
            (f"expected calibration error ({calibration['bins']} bins)", "ece"),
            ("negative log-likelihood (nats)", "nll"),
            ("Brier score", "brier"),
            ("mean confidence", "mean_confidence"),
            ("accuracy", "accuracy"),
        )
    )
    halves, fitted = calibration["halves"], calibration["fitted"]
    return f"""## Calibration

{temperature_verdict(calibration)}
"Before" scores the network's own probabilities; "after" is {calibration["after_is"]} (halves of
{halves["A"]:,} and {halves["B"]:,} images, by pixel hash; fitted T = {fitted["half_temperatures"]["A"]:.3f} and
{fitted["half_temperatures"]["B"]:.3f}).

| score | before | after |
|---|---|---|
{rows}

![reliability diagram]({plot_prefix}{RELIABILITY})
"""


def temperature_facts(calibration: dict[str, Any]) -> dict[str, Any]:
    """The model card's record of the temperature: the one exported, the one fitted, and why the fit is
    unsupported (empty: it is the one exported)."""
    return {
        "exported": calibration["temperature"],
        "fitted": calibration["fitted"]["temperature"],
        "unsupported": calibration["unsupported"],
    }


def served_as(calibration: dict[str, Any]) -> str:
    """How the served probabilities came to be, in a few words: calibrated, or the network's own."""
    if calibration.get("unsupported"):
        return "the network's own (the fitted temperature is not deployed: see Calibration)"
    return "calibrated"


def render_markdown(
    metrics: dict[str, Any], card: dict[str, Any], data_section: str = "", plot_prefix: str = ""
) -> str:
    rows = "\n".join(
        f"| {r['class']} | {r['precision']:.3f} | {r['recall']:.3f} | {r['f1']:.3f} | {r['support']} |"
        for r in per_class_rows(metrics)
    )
    versions = ", ".join(f"{k} {v}" for k, v in card["libraries"].items())
    delta = metrics["test_accuracy"] - SEED_PUBLISHED_ACCURACY
    report = metrics["classification_report"]
    markdown = f"""# CIFAR-10 run `{card["run_name"]}`

**Test accuracy {metrics["test_accuracy"]:.4f}** (loss {metrics["test_loss"]:.4f}) with model `{card["model"]}`;
the classic notebook's published seed is {SEED_PUBLISHED_ACCURACY:.3f} ({delta:+.3f}).
Test-time augmentation: {metrics.get("tta", "none")}. The loss is the network's own; its probabilities as
served are {served_as(metrics["calibration"])} (T = {metrics["temperature"]:.3f}): ECE {metrics["ece"]:.4f},
NLL {metrics["nll"]:.4f}, Brier {metrics["brier"]:.4f}.
Mean accuracy under corruption {metrics["mean_corruption_accuracy"]:.4f}.

## Per-class metrics (test set)

| class | precision | recall | F1 | support |
|---|---|---|---|---|
{rows}

Macro F1 {report["macro avg"]["f1-score"]:.4f}; weighted F1 {report["weighted avg"]["f1-score"]:.4f}.

{calibration_section(metrics["calibration"], plot_prefix)}
## Robustness to corrupted images

{corruption_table(metrics["robustness"])}
{data_section}
## Plots

![confusion matrix]({plot_prefix}confusion_matrix.png)
![training curves]({plot_prefix}training_curves.png)
![sample predictions]({plot_prefix}sample_predictions.png)

## Model card

| fact | value |
|---|---|
| model | `{card["model"]}` ({card["params"]:,} parameters) |
| epochs / batch size / learning rate | {card["epochs"]} / {card["batch_size"]} / {card["learning_rate"]} |
| seed | {card["seed"]} |
| normalization | {describe_normalization(card["normalization"])} |
| temperature | {describe_temperature(metrics["calibration"])} |
| training time | {card["train_seconds"]:.1f} s |
| dataset version | `{card["dataset_version"]}` |
| training images | {describe_lineage(card["lineage"])} |
| warm start | {describe_warm_start(card.get("warm_start"))} |
| data source | {escape(card["source"])} |
| source sha256 | `{card["source_sha256"]}` |
| dataset sha256 (shards) | `{card["dataset_sha256"]}` |
| model sha256 | `{card["model_sha256"]}` |
| created | {card["created"]} |
| libraries | {versions} |
"""
    return join_wrapped(markdown)


def write_report(
    evaluation_dir: Path,
    calibration_dir: Path,
    robustness_dir: Path,
    card: dict[str, Any],
    reports_dir: Path,
    data_section: str = "",
) -> Report:
    """Assemble the run's report directory atomically and point `latest` at it."""
    evaluation = read_json(evaluation_dir / "metrics.json")
    calibration = read_json(calibration_dir / "calibration.json")
    metrics = build_metrics(evaluation, card, calibration, read_json(robustness_dir / "robustness.json"))
    target = reports_dir / card["run_name"]
    with atomic_directory(target) as staging:
        for plot in PLOTS:
            shutil.copy2(evaluation_dir / plot, staging / plot)
        shutil.copy2(calibration_dir / RELIABILITY, staging / RELIABILITY)
        write_json(staging / "metrics.json", metrics)
        write_json(staging / "model_card.json", card | {"temperature": temperature_facts(calibration)})
        with atomic_path(staging / "report.md") as tmp:
            tmp.write_text(render_markdown(metrics, card, data_section))
    point_latest(reports_dir / "latest", target)
    return report_in(target, card["run_name"])


def point_latest(latest: Path, target: Path) -> None:
    """Make `latest` a relative link to `target`. A backup that does not keep links (`cp -rL`, zip,
    an object-store sync) leaves a copy of a report folder (or a small file) in its place: that copy
    is removed first, and nothing else in the folder names an absolute path."""
    if latest.is_dir() and not latest.is_symlink():
        aside = latest.with_name(f".{latest.name}.{os.getpid()}.discard")
        shutil.rmtree(aside, ignore_errors=True)
        os.replace(latest, aside)
        shutil.rmtree(aside, ignore_errors=True)
    point_symlink(latest, target)


def report_in(directory: Path, run_name: str) -> Report:
    metrics = directory / "metrics.json"
    return Report(directory, directory / "report.md", metrics, run_name, file_digest(metrics))


def find_report(reports_dir: Path, cache_key: str) -> Report | None:
    """The report written for this cache key, if it is still whole."""
    for card_path in sorted(reports_dir.glob(f"*-{cache_key[:8]}/model_card.json"), reverse=True):
        try:
            card = read_json(card_path)
        except (OSError, ValueError):
            continue
        directory = card_path.parent
        if card.get("cache_key") == cache_key and (directory / "report.md").is_file():
            try:
                return report_in(directory, card["run_name"])
            except OSError:
                continue
    return None


def model_card(
    *,
    run_name: str,
    config: PipelineConfig,
    train: TrainResult,
    ingest: IngestResult,
    dataset: ValidatedData,
    features: Features,
) -> dict[str, Any]:
    lineage = read_json(dataset.dataset_path)["lineage"]
    return {
        "run_name": run_name,
        "model": config.model,
        "params": train.params,
        "epochs": train.epochs,
        "batch_size": config.train_batch_size,
        "learning_rate": config.train_learning_rate,
        "seed": config.seed,
        "normalization": features.normalization.to_json(),
        "train_seconds": round(train.train_seconds, 2),
        "source": config.source,
        "source_sha256": ingest.source_sha256,
        "dataset_sha256": ingest.dataset_sha256,
        "dataset_version": dataset.dataset_version,
        "train_images": lineage["train_images"],
        "lineage": lineage,
        "data_warnings": list(dataset.warnings),
        "warm_start": train.warm_start,
        "model_sha256": train.model_sha256,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "libraries": library_versions(),
    }

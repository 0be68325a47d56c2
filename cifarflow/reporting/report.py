"""Stage 5, report: `data/reports/<run-name>/` (report.md, metrics.json, plots, model card) and `latest`."""

from __future__ import annotations

import os
import platform
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from importlib import metadata
from operator import attrgetter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cifarflow.data.archive import is_cifar10
from cifarflow.data.ingest import dataset_name
from cifarflow.data.shards import describe_split
from cifarflow.files import atomic_directory, atomic_path, file_digest, point_symlink, read_json, write_json
from cifarflow.markdown import escape, join_wrapped
from cifarflow.outputs import StageOutput, read_whole

if TYPE_CHECKING:  # the upstream stages' output types, for annotations only: their code is not the report's
    from cifarflow.config import PipelineConfig
    from cifarflow.data.ingest import IngestResult
    from cifarflow.data.transform import Features
    from cifarflow.training.run import TrainResult
    from cifarflow.validation.validate import ValidatedData

PLOTS = ("confusion_matrix.png", "training_curves.png", "sample_predictions.png")
RELIABILITY = "reliability.png"  # the calibrate stage's diagram
LIBRARIES = ("tensorflow-cpu", "tensorflow", "keras", "numpy", "pyarrow", "scikit-learn", "prefect")
CLASSIC_PUBLISHED_ACCURACY = 0.615  # the classic notebook's own test accuracy (on the CIFAR-10 archive)


def library_versions() -> dict[str, str]:
    installed = {dist.metadata["Name"].lower().replace("_", "-"): dist.version for dist in metadata.distributions()}
    return {"python": platform.python_version()} | {name: installed[name] for name in LIBRARIES if name in installed}


@dataclass(frozen=True)
class Report(StageOutput):
    directory: Path
    report_path: Path
    metrics_path: Path
    run_name: str
    metrics_sha256: str

    location = property(attrgetter("directory"))
    fingerprint = property(attrgetter("metrics_sha256"))


def run_name_for(model: str, epochs: int, key: str, now: datetime | None = None) -> str:
    """Time first so names sort by age; the key's head keeps parallel sweep trials apart."""
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%SZ")
    return f"{stamp}-{model}-e{epochs}-{key[:8]}"


# model_card.json's fields (docs/reference/metrics.md shows them; `write_report` refuses a card with others)
MODEL_CARD_FIELDS = {
    "run_name": "`<time>-<model>-e<epochs>-<key head>`: the report folder's name",
    "model": "the model preset",
    "params": "the network's parameter count",
    "epochs": "epochs trained",
    "batch_size": "batch size",
    "learning_rate": "learning rate",
    "seed": "random seed for weights and shuffling",
    "normalization": "the fitted transform inside the model: `kind`, per-channel `mean` and `std`",
    "train_seconds": "training time in seconds",
    "source": "the data source: a folder, an archive's path or a URL",
    "dataset_name": "`CIFAR-10` for the official archive, else the folder's or archive's name",
    "label_names": "the class names, in label order",
    "image_size": "the images' side in pixels",
    "dataset": "the data set's source (kind, uri, sha256) and how its test split was made",
    "source_sha256": "sha256 of the source archive, or of a folder's files",
    "dataset_sha256": "sha256 over the classes, the image size and the ingested shards' digests",
    "dataset_version": "the training data's version: the shards and the added batches",
    "train_images": "training images: ingested + added",
    "lineage": "where the training images came from: the ingested base and each batch (id, images, sha256)",
    "data_warnings": "the validate stage's warnings about the training data",
    "warm_start": "the warm start requested: the champion it started from, applied or why not (null: none requested)",
    "model_sha256": "sha256 of the trained model file (the registry's model id)",
    "created": "when the report was written (ISO 8601, UTC)",
    "libraries": "Python's version and the libraries' that the outputs depend on",
    "cache_key": "the report stage's key: how a rerun finds this report",
    "temperature": "`exported` (in the model), `fitted`, and why a fitted one is `unsupported` (empty: it is not)",
    "test_set_decisions": "promotion decisions this test set has served, this one included (written by promote)",
}
# the model card's facts that metrics.json repeats
CARD_FACTS = ("model", "epochs", "batch_size", "train_seconds", "source_sha256", "dataset_version", "train_images")
CARD_FACTS += ("params", "run_name")
# metrics.json's fields, the contract users read (docs/reference/metrics.md; `write_report` refuses others)
METRICS_FIELDS = {
    "test_accuracy": "accuracy on the test split, 0..1",
    "test_loss": "cross-entropy of the network's own, uncalibrated probabilities (nats)",
    "classification_report": "per-class precision, recall, F1 and support: scikit-learn's `output_dict=True` form",
    "confusion_matrix": "counts, K×K for K classes: rows the true class, columns the predicted one",
    "class_names": "the class names, in label order",
    "tta": "the preset's test-time augmentation (`none`: none)",
    "temperature": "the temperature in the exported model (1: the network's own probabilities)",
    "ece": "expected calibration error of the calibrated probabilities (cross-fitted)",
    "nll": "negative log-likelihood of the calibrated probabilities (cross-fitted)",
    "brier": "Brier score of the calibrated probabilities (cross-fitted)",
    "calibration": "the calibrate stage's figures: scores before and after, the halves, the fitted temperature",
    "mean_corruption_accuracy": "mean accuracy over every corruption and severity",
    "robustness": "the robustness stage's table: accuracy and ECE per corruption and severity",
} | {name: MODEL_CARD_FIELDS[name] for name in CARD_FACTS}


def check_fields(record: dict[str, Any], declared: dict[str, str], name: str, added_later: tuple[str, ...] = ()):
    """A programming error (RuntimeError) when `record`, written as `name`, has other fields than `declared` has
    (but `added_later`): the declaration is what the docs show."""
    if record.keys() != declared.keys() - set(added_later):
        wrong = sorted(record.keys() ^ (declared.keys() - set(added_later)))
        raise RuntimeError(f"{name}'s fields {wrong} differ from its declaration in cifarflow/reporting/report.py")


def build_metrics(
    evaluation: dict[str, Any], card: dict[str, Any], calibration: dict[str, Any], robustness: dict[str, Any]
) -> dict[str, Any]:
    """metrics.json, the contract `METRICS_FIELDS` declares."""
    scores = {name: calibration["after"][name] for name in ("ece", "nll", "brier")}
    facts = {"temperature": calibration["temperature"], **scores, "calibration": calibration}
    facts |= {"mean_corruption_accuracy": robustness["mean_corruption_accuracy"], "robustness": robustness}
    return evaluation | facts | {name: card[name] for name in CARD_FACTS}


def per_class_rows(metrics: dict[str, Any]) -> list[dict[str, Any]]:
    report = metrics["classification_report"]
    columns = {"precision": "precision", "recall": "recall", "f1": "f1-score"}
    return [
        {"class": name}
        | {k: round(report[name][v], 4) for k, v in columns.items()}
        | {"support": int(report[name]["support"])}
        for name in metrics["class_names"]
    ]


def describe_normalization(fitted: dict[str, Any]) -> str:
    if fitted["kind"] == "unit":
        return "unit: pixels / 255, in the model's first layer"
    mean, std = (", ".join(f"{v:.4f}" for v in fitted[k]) for k in ("mean", "std"))
    return f"{fitted['kind']}: (pixels / 255 − ({mean})) / ({std}), fitted on train, in the model's first layer"


def describe_dataset(card: dict[str, Any], named: bool = True) -> str:
    """'fruit: 3 classes (quince, apricot, medlar) at 64×64 px' (`named`: with the class names)."""
    side, names = card["image_size"], card["label_names"]
    listed = f" ({escape(', '.join(names))})" if named else ""
    return f"{escape(card['dataset_name'])}: {len(names)} classes{listed} at {side}×{side} px"


def describe_lineage(lineage: dict[str, Any]) -> str:
    added = "".join(f" + `{b['batch_id']}` ({b['images']:,})" for b in lineage["batches"])
    return f"{lineage['train_images']:,}: ingested {lineage['base']['images']:,}{added}"


def describe_temperature(calibration: dict[str, Any]) -> str:
    if not calibration["unsupported"]:
        return f"{calibration['temperature']:.4f} (fitted; in the exported model)"
    return (
        f"{calibration['temperature']:.4f} (in the exported model: the network's own probabilities; the fitted "
        f"{calibration['fitted']['temperature']:.4f} is unsupported: {'; '.join(calibration['unsupported'])})"
    )


def describe_warm_start(warm: dict[str, Any] | None) -> str:
    if not warm:
        return "no (trained from scratch)"
    if warm["applied"]:
        return f"from the champion {warm['champion_version']} (model sha256 `{warm['champion_id'][:12]}`)"
    return f"requested, trained from scratch: {escape(warm['reason'])}"


def corruption_table(summary: dict[str, Any]) -> str:
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


def calibration_section(calibration: dict[str, Any], diagram: bool = True) -> str:
    """The Calibration section (`diagram`: with the reliability diagram, which the report directory holds)."""
    images, errors = calibration["images"], calibration["errors"]
    verdict = (
        f"The exported model (what the service and batch prediction run) scales the network's probabilities by "
        f"a temperature **T = {calibration['temperature']:.3f}** (temperature scaling, Guo et al. 2017), "
        f"fitted by minimising NLL on the {images:,} test images ({errors:,} misclassified)."
    )
    if calibration["unsupported"]:
        why = "".join(f"\n- {reason}" for reason in calibration["unsupported"])
        verdict = (
            f"**Temperature not deployed: the {images:,} test images ({errors:,} misclassified) cannot support "
            f"a fit.** Minimising NLL found T = {calibration['fitted']['temperature']:.3f}, but{why}\n\n"
            f"The exported model keeps **T = {calibration['temperature']:g}**: the network's own probabilities, "
            "uncalibrated. Calibrate on a test set with more errors (more images, or a model that is not right "
            "on all of them) to fit one."
        )
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
    picture = f"\n![reliability diagram]({RELIABILITY})\n" if diagram else ""
    return f"""## Calibration

{verdict}
"Before" scores the network's own probabilities; "after" is {calibration["after_is"]} (halves of
{halves["A"]:,} and {halves["B"]:,} images, by pixel hash; fitted T = {fitted["half_temperatures"]["A"]:.3f} and
{fitted["half_temperatures"]["B"]:.3f}).

| score | before | after |
|---|---|---|
{rows}
{picture}"""


def temperature_facts(calibration: dict[str, Any]) -> dict[str, Any]:
    """model_card.json's temperature; `unsupported` empty: the fitted one is the exported one."""
    fitted, unsupported = calibration["fitted"]["temperature"], calibration["unsupported"]
    return {"exported": calibration["temperature"], "fitted": fitted, "unsupported": unsupported}


def render_markdown(metrics: dict[str, Any], card: dict[str, Any], data_section: str = "") -> str:
    """report.md: `metrics` as in metrics.json, `card` as in model_card.json, `data_section` (validation.md)."""
    rows = "\n".join(
        f"| {r['class']} | {r['precision']:.3f} | {r['recall']:.3f} | {r['f1']:.3f} | {r['support']} |"
        for r in per_class_rows(metrics)
    )
    versions = ", ".join(f"{k} {v}" for k, v in card["libraries"].items())
    delta = metrics["test_accuracy"] - CLASSIC_PUBLISHED_ACCURACY
    served = "the network's own (the fitted temperature is not deployed: see Calibration)"
    if not metrics["calibration"]["unsupported"]:
        served = "calibrated"
    report = metrics["classification_report"]
    published = f"the classic notebook's published accuracy is {CLASSIC_PUBLISHED_ACCURACY:.3f} ({delta:+.3f})"
    if not is_cifar10(card["label_names"], card["image_size"]):
        published = f"data set {describe_dataset(card, named=False)}"
    markdown = f"""# {escape(card["dataset_name"])} run `{card["run_name"]}`

**Test accuracy {metrics["test_accuracy"]:.4f}** (loss {metrics["test_loss"]:.4f}) with model `{card["model"]}`;
{published}.
Test-time augmentation: {metrics.get("tta", "none")}. The loss is the network's own; its probabilities as
served are {served} (T = {metrics["temperature"]:.3f}): ECE {metrics["ece"]:.4f},
NLL {metrics["nll"]:.4f}, Brier {metrics["brier"]:.4f}.
Mean accuracy under corruption {metrics["mean_corruption_accuracy"]:.4f}.

## Per-class metrics (test set)

| class | precision | recall | F1 | support |
|---|---|---|---|---|
{rows}

Macro F1 {report["macro avg"]["f1-score"]:.4f}; weighted F1 {report["weighted avg"]["f1-score"]:.4f}.

{calibration_section(metrics["calibration"])}
## Robustness to corrupted images

{corruption_table(metrics["robustness"])}
{data_section}
## Plots

![confusion matrix](confusion_matrix.png)
![training curves](training_curves.png)
![sample predictions](sample_predictions.png)

## Model card

| fact | value |
|---|---|
| model | `{card["model"]}` ({card["params"]:,} parameters) |
| epochs / batch size / learning rate | {card["epochs"]} / {card["batch_size"]} / {card["learning_rate"]} |
| seed | {card["seed"]} |
| normalization | {describe_normalization(card["normalization"])} |
| temperature | {describe_temperature(metrics["calibration"])} |
| training time | {card["train_seconds"]:.1f} s |
| data set | {describe_dataset(card)} |
| test split | {describe_split(card["dataset"]["split"])} |
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
    """Write the run's report directory whole (README.md: its standard model card) and point `latest` at it."""
    from cifarflow.reporting.model_card import render_model_card  # which reuses this module's descriptions

    evaluation = read_json(evaluation_dir / "metrics.json")
    calibration = read_json(calibration_dir / "calibration.json")
    metrics = build_metrics(evaluation, card, calibration, read_json(robustness_dir / "robustness.json"))
    card_file = card | {"temperature": temperature_facts(calibration)}
    check_fields(metrics, METRICS_FIELDS, "metrics.json")
    check_fields(card_file, MODEL_CARD_FIELDS, "model_card.json", added_later=("test_set_decisions",))
    target = reports_dir / card["run_name"]
    with atomic_directory(target) as staging:
        for plot in PLOTS:
            shutil.copy2(evaluation_dir / plot, staging / plot)
        shutil.copy2(calibration_dir / RELIABILITY, staging / RELIABILITY)
        write_json(staging / "metrics.json", metrics)
        write_json(staging / "model_card.json", card_file)
        with atomic_path(staging / "report.md") as tmp:
            tmp.write_text(render_markdown(metrics, card, data_section))
        (staging / "README.md").write_text(render_model_card(card, metrics))
    point_latest(reports_dir / "latest", target)
    return report_in(target, card["run_name"])


def point_latest(latest: Path, target: Path) -> None:
    """`latest` → `target`, relative, replacing the folder a backup that does not keep links left."""
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
    """The newest report written for this cache key that is still whole, or None."""

    def read(directory: Path) -> Report | None:
        card = read_json(directory / "model_card.json")
        if card.get("cache_key") != cache_key or not (directory / "report.md").is_file():
            return None
        return report_in(directory, card["run_name"])

    cards = sorted(reports_dir.glob(f"*-{cache_key[:8]}/model_card.json"), reverse=True)
    return next(filter(None, (read_whole(partial(read, card.parent)) for card in cards)), None)


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
        "dataset_name": dataset_name(features.dataset["source"]),
        "label_names": list(features.label_names),
        "image_size": features.image_size,
        "dataset": features.dataset,
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

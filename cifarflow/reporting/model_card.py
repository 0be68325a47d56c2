"""The standard model card: Hugging Face's README.md form (YAML metadata, then the sections of Mitchell et al. 2019),
rendered from a run's model_card.json and metrics.json for its report directory and its registry version."""

from __future__ import annotations

from typing import Any

import numpy as np
import yaml

from cifarflow.data.ingest import model_name
from cifarflow.data.shards import describe_split
from cifarflow.markdown import escape, join_wrapped, table
from cifarflow.reporting.report import (
    calibration_section,
    corruption_table,
    describe_dataset,
    describe_lineage,
    describe_normalization,
    describe_temperature,
    describe_warm_start,
    per_class_rows,
)

CONFIDENCE = 0.95  # of every interval on the card


def wilson_interval(successes: int, trials: int) -> tuple[float, float] | None:
    """Wilson's 95% interval for the proportion successes / trials (scipy's binomtest); None when trials is 0."""
    from scipy.stats import binomtest

    if trials == 0:
        return None
    interval = binomtest(int(successes), int(trials)).proportion_ci(CONFIDENCE, method="wilson")
    return float(interval.low), float(interval.high)


def describe_interval(successes: int, trials: int) -> str:
    interval = wilson_interval(successes, trials)
    return "–" if interval is None else f"{interval[0]:.3f}–{interval[1]:.3f}"


def front_matter(card: dict[str, Any], metrics: dict[str, Any], name: str) -> str:
    """The card's YAML metadata: Hugging Face's fields, the test accuracy in `model-index`."""
    task = {"type": "image-classification", "name": "Image classification"}
    dataset = {"type": name, "name": card["dataset_name"], "split": "test", "revision": card["dataset_version"]}
    accuracy = {"type": "accuracy", "value": metrics["test_accuracy"], "name": "Test accuracy"}
    data = {
        "library_name": "keras",
        "pipeline_tag": "image-classification",
        "tags": ["image-classification", "keras", "onnx", "cifarflow", card["model"]],
        "metrics": ["accuracy"],
        "model-index": [{"name": name, "results": [{"task": task, "dataset": dataset, "metrics": [accuracy]}]}],
    }
    return f"---\n{yaml.safe_dump(data, sort_keys=False, allow_unicode=True)}---\n"


def limitations(card: dict[str, Any], metrics: dict[str, Any]) -> list[str]:
    """What the numbers say the model does badly: test set size, the worst corruptions, the weakest classes."""
    confusion = np.asarray(metrics["confusion_matrix"])
    total, names = int(confusion.sum()), metrics["class_names"]
    low, high = wilson_interval(int(np.trace(confusion)), total)
    items = [
        f"Measured on {total:,} test images: the test accuracy is known to ±{(high - low) / 2:.3f} "
        f"({CONFIDENCE:.0%}); models closer than that cannot be told apart on them."
    ]
    robustness = metrics["robustness"]
    clean = robustness["clean_accuracy"]
    for corruption, entry in sorted(robustness["corruptions"].items(), key=lambda item: min(item[1]["accuracy"]))[:2]:
        accuracy, severity = min(zip(entry["accuracy"], entry["severities"]))
        items.append(
            f"Under {corruption} ({severity}) accuracy falls to {accuracy:.3f}, "
            f"{accuracy - clean:+.3f} from {clean:.3f} on the same {robustness['images']:,} clean test images."
        )
    support = confusion.sum(axis=1)
    recall = np.divide(np.diag(confusion), support, out=np.ones(len(names)), where=support > 0)
    for index in np.argsort(recall, kind="stable")[:2]:
        mistaken = np.where(np.arange(len(names)) == index, -1, confusion[index])
        items.append(
            f"Weak class {escape(names[index])}: recall {recall[index]:.3f} ({confusion[index, index]:,} of "
            f"{support[index]:,}), most often taken for {escape(names[mistaken.argmax()])} ({mistaken.max():,})."
        )
    if metrics["calibration"]["unsupported"]:
        items.append("Its probabilities are the network's own, uncalibrated (see Calibration).")
    if decisions := card.get("test_set_decisions"):
        items.append(
            f"These test images have served {decisions} promotion decision(s): a champion chosen on them scores "
            "a little higher on them than on new images (`benchmarks/test_reuse.md` measures how much)."
        )
    return items + [f"Training data check: {escape(warning)}" for warning in card["data_warnings"]]


def metrics_section(metrics: dict[str, Any]) -> str:
    """Test accuracy and per-class recall with Wilson intervals, counted from the confusion matrix."""
    confusion = np.asarray(metrics["confusion_matrix"])
    report, total = metrics["classification_report"], int(confusion.sum())
    rows = [
        (escape(row["class"]), f"{row['precision']:.3f}", f"{row['recall']:.3f}")
        + (describe_interval(confusion[i, i], confusion[i].sum()), f"{row['f1']:.3f}", row["support"])
        for i, row in enumerate(per_class_rows(metrics))
    ]
    return "\n".join(
        [
            f"Test accuracy **{metrics['test_accuracy']:.4f}** ({CONFIDENCE:.0%} interval "
            f"{describe_interval(np.trace(confusion), total)}, {total:,} images; loss {metrics['test_loss']:.4f}; "
            f"macro F1 {report['macro avg']['f1-score']:.4f}). The intervals are Wilson score intervals for a "
            "proportion, computed here from metrics.json's confusion matrix (they are not in metrics.json).",
            "",
            *table(("class", "precision", "recall", f"recall {CONFIDENCE:.0%} interval", "F1", "support"), *rows),
        ]
    )


def details_section(card: dict[str, Any], metrics: dict[str, Any], name: str, version: str | None) -> str:
    side, names = card["image_size"], card["label_names"]
    registered = f"registry version **{version}**" if version else "not registered (a promoted run's model is)"
    libraries = ", ".join(f"{library} {number}" for library, number in card["libraries"].items())
    return f"""## Model details

- **Name** `{name}` (the Open Inference Protocol's model name), {registered}; model sha256 `{card["model_sha256"]}`.
- **Model** `{card["model"]}` ({card["params"]:,} parameters), trained {card["epochs"]} epochs (batch size
  {card["batch_size"]}, learning rate {card["learning_rate"]}, seed {card["seed"]}) in {card["train_seconds"]:.1f} s
  by the cifarflow run `{card["run_name"]}` on {card["created"]}; warm start:
  {describe_warm_start(card.get("warm_start"))}.
- **Input** RGB pixels, uint8 `[N, {side}, {side}, 3]`; **output** float32 probabilities `[N, {len(names)}]`, columns
  in this order: {escape(", ".join(names))}.
- **Inside the model**: normalization {describe_normalization(card["normalization"])}; temperature
  {describe_temperature(metrics["calibration"])}; test-time augmentation {metrics.get("tta", "none")}.
- **Libraries** {libraries}.
"""


def uses_sections(card: dict[str, Any], metrics: dict[str, Any]) -> str:
    side, classes = card["image_size"], len(card["label_names"])
    return f"""## Intended use

Sorting photos into the {classes} classes it was trained on ({escape(", ".join(card["label_names"]))}): RGB photos
like its training data ({escape(card["dataset_name"])}), at {side}×{side} px. The service's `/predict` and batch
prediction bring a photo of another size to {side}×{side} (its centre square, Lanczos); the v2 protocol, ONNX and the
SavedModel take {side}×{side} pixels only.

## Out-of-scope uses

- Photos of none of these classes: the model has no "none of these" answer; its probabilities always sum to 1 over
  the {classes} classes.
- Photos unlike its training data (other cameras, noise, blur, other light): accuracy falls, see Robustness.
- Decisions where an error costs more than its measured error rate ({1 - metrics["test_accuracy"]:.1%} of the test
  images) allows, without a person checking.
"""


def data_sections(card: dict[str, Any], metrics: dict[str, Any]) -> str:
    tested = int(np.asarray(metrics["confusion_matrix"]).sum())
    return f"""## Training data

- **Data set** {describe_dataset(card)}, from {escape(card["source"])} (sha256 `{card["source_sha256"]}`).
- **Dataset version** `{card["dataset_version"]}` (shards sha256 `{card["dataset_sha256"]}`); training images
  {describe_lineage(card["lineage"])}.

## Evaluation data

{tested:,} test images of the same data set and version, {describe_split(card["dataset"]["split"])}. The temperature
was fitted on them too (cross-fitted halves, see Calibration); robustness is measured on the first
{metrics["robustness"]["images"]:,} of them.
"""


def how_to_use(card: dict[str, Any], name: str, version: str | None) -> str:
    side, folder = card["image_size"], f"registry/versions/{version or '<version>'}"
    request = {"inputs": [{"name": "pixels", "datatype": "UINT8", "shape": [1, side, side, 3], "data": "PIXELS"}]}
    body = repr(request).replace("'PIXELS'", f"[0] * {side * side * 3}")
    return f"""## How to use

`pixels` below: your photos as uint8 `[N, {side}, {side}, 3]`, RGB. **Open Inference Protocol v2** (KServe v2 REST,
as Triton speaks it) on the service (`make serve`), which serves the champion as `{name}`:

```bash
curl http://127.0.0.1:8000/v2/models/{name}
python -c "import json; print(json.dumps({body}))" > request.json
curl -H 'Content-Type: application/json' -d @request.json http://127.0.0.1:8000/v2/models/{name}/infer
```

```python
import tritonclient.http as httpclient

client = httpclient.InferenceServerClient("127.0.0.1:8000")
tensor = httpclient.InferInput("pixels", list(pixels.shape), "UINT8")
tensor.set_data_from_numpy(pixels)
probabilities = client.infer("{name}", [tensor]).as_numpy("probabilities")
```

**ONNX** (`{folder}/model.onnx` in the data dir; onnxruntime alone, no TensorFlow):

```python
import onnxruntime

session = onnxruntime.InferenceSession("{folder}/model.onnx")
probabilities = session.run(["probabilities"], {{"pixels": pixels}})[0]
```

**SavedModel** (`{folder}/export/`, its `serve` endpoint):

```python
import tensorflow as tf

probabilities = tf.saved_model.load("{folder}/export").serve(pixels)["probabilities"].numpy()
```
"""


def render_model_card(card: dict[str, Any], metrics: dict[str, Any], version: str | None = None) -> str:
    """README.md, Hugging Face's model-card form: `card` as in model_card.json, `metrics` as in metrics.json, `version`
    the registry version it describes (None: not registered). KeyError when either lacks a fact the card states."""
    name = model_name(card["dataset"].get("source"))
    items = "\n".join(f"- {item}" for item in limitations(card, metrics))
    title = f"`{name}`: a `{card['model']}` classifier of {escape(card['dataset_name'])}, {version or 'not registered'}"
    body = f"""# {title}

{details_section(card, metrics, name, version)}
{uses_sections(card, metrics)}
{data_sections(card, metrics)}
## Metrics

{metrics_section(metrics)}

{calibration_section(metrics["calibration"], diagram=False)}
## Robustness

{corruption_table(metrics["robustness"])}
## Limitations

{items}

{how_to_use(card, name, version)}"""
    return front_matter(card, metrics, name) + "\n" + join_wrapped(body)

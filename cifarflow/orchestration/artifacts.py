"""Prefect UI artifacts of every flow, under stable keys: the UI's history of a key is the trend across runs."""

from __future__ import annotations

import base64
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact

from cifarflow.files import read_json
from cifarflow.markdown import escape
from cifarflow.paths import printable
from cifarflow.reporting.report import Report, per_class_rows

if TYPE_CHECKING:  # the monitor's imports (scipy.stats) would slow every pipeline run's start
    from cifarflow.monitoring.monitor import MonitorSummary

EMBED_MAX_BYTES = 400_000  # per image; larger plots are linked (file://) instead of embedded


def publish_table(table: list[dict[str, Any]], key: str, description: str | None = None) -> None:
    """A table artifact, its text cells and description escaped: the Prefect UI renders both as Markdown."""
    rows = [{name: escape(value) if isinstance(value, str) else value for name, value in row.items()} for row in table]
    create_table_artifact(table=rows, key=key, description=description and escape(description))


def embed_images(markdown: str, directory: Path, max_bytes: int = EMBED_MAX_BYTES) -> str:
    """`markdown` with its PNG links inlined as data: URIs (the UI cannot read the worker's disk), or over `max_bytes`
    as file:// links."""

    def inline(match: re.Match) -> str:
        path = directory / match.group(1)
        if path.is_file() and path.stat().st_size <= max_bytes:
            return f"](data:image/png;base64,{base64.b64encode(path.read_bytes()).decode()})"
        return f"](file://{printable(path)})"

    return re.sub(r"\]\(([\w.-]+\.png)\)", inline, markdown)


def publish_report(report: Report, model: str) -> None:
    metrics = read_json(report.metrics_path)
    create_markdown_artifact(
        markdown=embed_images(report.report_path.read_text(), report.directory),
        key=f"cifar10-report-{model}",
        description=f"Run {report.run_name}: test accuracy {metrics['test_accuracy']:.4f}",
    )
    publish_table(
        per_class_rows(metrics), f"cifar10-per-class-{model}", f"Per-class precision / recall / F1 of {report.run_name}"
    )
    create_link_artifact(
        link=f"file://{report.directory}",
        link_text=str(report.directory),
        key=f"cifar10-report-dir-{model}",
        description="Report directory on disk",
    )
    promotion = report.directory / "promotion.json"
    if promotion.is_file():  # written by the promote task (tasks/promote.py)
        record = read_json(promotion)
        create_markdown_artifact(
            markdown=promotion_markdown(record),
            key=f"cifar10-promotion-{model}",
            description=escape(record["decision"]["summary"][:500]),
        )


def promotion_markdown(record: dict[str, Any]) -> str:
    """The promotion artifact from promotion.json: the decision, and the champion's version and model sha256."""
    decision = record["decision"]
    sha = decision["resulting_champion"]
    version = record["champion_version"]  # None: no champion
    champion = f"**{version}** (model sha256 `{sha[:12]}`)" if version else f"`{sha[:12]}`"
    return (
        f"# Champion/challenger: {'promoted' if decision['promoted'] else 'kept champion'}\n\n"
        f"{escape(decision['summary'])}\n\nChampion now: {champion}.\n"
    )


def publish_addition(summary: dict, summary_path: Path) -> None:
    """An addition's report, per-class counts and rejected files."""
    markdown = embed_images((summary_path.parent / "report.md").read_text(), summary_path.parent)
    create_markdown_artifact(
        markdown=markdown,
        key="cifar10-images-added",
        description=f"{summary['added']} added, {summary['duplicates']} duplicates, "
        f"{len(summary['rejected'])} rejected",
    )
    counts = [{"class": name, "added": count} for name, count in summary["class_counts"].items()]
    publish_table(table=counts or [{"class": "(none)", "added": 0}], key="cifar10-images-added-per-class")
    if summary["rejected"]:
        publish_table(table=summary["rejected"], key="cifar10-images-rejected")


def publish_registry(registry: Path) -> None:
    """The registry's versions as a table, with the champion and its last move in the description."""
    from cifarflow.registry.listing import alias_rows, version_rows

    rows = version_rows(registry)
    champion = next((row["version"] for row in rows if row["champion"]), "none")
    moves = alias_rows(registry, last=1)
    latest = "".join(f"; last move: {m['from']} → {m['to']} by {m['by']} ({m['reason']})" for m in moves)
    publish_table(
        table=rows or [{"version": "(none yet)"}],
        key="cifar10-model-registry",
        description=f"Model registry: {len(rows)} versions, champion {champion}{latest}"[:1000],
    )


TABLE_ROWS = 500  # rows of the predictions table artifact; the Parquet file has them all


def publish_predictions(result) -> None:
    """A batch prediction run (`cifarflow.inference.batch.BatchResult`) as artifacts."""
    import pyarrow.parquet as pq

    counts = "\n".join(f"| {escape(label)} | {count} |" for label, count in result.label_counts.items())
    sheet = ""
    if result.sheet is not None:
        sheet = embed_images(f"\n![contact sheet]({result.sheet.name})\n", result.sheet.parent)
        sheet = printable(sheet)  # a name embed_images did not inline (not a plain name) as UTF-8 text
    failures = "\n".join(f"- {escape(e['path'])}: {escape(e['error'])}" for e in result.errors[:20])
    markdown = (
        f"# Predictions by {escape(result.model_version)}\n\n{result.scored:,} of {result.files:,} files scored "
        f"({result.failed:,} could not be) in {result.seconds:.1f} s → {escape(printable(result.out))}\n\n"
        f"| predicted class | files |\n|---|---|\n{counts}\n{sheet}\n"
        + (f"\n## Could not be scored\n\n{failures}\n" if failures else "")
    )
    create_markdown_artifact(markdown=markdown, key="cifar10-predictions", description=f"{result.scored} scored")
    # only the first rows are read: the file may hold millions (batch prediction's memory stays bounded)
    with open(result.out, "rb") as handle:  # a handle: pyarrow takes only UTF-8 paths
        first = next(pq.ParquetFile(handle).iter_batches(batch_size=TABLE_ROWS), None)
    rows = first.to_pylist() if first is not None else []
    table = [
        {
            "path": row["path"],
            "label": row["label"],
            "probability": None if row["probability"] is None else round(row["probability"], 4),
            "top": ", ".join(f"{t['label']} {t['probability']:.2f}" for t in row["top"] or []),
            "error": row["error"],
        }
        for row in rows
    ]
    publish_table(table=table, key="cifar10-predictions-table", description=f"first {len(table)} rows")


def publish_leaderboard(name: str, rows: list[dict[str, Any]], files: dict[str, Path]) -> None:
    """A sweep's leaderboard as a table artifact (best first) and its Markdown with the plot linked."""
    table = [{k: ("" if v is None else v) for k, v in row.items()} for row in rows]
    publish_table(table, f"sweep-{name}-leaderboard"[:100], f"Sweep {name}: {len(rows)} trials, best first")
    markdown = files["markdown"].read_text()
    if "plot" in files:
        markdown = markdown.replace(f"]({files['plot'].name})", f"](file://{files['plot']})")
    create_markdown_artifact(markdown=markdown, key=f"sweep-{name}-report"[:100], description=f"Sweep {name}")


def publish_monitor(summary: MonitorSummary, directory: Path) -> None:
    """A monitor run's report with its plots, and a table row per drift signal."""
    create_markdown_artifact(
        markdown=embed_images((directory / "report.md").read_text(), directory),
        key="cifar10-monitor-report",
        description=f"{summary.verdict} ({summary.images:,} images, {summary.model_version})",
    )
    rows = [
        {"signal": s.name, "statistic": s.statistic, "p_value": s.p_value, "threshold": s.threshold, "drift": s.drift}
        for s in summary.signals
    ]
    publish_table(
        table=rows or [{"signal": "(none)", "statistic": None, "p_value": None, "threshold": None, "drift": None}],
        key="cifar10-monitor-signals",
        description=summary.verdict,
    )

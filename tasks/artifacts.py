"""Publish a finished run to the Prefect UI: the report, per-class metrics and links.

Stable artifact keys make the UI's artifact history show the trend across nightly runs.
"""

from __future__ import annotations

from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact

from tasks.files import read_json
from tasks.report import Report, per_class_rows


def publish_report(report: Report, model: str) -> None:
    metrics = read_json(report.metrics_path)
    markdown = report.report_path.read_text()
    # The UI cannot load local images: point plot links at the files on disk instead.
    for plot in ("confusion_matrix.png", "training_curves.png", "sample_predictions.png"):
        markdown = markdown.replace(f"]({plot})", f"](file://{report.directory / plot})")
    create_markdown_artifact(
        markdown=markdown,
        key=f"cifar10-report-{model}",
        description=f"Run {report.run_name}: test accuracy {metrics['test_accuracy']:.4f}",
    )
    create_table_artifact(
        table=per_class_rows(metrics),
        key=f"cifar10-per-class-{model}",
        description=f"Per-class precision / recall / F1 of {report.run_name}",
    )
    create_link_artifact(
        link=f"file://{report.directory}",
        link_text=str(report.directory),
        key=f"cifar10-report-dir-{model}",
        description="Report directory on disk",
    )

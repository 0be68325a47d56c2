"""What one feedback export did, for people: the counts, then each answer that was not added and why,
and each image held back for conflicting answers."""

from __future__ import annotations

from typing import Any

from cifarflow.markdown import escape


def render_report(summary: dict[str, Any]) -> str:
    """report.md of one export, from its summary (flows/feedback_flow.py `export_summary`)."""
    counts = summary["counts"]
    lines = [f"# Feedback export `{summary['export_id']}`", "", escape(summary["headline"]), ""]
    lines += ["| verdict | answers |", "|---|---|"] + [f"| {name} | {count} |" for name, count in counts.items()]
    lines.append("")
    if summary.get("batch_id"):
        lines += [f"Batch `{summary['batch_id']}`: dataset version `{summary['dataset_version']}`.", ""]
    not_added = [a for a in summary["answers"] if a["verdict"] != "added"]
    if not_added:
        lines += ["## Not added", "", "| prediction | label | verdict | why |", "|---|---|---|---|"]
        lines += [
            f"| {escape(a['prediction_id'])} | {escape(a['label'])} | {a['verdict']} | {escape(a['reason'])} |"
            for a in not_added
        ]
        lines.append("")
    if summary["held"]:
        lines += [
            "## Held back: one image, answers that disagree",
            "",
            "Each image below was answered with different classes. It waits until a new answer makes them agree.",
            "",
            "| image (pixel sha256) | answers |",
            "|---|---|",
        ]
        for conflict in summary["held"]:
            given = "; ".join(f"{a['prediction_id']}: {a['label']} ({a['reviewer']})" for a in conflict["answers"])
            lines.append(f"| `{conflict['pixel_sha256'][:16]}…` | {escape(given)} |")
        lines.append("")
    return "\n".join(lines)

"""validation.md: the report's "Data" section, rendered from the statistics in validation.json."""

from __future__ import annotations

from typing import Any

from cifarflow.data.dataset_versions import DatasetVersion
from cifarflow.markdown import escape, join_wrapped
from cifarflow.validation.checks import DRIFT_PSI, IMBALANCE_RATIO


def render_markdown(version: DatasetVersion, stats: dict[str, Any]) -> str:
    """The section as Markdown: the version's size, a table of its parts, the warnings."""
    rows = "\n".join(
        f"| {escape(p['name'])} | {p['images']:,} | {min(p['class_counts'])}–{max(p['class_counts'])} | "
        f"{', '.join(f'{v:.3f}' for v in p['channel_mean'])} | "
        f"{'—' if p['drift_psi'] is None else format(p['drift_psi'], '.3f')} |"
        for p in stats["parts"]
    )
    warnings = "\n".join(f"- ⚠ {escape(w)}" for w in stats["warnings"]) or "- none"
    markdown = f"""## Data

Dataset version `{version.version}`: **{version.train_images:,} training images** ({version.base_train_images:,}
ingested + {len(version.batches)} added batches), {version.test_images:,} test images (the official test set).

| part | images | per class (min–max) | channel mean (R, G, B) | drift PSI |
|---|---|---|---|---|
{rows}

Validation warnings (imbalance over {IMBALANCE_RATIO}×, drift PSI over {DRIFT_PSI}, duplicates):

{warnings}
"""
    return join_wrapped(markdown)

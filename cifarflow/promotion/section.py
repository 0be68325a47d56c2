"""The champion-vs-challenger section of a run's report.md (and promotion.md)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cifarflow.files import atomic_path
from cifarflow.markdown import table
from cifarflow.promotion.decision import Decision, Score
from cifarflow.promotion.mcnemar import format_p

SECTION_BEGIN = "<!-- champion-challenger:begin -->"
SECTION_END = "<!-- champion-challenger:end -->"


def confusion_difference(challenger: Score, champion: Score) -> np.ndarray:
    """Challenger − champion confusion matrix: positive on the diagonal = more right answers."""
    new, old = (np.array(score.metrics["confusion_matrix"], dtype=np.int64) for score in (challenger, champion))
    return new - old


def comparison_markdown(
    decision: Decision, challenger: Score, champion: Score | None, diff_plot: str | None = None
) -> str:
    """The report's champion-vs-challenger section (no surrounding markers)."""
    lines = [
        "## Champion vs challenger",
        "",
        f"**Decision:** {decision.summary}.",
        "",
        f"Promotion floor: {'none' if decision.min_accuracy is None else f'{decision.min_accuracy:g} test accuracy'}"
        f"{' (not met)' if decision.reason == 'below-floor' else ''}.",
        "",
    ]
    if champion is None:
        first = "becomes the first one" if decision.promoted else "does not become the first one"
        lines += [f"No champion yet: this model {first} (model sha256 `{challenger.model_id[:12]}`).", ""]
        return "\n".join(lines)
    lines += table(
        ("", "champion", "challenger"),
        ("version", champion.version or "–", challenger.version or "new"),
        ("run", f"`{champion.run_name}`", f"`{challenger.run_name}`"),
        ("model", f"`{champion.preset}`", f"`{challenger.preset}`"),
        ("model sha256", f"`{champion.model_id[:12]}`", f"`{challenger.model_id[:12]}`"),
        ("test accuracy", f"{champion.accuracy:.4f}", f"{challenger.accuracy:.4f}"),
        ("test images", len(champion.labels), len(challenger.labels)),
    )
    if decision.test is not None:
        t = decision.test
        lines += [
            "",
            f"McNemar's test ({t.method}, two-sided) on the {len(challenger.labels)} paired test images: "
            f"{t.challenger_only} right only for the challenger, {t.champion_only} right only for the champion, "
            f"{format_p(t.p_value)} (promotion needs a higher accuracy and p < {decision.alpha:g}).",
        ]
    if not decision.comparable:
        lines += ["", "The two models were scored on different test sets: the deltas below compare different data."]
    new_report, old_report = challenger.metrics["classification_report"], champion.metrics["classification_report"]
    f1 = [("class", "champion", "challenger", "Δ")]
    for name in challenger.metrics["class_names"]:
        new = new_report[name]["f1-score"]
        old = old_report[name]["f1-score"] if name in old_report else None
        cells = ("–", "–") if old is None else (f"{round(old, 4):.3f}", f"{round(new - old, 4):+.3f}")
        f1.append((name, cells[0], f"{round(new, 4):.3f}", cells[1]))
    lines += ["", "### Per-class F1", "", *table(*f1)]
    if diff_plot:
        lines += [
            "",
            "### Confusion-matrix change (challenger − champion)",
            "",
            "Each cell: how many more (blue) or fewer (red) test images the challenger puts there. "
            "Blue on the diagonal and red off it are improvements.",
            "",
            f"![confusion matrix change]({diff_plot})",
        ]
    return "\n".join(lines) + "\n"


def with_section(markdown: str, section: str) -> str:
    """`markdown` with the champion/challenger section between its markers replaced, or appended."""
    block = f"{SECTION_BEGIN}\n{section.rstrip()}\n{SECTION_END}\n"
    start, end = markdown.find(SECTION_BEGIN), markdown.find(SECTION_END)
    if start != -1 and end != -1 and end > start:
        return markdown[:start] + block + markdown[end + len(SECTION_END) :].lstrip("\n")
    return markdown.rstrip("\n") + "\n\n" + block


def write_section(report_md: Path, section: str) -> None:
    """Add (or replace) the section in report.md atomically."""
    text = Path(report_md).read_text()
    with atomic_path(report_md) as tmp:
        tmp.write_text(with_section(text, section))


def test_set_paragraph(served: int, judged: bool, unattributed: int = 0) -> str:
    """How many promotion decisions these test images have served (`served`, this one included when `judged`);
    `unattributed`: decisions logged without their test set."""
    count = f"this is promotion decision {served}" if judged else f"no new decision; {served} so far"
    older = f" ({unattributed} earlier decisions were logged without their test set and may add to it)"
    return (
        f"\n**Test set:** {count} on these test images{older if unattributed else ''}. Every decision on the same "
        "images lets chance favour the model that happened to do well on them; `benchmarks/test_reuse.md` measures "
        "how far that lifts the champion's reported accuracy over a year of nightly retrains under this gate.\n"
    )


def robustness_markdown(challenger: Score, champion: Score | None) -> str:
    """Clean and corrupted accuracy (mean over severities); the champion's only if measured on the same images."""
    new = challenger.metrics.get("robustness")
    if not new:
        return ""
    old = champion.metrics.get("robustness") if champion is not None else None
    old = old if old and old.get("images") == new["images"] else None

    def cell(summary, name):
        if summary is None:
            return "–"
        if name == "clean":
            return f"{summary['clean_accuracy']:.4f}"
        if name == "mean":
            return f"{summary['mean_corruption_accuracy']:.4f}"
        entry = summary["corruptions"].get(name)
        return f"{np.mean(entry['accuracy']):.4f}" if entry else "–"

    lines = [
        "",
        f"### Robustness (accuracy on the first {new['images']:,} test images, mean of 3 severities)",
        "",
        *table(
            ("images", "champion", "challenger"),
            ("clean", cell(old, "clean"), cell(new, "clean")),
            *((name, cell(old, name), cell(new, name)) for name in new["corruptions"]),
            ("**mean under corruption**", cell(old, "mean"), cell(new, "mean")),
        ),
    ]
    return "\n".join(lines) + "\n"

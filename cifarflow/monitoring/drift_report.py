"""A monitor run's report folder: monitor.json (the verdict), report.md and its plots."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from cifarflow.evaluation.plots import save_figure
from cifarflow.files import atomic_path, write_json
from cifarflow.journal import kill_point
from cifarflow.markdown import escape, join_wrapped
from cifarflow.monitoring.monitor import MonitorSummary
from cifarflow.monitoring.signals import FAMILY_ALPHA, SIGNAL_NAMES, Scored, Signal
from cifarflow.validation.checks import HISTOGRAM_BINS

PLOTS = {"class_mix": "class_mix.png", "confidence": "confidence.png", "channels": "channels.png"}
SIDES = (("reference", "tab:blue"), ("window", "tab:orange"))


def write_plots(reference: Scored, window: Scored, label_names: list[str], directory: Path) -> None:
    """`PLOTS` in `directory`, window against reference: predicted class mix, top probability, channel histograms."""
    fig, ax = plt.subplots(figsize=(8, 3.5))
    positions = np.arange(len(label_names))
    for offset, (name, colour), scored in zip((-0.2, 0.2), SIDES, (reference, window)):
        shares = np.bincount(scored.probabilities.argmax(1), minlength=len(label_names)) / max(len(scored), 1)
        ax.bar(positions + offset, shares, width=0.4, label=name, color=colour)
    ax.set(xticks=positions, ylabel="share of images", title="Predicted class mix")
    ax.set_xticklabels(label_names, rotation=30, ha="right")
    ax.legend()
    save_figure(fig, directory / PLOTS["class_mix"])
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for (name, colour), scored in zip(SIDES, (reference, window)):
        ax.hist(scored.probabilities.max(1), np.linspace(0, 1, 21), density=True, alpha=0.5, label=name, color=colour)
    ax.set(xlabel="top probability", ylabel="density", title="Confidence")
    ax.legend()
    save_figure(fig, directory / PLOTS["confidence"])
    fig, axes = plt.subplots(1, 3, figsize=(10, 3), sharey=True)
    edges = np.arange(HISTOGRAM_BINS) * (256 // HISTOGRAM_BINS)
    for channel, (ax, title) in enumerate(zip(axes, ("red", "green", "blue"))):
        for (name, colour), scored in zip(SIDES, (reference, window)):
            counts = scored.value_counts[channel].reshape(HISTOGRAM_BINS, -1).sum(axis=1)
            ax.step(edges, counts / max(counts.sum(), 1), where="post", label=name, color=colour)
        ax.set(title=title, xlabel="pixel value")
    axes[0].set_ylabel("share of pixels")
    axes[0].legend()
    save_figure(fig, directory / PLOTS["channels"])


def limit(signal: Signal) -> str:
    return f"p = {signal.p_value:.3g}" if signal.p_value is not None else f"> {signal.threshold:g}"


def report_markdown(summary: MonitorSummary, plots: bool) -> str:
    window = summary.window
    table = "| signal | test | statistic | p-value or threshold | drift |\n|---|---|---|---|---|\n" + "\n".join(
        f"| {s.name} | {s.test} | {s.statistic:.4g} | {limit(s)} | {'**drift**' if s.drift else 'no'} |"
        for s in summary.signals
    )
    table = table if summary.signals else "No signals computed."
    if window.get("incremental"):
        chosen = (
            f"every logged row no earlier run judged ({window['rows']:,} rows, seq {window['seqs'][0] + 1:,} on), at"
        )
    elif window["last"]:
        chosen = f"the last {window['last']:,} images up to"
    else:
        chosen = f"after {window['since'] or 'the log start'}, up to"
    logged = f"scored {window['first']} to {window['last_logged']}" if window["first"] else "nothing logged"
    if summary.images < window["rows"]:
        logged += f"; a random sample of {summary.images:,} of its {window['rows']:,} rows was judged"
    notes = "".join(f"- {note}\n" for note in summary.notes)
    notes = f"**Notes**\n\n{notes}\n" if notes else ""
    figures = "".join(f"![{name.replace('_', ' ')}]({file})\n\n" for name, file in PLOTS.items()) if plots else ""
    markdown = f"""# Monitoring report

**{summary.verdict}**: {summary.images:,} logged images scored by {escape(summary.model_version)}, against
{summary.reference_images:,} reference images (the ingested test set, scored by the champion).

- Window: {chosen} {window["until"]}; {logged}.
- Sources: {fmt_counts(window["sources"])}; served by: {fmt_counts(window["model_versions"])}.

{notes}{table}

The input signal fires above its PSI threshold; each test fires at p < {FAMILY_ALPHA} / {len(SIGNAL_NAMES)}
(Bonferroni over the {len(SIGNAL_NAMES)} signals), so a window like the reference raises an alarm in at
most about {FAMILY_ALPHA:.0%} of runs.

{figures}"""
    return join_wrapped(markdown)


def fmt_counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{escape(name)} {count:,}" for name, count in counts.items()) or "none"


def write_monitor_report(
    directory: Path, summary: MonitorSummary, reference: Scored, window: Scored | None, label_names: list[str]
) -> Path:
    """monitor.json, report.md and the plots in `directory`; monitor.json last, so a folder with it is whole."""
    directory.mkdir(parents=True, exist_ok=True)
    plots = window is not None and len(window) > 0
    if plots:
        write_plots(reference, window, label_names, directory)
    with atomic_path(directory / "report.md") as tmp:
        tmp.write_text(report_markdown(summary, plots))
    kill_point("monitor:report-half-written")
    return write_json(directory / "monitor.json", summary.to_json())

"""Trial outcomes → a leaderboard: Markdown, JSON and an accuracy-vs-training-time plot."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cifarflow.files import atomic_path, write_json
from cifarflow.markdown import escape
from cifarflow.sweep.space import NAMED_AXES, Trial


@dataclass(frozen=True)
class TrialOutcome:
    trial: Trial
    status: str  # "completed", "cached" or "failed"
    states: dict[str, str]  # stage → Prefect state name ("Completed", "Cached", "Failed", ...)
    test_accuracy: float | None = None
    test_loss: float | None = None
    train_seconds: float | None = None
    report_dir: str | None = None
    error: str | None = None

    @property
    def succeeded(self) -> bool:
        return self.status != "failed"


def leaderboard_rows(outcomes: list[TrialOutcome]) -> list[dict[str, Any]]:
    """Finished trials by test accuracy (best first), then the failed ones in trial order."""
    done = sorted((o for o in outcomes if o.succeeded), key=lambda o: -(o.test_accuracy or 0.0))
    failed = [o for o in outcomes if not o.succeeded]
    rows = []
    for rank, o in enumerate(done + failed, start=1):
        c = o.trial.config
        rows.append(
            {
                "rank": rank if o.succeeded else None,
                "trial": o.trial.name,
                "status": o.status,
                "test_accuracy": _round(o.test_accuracy),
                "test_loss": _round(o.test_loss),
                "train_seconds": _round(o.train_seconds, 2),
                "model": c.model,
                "epochs": c.train_epochs,
                "batch_size": c.train_batch_size,
                "learning_rate": c.train_learning_rate,
                "seed": c.seed,
                **{k: v for k, v in o.trial.overrides.items() if k not in NAMED_AXES},
                "report": o.report_dir,
                "error": o.error,
            }
        )
    return rows


def _round(value: float | None, digits: int = 4) -> float | None:
    return None if value is None or not math.isfinite(value) else round(value, digits)


def render_leaderboard(name: str, rows: list[dict[str, Any]], plot_file: str | None) -> str:
    finished = [r for r in rows if r["status"] != "failed"]
    counts = f"{len(rows)} trials: {len(finished)} finished, {len(rows) - len(finished)} failed."
    if finished:  # one paragraph, one line: a line break in it shows as a ragged short line in the UI
        best = finished[0]
        counts += f" Best: **{escape(best['trial'])}**, test accuracy {best['test_accuracy']:.4f}."
    lines = [f"# Sweep {escape(name)}", "", counts]
    lines += [
        "",
        "| rank | trial | status | test accuracy | test loss | train s | model | epochs | batch | lr | seed | report |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:

        def show(value, fmt="{}"):
            return "–" if value is None else fmt.format(value)

        report = f"[{Path(r['report']).name}]({r['report']})" if r["report"] else "–"
        status = r["status"] if r["status"] != "failed" else "**failed**"
        lines.append(
            f"| {show(r['rank'])} | {escape(r['trial'])} | {status} | {show(r['test_accuracy'], '{:.4f}')} "
            f"| {show(r['test_loss'], '{:.4f}')} | {show(r['train_seconds'], '{:.1f}')} | {r['model']} | {r['epochs']} "
            f"| {r['batch_size']} | {r['learning_rate']:g} | {r['seed']} | {report} |"
        )
    errors = [r for r in rows if r["error"]]
    if errors:
        lines += ["", "## Failed trials", ""] + [f"- {escape(r['trial'])}: {escape(r['error'])}" for r in errors]
    if plot_file:
        lines += ["", f"![accuracy against training time]({plot_file})"]
    lines.append(
        "\n_status `cached`: the trial's model and evaluation were reused from an earlier run "
        "(train seconds are those of that run)._"
    )
    return "\n".join(lines) + "\n"


def plot_leaderboard(name: str, rows: list[dict[str, Any]], path: Path) -> Path | None:
    """Test accuracy against training time, one labelled point per finished trial."""
    points = [r for r in rows if r["status"] != "failed" and r["test_accuracy"] is not None]
    if not points:
        return None
    from cifarflow.evaluation.plots import plt, save_figure  # the project's headless (Agg) matplotlib setup

    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.scatter([r["train_seconds"] for r in points], [r["test_accuracy"] for r in points], color="tab:blue")
    for r in points:
        ax.annotate(
            r["trial"], (r["train_seconds"], r["test_accuracy"]), fontsize=7, xytext=(4, 3), textcoords="offset points"
        )
    failed = len(rows) - len(points)
    ax.set_xlabel("training time (s)")
    ax.set_ylabel("test accuracy")
    ax.set_title(f"Sweep {name}: {len(points)} trials" + (f" ({failed} failed, not shown)" if failed else ""))
    ax.grid(alpha=0.3)
    return save_figure(fig, path)


def write_leaderboard(directory: Path, name: str, rows: list[dict[str, Any]], extra: dict[str, Any]) -> dict[str, Path]:
    """leaderboard.md, leaderboard.json and accuracy_vs_time.png in `directory` (each written atomically)."""
    directory.mkdir(parents=True, exist_ok=True)
    plot = plot_leaderboard(name, rows, directory / "accuracy_vs_time.png")
    markdown = directory / "leaderboard.md"
    with atomic_path(markdown) as tmp:
        tmp.write_text(render_leaderboard(name, rows, plot.name if plot else None))
    data = write_json(directory / "leaderboard.json", {"name": name, "trials": rows} | extra)
    return {"markdown": markdown, "json": data} | ({"plot": plot} if plot else {})


def best_outcome(outcomes: list[TrialOutcome]) -> TrialOutcome | None:
    """The finished trial of highest test accuracy (the first of equals), None when all failed."""
    return next((o for o in sorted(outcomes, key=lambda o: -(o.test_accuracy or 0)) if o.succeeded), None)


def sweep_summary(name: str, directory: Path, files: dict[str, Path], outcomes: list[TrialOutcome]) -> dict[str, Any]:
    """What the sweep flow returns: where the leaderboard is, the best trial, and every trial's outcome."""
    best = best_outcome(outcomes)
    return {
        "name": name,
        "directory": str(directory),
        "leaderboard": str(files["markdown"]),
        "plot": str(files.get("plot", "")),
        "best": best.trial.name if best else None,
        "trials": [
            {
                "trial": o.trial.name,
                "status": o.status,
                "states": o.states,
                "test_accuracy": o.test_accuracy,
                "train_seconds": o.train_seconds,
                "report": o.report_dir,
                "error": o.error,
            }
            for o in outcomes
        ],
    }

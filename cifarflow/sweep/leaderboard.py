"""Trial outcomes → a leaderboard: Markdown, JSON and an accuracy-vs-training-time plot."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from cifarflow.files import atomic_path, write_json
from cifarflow.markdown import escape, table
from cifarflow.sweep.space import NAMED_AXES, Trial

# leaderboard.md's columns: header → (row field, format)
COLUMNS = {
    "rank": ("rank", "{}"),
    "trial": ("trial", "{}"),
    "status": ("status", "{}"),
    "test accuracy": ("test_accuracy", "{:.4f}"),
    "test loss": ("test_loss", "{:.4f}"),
    "train s": ("train_seconds", "{:.1f}"),
    "model": ("model", "{}"),
    "epochs": ("epochs", "{}"),
    "batch": ("batch_size", "{}"),
    "lr": ("learning_rate", "{:g}"),
    "seed": ("seed", "{}"),
    "report": ("report", "{}"),
}


def trial_row(trial: Trial, status: str, states: dict[str, str], **measured: Any) -> dict[str, Any]:
    """One trial's leaderboard row. `status`: completed, cached or failed; `states`: stage → Prefect state
    name; `measured`: test_accuracy, test_loss, train_seconds, report (its folder), error (each may be absent)."""
    c = trial.config
    return {
        "rank": None,
        "trial": trial.name,
        "status": status,
        "test_accuracy": _round(measured.get("test_accuracy"), 4),
        "test_loss": _round(measured.get("test_loss"), 4),
        "train_seconds": _round(measured.get("train_seconds"), 2),
        "model": c.model,
        "epochs": c.train_epochs,
        "batch_size": c.train_batch_size,
        "learning_rate": c.train_learning_rate,
        "seed": c.seed,
        **{k: v for k, v in trial.overrides.items() if k not in NAMED_AXES},
        "report": measured.get("report"),
        "error": measured.get("error"),
        "states": states,
    }


def rank_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Finished trials by test accuracy (best first, ranked 1, 2, …), then the failed ones in trial order."""
    done = sorted((r for r in rows if r["status"] != "failed"), key=lambda r: -(r["test_accuracy"] or 0.0))
    ranked = [r | {"rank": rank} for rank, r in enumerate(done, start=1)]
    return ranked + [r for r in rows if r["status"] == "failed"]


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None or not math.isfinite(value) else round(value, digits)


def _cell(value: Any, field: str, fmt: str) -> str:
    if value is None:
        return "–"
    if field == "report":
        return f"[{Path(value).name}]({value})"
    return "**failed**" if field == "status" and value == "failed" else escape(fmt.format(value))


def render_leaderboard(name: str, rows: list[dict[str, Any]], plot_file: str | None) -> str:
    finished = [r for r in rows if r["status"] != "failed"]
    counts = f"{len(rows)} trials: {len(finished)} finished, {len(rows) - len(finished)} failed."
    if finished:  # one paragraph, one line: a line break in it shows as a ragged short line in the UI
        counts += f" Best: **{escape(finished[0]['trial'])}**, test accuracy {finished[0]['test_accuracy']:.4f}."
    cells = [[_cell(r[field], field, fmt) for field, fmt in COLUMNS.values()] for r in rows]
    lines = [f"# Sweep {escape(name)}", "", counts, "", *table(COLUMNS, *cells)]
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
    """Test accuracy against training time, one labelled point per finished trial; None when none finished."""
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

"""The demo's side-by-side figure of the twins' meta-training (``twins.png``): α and the outer loss
over training for every twin, and each twin's difference from the first (the reference).

Drawn from each run's ``metrics.jsonl`` rows; ``matplotlib.figure.Figure`` directly, as in
``parity.plots``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from parity.plots import _figure, _running_mean, _save, _title, _window

TWIN_COLORS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown")


def _alpha(rows: list[dict[str, Any]]) -> np.ndarray:
    """α used at each step; a per-parameter α by its mean over entries."""
    return np.array([r["alpha"]["mean"] if isinstance(r["alpha"], dict) else r["alpha"] for r in rows], dtype=float)


def _series(runs: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, np.ndarray]]:
    # The steps every run logged: a run stopped early is compared where it has data.
    n = min(len(rows) for rows in runs.values())
    return {
        name: {
            "step": np.array([r["step"] for r in rows[:n]]),
            "alpha": _alpha(rows[:n]),
            "loss": np.array([r["outer_loss"] for r in rows[:n]], dtype=float),
        }
        for name, rows in runs.items()
    }


def twins_figure(runs: dict[str, list[dict[str, Any]]], labels: dict[str, str], path: Path) -> Path:
    """Left: α and the outer loss (running mean) of every twin; right: each other twin minus the
    first, step by step (the same tasks from the same start: only arithmetic separates them)."""
    data = _series(runs)
    names = list(data)
    reference = names[0]
    fig = _figure(12, 7.2)
    axes = fig.subplots(2, 2, sharex=True)
    marker = "o" if len(data[reference]["step"]) == 1 else None
    for i, name in enumerate(names):
        color, d = TWIN_COLORS[i % len(TWIN_COLORS)], data[name]
        style = {"color": color, "marker": marker, "ls": "-" if i == 0 else "--", "lw": 2.4 - 0.6 * min(i, 2)}
        axes[0][0].plot(d["step"], d["alpha"], label=labels[name], **style)
        axes[1][0].plot(d["step"], _running_mean(d["loss"]), label=labels[name], **style)
        if i == 0:
            continue
        for row, key in ((0, "alpha"), (1, "loss")):
            diff = d[key] - data[reference][key]
            axes[row][1].plot(
                d["step"], diff, color=color, marker=marker, lw=1, label=f"{labels[name]} − {labels[reference]}"
            )
    window = _window(len(data[reference]["loss"]))
    titles = (
        ("Inner learning rate α used at each step", f"α: each twin minus the {labels[reference]} twin"),
        (
            f"Outer (query) loss, running mean of {window}",
            f"Outer loss: each twin minus the {labels[reference]} twin, each step",
        ),
    )
    for row in range(2):
        for col in range(2):
            ax = axes[row][col]
            ax.set_title(_title(titles[row][col], 55), fontsize=10)
            ax.grid(alpha=0.3)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=8)
        axes[row][1].axhline(0, color="black", lw=0.8)
        axes[1][row].set_xlabel("outer (meta-training) step")
    axes[0][0].set_ylabel("α")
    axes[1][0].set_ylabel("outer loss")
    return _save(fig, path)

"""Figures of a run (matplotlib, Agg, PNG): headless, one function per figure, data in, path out.

- ``fit.png``: the seed's picture — one held-out task's true curve, its K support points and each
  starting point's network before and after adaptation (unshifted and most-shifted phase);
- ``adaptation.png``: query MSE against adaptation steps, mean and 95% CI band over tasks;
- ``phase_shift.png``: query MSE after T steps against the phase shift;
- ``alpha.png``: α and dL/dα over meta-training (from ``metrics.jsonl``);
- ``training_loss.png``: the outer (query) loss over meta-training.

Figures are made with ``matplotlib.figure.Figure`` directly, never pyplot: no global state, no
display needed, nothing left open.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import numpy as np

from parity.config import Config

LABELS = {
    "meta": "meta-learned init",
    "random": "random init",
    "pretrained": "pretrained (plain regression)",
}
COLORS = {"meta": "tab:blue", "random": "tab:red", "pretrained": "tab:green"}
DPI = 110


def _figure(width: float, height: float) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=DPI, layout="constrained")


def _save(fig: Any, path: Path) -> Path:
    try:
        fig.savefig(path)
    except OSError as err:  # a full disk, permissions: the error names the figure
        raise OSError(err.errno, err.strerror, str(path)) from None
    return path


def _title(text: str, width: int = 90) -> str:
    """Wrap a title so that it fits the figure (constrained layout makes room for the lines)."""
    return textwrap.fill(text, width=width)


def _spans_decades(values: Any, decades: float = 2.0) -> bool:
    """Whether the finite positive values span more than ``decades`` powers of ten."""
    v = np.asarray(values, dtype=float).ravel()
    v = v[np.isfinite(v) & (v > 0)]
    return v.size > 1 and float(np.log10(v.max() / v.min())) > decades


def _y_scale(ax: Any, values: Any) -> None:
    """Log y when the values span decades (one diverging curve must not flatten the rest), else from 0."""
    if _spans_decades(values):
        ax.set_yscale("log")
    else:
        ax.set_ylim(bottom=0)


def _line_style(n: int) -> str:
    """No line through a single point: markers alone."""
    return "-" if n > 1 else "none"


def _shift_label(shift: float) -> str:
    if shift == 0:
        return "no phase shift"
    ratio = shift / np.pi
    if abs(ratio - round(ratio * 4) / 4) < 1e-9:
        quarters = round(ratio * 4)
        frac = {1: "π/4", 2: "π/2", 3: "3π/4", 4: "π"}.get(quarters, f"{ratio:g}π")
        return f"phase shifted by {frac}"
    return f"phase shifted by {shift:.3g} rad"


def _shown_shifts(result: dict[str, Any]) -> list[int]:
    """Indices of the phase shifts to draw in per-shift panels: the first and the largest."""
    shifts = result["phase_shifts"]
    first, largest = 0, int(np.argmax(np.abs(shifts)))
    return [first] if largest == first else [first, largest]


def fit_figure(result: dict[str, Any], cfg: Config, path: Path) -> Path:
    """One held-out task per row (unshifted, most shifted), one starting point per column."""
    rows = _shown_shifts(result)
    T = min(cfg.inner_steps, result["max_steps"])
    fig = _figure(13, 3.6 * len(rows))
    axes = fig.subplots(len(rows), 3, squeeze=False, sharex=True, sharey=True)
    for r, i in enumerate(rows):
        fit = result["fits"][i]
        for c, name in enumerate(LABELS):
            ax = axes[r][c]
            ax.plot(fit["x"], fit["y"], color="black", lw=2, label="true sinusoid")
            ax.plot(
                fit["x"],
                _nan(fit[name][0]),
                color=COLORS[name],
                lw=1.3,
                ls="--",
                alpha=0.7,
                label="network before adapting",
            )
            ax.plot(fit["x"], _nan(fit[name][T]), color=COLORS[name], lw=2, label=f"after {T} gradient steps")
            ax.scatter(
                fit["x_support"],
                fit["y_support"],
                color="black",
                marker="^",
                s=55,
                zorder=5,
                label=f"the {len(fit['x_support'])} examples it adapts on",
            )
            ax.set_title(_title(f"{LABELS[name]}, {_shift_label(fit['phase_shift'])}", 45), fontsize=10)
            ax.grid(alpha=0.3)
            if r == len(rows) - 1:
                ax.set_xlabel("x")
            if c == 0:
                ax.set_ylabel("y")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=8, ncol=4, loc="outside lower center")  # below: hides no point
    fit0 = result["fits"][0]
    phases = ", ".join(f"φ = {result['fits'][i]['phase']:.3g}" for i in rows)
    fig.suptitle(
        _title(
            f"Fitting one new task, y = {fit0['amplitude']:.2g}·sin({fit0['frequency']:.3f}·x + φ) ({phases} rad), "
            f"from {result['shots']} examples with α = {_alpha_text(result['alpha'])}",
            110,
        )
    )
    return _save(fig, path)


def adaptation_figure(result: dict[str, Any], cfg: Config, path: Path) -> Path:
    """Query MSE (mean and 95% CI band over tasks) after 0..S adaptation steps, per phase shift."""
    panels = _shown_shifts(result)
    fig = _figure(6.2 * len(panels), 4.4)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]  # own y scales: shifted errors are far larger
    for ax, i in zip(axes, panels, strict=True):
        shown = []
        for name in LABELS:
            rec = result[name][i]
            steps, mean, ci = np.array(rec["steps"]), _nan(rec["mse_mean"]), _nan(rec["mse_ci95"])
            ax.plot(steps, mean, marker="o", ms=4, ls=_line_style(len(steps)), color=COLORS[name], label=LABELS[name])
            low = np.where(mean - ci > 0, mean - ci, mean)  # a log axis has no room for a band below 0
            ax.fill_between(steps, low, mean + ci, color=COLORS[name], alpha=0.2, lw=0)
            shown.append(mean)
        if cfg.inner_steps <= result["max_steps"]:
            ax.axvline(cfg.inner_steps, color="grey", ls=":", lw=1.2, label=f"T = {cfg.inner_steps} (meta-training)")
        ax.set_title(_shift_label(result["phase_shifts"][i]), fontsize=10)
        ax.set_xlabel(f"gradient steps on the {result['shots']} support points")
        _y_scale(ax, np.concatenate(shown))
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(f"query MSE ({result['query_points']} points)")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=8, ncol=2 * len(panels), loc="outside lower center")
    fig.suptitle(
        _title(
            f"Error while adapting to {result['tasks']} held-out tasks (mean, band = 95% CI), "
            f"α = {_alpha_text(result['alpha'])}",
            60 * len(panels),
        )
    )
    return _save(fig, path)


def phase_shift_figure(result: dict[str, Any], cfg: Config, path: Path) -> Path:
    """Query MSE after T adaptation steps against the phase shift of the held-out tasks."""
    T = min(cfg.inner_steps, result["max_steps"])
    shifts = np.array(result["phase_shifts"])
    order = np.argsort(shifts)
    fig = _figure(7.5, 5.4)
    ax = fig.subplots()
    ls = _line_style(len(shifts))
    shown = []
    for name in LABELS:
        mean = _nan([result[name][i]["mse_mean"][T] for i in order])
        ci = _nan([result[name][i]["mse_ci95"][T] for i in order])
        before = _nan([result[name][i]["mse_mean"][0] for i in order])
        ax.errorbar(
            shifts[order],
            mean,
            yerr=ci,
            marker="o",
            ls=ls,
            capsize=3,
            color=COLORS[name],
            label=f"{LABELS[name]}, after {T} step{'s' if T != 1 else ''}",
        )
        ax.plot(
            shifts[order],
            before,
            ls=":" if len(shifts) > 1 else "none",
            marker="x",
            color=COLORS[name],
            alpha=0.7,
            label=f"{LABELS[name]}, before adapting",
        )
        shown += [mean, before]
    ax.set_xlabel("phase shift B of the held-out tasks, y = A·sin(ω·x + φ + B)  [radians]")
    ax.set_ylabel("query MSE (mean over tasks, bars = 95% CI)")
    ax.set_title(_title(f"Error against the phase shift of the tasks ({result['shots']} shots)", 70), fontsize=11)
    if len(shifts) == 1:
        ax.set_xlim(shifts[0] - 0.5, shifts[0] + 0.5)
    _y_scale(ax, np.concatenate(shown))
    ax.grid(alpha=0.3)
    fig.legend(fontsize=8, ncol=2, loc="outside lower center")  # below the axes, clear of the curves
    return _save(fig, path)


def alpha_figure(rows: list[dict[str, Any]], cfg: Config, path: Path) -> Path:
    """α and dL/dα at every outer step of meta-training."""
    steps = np.array([r["step"] for r in rows])
    alpha = [r["alpha"] for r in rows]
    grad = [r["alpha_grad"] for r in rows]
    fig = _figure(8, 6.4)
    ax_a, ax_g = fig.subplots(2, 1, sharex=True)
    if isinstance(alpha[0], dict):  # per-parameter α: mean with the min..max range
        ax_a.plot(steps, [a["mean"] for a in alpha], color="tab:purple", label="mean over entries")
        ax_a.fill_between(
            steps,
            [a["min"] for a in alpha],
            [a["max"] for a in alpha],
            color="tab:purple",
            alpha=0.2,
            label="min .. max",
        )
        g, g_label = np.array([v["norm"] for v in grad]), "‖dL/dα‖"
    else:
        ax_a.plot(steps, alpha, color="tab:purple", marker="o" if len(steps) == 1 else None, label="α")
        g, g_label = np.array(grad), "dL/dα"
    mode = {
        "fixed": "fixed",
        "scalar": f"learned with {cfg.alpha_optimizer} lr {cfg.alpha_lr:g}",
        "per_parameter": f"one per parameter entry, {cfg.alpha_optimizer} lr {cfg.alpha_lr:g}",
    }[cfg.alpha_mode]
    ax_a.set_ylabel("inner learning rate α")
    ax_a.set_title(_title(f"Inner learning rate over meta-training (α {mode})", 80), fontsize=11)
    ax_a.grid(alpha=0.3)
    ax_a.legend(fontsize=8)
    trend = _running_mean(g)
    low, high = _running_range(g)
    ax_g.fill_between(
        steps,
        low,
        high,
        color="tab:orange",
        alpha=0.15,
        lw=0,
        label=f"{g_label}, 10-90% of the last {_window(len(g))} steps",
    )
    ax_g.plot(
        steps,
        trend,
        color="saddlebrown",
        lw=2,
        marker="o" if len(g) == 1 else None,
        label=f"{g_label}, running mean of {_window(len(g))}",
    )
    ax_g.axhline(0, color="black", lw=0.8)
    # One task per step makes single-step gradients far noisier than their trend: cut the axis
    # at the 5th / 95th percentiles so the trend stays readable.
    lo, hi = np.percentile(g, [5, 95]) if len(g) else (0.0, 0.0)
    lo, hi = min(lo, trend.min(initial=0.0)), max(hi, trend.max(initial=0.0))
    if hi > lo:
        ax_g.set_ylim(lo - 0.05 * (hi - lo), hi + 0.05 * (hi - lo))
    ax_g.set_ylabel(f"meta-gradient {g_label}")
    ax_g.set_xlabel("outer (meta-training) step")
    ax_g.set_title(
        _title("Gradient of the outer loss with respect to α (positive: α shrinks; axis cut at 5-95% of steps)", 80),
        fontsize=10,
    )
    ax_g.grid(alpha=0.3)
    ax_g.legend(fontsize=8, loc="best")
    return _save(fig, path)


def training_loss_figure(rows: list[dict[str, Any]], cfg: Config, path: Path) -> Path:
    """The outer (query) loss after T inner steps, and the support loss before adapting."""
    steps = np.array([r["step"] for r in rows])
    outer = np.array([r["outer_loss"] for r in rows])
    fig = _figure(8, 4.4)
    ax = fig.subplots()
    loss = {"l1": "mean absolute error", "mse": "mean squared error", "cross_entropy": "cross-entropy"}[cfg.loss]
    ax.plot(steps, outer, color="tab:blue", lw=0.5, alpha=0.3, label="query loss after adapting, each step")
    ax.plot(
        steps,
        _running_mean(outer),
        color="tab:blue",
        lw=2,
        label=f"query loss after {cfg.inner_steps} inner steps (outer loss), running mean of {_window(len(outer))}",
    )
    if rows and rows[0]["inner_losses"]:
        before = np.array([r["inner_losses"][0] for r in rows])
        ax.plot(
            steps,
            _running_mean(before),
            color="tab:grey",
            lw=1.5,
            ls="--",
            label="support loss before adapting, running mean",
        )
    ax.set_xlabel("outer (meta-training) step")
    ax.set_ylabel(f"loss ({loss})")
    if len(steps) == 1:
        ax.plot(steps, outer, "o", color="tab:blue")
    ax.set_title(f"Meta-training: {cfg.meta_batch} task(s) per step, {cfg.outer_optimizer} lr {cfg.outer_lr:g}")
    _y_scale(ax, outer)
    ax.grid(alpha=0.3)
    fig.legend(fontsize=8, loc="outside lower center")
    return _save(fig, path)


def write_figures(run_dir: Path, result: dict[str, Any] | None, rows: list[dict[str, Any]], cfg: Config) -> list[Path]:
    """Every figure the data allows (evaluation figures need ``result``, training ones ``rows``)."""
    paths = []
    if result is not None:
        paths += EVALUATION_FIGURES[result.get("family", "sinusoid")](result, cfg, run_dir)
    if rows:
        paths.append(alpha_figure(rows, cfg, run_dir / "alpha.png"))
        paths.append(training_loss_figure(rows, cfg, run_dir / "training_loss.png"))
    return paths


def sinusoid_figures(result: dict[str, Any], cfg: Config, folder: Path) -> list[Path]:
    return [
        fit_figure(result, cfg, folder / "fit.png"),
        adaptation_figure(result, cfg, folder / "adaptation.png"),
        phase_shift_figure(result, cfg, folder / "phase_shift.png"),
    ]


def _classification_figures(result: dict[str, Any], cfg: Config, folder: Path) -> list[Path]:
    from parity import report_classification

    return report_classification.evaluation_figures(result, cfg, folder)


# The evaluation figures by eval.json's family (sinusoid files carry none).
EVALUATION_FIGURES = {"sinusoid": sinusoid_figures, "classification": _classification_figures}


def _window(n: int) -> int:
    return max(1, min(100, n // 20))


def _running_range(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Trailing 10th and 90th percentiles over the same window as :func:`_running_mean`: the faint
    band of the per-step values around the trend."""
    v = np.asarray(values, dtype=np.float64)
    w = _window(len(v))
    windows = [v[max(0, i - w + 1) : i + 1] for i in range(len(v))]
    low = np.array([np.percentile(x, 10) for x in windows])
    high = np.array([np.percentile(x, 90) for x in windows])
    return low, high


def _running_mean(values: np.ndarray) -> np.ndarray:
    """Trailing mean over the last ``_window`` steps (shorter at the start): per-step values are
    one task's noise; the trend is what the figure shows."""
    w = _window(len(values))
    csum = np.cumsum(np.insert(np.asarray(values, dtype=np.float64), 0, 0.0))
    idx = np.arange(1, len(values) + 1)
    lo = np.maximum(0, idx - w)
    return (csum[idx] - csum[lo]) / (idx - lo)


def _alpha_text(alpha: Any) -> str:
    if isinstance(alpha, dict):
        return f"{alpha['mean']:.3g} (mean of a per-parameter α)"
    return f"{alpha:.3g}"


def _nan(values: list[float | None]) -> np.ndarray:
    """eval.json writes null where every task diverged; matplotlib leaves NaN points out."""
    return np.array([np.nan if v is None else v for v in values], dtype=float)

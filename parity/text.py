"""How numbers read in printouts, tables and reports: written once, used everywhere."""

from __future__ import annotations

from typing import Any

import numpy as np


def alpha_summary(alpha: Any) -> Any:
    """α as a number, or ``{"mean", "min", "max"}`` of a per-parameter α (a dict of arrays)."""
    if isinstance(alpha, dict):
        flat = np.concatenate([np.ravel(v) for v in alpha.values()])
        return {"mean": float(flat.mean()), "min": float(flat.min()), "max": float(flat.max())}
    return float(alpha)


def alpha_grad_summary(grad: Any) -> Any:
    """dL/dα as a number, or ``{"norm"}`` of a per-parameter dL/dα."""
    if isinstance(grad, dict):
        return {"norm": float(np.sqrt(sum(float(np.sum(np.square(v))) for v in grad.values())))}
    return float(grad)


def alpha_text(alpha: Any, digits: int = 4) -> str:
    """An :func:`alpha_summary` as text: ``0.01466`` or ``mean 0.01 (min -3.2, max 4.1)``."""
    if isinstance(alpha, dict):
        return f"mean {alpha['mean']:.{digits}g} (min {alpha['min']:.{digits}g}, max {alpha['max']:.{digits}g})"
    return f"{alpha:.{digits}g}"


def short(value: Any, digits: int = 4) -> str:
    """A number, or a dict of numbers (``mean=…/min=…``), in ``digits`` significant digits."""
    if isinstance(value, dict):
        return "/".join(f"{k}={v:.{digits}g}" for k, v in value.items())
    return f"{value:.{digits}g}"


def pm(mean: float | None, ci: float | None) -> str:
    """``mean ± ci``; scientific past 1e3 so table columns keep their width; None: every task diverged."""
    if mean is None or ci is None:
        return "all diverged"
    if abs(mean) >= 1e3:
        return f"{mean:.3e} ± {ci:.1e}"
    return f"{mean:.4f} ± {ci:.4f}"

"""Where two implementations first part: the first point, in computation order, outside tolerance.

A failing comparison says *that* two results differ; this module says *where* the difference
first appears. The order is the order of computation:

- gradient cases (and golden files), from the ``trace`` capability (``parity.contract``) when both
  sides offer it: for each inner step t, the model's layer outputs on the support set where the
  model records them (the conv net's blocks, ``trace/activation/block<i>``: a forward-pass bug is
  named by its first block), the support loss, the inner gradient of every parameter, the
  optimiser's state, the adapted parameters; then the per-task query losses; then what the contract returns: the
  mean support losses, the outer loss, dL/dw0, dL/db0, … and last dL/dα;
- trajectory cases: for each outer step k, its outer loss, then the parameters and α after it
  (``trajectory/params/<name>``, ``trajectory/alpha``), then the final values.

Each point is a slice (one step of one quantity of one parameter, all tasks) held to the rule of
:mod:`parity.compare`, ``max|a − b| ≤ atol + rtol·max|ref|``, with the tolerance that module's
one rule gives its key (loss, gradient, state) and dtype. The first slice that breaks it is reported with its worst
element (task and index), both values, and the stability gate's products up to that inner step
and after it: how much the gate lets a difference there grow.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from parity.compare import Tolerance, tolerance
from parity.config import Config
from parity.contract import ContractError, describe, unsupported_reason
from parity.twins import step0_inputs

# --- the order of computation ------------------------------------------------------------------


def points(cfg: Config, keys: set[str], outer_steps: int = 0) -> list[tuple[str, int | None]]:
    """``(key, step)`` in computation order, for the keys present. ``step`` indexes the inner step
    (axis 1 of a ``trace/`` entry) or, for a trajectory of ``outer_steps`` steps, the outer step
    (axis 0 of ``outer_loss`` and the ``trajectory/`` entries); None: the whole entry."""
    names = list(cfg.param_names)
    alphas = ["alpha"] if cfg.alpha_mode in ("fixed", "scalar") else [f"alpha/{n}" for n in names]
    order: list[tuple[str, int | None]] = []
    for k in range(outer_steps):
        order.append(("outer_loss", k))
        order += [(f"trajectory/params/{n}", k) for n in names] + [(f"trajectory/{a}", k) for a in alphas]
    for t in range(cfg.inner_steps):
        # the forward pass on the support set, layer by layer (conv blocks), before its loss
        order += [(f"trace/activation/{layer}", t) for layer in cfg.traced_layers]
        order.append(("trace/support_loss", t))
        order += [(f"trace/inner_grad/{n}", t) for n in names]
        # the inner optimiser's state (momentum buffer, Adam's m and v), between gradient and step
        slots = sorted({k.split("/")[2] for k in keys if k.startswith("trace/state/")})
        order += [(f"trace/state/{s}/{n}", t) for s in slots for n in names] + [
            (f"trace/adapted/{n}", t) for n in names
        ]
    order += [("trace/query_loss", None), ("task_outer_loss", None), ("inner_losses", None)]
    if not outer_steps:
        order.append(("outer_loss", None))
    order += [(f"grad/{n}", None) for n in names] + [(f"grad/{a}", None) for a in alphas]
    order += [(f"params/{n}", None) for n in names] + [(a, None) for a in alphas]
    seen = {key for key, _ in order}
    order += [(key, None) for key in sorted(keys - seen)]  # anything else both sides hold, last
    return [(key, step) for key, step in order if key in keys]


def outer_steps(results: dict[str, Any]) -> int:
    """Outer steps of a trajectory's per-step entries (``trajectory/...`` rows); 0 for anything else."""
    rows = [np.shape(v)[0] for k, v in results.items() if k.startswith("trajectory/") and np.ndim(v)]
    return min(rows, default=0)


# --- finding the first divergence ------------------------------------------------------------------


def first_divergence(
    expected: dict[str, Any],
    actual: dict[str, Any],
    cfg: Config,
    dtype: str,
    gains: np.ndarray | None = None,
    rtol: float | None = None,
    atol: float | None = None,
) -> dict[str, Any] | None:
    """The first point (see :func:`points`) at which ``actual`` breaks the rule against ``expected``,
    as a JSON-ready dict (see :func:`describe_point`); None when every point both hold is within
    tolerance. ``gains`` [B, T]: the stability gate's per-step gains, for the gate products."""
    keys = {k for k in set(expected) & set(actual) if _numeric(expected[k]) and _numeric(actual[k])}
    steps = min(outer_steps({k: expected[k] for k in keys}), outer_steps({k: actual[k] for k in keys}))
    for key, step in points(cfg, keys, steps):
        ref, got = np.asarray(expected[key], np.float64), np.asarray(actual[key], np.float64)
        tol = tolerance(dtype, key, rtol, atol)
        if ref.shape != got.shape:
            note = f"shapes differ: {list(ref.shape)} vs {list(got.shape)}"
            return describe_point(key, step, None, math.nan, math.nan, tol, math.nan, cfg, gains, note)
        if step is not None:
            axis = 1 if key.startswith("trace/") else 0
            ref, got = np.take(ref, step, axis=axis), np.take(got, step, axis=axis)
        if ref.size == 0:
            continue
        finite = np.isfinite(ref) & np.isfinite(got)
        if not finite.all():
            index = tuple(int(i) for i in np.argwhere(~finite)[0])
            return describe_point(
                key, step, index, float(ref[index]), float(got[index]), tol, math.nan, cfg, gains, "not finite"
            )
        diff = np.abs(got - ref)
        threshold = tol.atol + tol.rtol * float(np.abs(ref).max())
        if float(diff.max()) > threshold:
            index = tuple(int(i) for i in np.unravel_index(int(np.argmax(diff)), diff.shape))
            if key == "inner_losses":  # ordered by inner step: the first step outside, not the worst
                index = tuple(int(i) for i in np.unravel_index(int(np.argmax(diff > threshold)), diff.shape))
            return describe_point(key, step, index, float(ref[index]), float(got[index]), tol, threshold, cfg, gains)
    return None


def _numeric(value: Any) -> bool:
    return isinstance(value, np.ndarray | np.generic) and np.asarray(value).dtype.kind in "fiu"


def describe_point(
    key: str,
    step: int | None,
    index: tuple[int, ...] | None,
    reference: float,
    actual: float,
    tol: Tolerance,
    threshold: float,
    cfg: Config,
    gains: np.ndarray | None,
    note: str = "",
) -> dict[str, Any]:
    """The JSON record of a divergence: where (``outer_step``, ``inner_step``, ``quantity``,
    ``parameter``, ``task``, ``index``), the two values, the tolerance, and the gate products."""
    index = index or ()
    task: int | None = None
    inner_step: int | None = None
    outer_step: int | None = None
    parameter: str | None = None
    if key.startswith("trace/"):
        quantity, _, parameter_name = key[len("trace/") :].partition("/")
        parameter = parameter_name or None
        inner_step = step
        if index:
            task, index = index[0], index[1:]
    elif key.startswith("trajectory/"):
        quantity, _, parameter_name = key[len("trajectory/") :].partition("/")
        parameter = parameter_name or None
        outer_step = step
    elif key == "outer_loss" and step is not None:
        quantity, outer_step = "outer_loss", step
    elif key == "task_outer_loss":
        quantity = key
        if index:
            task, index = index[0], index[1:]
    elif key == "inner_losses":
        quantity = key
        if index:
            inner_step, index = index[0], ()
    else:
        quantity, _, parameter_name = key.partition("/")
        parameter = parameter_name or None
    to_here, from_here = gate_products(quantity, inner_step, task, gains)
    return {
        "key": key,
        "outer_step": outer_step,
        "inner_step": inner_step,
        "quantity": quantity,
        "parameter": parameter,
        "task": task,
        "index": list(index),
        "reference": _json_float(reference),
        "actual": _json_float(actual),
        "abs_err": _json_float(abs(actual - reference)),
        "threshold": _json_float(threshold),
        "rtol": tol.rtol,
        "atol": tol.atol,
        "gate_product_to_here": to_here,
        "gate_product_from_here": from_here,
        "note": note,
    }


def gate_products(
    quantity: str, inner_step: int | None, task: int | None, gains: np.ndarray | None
) -> tuple[float | None, float | None]:
    """``∏ max(1, gain)`` over the inner steps before the point and over those after it (task
    ``task``; the worst task for a meta-batch mean); None without gains or outside the inner loop."""
    if gains is None or np.ndim(gains) != 2:
        return None, None
    g = np.maximum(1.0, np.asarray(gains, dtype=np.float64))
    T = g.shape[1]
    if inner_step is not None and quantity in ("activation", "support_loss", "inner_grad", "inner_losses"):
        split = inner_step  # before step t's update
    elif inner_step is not None and quantity == "adapted":
        split = inner_step + 1  # after it
    elif quantity in ("query_loss", "task_outer_loss", "outer_loss", "grad"):
        split = T
    else:
        return None, None
    rows = g if task is None else g[task : task + 1]
    to_here = float(np.max(np.prod(rows[:, :split], axis=1)))
    from_here = float(np.max(np.prod(rows[:, split:], axis=1)))
    return to_here, from_here


def _json_float(value: float) -> float | str:
    return value if math.isfinite(value) else str(value)


def where(d: dict[str, Any]) -> str:
    """One line: ``inner step 0, inner_grad/w1 task 2 index (3, 4): 0.1234 vs 0.124 (gate product to here 1.3)``."""
    if not d.get("found", True):
        return f"not located: {d.get('note', '')}"
    parts = []
    if d["outer_step"] is not None:
        parts.append(f"outer step {d['outer_step']}")
    if d["inner_step"] is not None:
        parts.append(f"inner step {d['inner_step']}")
    if not parts:
        parts.append("final values" if d["quantity"] in ("params", "alpha") else "after the inner loop")
    what = d["quantity"] + (f"/{d['parameter']}" if d["parameter"] else "")
    if d["task"] is not None:
        what += f" task {d['task']}"
    if d["index"]:
        what += f" index {tuple(d['index'])}"
    line = f"{', '.join(parts)}, {what}: {_num(d['reference'])} vs {_num(d['actual'])}"
    extras = []
    if d["gate_product_to_here"] is not None:
        extras.append(f"gate product to here {d['gate_product_to_here']:.3g}, after {d['gate_product_from_here']:.3g}")
    if d["note"]:
        extras.append(d["note"])
    return line + (f" ({'; '.join(extras)})" if extras else "")


def _num(value: Any) -> str:
    return f"{value:.10g}" if isinstance(value, float) else str(value)


# --- rerunning a failing case ------------------------------------------------------------------------


def traced(impl: Any, cfg: Config) -> dict[str, np.ndarray]:
    """An implementation's trace at the shared inputs of a gradient case (``step0_inputs``)."""
    params, alpha, tasks = step0_inputs(cfg)
    out = impl.trace(params, alpha, tasks, cfg)
    if not isinstance(out, dict):
        raise ContractError(f"{describe(impl)}: trace must return a dict, got {type(out).__name__}")
    return {str(k): np.asarray(v) for k, v in out.items()}


def gate_gains(cfg: Config, gauges: list[Any]) -> np.ndarray | None:
    """The stability gate's gains [B, T] in float64 from the first gauge that measures them."""
    cfg = cfg.replace(dtype="float64")
    for impl in gauges:
        if getattr(impl, "stability_gains", None) is None or unsupported_reason(impl, cfg) is not None:
            continue
        try:
            params, alpha, tasks = step0_inputs(cfg)
            return np.asarray(impl.stability_gains(params, alpha, tasks, cfg), dtype=np.float64)
        except Exception:
            return None
    return None


def locate(
    cfg: Config,
    case_kind: str,
    reference: tuple[Any, str],
    actual: tuple[Any, str],
    expected: dict[str, np.ndarray],
    got: dict[str, np.ndarray],
    dtype: str,
    gauges: list[Any],
) -> dict[str, Any]:
    """The first divergence of a failing comparison: ``reference`` and ``actual`` are
    ``(implementation, dtype)``, ``expected``/``got`` their results, ``dtype`` the tolerance class.

    Gradient cases rerun both sides with ``trace`` when both offer it; trajectories use the
    per-step entries already in the results. Returns :func:`describe_point`'s record plus
    ``found``, ``traced`` and a ``note`` saying what was not available.
    """
    notes: list[str] = []
    a, b = dict(expected), dict(got)
    gains = None
    with_trace = False
    if case_kind == "trajectory":
        lacking = [describe(impl) for impl, res in ((reference[0], a), (actual[0], b)) if not outer_steps(res)]
        if lacking:
            notes.append(f"no per-step trajectory from {', '.join(lacking)}: final values only")
    else:
        lacking = [describe(impl) for impl, _ in (reference, actual) if not callable(getattr(impl, "trace", None))]
        if lacking:
            notes.append(
                f"no trace from {', '.join(lacking)}: located by the largest difference among the returned "
                "results, not the first (offer trace() for the first divergence: docs/contract.md)"
            )
        else:
            try:
                a.update(traced(reference[0], cfg.replace(dtype=reference[1])))
                b.update(traced(actual[0], cfg.replace(dtype=actual[1])))
                with_trace = True
            except Exception as err:  # a broken trace must not hide the failure it was asked about
                notes.append(f"trace failed ({type(err).__name__}: {err}): located among the returned results only")
                a, b = dict(expected), dict(got)
        if cfg.inner_steps:
            gains = gate_gains(cfg, gauges)
    found = first_divergence(a, b, cfg, dtype, gains)
    if found is None:
        return {"found": False, "traced": with_trace, "note": "; ".join(notes + ["every point within tolerance"])}
    found["note"] = "; ".join([n for n in (found["note"], *notes) if n])
    return {"found": True, "traced": with_trace, **found}

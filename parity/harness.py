"""Run implementations of the contract on the same cases and compare them with the first.

The cases are :mod:`parity.matrix`'s (re-exported here). The first implementation is the
reference (by default the twins, JAX first): every float64 result of every other is compared
with it, and every float32 result both with its float32 and its float64 results.
Implementations are resolved lazily (``parity.registry``). A comparison that fails carries where
the pair first parts (``Row.divergence``, from ``parity.localise``: both sides rerun with their
traces when they offer them).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import numpy as np

from parity import sensitivity
from parity.checktable import TABLE_HEADER as TABLE_HEADER  # what check prints, kept importable from here
from parity.checktable import Progress
from parity.checktable import coverage_gaps as coverage_gaps
from parity.checktable import overall_ok as overall_ok
from parity.checktable import summary as summary
from parity.checktable import table_lines as table_lines
from parity.compare import StructureError, compare_trees, is_stable, rtol_factor, stability_factor
from parity.config import ConfigError
from parity.contract import ContractError, describe, unsupported_reason
from parity.devices import check_precision
from parity.localise import locate
from parity.matrix import (  # noqa: F401  (the matrix, re-exported: harness.BASE, harness.all_cases, ...)
    ALPHA_MODES,
    ALPHAS,
    AXES,
    BASE,
    INNER_STEPS,
    LOSSES,
    ORDERS,
    TRAJECTORY_STEPS,
    Case,
    all_cases,
    case_name,
    gradient_cases,
    trajectory_cases,
    with_changes,
)
from parity.patterns import explain
from parity.registry import TWINS
from parity.twins import meta_results, step0_inputs
from parity.worker import DEFAULT_TIMEOUT, WorkerError, check_timeout, load


@dataclasses.dataclass(frozen=True)
class Row:
    """One (case, implementation pair, dtype, quantity) comparison; the JSON row of ``check``."""

    case: str
    framework_pair: str  # "reference~actual", e.g. "jax~torch", "jax64~torch", "numpy~mine"
    dtype: str  # the tolerance class: dtype of the results being judged
    quantity: str  # outer_loss | inner_losses | grad/<name> | grad/alpha[/<name>] | params/<name> | alpha
    max_abs_err: float
    max_rel_err: float
    worst_index: list[int]
    rtol: float
    atol: float
    stable: bool
    stability: float  # ∏_t max(1, gain_t), worst task
    ok: bool  # within tolerance (and finite)
    verdict: str = ""  # ok | unstable | FAIL | unsupported | not compared; derived from the numbers when empty
    detail: str = ""  # why: an exception's message, the reason a case is unsupported
    # FAIL rows: where the pair first parts (parity.localise)
    divergence: dict[str, Any] | None = dataclasses.field(default=None, compare=False)

    def __post_init__(self) -> None:
        if not self.verdict:
            verdict = "ok" if self.ok else ("unstable" if excused(self) else "FAIL")
            object.__setattr__(self, "verdict", verdict)


def excused(row: Row) -> bool:
    """Unstable cases are reported, not asserted tight; a non-finite value is never excused."""
    return not row.stable and math.isfinite(row.max_abs_err)


# --- running one implementation ---------------------------------------------------------------


class Unsupported(Exception):
    """An implementation does not support a case (its reason); reported, never counted as passing."""


def results_for(impl: Any, case: Case, dtype: str) -> dict[str, np.ndarray]:
    """One implementation's results on a case in ``dtype``, flat NumPy leaves.

    Gradient cases: losses and meta-gradients at the initial parameters on the step-0 meta-batch.
    Trajectories: parameters and α after ``case.steps`` outer steps, and every step's outer loss.
    Raises :class:`Unsupported` with the reason when the implementation cannot run the case.
    """
    cfg = case.cfg.replace(dtype=dtype)
    reason = unsupported_reason(impl, cfg)
    if reason is not None:
        raise Unsupported(reason)
    if case.kind == "trajectory":
        train = getattr(impl, "train_trajectory", None)
        if train is None:
            raise Unsupported("no train_trajectory capability (trajectories need training)")
        results = {k: np.asarray(v) for k, v in train(cfg, case.steps).items()}
        check_dtypes(results, cfg.dtype, describe(impl))
        return results
    params, alpha, tasks = step0_inputs(cfg)
    return meta_results(impl, cfg, params, alpha, tasks)


def check_dtypes(results: dict[str, np.ndarray], dtype: str, who: str) -> None:
    """An implementation that silently changed precision is a failure of its own, not a tolerance question."""
    for name, value in results.items():
        if np.asarray(value).dtype != np.dtype(dtype):
            raise ContractError(f"{who} returned {name} as {np.asarray(value).dtype}, expected {dtype}")


def case_stability(case: Case, gauges: list[Any]) -> float:
    """The stability gate's product for a case, in float64, from the first implementation that
    measures gains (``stability_gains``); NaN when none of them does."""
    if case.kind == "trajectory" or case.cfg.inner_steps == 0:
        return 1.0
    for impl in gauges:
        if getattr(impl, "stability_gains", None) is None or unsupported_reason(impl, case.cfg) is not None:
            continue
        params, alpha, tasks = step0_inputs(case.cfg)
        return stability_factor(impl.stability_gains(params, alpha, tasks, case.cfg))
    return math.nan


# --- comparing --------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Side:
    """One side of a comparison: an implementation in a dtype, with its label (``jax``, ``jax64``)."""

    label: str
    impl: Any
    dtype: str


def comparisons(impls: list[Any]) -> list[tuple[str, Side, Side]]:
    """What a case compares: for the reference R and each other implementation X, float64 R~X; float32
    R~X, R64~R and R64~X (the float32 results held to the float64 reference too).

    Returns ``(tolerance dtype, reference side, actual side)`` triples.
    """
    ref, others = impls[0], impls[1:]
    r64, r32 = Side(ref.name, ref, "float64"), Side(ref.name, ref, "float32")
    ref64 = Side(f"{ref.name}64", ref, "float64")
    pairs = [("float64", r64, Side(x.name, x, "float64")) for x in others]
    pairs += [("float32", r32, Side(x.name, x, "float32")) for x in others]
    pairs.append(("float32", ref64, r32))
    pairs += [("float32", ref64, Side(x.name, x, "float32")) for x in others]
    return pairs


def run_case(case: Case, impls: list[Any], gauges: list[Any] | None = None) -> list[Row]:
    """All comparisons of one case (see :func:`comparisons`); an implementation that raises or
    returns the wrong structure gives a FAIL row with its message, one that cannot run the case an
    ``unsupported`` row with its reason."""
    for impl in {id(i): i for i in [*impls, *(gauges or [])]}.values():
        begin = getattr(impl, "begin_case", None)  # a worker's time limit runs per case
        if begin is not None:
            begin()
    gauges = gauges if gauges is not None else impls
    gate = _gate(case, gauges)
    cache: dict[tuple[int, str], dict[str, np.ndarray] | BaseException] = {}

    def results(side: Side) -> dict[str, np.ndarray] | BaseException:
        key = (id(side.impl), side.dtype)
        if key not in cache:
            try:
                cache[key] = results_for(side.impl, case, side.dtype)
            except Exception as err:  # unsupported, or the implementation's own failure: a result, not a crash
                cache[key] = err
        return cache[key]

    # The case's reference: the first implementation that can run it (an oracle without training
    # leaves the trajectories to the twins); those before it are reported unsupported once.
    runnable = [impl for impl in impls if _can_run(impl, case)]
    ordered = runnable + [impl for impl in impls if impl not in runnable] if runnable else impls
    rows: list[Row] = []
    for dtype, ref, actual in comparisons(ordered):
        rows += _pair_rows(case, ref, actual, dtype, results(ref), results(actual), gate, gauges)
    return _excuse_sensitive(case, rows, ordered[0], results(Side(ordered[0].name, ordered[0], "float64")))


def _excuse_sensitive(case: Case, rows: list[Row], reference: Any, base: Any) -> list[Row]:
    """A failure the case's reference shows itself under a rounding-sized change of α is unstable,
    not FAIL (``parity.sensitivity``); measured only where something failed."""
    if isinstance(base, BaseException):  # the reference's float64 results failed: nothing to measure from
        return rows
    for dtype in sorted({r.dtype for r in rows if r.verdict == "FAIL" and math.isfinite(r.max_abs_err)}):
        try:
            own = sensitivity.self_differences(case, dtype, base, lambda c: results_for(reference, c, "float64"))
        except Exception:  # the reference cannot rerun: the failures stand
            return rows
        rows = sensitivity.excuse(rows, own, dtype)
    return sensitivity.excuse_float32(rows, reference.name)


@dataclasses.dataclass(frozen=True)
class _Gate:
    """The case's stability gate: the product of the gains, whether it is stable, and a note."""

    factor: float
    stable: bool
    note: str


def _gate(case: Case, gauges: list[Any]) -> _Gate:
    try:
        factor = case_stability(case, gauges)
    except Exception as err:  # a gauge that fails: the case is still compared, the gate unknown
        return _Gate(math.nan, True, f"stability gains failed: {type(err).__name__}: {err}")
    return _Gate(factor, math.isnan(factor) or is_stable(factor), "")


def _pair_rows(
    case: Case,
    ref: Side,
    actual: Side,
    dtype: str,
    expected: dict[str, np.ndarray] | BaseException,
    got: dict[str, np.ndarray] | BaseException,
    gate: _Gate,
    gauges: list[Any],
) -> list[Row]:
    """The rows of one (reference, actual, dtype) comparison of a case."""
    pair = f"{ref.label}~{actual.label}"

    def note_row(quantity: str, verdict: str, detail: str) -> Row:
        nan = math.nan
        return Row(
            case.name,
            pair,
            dtype,
            quantity,
            nan,
            nan,
            [],
            0.0,
            0.0,
            gate.stable,
            gate.factor,
            False,
            verdict=verdict,
            detail=detail,
        )

    problem = next((r for r in (expected, got) if isinstance(r, BaseException)), None)
    if problem is not None:
        who = ref.impl if problem is expected else actual.impl
        if isinstance(problem, Unsupported):
            side_dtype = actual.dtype if who is actual.impl else ref.dtype
            return [note_row("-", "unsupported", f"{describe(who)} ({side_dtype}): {problem}")]
        happened = (
            f": {problem}" if isinstance(problem, WorkerError) else f" raised {type(problem).__name__}: {problem}"
        )
        return [note_row("error", "FAIL", f"{describe(who)}{happened}")]
    assert isinstance(expected, dict) and isinstance(got, dict)
    expected, got, skipped = optional_entries(case, ref, actual, expected, got)
    rows = [note_row(quantity, "not compared", why) for quantity, why in skipped]
    try:
        leaves = compare_trees(expected, got, dtype, rtol_factor(case.cfg, dtype))
    except StructureError as err:
        return [*rows, note_row("structure", "FAIL", str(err))]
    pair_rows = [_leaf_row(case.name, pair, dtype, leaf, gate) for leaf in leaves]
    if any(r.verdict == "FAIL" and not math.isnan(r.max_abs_err) for r in pair_rows):
        divergence = _diagnose(case, ref, actual, expected, got, dtype, pair_rows, gauges)
        pair_rows = [dataclasses.replace(r, divergence=divergence) if r.verdict == "FAIL" else r for r in pair_rows]
    return rows + pair_rows


def _leaf_row(case: str, pair: str, dtype: str, leaf: Any, gate: _Gate) -> Row:
    return Row(
        case=case,
        framework_pair=pair,
        dtype=dtype,
        quantity=leaf.name,
        max_abs_err=leaf.max_abs_err,
        max_rel_err=leaf.max_rel_err,
        worst_index=list(leaf.worst_index),
        rtol=leaf.tol.rtol,
        atol=leaf.tol.atol,
        stable=gate.stable,
        stability=gate.factor,
        ok=leaf.ok,
        detail=gate.note,
    )


def _diagnose(
    case: Case,
    ref: Side,
    actual: Side,
    expected: dict[str, np.ndarray],
    got: dict[str, np.ndarray],
    dtype: str,
    pair_rows: list[Row],
    gauges: list[Any],
) -> dict[str, Any]:
    """Where a failing pair first parts (``parity.localise``) and what the failure's pattern means."""
    try:
        divergence = locate(
            case.cfg, case.kind, (ref.impl, ref.dtype), (actual.impl, actual.dtype), expected, got, dtype, gauges
        )
    except Exception as err:  # localising is a diagnosis: it never hides the failure itself
        divergence = {"found": False, "traced": False, "note": f"{type(err).__name__}: {err}"}
    failing = {r.quantity for r in pair_rows if r.verdict == "FAIL"}
    divergence["pattern"] = explain(case.cfg, expected, got, failing, dtype)
    return divergence


def optional_entries(
    case: Case, ref: Side, actual: Side, expected: dict[str, np.ndarray], got: dict[str, np.ndarray]
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], list[tuple[str, str]]]:
    """Leave out what the contract makes optional when a side lacks it: dL/dα under a fixed α, a
    trajectory's per-step entries. Returns both trees and ``(quantity, why)`` of what was left out."""
    skipped: list[tuple[str, str]] = []
    optional = [k for k in set(expected) ^ set(got) if k.startswith("trajectory/")]
    if case.cfg.alpha_mode == "fixed":
        optional += [k for k in set(expected) ^ set(got) if k == "grad/alpha"]
    if not optional:
        return expected, got, skipped
    for group in sorted({"grad/alpha" if k == "grad/alpha" else "trajectory/*" for k in optional}):
        lacking = [
            s
            for s, tree in ((ref, expected), (actual, got))
            if any(_in_group(k, group) for k in optional if k not in tree)
        ]
        what = "dL/dalpha under a fixed alpha is" if group == "grad/alpha" else "per-step trajectory entries are"
        skipped.append((group, f"{what} optional; {', '.join(describe(s.impl) for s in lacking)} returned none"))
    drop = set(optional)
    return (
        {k: v for k, v in expected.items() if k not in drop},
        {k: v for k, v in got.items() if k not in drop},
        skipped,
    )


def _in_group(key: str, group: str) -> bool:
    return key == group or (group == "trajectory/*" and key.startswith("trajectory/"))


def _can_run(impl: Any, case: Case) -> bool:
    if case.kind == "trajectory" and getattr(impl, "train_trajectory", None) is None:
        return False
    try:
        return unsupported_reason(impl, case.cfg) is None
    except Exception:  # a supports() that raises: its FAIL row comes from running the case
        return False


DEFAULT_IMPLS = TWINS  # a plain `check`: the twins, the first the reference


def load_impls(
    specs: list[str] | None = None,
    precision: str = "highest",
    device: str | None = None,
    case_timeout: float = DEFAULT_TIMEOUT,
) -> list[Any]:
    """Resolve SPECs (``parity.registry``); the twins (on ``device``) by default. Anything but a
    built-in runs in a worker process (``parity.worker``) with ``case_timeout`` seconds per case.
    Implementations that take a precision (the twins) run under ``precision``; a device they cannot
    see is refused now."""
    if specs is None:
        specs = [name if device is None else f"{name}@{device}" for name in DEFAULT_IMPLS]
    case_timeout = check_timeout(case_timeout)
    impls = [load(spec, case_timeout) for spec in specs]
    if len(impls) < 2:
        raise ConfigError("impl", "give at least two implementations: a reference first, then one to check")
    names = [impl.name for impl in impls]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ConfigError("impl", f"{duplicates} named twice; each implementation needs its own name")
    for impl in impls:
        if hasattr(impl, "precision"):
            impl.precision = check_precision(precision)
        check_device = getattr(impl, "check_device", None)
        if check_device is not None:
            check_device()
    return impls


def default_groups(precision: str = "highest") -> list[list[Any]]:
    """What a plain ``check`` compares: the twins (on the CPU); where a GPU is visible, the twins on
    the CPU, both twins on the GPU, and each twin's CPU results against its GPU results
    (``jax@cpu~jax@gpu``, ``torch@cpu~torch@gpu``)."""
    plain = load_impls(None, precision)
    if not all(getattr(impl, "gpu_visible", lambda: False)() for impl in plain):
        return [plain]
    cpu = load_impls([f"{name}@cpu" for name in DEFAULT_IMPLS], precision)
    gpu = load_impls([f"{name}@gpu" for name in DEFAULT_IMPLS], precision)
    return [cpu, gpu, *([c, g] for c, g in zip(cpu, gpu, strict=True))]


def run_check(
    cases: list[Case],
    on_case: Callable[[Case, list[Row]], None] | None = None,
    impls: list[Any] | None = None,
    groups: list[list[Any]] | None = None,
    show_progress: bool = True,
) -> list[Row]:
    """Run every case in every implementation (the first of a group is its reference; default: the
    twins); with ``groups``, each group in turn. ``on_case`` sees each case's rows as they come;
    a case counter with the time left goes to standard error (``checktable.Progress``)."""
    if groups is None:
        groups = [impls if impls is not None else load_impls()]
    rows: list[Row] = []
    progress = Progress(len(cases)) if show_progress else None
    for done, case in enumerate(cases, 1):
        case_rows = [row for group in groups for row in run_case(case, group)]
        rows.extend(case_rows)
        if progress is not None:
            progress.clear()
        if on_case is not None:
            on_case(case, case_rows)
        if progress is not None:
            progress.update(done)
    return rows


def row_dict(row: Row) -> dict[str, Any]:
    out = dataclasses.asdict(row)
    if out["divergence"] is None:
        del out["divergence"]
    for key in ("max_abs_err", "max_rel_err", "stability"):
        if not math.isfinite(out[key]):
            out[key] = str(out[key])  # JSON has no inf / nan; keep them visible as strings
    return out

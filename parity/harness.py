"""Run both twins on the same cases and compare them (the twins are imported lazily).

A case is named data: a config (always described in float64; the float32 runs replace the
dtype) and a kind, ``gradient`` (losses and meta-gradients at the initial parameters on the
step-0 meta-batch) or ``trajectory`` (parameters and α after N outer steps from the same
start). Every float64 result is compared between the twins; every float32 result is compared
between the twins and with the float64 JAX reference.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import math
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from parity import training
from parity.checkpoint import golden_arrays
from parity.compare import StructureError, compare_trees, is_stable, stability_factor
from parity.config import SEED_ALPHA, Config
from parity.init import init_alpha, init_params
from parity.tasks import sample_batch
from parity.twins import Twin, load

# The matrix DESIGN.md asks for.
INNER_STEPS = (0, 1, 2, 3, 5, 10)
ALPHAS = (0.001, 0.01, 0.05, 0.1)
LOSSES = ("l1", "mse")
ALPHA_MODES = ("fixed", "scalar", "per_parameter")
ORDERS = ("second", "first")

# Four tasks per meta-batch, so that batching over tasks is exercised, at the seed's sizes.
BASE = SEED_ALPHA.replace(meta_batch=4, dtype="float64", seed=7)
TRAJECTORY_STEPS = 20


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    cfg: Config  # float64; float32 runs use cfg.replace(dtype="float32")
    kind: str = "gradient"  # gradient | trajectory
    steps: int = 0  # trajectory only: outer steps


@dataclasses.dataclass(frozen=True)
class Row:
    """One (case, framework pair, dtype, quantity) comparison; the JSON row of ``check``."""

    case: str
    framework_pair: str  # "reference~actual", e.g. "jax~torch", "jax64~torch"
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

    @property
    def verdict(self) -> str:
        if self.ok:
            return "ok"
        return "unstable" if excused(self) else "FAIL"


def excused(row: Row) -> bool:
    """Unstable cases are reported, not asserted tight; a non-finite value is never excused."""
    return not row.stable and math.isfinite(row.max_abs_err)


def case_name(T: int, alpha: float, loss: str, mode: str, order: str) -> str:
    return f"T{T}-a{alpha:g}-{loss}-{mode}-{order}"


def gradient_cases(quick: bool = False) -> list[Case]:
    """The full matrix, or (``quick``) a covering subset in which every value of every axis appears."""
    combos: Iterable[tuple[int, float, str, str, str]]
    if quick:
        # Each row takes the i-th value of every axis (cycling): all values appear at least once.
        axes = (INNER_STEPS, ALPHAS, LOSSES, ALPHA_MODES, ORDERS)
        n = max(len(a) for a in axes)
        combos = [tuple(a[i % len(a)] for a in axes) for i in range(n)]  # type: ignore[misc]
    else:
        combos = itertools.product(INNER_STEPS, ALPHAS, LOSSES, ALPHA_MODES, ORDERS)
    cases = []
    for T, alpha, loss, mode, order in combos:
        if T == 0 and order == "first":
            continue  # identical to second order: no inner gradient to hold constant
        cfg = BASE.replace(inner_steps=T, alpha_init=alpha, loss=loss, alpha_mode=mode, first_order=order == "first")
        cases.append(Case(case_name(T, alpha, loss, mode, order), cfg))
    return cases


def trajectory_cases() -> list[Case]:
    """Training trajectories: the seed's learned-α setting, and Adam + MSE + ReLU with Meta-SGD's α."""
    seed_alpha = BASE.replace(inner_steps=5, alpha_mode="scalar", alpha_init=0.1)
    meta_sgd = BASE.replace(
        inner_steps=2,
        loss="mse",
        activation="relu",
        alpha_mode="per_parameter",
        alpha_init=0.01,
        outer_optimizer="adam",
        outer_lr=1e-3,
        alpha_lr=1e-3,
    )
    return [
        Case("trajectory-seed-alpha", seed_alpha, "trajectory", TRAJECTORY_STEPS),
        Case("trajectory-meta-sgd-style", meta_sgd, "trajectory", TRAJECTORY_STEPS),
    ]


def all_cases(quick: bool = False) -> list[Case]:
    return gradient_cases(quick) + trajectory_cases()


# --- running one twin ------------------------------------------------------------------------


def gradient_results(twin: Twin, cfg: Config) -> dict[str, np.ndarray]:
    """Losses and meta-gradients at the initial parameters on the step-0 meta-batch (NumPy out)."""
    arrays = golden_arrays(twin, cfg)
    results = {k: v for k, v in arrays.items() if k in ("outer_loss", "inner_losses") or k.startswith("grad/")}
    check_dtypes(results, cfg.dtype, twin.name)
    return results


def trajectory_results(twin: Twin, cfg: Config, steps: int) -> dict[str, np.ndarray]:
    """Parameters and α after ``steps`` outer steps, and the outer loss at every step."""
    losses: list[np.ndarray] = []
    state = training.run(twin, cfg, iterations=steps, chunk=steps, on_chunk=lambda _, m: losses.append(m["outer_loss"]))
    results = training.final_values(twin, state)
    results["outer_loss"] = np.concatenate(losses)
    check_dtypes(results, cfg.dtype, twin.name)
    return results


def check_dtypes(results: dict[str, np.ndarray], dtype: str, framework: str) -> None:
    """A twin that silently changed precision is a failure of its own, not a tolerance question."""
    for name, value in results.items():
        if np.asarray(value).dtype != np.dtype(dtype):
            raise TypeError(f"{framework} returned {name} as {np.asarray(value).dtype}, expected {dtype}")


def case_stability(case: Case, reference: Twin) -> float:
    """The stability gate's product for a case, from the float64 reference twin."""
    if case.kind == "trajectory" or case.cfg.inner_steps == 0:
        return 1.0
    cfg = case.cfg
    gains = reference.meta.inner_step_gains(
        reference.to_arrays(init_params(cfg), "float64"),
        reference.to_arrays(init_alpha(cfg), "float64"),
        reference.to_arrays(tuple(sample_batch(cfg, 0)[:4]), "float64"),
        cfg,
    )
    return stability_factor(reference.to_numpy(gains))


# --- comparing --------------------------------------------------------------------------------


def run_case(case: Case, twins: dict[str, Twin]) -> list[Row]:
    """All comparisons of one case: float64 jax~torch; float32 jax~torch, jax64~jax, jax64~torch."""
    reference = twins["jax"]

    def results(twin: Twin, dtype: str) -> dict[str, np.ndarray]:
        cfg = case.cfg.replace(dtype=dtype)
        if case.kind == "trajectory":
            return trajectory_results(twin, cfg, case.steps)
        return gradient_results(twin, cfg)

    factor = case_stability(case, reference)
    stable = is_stable(factor)
    r64 = {name: results(twin, "float64") for name, twin in twins.items()}
    r32 = {name: results(twin, "float32") for name, twin in twins.items()}
    pairs = [
        ("jax~torch", "float64", r64["jax"], r64["torch"]),
        ("jax~torch", "float32", r32["jax"], r32["torch"]),
        ("jax64~jax", "float32", r64["jax"], r32["jax"]),
        ("jax64~torch", "float32", r64["jax"], r32["torch"]),
    ]
    rows = []
    for pair, dtype, expected, actual in pairs:
        for leaf in compare_trees(expected, actual, dtype):
            rows.append(
                Row(
                    case=case.name,
                    framework_pair=pair,
                    dtype=dtype,
                    quantity=leaf.name,
                    max_abs_err=leaf.max_abs_err,
                    max_rel_err=leaf.max_rel_err,
                    worst_index=list(leaf.worst_index),
                    rtol=leaf.tol.rtol,
                    atol=leaf.tol.atol,
                    stable=stable,
                    stability=factor,
                    ok=leaf.ok,
                )
            )
    return rows


def run_check(
    cases: list[Case],
    on_case: Callable[[Case, list[Row]], None] | None = None,
    device: str | None = None,
    precision: str = "highest",
) -> list[Row]:
    """Run every case in both twins on ``device``; ``on_case`` sees each case's rows as they come.

    ``precision`` (highest | default) holds inside the run only (each twin's ``precision_scope``).
    """
    twins = {name: load(name, "float64", device) for name in ("jax", "torch")}
    rows: list[Row] = []
    with contextlib.ExitStack() as scopes:
        for twin in twins.values():
            scopes.enter_context(twin.precision_scope(precision))
        for case in cases:
            try:
                case_rows = run_case(case, twins)
            except StructureError as err:
                raise StructureError(f"{case.name}: {err}") from None
            rows.extend(case_rows)
            if on_case is not None:
                on_case(case, case_rows)
    return rows


def overall_ok(rows: list[Row]) -> bool:
    return all(row.ok or excused(row) for row in rows)


def row_dict(row: Row) -> dict[str, Any]:
    out = dataclasses.asdict(row)
    out["verdict"] = row.verdict
    for key in ("max_abs_err", "max_rel_err", "stability"):
        if not math.isfinite(out[key]):
            out[key] = str(out[key])  # JSON has no inf / nan; keep them visible as strings
    return out


# --- the printed table ------------------------------------------------------------------------------

TABLE_HEADER = (
    f"{'case':<34} {'pair':<12} {'dtype':<8} {'worst quantity':<16} {'max abs err':>11} "
    f"{'max rel err':>11} {'rtol':>7} {'gain∏':>7}  verdict"
)


def _badness(row: Row) -> float:
    """How close a row is to its tolerance: 1 means exactly at it."""
    if not math.isfinite(row.max_abs_err):
        return math.inf
    return row.max_rel_err / row.rtol if row.rtol else 0.0


def table_lines(rows: list[Row], verbose: bool = False) -> list[str]:
    """A line per (case, pair, dtype) naming its worst quantity; every row with ``verbose``."""
    if verbose:
        shown = rows
    else:
        groups: dict[tuple[str, str, str], list[Row]] = {}
        for row in rows:
            groups.setdefault((row.case, row.framework_pair, row.dtype), []).append(row)
        # a failing row first, else the one nearest its tolerance
        shown = [max(g, key=lambda r: (r.verdict == "FAIL", _badness(r))) for g in groups.values()]
    return [
        f"{r.case:<34} {r.framework_pair:<12} {r.dtype:<8} {r.quantity:<16} {r.max_abs_err:>11.2e} "
        f"{r.max_rel_err:>11.2e} {r.rtol:>7.0e} {r.stability:>7.3g}  {r.verdict}"
        for r in shown
    ]


def summary(rows: list[Row]) -> str:
    cases = {r.case for r in rows}
    failed = sorted({r.case for r in rows if r.verdict == "FAIL"})
    unstable = sorted({r.case for r in rows if not r.stable})
    worst64 = max((r.max_rel_err for r in rows if r.dtype == "float64" and r.stable), default=0.0)
    verdict = "PASS" if not failed else "FAIL"
    line = (
        f"{verdict}: {len(cases)} cases, {len(rows)} comparisons; {len(failed)} failing, "
        f"{len(unstable)} unstable (reported, not asserted); worst stable float64 relative error {worst64:.2e}"
    )
    if failed:
        line += "\nfailing cases: " + ", ".join(failed)
    return line

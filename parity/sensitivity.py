"""The reference's own sensitivity: is a case too sensitive for its dtype's tolerance to hold?

Two correct implementations differ by their rounding, which a computation may amplify. The
stability gate (``parity.compare.stability_factor``) bounds that amplification for a plain gradient
step from the inner loop's Hessian; it does not see an Adam inner loop's normalisation (its step
``m̂ / (√v̂ + ε)`` turns a gradient of 1e-12 into a step as large as one of 1: the derivative of
the step is ~1/|g|), the kinks of an L1 loss, or a training trajectory that amplifies a difference
outer step after outer step. Measured on the quick matrix's seed-alpha trajectory with an Adam
inner loop: α changed by 1e-13 relative moves the parameters after 20 outer steps by O(1).

So when a comparison fails, the case's reference is asked how far it moves itself: it runs again
in float64 with α changed by a few units of the compared dtype's rounding (±8u, u = 2^-24 in
float32, 2^-53 in float64), and each result is compared with its unperturbed self under the same
rule. A failing result whose reference moves by more than that result's tolerance is *unstable*:
reported with both numbers, not asserted. One that the reference holds steady stays a failure, so
a bug is never excused by a sensitivity the reference does not show, and a non-finite value never
is. The reference, not the implementation under test, is measured: the code under test cannot buy
its own excuse.

Float32 rounding happens at every operation, not only in α, and a long computation (an Adam inner
loop trained for 20 outer steps) can carry it past the float32 tolerance in every implementation
alike (measured: the quick matrix's softplus trajectory with an Adam inner loop, float32 against
float64, 1.7e-3 to 2.2e-3 relative in JAX and PyTorch depending on thread count, against 2e-3).
So a float32 failure is also excused where the reference's own float32 result is already within a
factor :data:`FLOAT32_PEERS` of the tolerance and the failing result is no more than
:data:`FLOAT32_PEERS` times as far as the reference's own: the question float32 can answer there
is whether an implementation is as precise as the reference, not whether it meets a bound that
rounding alone nearly exhausts.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import numpy as np

from parity.compare import LeafResult, compare_trees, rtol_factor

# Relative change of α: this many units of the compared dtype's rounding, up and down.
UNITS = 8.0
UNIT_ROUNDOFF = {"float32": 2.0**-24, "float64": 2.0**-53}


def perturbation(dtype: str) -> float:
    return UNITS * UNIT_ROUNDOFF[dtype]


def self_differences(
    case: Any, dtype: str, base: dict[str, np.ndarray], run: Callable[[Any], dict[str, np.ndarray]]
) -> dict[str, LeafResult]:
    """Per result key, the larger of the reference's differences from ``base`` (its own float64
    results) when α is changed by ± :func:`perturbation` (``dtype``); ``run(case)`` gives float64
    results of a case."""
    worst: dict[str, LeafResult] = {}
    delta = perturbation(dtype)
    for sign in (1.0, -1.0):
        alpha = case.cfg.alpha_init * (1.0 + sign * delta)
        moved = run(dataclasses.replace(case, cfg=case.cfg.replace(alpha_init=alpha)))
        for leaf in compare_trees(base, moved, dtype, rtol_factor(case.cfg, dtype)):
            if leaf.name not in worst or _rel(leaf) > _rel(worst[leaf.name]):
                worst[leaf.name] = leaf
    return worst


def excuse(rows: list[Any], own: dict[str, LeafResult], dtype: str) -> list[Any]:
    """``rows`` with each finite FAIL of ``dtype`` that its reference's own difference (``own``)
    already puts outside the tolerance marked unstable, with both numbers in its detail."""
    out = []
    for row in rows:
        leaf = own.get(row.quantity)
        if row.verdict == "FAIL" and row.dtype == dtype and math.isfinite(row.max_abs_err) and _moves(leaf):
            assert leaf is not None
            amplification = _rel(leaf) / perturbation(dtype)
            note = (
                f"the reference itself moves {_rel(leaf):.1e} relative when α changes by {perturbation(dtype):.1e}"
                f" (amplification {amplification:.1e}): too sensitive for the {dtype} tolerance, reported, not asserted"
            )
            row = _unstable(row, note, stability=amplification)
        out.append(row)
    return out


# A float32 result this many times further from float64 than the reference's own float32 result is
# is worse than rounding explains, however ill-conditioned the case.
FLOAT32_PEERS = 4.0


def excuse_float32(rows: list[Any], reference: str) -> list[Any]:
    """``rows`` with each finite float32 FAIL excused where the reference's own float32 result of
    that quantity (row ``<reference>64~<reference>``) is already at least 1/:data:`FLOAT32_PEERS`
    of the relative tolerance from its float64 one, and the failing one is within
    :data:`FLOAT32_PEERS` times the reference's own: rounding alone takes the tolerance on this
    case, and the implementation is nearly as precise as the reference. (So nothing is excused
    where the reference's float32 is well inside the tolerance: there a failing pair could only be
    excused up to the tolerance itself.) The reference's own row is excused with them. An
    implementation whose float32 is worse than that still fails."""
    own_pair = f"{reference}64~{reference}"
    own = {r.quantity: r for r in rows if r.framework_pair == own_pair and r.dtype == "float32"}
    out = []
    for row in rows:
        mine = own.get(row.quantity)
        if (
            row.verdict == "FAIL"
            and row.dtype == "float32"
            and mine is not None
            and mine.max_rel_err * FLOAT32_PEERS >= mine.rtol  # rounding alone takes ≥ 1/4 of the budget
            and math.isfinite(row.max_abs_err)
            and math.isfinite(mine.max_rel_err)
            and row.max_rel_err <= FLOAT32_PEERS * mine.max_rel_err
        ):
            note = (
                f"{reference}'s own float32 result is {mine.max_rel_err:.1e} relative from its float64 one: float32"
                f" cannot hold the tolerance on this case, and this pair is within {FLOAT32_PEERS:g}x of that"
            )
            row = _unstable(row, note)
        out.append(row)
    return out


def _unstable(row: Any, note: str, **changes: Any) -> Any:
    """``row`` re-verdicted as unstable (its verdict derived again), ``note`` added to its detail."""
    detail = f"{row.detail}; {note}" if row.detail else note
    return dataclasses.replace(row, stable=False, verdict="", detail=detail, **changes)


def _moves(leaf: LeafResult | None) -> bool:
    """The reference moved by more than the tolerance (a non-finite self-difference excuses nothing)."""
    return leaf is not None and leaf.finite and not leaf.ok


def _rel(leaf: LeafResult) -> float:
    return leaf.max_rel_err if math.isfinite(leaf.max_rel_err) else math.inf

"""Tree comparison, the one comparison rule and the stability gate (NumPy only).

A comparison passes when ``max|a − b| ≤ atol + rtol·max|ref|`` over a whole leaf, ``ref`` being
the reference side. Non-finite values never pass and are never cleaned up.

Which tolerance a result key gets is decided here and nowhere else (:func:`rule_for`): the
harness, localisation, ``diff``, the golden files' ``rule`` entry and the pytest plugin all ask
this module, so a key cannot be a gradient in one place and a state in another.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import math
from collections.abc import Mapping
from typing import Any

import numpy as np

# docs/design.md, "Numerics". Keyed by (dtype, kind), kind = "loss" | "grad" | "state".
TOLERANCES: dict[tuple[str, str], tuple[float, float]] = {
    ("float64", "loss"): (1e-10, 1e-12),
    ("float64", "grad"): (1e-10, 1e-12),
    ("float64", "state"): (1e-10, 1e-12),
    ("float32", "loss"): (1e-5, 1e-6),
    ("float32", "grad"): (2e-4, 1e-6),
    ("float32", "state"): (2e-4, 1e-6),
}

# The kind of a key: the first kind with a matching pattern (fnmatch; ``*`` crosses ``/``).
# Gradients come first so that an inner gradient of the trace is a gradient although it lives
# under ``trace/``; losses are matched by their suffix so that a user's own ``..._loss`` key in a
# golden fixture keeps the loss tolerance; everything else (parameters, α, adapted parameters,
# trajectories) is state.
KIND_PATTERNS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("grad", ("grad/*", "trace/inner_grad/*")),
    ("loss", ("*loss", "*losses")),
    ("state", ("*",)),
)

# Above this product of per-step gains, float32 differences grow with it: reported, not asserted.
STABILITY_LIMIT = 1e2


@dataclasses.dataclass(frozen=True)
class Tolerance:
    rtol: float
    atol: float


@dataclasses.dataclass(frozen=True)
class KeyRule:
    """How one result key is compared: its kind (``loss``, ``grad``, ``state``) and tolerance."""

    kind: str
    tol: Tolerance


def key_kind(key: str) -> str:
    """``loss``, ``grad`` or ``state``: the tolerance class of a result, trace or golden-file key."""
    for kind, patterns in KIND_PATTERNS:
        if any(fnmatch.fnmatchcase(key, pattern) for pattern in patterns):
            return kind
    raise AssertionError("unreachable: the last kind matches every key")


def rule_for(key: str, dtype: str, rtol: float | None = None, atol: float | None = None) -> KeyRule:
    """The comparison rule of ``key`` in ``dtype``; ``rtol``/``atol`` override the documented ones
    (``diff --rtol/--atol``). A dtype other than float32/float64 is a ValueError naming it."""
    kind = key_kind(key)
    if (dtype, kind) not in TOLERANCES:
        raise ValueError(f"dtype: no tolerance for {dtype!r}; allowed: float64, float32")
    default_rtol, default_atol = TOLERANCES[(dtype, kind)]
    return KeyRule(kind, Tolerance(default_rtol if rtol is None else rtol, default_atol if atol is None else atol))


def tolerance(dtype: str, quantity: str, rtol: float | None = None, atol: float | None = None) -> Tolerance:
    """The tolerance of a key (``outer_loss``, ``grad/...``, ``trace/inner_grad/...``, ``params/...``)."""
    return rule_for(quantity, dtype, rtol, atol).tol


def rule_description() -> dict[str, Any]:
    """The rule as data (the golden files' ``rule`` entry publishes it): measure, tolerances, kinds."""
    kinds = tuple(kind for kind, _ in KIND_PATTERNS)
    return {
        "measure": "max|a - b| <= atol + rtol * max|ref|",
        "over": "each entry as a whole; ref is the reference side's entry; a NaN or infinity never passes",
        "tolerances": {
            dtype: {k: {"rtol": TOLERANCES[(dtype, k)][0], "atol": TOLERANCES[(dtype, k)][1]} for k in kinds}
            for dtype in ("float64", "float32")
        },
        "kinds": {kind: list(patterns) for kind, patterns in KIND_PATTERNS},
        "kind_of_a_key": "the first kind in 'kinds' with a pattern (fnmatch, * crosses /) that matches the key",
    }


@dataclasses.dataclass(frozen=True)
class LeafResult:
    """How far one leaf of ``actual`` is from ``expected``."""

    name: str
    max_abs_err: float
    max_rel_err: float  # max|a − b| / max|ref|
    worst_index: tuple[int, ...]
    ref_scale: float  # max|ref|
    tol: Tolerance
    finite: bool

    @property
    def ok(self) -> bool:
        return self.finite and self.max_abs_err <= self.tol.atol + self.tol.rtol * self.ref_scale


class StructureError(ValueError):
    """The two trees do not hold the same leaves with the same shapes."""


def compare_leaf(name: str, expected: np.ndarray, actual: np.ndarray, tol: Tolerance) -> LeafResult:
    expected = np.asarray(expected, dtype=np.float64)
    actual = np.asarray(actual, dtype=np.float64)
    if expected.shape != actual.shape:
        raise StructureError(f"{name}: shape {actual.shape} differs from the reference's {expected.shape}")
    finite = bool(np.all(np.isfinite(expected)) and np.all(np.isfinite(actual)))
    if expected.size == 0:
        return LeafResult(name, 0.0, 0.0, (), 0.0, tol, finite)
    if not finite:
        return LeafResult(name, math.inf, math.inf, (), math.nan, tol, False)
    diff = np.abs(actual - expected)
    worst = np.unravel_index(int(np.argmax(diff)), diff.shape) if diff.ndim else ()
    max_abs = float(diff.max())
    scale = float(np.abs(expected).max())
    if scale > 0:
        max_rel = max_abs / scale
    else:
        max_rel = 0.0 if max_abs == 0 else math.inf
    return LeafResult(name, max_abs, max_rel, tuple(int(i) for i in worst), scale, tol, finite)


# float32 rtol multipliers for computations that amplify float32 rounding by design, by inner
# optimiser (docs/numerics.md): Adam's step g/(√v + ε) is O(1) for every entry above ε, so entries
# whose gradient sits at float32's rounding floor (absolute error ~1e-7 of the gradient's scale)
# move its direction by O(1) where SGD moves it by ~1e-7. Measured: float32 gradients up to 3.5× the
# plain rtol from the float64 reference (`check --quick --impl numpy --impl jax --impl torch`, the
# quick matrix's Adam cases, 2026-12-06); 10× leaves a margin of about 3.
FLOAT32_RTOL_FACTOR: dict[str, float] = {"sgd": 1.0, "momentum": 1.0, "adam": 10.0}


def rtol_factor(cfg: Any, dtype: str) -> float:
    """The factor ``cfg`` puts on ``dtype``'s relative tolerances (1 but for float32 Adam inner loops)."""
    if dtype != "float32":
        return 1.0
    return FLOAT32_RTOL_FACTOR.get(getattr(cfg, "inner_optimizer", "sgd"), 1.0)


def compare_trees(
    expected: Mapping[str, np.ndarray], actual: Mapping[str, np.ndarray], dtype: str, rtol_scale: float = 1.0
) -> list[LeafResult]:
    """Compare two flat trees leaf by leaf: structure first, then values (tolerances by dtype, the
    relative ones times ``rtol_scale``: :func:`rtol_factor`)."""
    missing = sorted(set(expected) - set(actual))
    extra = sorted(set(actual) - set(expected))
    if missing or extra:
        raise StructureError(f"trees differ: missing {missing}, unexpected {extra}")
    out = []
    for name in sorted(expected):
        tol = tolerance(dtype, name)
        out.append(compare_leaf(name, expected[name], actual[name], Tolerance(tol.rtol * rtol_scale, tol.atol)))
    return out


def stability_factor(gains: np.ndarray) -> float:
    """``∏_t max(1, gain_t)``, worst task first: gains [B, T] of ``max|1 − α·λ(H_t)|``."""
    gains = np.asarray(gains, dtype=np.float64)
    if gains.size == 0:
        return 1.0
    if not np.all(np.isfinite(gains)):
        return math.inf
    per_task = np.prod(np.maximum(1.0, gains), axis=-1)
    return float(np.max(per_task))


def is_stable(factor: float) -> bool:
    return math.isfinite(factor) and factor <= STABILITY_LIMIT


def decided_by(leaf: LeafResult) -> str:
    """Which term of ``atol + rtol·max|ref|`` is the larger allowance: "absolute" or "relative"."""
    return "absolute" if leaf.tol.atol >= leaf.tol.rtol * leaf.ref_scale else "relative"


def verdict_reason(leaf: LeafResult) -> str:
    """The verdict in words, naming the tolerance that decided it, e.g.
    ``max abs err 1.2e-17 <= atol 1e-12 (values ~1e-17; relative error not meaningful)``."""
    if not leaf.finite:
        return "non-finite values (never within tolerance)"
    allowed = leaf.tol.atol + leaf.tol.rtol * leaf.ref_scale
    if not leaf.ok:
        return (
            f"max abs err {leaf.max_abs_err:.2g} > atol {leaf.tol.atol:g} + rtol {leaf.tol.rtol:g} x max|ref| "
            f"{leaf.ref_scale:.2g} = {allowed:.2g} (relative error {leaf.max_rel_err:.2g})"
        )
    if decided_by(leaf) == "absolute":
        return (
            f"max abs err {leaf.max_abs_err:.2g} <= atol {leaf.tol.atol:g} "
            f"(values ~{leaf.ref_scale:.2g}; relative error not meaningful)"
        )
    return (
        f"max rel err {leaf.max_rel_err:.2g} <= rtol {leaf.tol.rtol:g} "
        f"(max abs err {leaf.max_abs_err:.2g}, values ~{leaf.ref_scale:.2g})"
    )


def margin(leaf: LeafResult) -> float:
    """The error as a fraction of what the tolerance allows (1 = at the limit; inf when non-finite)."""
    if not leaf.finite:
        return math.inf
    allowed = leaf.tol.atol + leaf.tol.rtol * leaf.ref_scale
    return leaf.max_abs_err / allowed if allowed > 0 else (0.0 if leaf.max_abs_err == 0 else math.inf)

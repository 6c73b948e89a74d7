"""What the pattern of a failing comparison usually means: a small table of signatures.

A FAIL row says which quantities differ; :func:`explain` says which bug that pattern usually is
(α detached, a sum for a mean, a forward pass that differs, a missing ``create_graph``, an inner
update that differs), from the failing quantities, a common factor between the two sides and the
support loss before any update. :data:`SIGNATURES` is data, first match wins; each entry is
proven against a planted mutant (``tests/mutants_impls.py``, ``tests/test_untrusted.py``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from parity.compare import TOLERANCES
from parity.config import Config


def _ratio(expected: Any, actual: Any) -> float | None:
    """The one factor r with actual ≈ r · expected (least squares, within 1e-6), else None."""
    a, b = np.ravel(np.asarray(expected, np.float64)), np.ravel(np.asarray(actual, np.float64))
    if a.shape != b.shape or not a.size or not (np.isfinite(a).all() and np.isfinite(b).all()):
        return None
    scale = float(a @ a)
    if scale == 0.0:
        return None
    r = float(a @ b) / scale
    return r if float(np.abs(b - r * a).max()) <= 1e-6 * max(float(np.abs(b).max()), 1e-300) else None


def _size_factor(r: float | None, cfg: Config) -> str | None:
    """``4 = K (support points) = B (tasks)`` when ``r`` is a size of the problem (every size it
    equals), ``1/K`` for an inverse, else None."""
    if r is None:
        return None
    sizes = (("K", cfg.k_support, "support points"), ("Q", cfg.k_query, "query points"), ("B", cfg.meta_batch, "tasks"))
    for inverse in (False, True):
        names = [
            f"{'1/' if inverse else ''}{symbol} ({what})"
            for symbol, n, what in sizes
            if n > 1 and (abs(r * n - 1) <= 1e-6 if inverse else abs(r - n) <= 1e-6 * n)
        ]
        if names:
            return f"{r:.6g} = {' = '.join(names)}"
    return None


def _whole(r: float | None) -> bool:
    """Whether ``r`` is a whole number n >= 2 or its inverse 1/n (within 1e-6): what a sum taken for
    a mean, or the other way round, multiplies by; 1.00025 (a rounding difference) is not."""
    if r is None or r == 0:
        return False
    n = r if abs(r) >= 1 else 1 / r
    return abs(n) >= 2 - 1e-6 and abs(n - round(n)) <= 1e-6 * abs(n)


def _facts(cfg: Config, expected: dict[str, Any], got: dict[str, Any], failing: set[str]) -> dict[str, Any]:
    """What the signatures test: which kinds of quantity fail, common factors, step 0's loss."""
    ratios = [_ratio(expected[q], got[q]) for q in sorted(failing) if q in expected and q in got]
    first = ratios[0] if ratios else None
    same = first is not None and all(r is not None and abs(r - first) <= 1e-6 * abs(first) for r in ratios)
    common = first if same else None
    inner_a, inner_b = expected.get("inner_losses"), got.get("inner_losses")
    step0 = None
    if inner_a is not None and inner_b is not None and np.size(inner_a) and np.size(inner_a) == np.size(inner_b):
        a0, b0 = float(np.ravel(inner_a)[0]), float(np.ravel(inner_b)[0])
        step0 = (a0, b0)
    alpha = {q for q in failing if q.startswith("grad/alpha")}
    return {
        "failing": failing,
        "losses_agree": not failing & {"outer_loss", "inner_losses"},
        "alpha_only_zero": bool(alpha) and alpha == failing and all(not np.any(got[q]) for q in alpha if q in got),
        "factor": _size_factor(common, cfg) or (f"{common:.6g}" if _whole(common) else None),
        "step0_factor": _size_factor(_ratio(*step0), cfg) if step0 is not None else None,
        "step0": step0,
        "second_order": cfg.inner_steps > 0 and not cfg.first_order,
    }


def _step0_differs(f: dict[str, Any], dtype: str) -> bool:
    if f["step0"] is None:
        return False
    a, b = f["step0"]
    rtol, atol = TOLERANCES[(dtype, "loss")]
    return abs(a - b) > atol + rtol * abs(a)


# A failure's signature -> what it usually means, first match wins (tested against the planted
# mutants in tests/mutants_impls.py: tests/test_untrusted.py::test_patterns_name_the_planted_bugs).
SIGNATURES: list[tuple[str, Any, str]] = [
    (
        "alpha-detached",
        lambda f, cfg, dtype: f["alpha_only_zero"],
        "only dL/dalpha differs and it is zero: alpha is detached from the graph (alpha.detach(), a plain float)",
    ),
    (
        "sum-vs-mean",
        lambda f, cfg, dtype: f["factor"] is not None,
        "every failing quantity is {factor} times the reference's: a sum where the contract takes a mean",
    ),
    (
        "sum-vs-mean-step0",
        lambda f, cfg, dtype: _step0_differs(f, dtype) and f["step0_factor"] is not None,
        "the support loss before any update is {step0_factor} times the reference's: "
        "a sum where the contract takes a mean",
    ),
    (
        "forward",
        lambda f, cfg, dtype: _step0_differs(f, dtype),
        "the support loss already differs at inner step 0, before any update: the forward pass, the loss "
        "or the model differs (a transposed weight, another activation or loss)",
    ),
    (
        "create-graph",
        lambda f, cfg, dtype: f["second_order"] and f["losses_agree"],
        "the losses agree but the meta-gradients differ in a second-order case: this is what a missing "
        "create_graph=True or a detached inner gradient looks like (silently first order)",
    ),
    (
        "inner-update",
        lambda f, cfg, dtype: f["step0"] is not None and not f["losses_agree"],
        "the first support loss agrees, later ones do not: the inner update differs (alpha's sign or scale, the step)",
    ),
]


def explain(cfg: Config, expected: dict[str, Any], got: dict[str, Any], failing: set[str], dtype: str) -> str | None:
    """What the pattern of a failing comparison usually means (:data:`SIGNATURES`), or None."""
    try:
        f = _facts(cfg, expected, got, failing)
        for _, matches, text in SIGNATURES:
            if matches(f, cfg, dtype):
                return text.format(factor=f["factor"] or "", step0_factor=f["step0_factor"])
    except (KeyError, ValueError, TypeError):  # an explanation is a hint: never a reason to fail
        return None
    return None

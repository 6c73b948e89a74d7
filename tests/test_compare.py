"""The comparator, the tolerance policy and the stability gate."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from parity.compare import StructureError, compare_trees, is_stable, stability_factor, tolerance
from parity.config import get_preset
from parity.harness import Row, excused, overall_ok
from parity.init import init_alpha, init_params
from parity.tasks import sample_batch
from parity.twins import load


def test_tolerance_policy_is_the_documented_one():
    assert (tolerance("float64", "grad/w0").rtol, tolerance("float64", "grad/w0").atol) == (1e-10, 1e-12)
    assert tolerance("float64", "outer_loss").rtol == 1e-10
    assert tolerance("float32", "inner_losses").rtol == 1e-5
    assert tolerance("float32", "grad/alpha").rtol == 2e-4


def test_compare_names_the_worst_leaf_and_index():
    ref = {"grad/w0": np.array([[1.0, 2.0], [3.0, 4.0]]), "outer_loss": np.array(0.5)}
    act = {"grad/w0": np.array([[1.0, 2.0], [3.0 + 4e-10, 4.0]]), "outer_loss": np.array(0.5)}
    res = {r.name: r for r in compare_trees(ref, act, "float64")}
    w0 = res["grad/w0"]
    assert w0.worst_index == (1, 0)
    assert w0.max_abs_err == pytest.approx(4e-10) and w0.max_rel_err == pytest.approx(1e-10)
    assert w0.ok  # 4e-10 ≤ 1e-12 + 1e-10·4
    act["grad/w0"][1, 0] += 1e-9
    assert not compare_trees(ref, act, "float64")[0].ok
    assert res["outer_loss"].ok and res["outer_loss"].max_abs_err == 0.0


def test_structure_is_checked_before_values():
    with pytest.raises(StructureError, match="missing"):
        compare_trees({"a": np.zeros(2), "b": np.zeros(2)}, {"a": np.zeros(2)}, "float64")
    with pytest.raises(StructureError, match="shape"):
        compare_trees({"a": np.zeros(2)}, {"a": np.zeros(3)}, "float64")


def test_non_finite_values_never_pass_and_are_never_excused():
    res = compare_trees({"grad/w0": np.array([1.0, 2.0])}, {"grad/w0": np.array([1.0, np.nan])}, "float32")[0]
    assert not res.ok and not res.finite
    row = Row("c", "jax~torch", "float32", "grad/w0", math.inf, math.inf, [], 2e-4, 1e-6, False, 1e5, False)
    assert not excused(row) and row.verdict == "FAIL" and not overall_ok([row])
    unstable = Row("c", "jax~torch", "float32", "grad/w0", 1e-2, 1e-2, [0], 2e-4, 1e-6, False, 1e5, False)
    assert excused(unstable) and unstable.verdict == "unstable" and overall_ok([unstable])


def test_stability_factor():
    assert stability_factor(np.zeros((2, 0))) == 1.0
    assert stability_factor(np.array([[0.5, 2.0, 3.0], [1.0, 1.0, 1.0]])) == 6.0
    assert is_stable(100.0) and not is_stable(100.1) and not is_stable(math.inf)


@pytest.mark.parametrize(("loss", "alpha"), [("mse", 0.05), ("mse", 3.0), ("l1", 1.0)])
def test_step_gains_match_an_exact_eigendecomposition(twin_name, loss, alpha):
    """Power iteration on I − αH against the eigenvalues of the full Hessian (small net)."""
    cfg = get_preset("seed-alpha").replace(
        dtype="float64", hidden=(6, 5), meta_batch=2, inner_steps=2, loss=loss, alpha_init=alpha
    )
    twin = load(twin_name, "float64")
    m = twin.model
    params, tasks = init_params(cfg), tuple(sample_batch(cfg, 0)[:4])
    gains = m.to_numpy(
        twin.meta.inner_step_gains(
            m.to_arrays(params, "float64"),
            m.to_arrays(init_alpha(cfg), "float64"),
            m.to_arrays(tasks, "float64"),
            cfg,
            iterations=200,
        )
    )
    ref = load("jax", "float64")
    for b in range(cfg.meta_batch):
        x, y = jnp.asarray(tasks[0][b]), jnp.asarray(tasks[1][b])
        p = ref.model.to_arrays(params, "float64")
        for t in range(cfg.inner_steps):
            flat, unravel = ravel_pytree(p)
            H = jax.hessian(lambda f, x=x, y=y: ref.meta.inner_loss(unravel(f), x, y, cfg))(flat)
            exact = float(np.max(np.abs(1.0 - alpha * np.linalg.eigvalsh(np.asarray(H)))))
            assert gains[b, t] <= exact * (1 + 1e-9)
            assert gains[b, t] == pytest.approx(exact, rel=1e-3), (b, t)
            p, _ = ref.meta.inner_step(p, jnp.asarray(alpha), x, y, cfg)

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


# --- one comparison rule, asked by every user -----------------------------------------------------

# Every kind of key a result, a trajectory, a trace or a golden file holds, with its documented
# kind (docs/formats-golden.md, "The comparison rule"): written out here, not derived from the rule.
KEY_KINDS = {
    "outer_loss": "loss",
    "inner_losses": "loss",
    "task_outer_loss": "loss",
    "trace/support_loss": "loss",
    "trace/query_loss": "loss",
    "my_own_loss": "loss",  # a user's key in a golden fixture keeps the loss tolerance
    "grad/w0": "grad",
    "grad/b1": "grad",
    "grad/alpha": "grad",
    "grad/alpha/w0": "grad",
    "trace/inner_grad/w0": "grad",
    "trace/inner_grad/b1": "grad",
    "trace/adapted/w0": "state",
    "params/w0": "state",
    "alpha": "state",
    "alpha/b0": "state",
    "trajectory/params/w1": "state",
    "trajectory/alpha": "state",
    "trajectory/alpha/w0": "state",
}


@pytest.fixture
def distinct_tolerances(monkeypatch):
    """Each (dtype, kind) its own rtol/atol for the test, so that the tolerance a user reports names
    the kind it classified the key as (the real float64 kinds share one tolerance, and float32's
    grad and state do too: equal numbers would hide a disagreement)."""
    from parity import compare

    table = {
        ("float64", "loss"): (1e-10, 1e-13),
        ("float64", "grad"): (3e-10, 3e-13),
        ("float64", "state"): (7e-10, 7e-13),
        ("float32", "loss"): (1e-5, 1e-7),
        ("float32", "grad"): (3e-4, 3e-7),
        ("float32", "state"): (7e-4, 7e-7),
    }
    for key, value in table.items():
        monkeypatch.setitem(compare.TOLERANCES, key, value)
    return {(dtype, kind): compare.Tolerance(*value) for (dtype, kind), value in table.items()}


def _array(key: str) -> np.ndarray:
    # trace entries [B, T, ...] and trajectory entries [steps, ...]: one task, one step, two values
    return np.array([[[0.5, -1.5]]])


def _harness_tol(key: str, dtype: str):
    return compare_trees({key: _array(key)}, {key: _array(key)}, dtype)[0].tol


def _localise_tol(key: str, dtype: str):
    from parity.compare import Tolerance
    from parity.localise import first_divergence

    cfg = get_preset("seed-alpha").replace(hidden=(2,), inner_steps=1, meta_batch=1, dtype=dtype)
    found = first_divergence({key: _array(key)}, {key: _array(key) + 1.0}, cfg, dtype)
    assert found is not None and found["key"] == key
    return Tolerance(found["rtol"], found["atol"])


def _plugin_tol(key: str, dtype: str, tmp_path) -> tuple[float, str]:
    """The plugin's golden fixture: its failure table prints each entry's rtol (``%.0e``)."""
    from parity.pytest_plugin import GoldenChecker

    checker = GoldenChecker(None, tmp_path, regen=False)  # type: ignore[arg-type]  # arrays need no checker
    name = key.replace("/", "_")
    arrays = {key: _array(key).astype(dtype)}
    with pytest.raises(pytest.fail.Exception, match="written"):
        checker.check(arrays, name)
    with pytest.raises(pytest.fail.Exception) as failed:
        checker.check({key: arrays[key] + 1}, name)
    line = next(line for line in str(failed.value).splitlines() if line.startswith(key + " "))
    return float(line.split()[4]), line


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_every_user_of_the_rule_gives_each_key_its_documented_kind(distinct_tolerances, tmp_path, dtype):
    from parity.compare import KeyRule, key_kind, rule_for

    for key, kind in KEY_KINDS.items():
        want = distinct_tolerances[(dtype, kind)]
        assert key_kind(key) == kind and rule_for(key, dtype) == KeyRule(kind, want), key
        assert _harness_tol(key, dtype) == want, ("harness", key)
        assert _localise_tol(key, dtype) == want, ("localise", key)
        rtol, line = _plugin_tol(key, dtype, tmp_path)
        assert rtol == float(f"{want.rtol:.0e}"), ("pytest plugin", key, line)


def test_the_inner_gradient_of_a_trace_is_a_gradient_everywhere(distinct_tolerances, tmp_path):
    """The disagreement that started this: localisation called trace/inner_grad/* a gradient,
    the harness's classifier (and so the pytest plugin) a state."""
    grad32 = distinct_tolerances[("float32", "grad")]
    for key in ("trace/inner_grad/w0", "trace/inner_grad/b0"):
        assert _harness_tol(key, "float32") == _localise_tol(key, "float32") == grad32
        assert _plugin_tol(key, "float32", tmp_path)[0] == float(f"{grad32.rtol:.0e}")


def test_diff_and_the_golden_rule_entry_agree_with_the_rule(distinct_tolerances, tmp_path):
    """``diff`` on two golden files with every entry a golden file holds (trace included), and the
    ``rule`` entry those files carry, classify every entry as documented."""
    import fnmatch
    import json

    from parity.diff import diff_files
    from parity.golden import golden_arrays, write_golden
    from parity.oracle import NumpyOracle

    cfg = get_preset("seed-alpha").replace(hidden=(3,), inner_steps=2, meta_batch=2, dtype="float64")
    arrays = golden_arrays(NumpyOracle(), cfg, trace=True)
    path = write_golden(tmp_path / "a.npz", arrays)
    report = diff_files(path, path)
    assert report["ok"], report["status"]
    rows = {row["key"]: row for row in report["rows"]}
    documented = {
        k: (
            "grad"
            if k.startswith(("grad/", "trace/inner_grad/"))
            else "state"
            if k.startswith("trace/adapted/")
            else "loss"
        )
        for k in rows
    }
    assert {"trace/inner_grad/w0", "trace/adapted/b1", "trace/support_loss", "task_outer_loss", "grad/alpha"} <= set(
        rows
    )
    for key, row in rows.items():
        want = distinct_tolerances[("float64", documented[key])]
        assert (row["rtol"], row["atol"]) == (want.rtol, want.atol), key
    # the published rule: the first kind whose pattern matches names the same kind for every key
    rule = json.loads(str(arrays["rule"]))
    for key, kind in {**KEY_KINDS, **documented}.items():
        published = next(
            k for k, patterns in rule["kinds"].items() if any(fnmatch.fnmatchcase(key, p) for p in patterns)
        )
        assert published == kind, key


def test_float32_adam_inner_loops_get_the_documented_rtol_factor_and_nothing_else_does():
    from parity.compare import compare_trees, rtol_factor
    from parity.config import SEED_ALPHA

    adam, sgd = SEED_ALPHA.replace(inner_optimizer="adam"), SEED_ALPHA
    assert (rtol_factor(adam, "float32"), rtol_factor(adam, "float64"), rtol_factor(sgd, "float32")) == (10.0, 1.0, 1.0)
    ref, got = {"grad/w0": np.array([1.0])}, {"grad/w0": np.array([1.0 + 3e-4])}  # 1.5x float32's plain rtol
    assert not compare_trees(ref, got, "float32")[0].ok
    leaf = compare_trees(ref, got, "float32", rtol_factor(adam, "float32"))[0]
    assert leaf.ok and leaf.tol.rtol == pytest.approx(2e-3) and leaf.tol.atol == 1e-6
    assert not compare_trees(ref, {"grad/w0": np.array([1.0 + 3e-3])}, "float32", 10.0)[0].ok

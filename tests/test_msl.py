"""MAML++'s multi-step loss (``msl``, ``msl_anneal``) and first-order annealing (``first_order_steps``),
issue 19 item 4, in both twins and the NumPy oracle."""

from __future__ import annotations

import numpy as np
import pytest

from parity import training
from parity.config import ConfigError
from parity.harness import BASE
from parity.inner import msl_weights
from parity.oracle import NumpyOracle
from parity.twins import load, step0_inputs

MSL = BASE.replace(hidden=(8,), meta_batch=2, inner_steps=3, alpha_init=0.05, msl=True)


def _per_step_query_losses(cfg, params, alpha, tasks) -> list[float]:
    """L_query(θ_t) for t = 1..T from the oracle's plain loss with T = t: the reference MSL sums."""
    plain = cfg.replace(msl=False, msl_anneal=0)
    oracle = NumpyOracle()
    return [
        float(oracle.meta_value_and_grad(params, alpha, tasks, plain.replace(inner_steps=t))["outer_loss"])
        for t in range(1, cfg.inner_steps + 1)
    ]


def test_the_weights_follow_maml_plus_plus_and_sum_to_one() -> None:
    inner = MSL.replace(inner_steps=5, msl_anneal=10).inner
    assert msl_weights(inner, 0) == (0.2,) * 5
    np.testing.assert_allclose(msl_weights(inner, 5), (0.1, 0.1, 0.1, 0.1, 0.6), rtol=1e-15)
    # floor 0.03/T for the early steps from s = 0.97·N on; the last takes the rest
    np.testing.assert_allclose(msl_weights(inner, 10), (0.006,) * 4 + (0.976,), rtol=1e-14)
    assert msl_weights(inner, 10) == msl_weights(inner, 1000)
    for s in range(0, 15):
        assert abs(sum(msl_weights(inner, s)) - 1) < 1e-15
    assert msl_weights(MSL.replace(inner_steps=4).inner, 500) == (0.25,) * 4  # msl_anneal 0: uniform


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
@pytest.mark.parametrize("order", [False, True], ids=["second", "first"])
def test_both_twins_equal_the_oracle_and_the_loss_is_the_mean_of_the_step_losses(optimizer: str, order: bool) -> None:
    cfg = MSL.replace(inner_optimizer=optimizer, first_order=order)
    params, alpha, tasks = step0_inputs(cfg)
    ref = NumpyOracle().meta_value_and_grad(params, alpha, tasks, cfg)
    # the contract's weights are outer step 0's: uniform 1/T
    mean = np.mean(_per_step_query_losses(cfg, params, alpha, tasks))
    np.testing.assert_allclose(ref["outer_loss"], mean, rtol=1e-13)
    plain = NumpyOracle().meta_value_and_grad(params, alpha, tasks, cfg.replace(msl=False))
    assert abs(plain["outer_loss"] - ref["outer_loss"]) > 1e-3
    for twin in ("jax", "torch"):
        got = load(twin, "float64").meta_value_and_grad(params, alpha, tasks, cfg)
        np.testing.assert_allclose(got["outer_loss"], ref["outer_loss"], rtol=1e-12)
        np.testing.assert_allclose(got["alpha_grad"], ref["alpha_grad"], rtol=1e-10)
        for k in params:
            np.testing.assert_allclose(got["grads"][k], ref["grads"][k], rtol=1e-10, atol=1e-14)
            assert np.abs(got["grads"][k] - plain["grads"][k]).max() > 1e-6


@pytest.mark.parametrize("twin_name", ["jax", "torch"])
def test_an_annealed_step_weights_the_step_losses_by_its_schedule(twin_name: str) -> None:
    cfg = MSL.replace(msl_anneal=4, remat=twin_name == "torch")  # remat: the recomputed loop collects them too
    params, alpha, tasks = step0_inputs(cfg)
    losses = _per_step_query_losses(cfg, params, alpha, tasks)
    twin = load(twin_name, "float64")
    p, a, t = twin.to_arrays(params, "float64"), twin.to_arrays(alpha, "float64"), twin.to_arrays(tasks, "float64")
    for step in (0, 2, 9):
        (loss, _), _ = twin.meta.meta_value_and_grad(p, a, t, cfg, step=step)
        expected = sum(w * v for w, v in zip(msl_weights(cfg.inner, step), losses))
        np.testing.assert_allclose(float(twin.to_numpy(loss)), expected, rtol=1e-12)


def test_one_step_msl_is_the_plain_loss_bit_for_bit() -> None:
    cfg = MSL.replace(inner_steps=1)
    params, alpha, tasks = step0_inputs(cfg)
    for twin in ("jax", "torch"):
        impl = load(twin, "float64")
        msl = impl.meta_value_and_grad(params, alpha, tasks, cfg)
        plain = impl.meta_value_and_grad(params, alpha, tasks, cfg.replace(msl=False))
        assert msl["outer_loss"] == plain["outer_loss"]
        for k in params:
            np.testing.assert_array_equal(msl["grads"][k], plain["grads"][k])


@pytest.mark.parametrize(
    ("change", "field"),
    [({"inner_steps": 0}, "msl"), ({"msl_anneal": -1}, "msl_anneal"), ({"first_order_steps": -2}, "first_order_steps")],
)
def test_bad_values_are_refused_by_name(change: dict, field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        MSL.replace(**change)


# --- the check: one quick case (scripts/mutants plants unnormalised weights in one twin) -----------


@pytest.mark.parity
def test_check_passes_between_the_twins_on_an_annealed_msl_case() -> None:
    from parity.harness import Case, load_impls, run_case

    rows = run_case(Case("msl", MSL.replace(inner_optimizer="momentum")), load_impls(["jax", "torch"]))
    failed = [r for r in rows if r.verdict != "ok"]
    assert rows and not failed, [(r.dtype, r.quantity, r.divergence) for r in failed[:2]]
    assert max(r.max_rel_err for r in rows if r.dtype == "float64") <= 1e-10


# --- first-order annealing ------------------------------------------------------------------------


def _train(twin, cfg, state=None, start=0, iterations=2):
    return training.run(twin, cfg, state=state, start=start, iterations=iterations, chunk=3)


@pytest.mark.slow  # ~22 s: six short training runs in each twin
def test_first_order_steps_is_a_first_order_run_then_a_second_order_one() -> None:
    """first_order_steps = 2 over 4 steps (chunk 3: the boundary cuts a chunk) equals 2 first-order
    steps then 2 second-order ones from that state, bit for bit within each twin; the twins agree."""
    cfg = MSL.replace(alpha_mode="scalar", msl_anneal=3, outer_optimizer="adam", outer_lr=1e-2, alpha_lr=1e-2)
    annealed = cfg.replace(first_order_steps=2)
    finals = {}
    for name in ("jax", "torch"):
        twin = load(name, "float64")
        got = training.final_values(twin, _train(twin, annealed, iterations=4), annealed)
        first = _train(twin, cfg.replace(first_order=True))
        split = training.final_values(twin, _train(twin, cfg, state=first, start=2), cfg)
        second = training.final_values(twin, _train(twin, cfg, iterations=4), cfg)
        for k in got:
            np.testing.assert_array_equal(got[k], split[k], err_msg=f"{name} {k}")
        assert max(np.abs(got[k] - second[k]).max() for k in got) > 1e-9  # the first two steps were first order
        finals[name] = got
    for k in finals["jax"]:
        np.testing.assert_allclose(finals["jax"][k], finals["torch"][k], rtol=1e-10, atol=1e-13)


def test_chunks_end_where_the_order_changes() -> None:
    assert training.chunk_length(0, 10, 250, 0, 3) == 3
    assert training.chunk_length(3, 10, 250, 0, 3) == 7
    assert training.order_at(MSL.replace(first_order_steps=3), 2).first_order
    assert not training.order_at(MSL.replace(first_order_steps=3), 3).first_order

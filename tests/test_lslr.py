"""LSLR (issue 19, MAML++): ``alpha_mode: per_layer_step``, α[name] [T], one learned step size per
parameter tensor per inner step, in both twins and the NumPy oracle."""

from __future__ import annotations

import numpy as np
import pytest

from parity.checkpoint import expected_layout, read_checkpoint
from parity.config import ConfigError
from parity.golden import golden_layout
from parity.harness import BASE
from parity.init import init_alpha
from parity.oracle import NumpyOracle
from parity.twins import load, step0_inputs

LSLR = BASE.replace(hidden=(8,), meta_batch=2, inner_steps=3, alpha_mode="per_layer_step", alpha_init=0.05)


def _uneven(alpha: dict) -> dict:
    # a different α per tensor and per step, so that a step read from the wrong column shows
    return {k: v * (1 + 0.3 * np.arange(v.size) + 0.1 * i) for i, (k, v) in enumerate(sorted(alpha.items()))}


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
@pytest.mark.parametrize("order", [False, True], ids=["second", "first"])
def test_both_twins_equal_the_oracle_with_a_different_alpha_per_tensor_and_step(optimizer: str, order: bool) -> None:
    cfg = LSLR.replace(inner_optimizer=optimizer, first_order=order)
    params, alpha, tasks = step0_inputs(cfg)
    alpha = _uneven(alpha)
    ref = NumpyOracle().meta_value_and_grad(params, alpha, tasks, cfg)
    assert all(np.abs(g).max() > 1e-6 for g in ref["alpha_grad"].values())
    for twin in ("jax", "torch"):
        got = load(twin, "float64").meta_value_and_grad(params, alpha, tasks, cfg)
        np.testing.assert_allclose(got["outer_loss"], ref["outer_loss"], rtol=1e-12)
        for k in params:
            np.testing.assert_allclose(got["grads"][k], ref["grads"][k], rtol=1e-10, atol=1e-14)
            np.testing.assert_allclose(got["alpha_grad"][k], ref["alpha_grad"][k], rtol=1e-10, atol=1e-14)


def test_one_value_everywhere_is_the_scalar_alpha_and_the_gradients_add_up() -> None:
    """LSLR with every entry c equals a scalar α = c; dL/dα(scalar) = Σ over tensors and steps of
    dL/dα[name][t] (the chain rule through the shared value)."""
    cfg = LSLR.replace(inner_optimizer="momentum")
    params, alpha, tasks = step0_inputs(cfg)
    scalar = cfg.replace(alpha_mode="scalar")
    for twin in ("jax", "torch"):
        impl = load(twin, "float64")
        lslr = impl.meta_value_and_grad(params, alpha, tasks, cfg)
        one = impl.meta_value_and_grad(params, np.asarray(0.05), tasks, scalar)
        np.testing.assert_allclose(lslr["outer_loss"], one["outer_loss"], rtol=1e-14)
        total = sum(float(np.sum(v)) for v in lslr["alpha_grad"].values())
        np.testing.assert_allclose(total, one["alpha_grad"], rtol=1e-10)


def test_alpha_layouts_are_one_vector_of_T_per_parameter() -> None:
    alpha = init_alpha(LSLR)
    assert isinstance(alpha, dict)
    assert {k: v.shape for k, v in alpha.items()} == {k: (3,) for k in LSLR.param_names}
    assert all(np.all(v == 0.05) and v.dtype == np.float64 for v in alpha.values())
    assert golden_layout(LSLR)["grad/alpha/w0"] == ((3,), "float64")
    learned = LSLR.replace(alpha_optimizer="adam")
    layout = expected_layout(learned)
    assert layout["alpha/w1"] == ((3,), "float64") and layout["opt/alpha/mu/w1"] == ((3,), "float64")
    with pytest.raises(ConfigError, match="per_layer_step needs inner_steps >= 1"):
        LSLR.replace(inner_steps=0)


def test_a_wrong_alpha_shape_is_one_clear_error() -> None:
    params, alpha, tasks = step0_inputs(LSLR)
    bad = {k: np.full((2,), 0.05) for k in alpha}
    with pytest.raises(Exception, match=r"alpha\['\w+'\] must be float64 \[3\] \(alpha_mode per_layer_step\)"):
        load("jax", "float64").meta_value_and_grad(params, bad, tasks, LSLR)


def test_training_learns_each_step_size_the_same_in_both_twins(tmp_path) -> None:
    from parity.run import train_run

    cfg = LSLR.replace(iterations=4, alpha_optimizer="sgd", alpha_lr=0.05)
    finals = {}
    for twin in ("jax", "torch"):
        train_run(load(twin, "float64"), cfg, tmp_path / twin, progress=False)
        finals[twin] = read_checkpoint(tmp_path / twin).state["alpha"]
    assert set(finals["jax"]) == set(cfg.param_names)
    for k, v in finals["jax"].items():
        np.testing.assert_allclose(finals["torch"][k], v, rtol=1e-10)
        assert v.shape == (3,) and len(set(np.round(v, 12))) == 3  # each step learned its own value

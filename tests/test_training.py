"""Training: determinism, and the seed lab's learned-α trajectory reproduced in both twins."""

from __future__ import annotations

import numpy as np
import pytest

from parity import training
from parity.config import get_preset
from parity.init import init_params
from parity.registry import TWINS
from parity.twins import load


def alpha_trajectory(framework: str, cfg) -> np.ndarray:
    alphas: list[np.ndarray] = []
    training.run(load(framework, cfg.dtype), cfg, chunk=500, on_chunk=lambda _, m: alphas.append(m["alpha"]))
    return np.concatenate(alphas)


def test_same_seed_same_run(twin_name):
    cfg = get_preset("seed-alpha").replace(iterations=15, meta_batch=2)
    twin = load(twin_name)
    a = training.final_values(twin, training.run(twin, cfg, chunk=5))
    b = training.final_values(twin, training.run(twin, cfg, chunk=15))  # chunking does not matter
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    c = training.final_values(twin, training.run(twin, cfg.replace(seed=1), chunk=15))
    assert not np.array_equal(a["params/w1"], c["params/w1"])


def test_fixed_alpha_stays_fixed_and_the_params_move():
    """seed-maml, 10 steps: α is still exactly 0.03 (in float32) while every parameter array has
    moved from the shared init, and the twins moved them alike."""
    cfg = get_preset("seed-maml").replace(iterations=10)
    start = init_params(cfg)
    moved = {}
    for framework in TWINS:
        twin = load(framework)
        values = training.final_values(twin, training.run(twin, cfg))
        assert values["alpha"].dtype == np.float32 and float(values["alpha"]) == float(np.float32(0.03))
        for name, p0 in start.items():
            step = float(np.abs(values[f"params/{name}"] - p0).max())
            assert step > 1e-4, (framework, name, step)  # lr 1e-2 × O(0.1) gradients × 10 steps
        moved[framework] = {k: v for k, v in values.items() if k.startswith("params/")}
    for name, p in moved["jax"].items():
        np.testing.assert_allclose(moved["torch"][name], p, rtol=0, atol=1e-5, err_msg=name)


@pytest.mark.slow
def test_seed_alpha_learns_alpha_down_as_the_seed_did():
    """The seed saw α ≈ 0.087 at step 500 falling to ≈ 0.015 by step 4500 (one stochastic run)."""
    cfg = get_preset("seed-alpha")  # 5000 steps, float32, as the seed ran it
    runs = {fw: alpha_trajectory(fw, cfg) for fw in TWINS}
    for fw, alpha in runs.items():
        assert alpha.shape == (5000,)
        assert alpha[0] == pytest.approx(0.1)
        assert 0.080 <= alpha[500] <= 0.095, (fw, alpha[500])
        assert 0.030 <= alpha[2000] <= 0.060, (fw, alpha[2000])
        assert 0.008 <= alpha[4500] <= 0.025, (fw, alpha[4500])
        assert alpha[4500] < alpha[2000] < alpha[500] < alpha[0]
    # Same tasks, same start: in float32 the twins' trajectories stay together all the way. The
    # README's figure (largest difference in α over the 5000 steps, from the demo's runs): 2.6e-8.
    diff = float(np.max(np.abs(runs["jax"] - runs["torch"])))
    assert diff < 2.6e-7, diff

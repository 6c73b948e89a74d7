"""Training: determinism, and the seed lab's learned-α trajectory reproduced in both twins."""

from __future__ import annotations

import numpy as np
import pytest

from parity import training
from parity.config import get_preset
from parity.twins import load


def alpha_trajectory(framework: str, cfg) -> np.ndarray:
    alphas: list[np.ndarray] = []
    training.run(load(framework, cfg.dtype), cfg, chunk=500, on_chunk=lambda _, m: alphas.append(m["alpha"]))
    return np.concatenate(alphas)


@pytest.mark.parametrize("framework", ["jax", "torch"])
def test_same_seed_same_run(framework):
    cfg = get_preset("seed-alpha").replace(iterations=15, meta_batch=2)
    twin = load(framework)
    a = training.final_values(twin, training.run(twin, cfg, chunk=5))
    b = training.final_values(twin, training.run(twin, cfg, chunk=15))  # chunking does not matter
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    c = training.final_values(twin, training.run(twin, cfg.replace(seed=1), chunk=15))
    assert not np.array_equal(a["params/w1"], c["params/w1"])


def test_fixed_alpha_stays_fixed_and_the_params_move():
    cfg = get_preset("seed-maml").replace(iterations=10)
    for framework in ("jax", "torch"):
        twin = load(framework)
        values = training.final_values(twin, training.run(twin, cfg))
        assert float(values["alpha"]) == pytest.approx(0.03)


@pytest.mark.slow
def test_seed_alpha_learns_alpha_down_as_the_seed_did():
    """The seed saw α ≈ 0.087 at step 500 falling to ≈ 0.015 by step 4500 (one stochastic run)."""
    cfg = get_preset("seed-alpha")  # 5000 steps, float32, as the seed ran it
    runs = {fw: alpha_trajectory(fw, cfg) for fw in ("jax", "torch")}
    for fw, alpha in runs.items():
        assert alpha.shape == (5000,)
        assert alpha[0] == pytest.approx(0.1)
        assert 0.080 <= alpha[500] <= 0.095, (fw, alpha[500])
        assert 0.030 <= alpha[2000] <= 0.060, (fw, alpha[2000])
        assert 0.008 <= alpha[4500] <= 0.025, (fw, alpha[4500])
        assert alpha[4500] < alpha[2000] < alpha[500] < alpha[0]
    # Same tasks, same start: in float32 the twins' trajectories stay together all the way.
    assert np.max(np.abs(runs["jax"] - runs["torch"])) < 2e-3

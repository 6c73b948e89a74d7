"""The seed lab's own loop (torch_impl.seed_loop) ends where the PyTorch twin ends, in float64.

This is what lets the bench use the seed loop as its baseline: it computes the same training.
"""

from __future__ import annotations

import numpy as np
import pytest

from parity import training
from parity.config import SEED_ALPHA, SEED_MAML
from parity.twins import load
from torch_impl import seed_loop

STEPS = 4
RTOL = 1e-10
ATOL = 1e-12


def _assert_close(expected: dict[str, np.ndarray], actual: dict[str, np.ndarray]) -> None:
    assert sorted(expected) == sorted(actual)
    for name in expected:
        e, a = np.asarray(expected[name]), np.asarray(actual[name])
        assert e.shape == a.shape, name
        scale = float(np.max(np.abs(e)))
        err = float(np.max(np.abs(e - a)))
        assert err <= ATOL + RTOL * scale, f"{name}: max abs err {err:.3e} (scale {scale:.3e})"


@pytest.mark.parametrize("preset", [SEED_MAML, SEED_ALPHA], ids=["seed-maml", "seed-alpha"])
def test_seed_loop_matches_torch_twin(preset):
    cfg = preset.replace(dtype="float64", iterations=STEPS)
    twin = load("torch", "float64")
    expected = training.final_values(twin, training.run(twin, cfg))
    state = seed_loop.run(cfg)
    actual = seed_loop.final_values(state, cfg)
    _assert_close(expected, actual)
    assert state.step == STEPS
    # The steps moved the parameters (the comparison is not of two untouched inits).
    start = training.final_values(twin, training.initial_state(twin, cfg))
    assert not np.allclose(start["params/w1"], actual["params/w1"], rtol=0, atol=1e-8)
    if cfg.alpha_learned:
        assert float(actual["alpha"]) != cfg.alpha_init


def test_seed_loop_meta_batch_is_mean_over_tasks():
    """B > 1 (the bench's extension of the seed): per-task backward of loss/B == the batched twin."""
    cfg = SEED_ALPHA.replace(dtype="float64", iterations=2, meta_batch=3)
    twin = load("torch", "float64")
    expected = training.final_values(twin, training.run(twin, cfg))
    _assert_close(expected, seed_loop.final_values(seed_loop.run(cfg), cfg))


def test_seed_loop_refuses_per_parameter_alpha():
    with pytest.raises(ValueError, match="per parameter"):
        seed_loop.init_state(SEED_ALPHA.replace(alpha_mode="per_parameter"))

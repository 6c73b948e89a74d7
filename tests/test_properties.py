"""Property-based tests (hypothesis, derandomised, bounded) and the pinned sampler stream."""

from __future__ import annotations

import hashlib
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from parity import harness
from parity.config import PRESETS, Config, get_preset
from parity.registry import TWINS
from parity.tasks import sample_batch

# Derandomised and bounded, so CI runs the same examples every time and stays fast.
settings.register_profile(
    "ci", derandomize=True, max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile("ci")

# Made with NumPy 2.4.6. NumPy does not promise identical Generator streams across releases;
# if this changes after a NumPy upgrade, every recorded run's tasks changed with it.
PINNED = {
    "seed-alpha": "59a2e168c24a8da91258edf960392c4e20d571f151dec3bae58870337986aa75",
    "maml-paper": "b6eaa9d6d3aff7227f9ee91135dfe3e6145eb6ed0291fc7f9b543e095cbed86b",
}


@pytest.mark.parametrize("preset", sorted(PINNED))
def test_first_batches_are_pinned_by_hash(preset):
    cfg = get_preset(preset).replace(dtype="float64")
    digest = hashlib.sha256()
    for step in range(3):
        for field in sample_batch(cfg, step):
            digest.update(np.ascontiguousarray(field).tobytes())
    assert digest.hexdigest() == PINNED[preset], f"sampler stream changed (NumPy {np.__version__})"


def ranges(low=-10.0, high=10.0):
    finite = st.floats(low, high, allow_nan=False, allow_infinity=False)
    return st.tuples(finite, finite).map(lambda p: (min(p), max(p)))


configs = st.builds(
    Config,
    amplitude_range=ranges(0.0, 5.0),
    frequency_range=ranges(0.1, 3.0),
    phase_range=ranges(0.0, math.pi),
    x_range=ranges(),
    k_support=st.integers(1, 12),
    k_query=st.integers(1, 12),
    hidden=st.lists(st.integers(1, 8), min_size=1, max_size=3).map(tuple),
    activation=st.sampled_from(["tanh", "relu"]),
    loss=st.sampled_from(["l1", "mse"]),
    inner_steps=st.integers(0, 4),
    alpha_mode=st.sampled_from(["fixed", "scalar", "per_parameter"]),
    alpha_init=st.floats(-1, 1, allow_nan=False),
    allow_negative_alpha=st.just(True),  # negative alpha is allowed only when asked for (tests/test_run_safety.py)
    first_order=st.booleans(),
    meta_batch=st.integers(1, 6),
    dtype=st.sampled_from(["float32", "float64"]),
    seed=st.integers(0, 2**31),
)


@given(configs)
def test_config_json_round_trip(cfg):
    again = Config.from_json(cfg.to_json())
    assert again == cfg and hash(again) == hash(cfg)


@given(configs, st.integers(0, 10**9))
def test_sampler_shapes_ranges_and_purity(cfg, step):
    b = sample_batch(cfg, step)
    B, K, Q = cfg.meta_batch, cfg.k_support, cfg.k_query
    assert b.x_support.shape == b.y_support.shape == (B, K, 1)
    assert b.x_query.shape == b.y_query.shape == (B, Q, 1)
    assert all(f.dtype == np.dtype(cfg.dtype) for f in b)
    lo, hi = cfg.x_range
    assert np.all((b.x_support >= np.float32(lo) - 1e-6) & (b.x_support <= np.float32(hi) + 1e-6))
    assert np.all(np.abs(b.y_query) <= max(abs(a) for a in cfg.amplitude_range) + 1e-6)
    again = sample_batch(cfg, step)
    for f, g in zip(b, again):
        np.testing.assert_array_equal(f, g)


small_stable = st.builds(
    lambda T, alpha, loss, mode, first, act, width, seed: harness.BASE.replace(
        inner_steps=T,
        alpha_init=alpha,
        loss=loss,
        alpha_mode=mode,
        first_order=first,
        activation=act,
        hidden=(width, width),
        meta_batch=2,
        seed=seed,
    ),
    st.integers(0, 3),
    st.floats(0.0, 0.05),
    st.sampled_from(["l1", "mse"]),
    st.sampled_from(["fixed", "scalar", "per_parameter"]),
    st.booleans(),
    st.sampled_from(["tanh", "relu"]),
    st.integers(2, 12),
    st.integers(0, 1000),
)


@pytest.mark.parity
@settings(max_examples=12)
@given(small_stable)
def test_parity_holds_for_random_small_configs(cfg):
    rows = harness.run_case(harness.Case("random", cfg), harness.load_impls(list(TWINS)))
    assert all(r.stable for r in rows)
    bad = [r for r in rows if not r.ok]
    assert not bad, bad[:2]


def test_presets_are_valid_and_distinct():
    assert len({PRESETS[name] for name in PRESETS}) == len(PRESETS)

"""The shared sampler and initial parameters: shapes, ranges, purity in (seed, step)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from parity.config import Config, get_preset
from parity.init import init_alpha, init_params
from parity.tasks import EVAL_STREAM, sample_batch, sample_batches


def test_batch_shapes_dtypes_and_ranges():
    cfg = get_preset("maml-paper").replace(dtype="float64")
    b = sample_batch(cfg, 3)
    assert b.x_support.shape == b.y_support.shape == (25, 10, 1)
    assert b.x_query.shape == b.y_query.shape == (25, 10, 1)
    assert all(a.dtype == np.float64 for a in b)
    assert np.all((b.amplitude >= 0.1) & (b.amplitude <= 5.0))
    assert np.all((b.phase >= 0) & (b.phase <= math.pi))
    assert np.all(b.frequency == 1.0)
    assert np.all(np.abs(b.x_support) <= 5.0)
    expected = b.amplitude[:, None, None] * np.sin(b.frequency[:, None, None] * b.x_query + b.phase[:, None, None])
    np.testing.assert_array_equal(b.y_query, expected)


def test_step_batch_is_a_pure_function_of_seed_and_step():
    cfg = get_preset("seed-alpha").replace(meta_batch=3)
    stacked = sample_batches(cfg, 10, 5)
    for i in range(5):
        again = sample_batch(cfg, 10 + i)
        for field, stack in zip(again, stacked):
            np.testing.assert_array_equal(field, stack[i])
    assert not np.array_equal(sample_batch(cfg, 0).x_support, sample_batch(cfg, 1).x_support)
    assert not np.array_equal(sample_batch(cfg, 0).x_support, sample_batch(cfg.replace(seed=1), 0).x_support)
    assert not np.array_equal(sample_batch(cfg, 0).x_support, sample_batch(cfg, 0, stream=EVAL_STREAM).x_support)


def test_seed_task_family():
    b = sample_batch(get_preset("seed-maml"), 0, batch_size=1000)
    assert np.all((b.frequency >= 0.5) & (b.frequency <= 1.0))
    assert np.all(np.abs(b.x_support) <= 2 * math.pi)
    assert np.all(b.amplitude == 1.0) and np.all(b.phase == 0.0)
    assert b.x_support.dtype == np.float32


def test_negative_step_is_refused():
    with pytest.raises(ValueError, match="step must be >= 0"):
        sample_batch(Config(), -1)


def test_init_follows_the_seed_scheme():
    cfg = Config(dtype="float64")
    p = init_params(cfg)
    assert {k: v.shape for k, v in p.items()} == cfg.param_shapes
    assert np.abs(p["w0"]).max() <= 1.0 and np.abs(p["w0"]).max() > 0.9  # U(-1, 1)
    for name in ("w1", "w2"):
        assert np.abs(p[name]).max() <= 1 / math.sqrt(32)
    for name in ("b0", "b1", "b2"):
        assert np.all(p[name] == 0)
    np.testing.assert_array_equal(p["w1"], init_params(cfg)["w1"])
    assert not np.array_equal(p["w1"], init_params(cfg, seed=1)["w1"])


def test_init_alpha_modes():
    assert init_alpha(Config(alpha_init=0.1, dtype="float64")) == np.float64(0.1)
    per = init_alpha(Config(alpha_mode="per_parameter", alpha_init=0.1))
    assert isinstance(per, dict) and per["w1"].shape == (32, 32) and np.all(per["w1"] == np.float32(0.1))

"""The initial parameters checked from outside: nothing here reuses ``parity/init.py``'s arithmetic.

The documented schemes (README, "Numerical conventions"; Config's ``init_scheme``):

- ``seed``: the first weight U(−1, 1), every later weight U(±1/√fan_in), biases zero;
- ``maml``: every weight N(0, 0.01²) truncated at two standard deviations, biases zero;

weights stored (out, in), so fan_in is a weight's second axis. Their distributions are checked
with a Kolmogorov–Smirnov test over wide layers (fixed seed), and the seed scheme's draws are
derived bit for bit from ``SeedSequence([seed, 2, 0])`` (the initialisation stream), weights
in layer order.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from parity.config import Config
from parity.init import init_params

KS_CRITICAL_0_001 = 1.9495  # P(√n·D > 1.9495) = 0.001 under Kolmogorov's limiting distribution
INIT_STREAM_ID = 2

_erf = np.vectorize(math.erf, otypes=[float])


def phi(z: np.ndarray) -> np.ndarray:
    """The standard normal CDF."""
    return 0.5 * (1.0 + _erf(z / math.sqrt(2.0)))


def ks_scaled(sample: np.ndarray, cdf) -> float:  # type: ignore[no-untyped-def]
    """√n · sup |F_n − F| of ``sample`` against the continuous CDF ``cdf``."""
    x = np.sort(np.ravel(sample).astype(np.float64))
    n = x.size
    f = cdf(x)
    i = np.arange(1, n + 1)
    return math.sqrt(n) * float(max(np.max(i / n - f), np.max(f - (i - 1) / n)))


def uniform_cdf(bound: float):  # type: ignore[no-untyped-def]
    return lambda x: np.clip((x + bound) / (2 * bound), 0.0, 1.0)


def truncated_normal_cdf(sigma: float, cut: float = 2.0):  # type: ignore[no-untyped-def]
    lo, hi = phi(np.array(-cut)), phi(np.array(cut))
    return lambda x: np.clip((phi(x / sigma) - lo) / (hi - lo), 0.0, 1.0)


WIDE = Config(hidden=(300, 200), dtype="float64", seed=5)


def test_seed_scheme_bounds_are_one_then_one_over_sqrt_fan_in():
    p = init_params(WIDE)
    assert {k: v.shape for k, v in p.items()} == {
        "w0": (300, 1), "b0": (300,), "w1": (200, 300), "b1": (200,), "w2": (1, 200), "b2": (1,)
    }  # fmt: skip
    for name in ("b0", "b1", "b2"):
        assert np.all(p[name] == 0), name
    bounds = {"w0": 1.0, "w1": 1 / math.sqrt(300), "w2": 1 / math.sqrt(200)}
    for name, bound in bounds.items():
        w = p[name]
        assert np.abs(w).max() <= bound, name
        assert np.abs(w).max() > 0.9 * bound, name  # the range is used, not a narrower one
    assert ks_scaled(p["w0"], uniform_cdf(1.0)) < KS_CRITICAL_0_001
    assert ks_scaled(p["w1"], uniform_cdf(1 / math.sqrt(300))) < KS_CRITICAL_0_001


def test_seed_scheme_draws_equal_the_seedsequence_derivation():
    for cfg in (WIDE, Config(dtype="float64"), Config(hidden=(3, 5, 2), seed=9, dtype="float32")):
        gen = np.random.Generator(np.random.PCG64(np.random.SeedSequence([cfg.seed, INIT_STREAM_ID, 0])))
        sizes = (1, *cfg.hidden, 1)
        got = init_params(cfg)
        for i in range(len(sizes) - 1):
            fan_in, fan_out = sizes[i], sizes[i + 1]
            bound = 1.0 if i == 0 else 1.0 / math.sqrt(fan_in)
            expected = (-bound + 2 * bound * gen.random((fan_out, fan_in))).astype(cfg.dtype)
            np.testing.assert_array_equal(got[f"w{i}"], expected, err_msg=f"{cfg.hidden} w{i}")


def test_maml_scheme_is_a_normal_of_sd_0_01_truncated_at_two_sd():
    p = init_params(WIDE.replace(init_scheme="maml"))
    for name in ("b0", "b1", "b2"):
        assert np.all(p[name] == 0), name
    w = np.concatenate([p[name].ravel() for name in ("w0", "w1", "w2")])  # 60,500 draws
    assert np.abs(w).max() <= 0.02 and np.abs(w).max() > 0.0199
    assert ks_scaled(w, truncated_normal_cdf(0.01)) < KS_CRITICAL_0_001
    assert abs(float(np.std(w)) - 0.01 * 0.8796) < 2e-4  # sd of N(0, 1) truncated at ±2: 0.8796


@pytest.mark.parametrize(
    ("sample", "cdf"),
    [
        (np.random.default_rng(1).normal(0, 0.01, 20_000).clip(-0.02, 0.02), truncated_normal_cdf(0.01)),  # clipped
        (np.random.default_rng(2).uniform(-0.02, 0.02, 20_000), truncated_normal_cdf(0.01)),
        (np.random.default_rng(3).uniform(-1, 1, 20_000), uniform_cdf(1 / math.sqrt(2))),
        (np.random.default_rng(4).uniform(-0.9, 0.9, 20_000), uniform_cdf(1.0)),
    ],
    ids=["clipped-not-redrawn", "uniform-for-truncnormal", "wider-uniform", "narrower-uniform"],
)
def test_ks_check_rejects_the_wrong_distribution(sample, cdf):
    assert ks_scaled(sample, cdf) > KS_CRITICAL_0_001

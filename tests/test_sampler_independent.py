"""The task sampler checked from outside: nothing here reuses ``parity/tasks.py``'s arithmetic.

Every implementation (both twins, the NumPy reference through golden files, the seed loop) reads
the sampler's output, so a sampler bug would be shared by all of them and no parity test could
see it. These tests recompute what each drawn task must satisfy from the sampler's documented
convention (README, "Numerical conventions") and from first principles:

- the first batches, derived here from ``numpy.random.SeedSequence([seed, stream, step])`` and a
  PCG64 ``Generator`` directly: A [B], ω [B], φ [B], x_support [B, K, 1], x_query [B, Q, 1], in
  that order, each ``low + (high − low)·U[0, 1)``, computed in float64 and cast once;
- A, ω, φ and x inside their ranges (non-zero lower bounds, negative and degenerate ranges);
- y = A·sin(ω·x + φ), recomputed from the drawn A, ω, φ, for support and query alike (one task);
- each field uniform over its range: a Kolmogorov–Smirnov goodness-of-fit test, fixed seed;
- purity: the batch is a function of (seed, stream, step) and the task fields of the config only.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from parity.config import Config, get_preset
from parity.tasks import EVAL_STREAM, TRAIN_STREAM, sample_batch

FIELDS = ("amplitude", "frequency", "phase")
RANGE_OF = {"amplitude": "amplitude_range", "frequency": "frequency_range", "phase": "phase_range"}
# Derandomised, bounded, and no shrinking: a failure reports the first failing example at once
# (shrinking a sampler bug's example takes minutes and adds nothing to the message).
BOUNDED = settings(
    derandomize=True,
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
)
# Kolmogorov's limiting distribution: P(√n·D > 1.9495) = 0.001 (Smirnov's table, α = 0.001).
KS_CRITICAL_0_001 = 1.9495


# --- the convention, written out from the README --------------------------------------------------


def reference_batch(cfg: Config, step: int, stream: int = TRAIN_STREAM, batch_size: int | None = None) -> dict:
    """The meta-batch of ``step`` from the documented convention alone (float64, then one cast)."""
    B = cfg.meta_batch if batch_size is None else batch_size
    gen = np.random.Generator(np.random.PCG64(np.random.SeedSequence([cfg.seed, stream, step])))

    def uniform(bounds: tuple[float, float], shape: tuple[int, ...]) -> np.ndarray:
        low, high = bounds
        return low + (high - low) * gen.random(shape)

    out = {
        "amplitude": uniform(cfg.amplitude_range, (B,)),
        "frequency": uniform(cfg.frequency_range, (B,)),
        "phase": uniform(cfg.phase_range, (B,)),
        "x_support": uniform(cfg.x_range, (B, cfg.k_support, 1)),
        "x_query": uniform(cfg.x_range, (B, cfg.k_query, 1)),
    }
    a, w, p = (out[k].reshape(B, 1, 1) for k in FIELDS)
    out["y_support"] = a * np.sin(w * out["x_support"] + p)
    out["y_query"] = a * np.sin(w * out["x_query"] + p)
    return {k: v.astype(cfg.dtype) for k, v in out.items()}


def ks_statistic(sample: np.ndarray, low: float, high: float) -> float:
    """Kolmogorov–Smirnov distance between the empirical CDF of ``sample`` and U(low, high)."""
    x = np.sort(np.ravel(sample).astype(np.float64))
    n = x.size
    cdf = np.clip((x - low) / (high - low), 0.0, 1.0)
    i = np.arange(1, n + 1)
    return float(max(np.max(i / n - cdf), np.max(cdf - (i - 1) / n)))


def assert_uniform(sample: np.ndarray, low: float, high: float, what: str) -> None:
    n = np.size(sample)
    scaled = math.sqrt(n) * ks_statistic(sample, low, high)
    assert scaled < KS_CRITICAL_0_001, f"{what}: √n·D = {scaled:.3f} over {n} draws, not U({low}, {high})"


def assert_inside(values: np.ndarray, bounds: tuple[float, float], dtype: str, what: str) -> None:
    """Inside [low, high] as cast to ``dtype`` (rounding is monotone), give or take 4 ulps of the
    range's magnitude for ``low + (high − low)·u`` rounding up to or past ``high``."""
    low, high = (float(np.asarray(b, dtype=dtype)) for b in bounds)
    slack = 4 * float(np.finfo(dtype).eps) * max(abs(low), abs(high))
    assert values.dtype == np.dtype(dtype), what
    assert np.all(values >= low - slack) and np.all(values <= high + slack), (
        f"{what}: drawn [{values.min()}, {values.max()}] outside [{low}, {high}]"
    )


def assert_sinusoid(batch, x: np.ndarray, y: np.ndarray, what: str) -> None:
    """y = A·sin(ω·x + φ) per task, recomputed in float64 from the drawn (and cast) A, ω, φ, x.

    float32: the cast fields carry relative errors of 2⁻²⁴, so the argument ω·x + φ is off by
    up to ≈ 2⁻²⁴·(2|ω·x| + |φ|) and y by that times |A| plus its own rounding.
    """
    a, w, p = (np.asarray(getattr(batch, f), dtype=np.float64).reshape(-1, 1, 1) for f in FIELDS)
    x64 = np.asarray(x, dtype=np.float64)
    expected = a * np.sin(w * x64 + p)
    eps = float(np.finfo(y.dtype).eps)
    tol = 4 * eps * np.abs(a) * (1 + 2 * np.abs(w * x64) + np.abs(p)) + 1e-300
    err = np.abs(np.asarray(y, dtype=np.float64) - expected)
    assert np.all(err <= tol), f"{what}: y differs from A·sin(ω·x + φ) by {err.max():.3e}"


# --- the first batches, from SeedSequence directly -------------------------------------------------


@pytest.mark.parametrize("preset", ["seed-maml", "seed-alpha", "maml-paper", "maml-paper-code", "meta-sgd"])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_first_batches_of_every_preset_equal_the_seedsequence_derivation(preset, dtype):
    cfg = get_preset(preset).replace(dtype=dtype)
    for stream in (TRAIN_STREAM, EVAL_STREAM):
        for step in (0, 1, 2, 9_999):
            got = sample_batch(cfg, step, stream)._asdict()
            for name, expected in reference_batch(cfg, step, stream).items():
                np.testing.assert_array_equal(got[name], expected, err_msg=f"{preset} {stream} {step} {name}")


def test_off_zero_ranges_equal_the_seedsequence_derivation_bit_for_bit():
    """Every range away from zero and negative somewhere, several batch sizes and seeds."""
    cfg = Config(
        amplitude_range=(-3.0, -0.5),
        frequency_range=(1.5, 2.5),
        phase_range=(0.5, 2.0),
        x_range=(-7.0, -1.0),
        k_support=3,
        k_query=6,
        dtype="float64",
    )
    for seed, B, step in ((0, 1, 0), (5, 7, 3), (2**31 - 1, 4, 123_456)):
        c = cfg.replace(seed=seed, meta_batch=B)
        got = sample_batch(c, step)._asdict()
        for name, expected in reference_batch(c, step).items():
            np.testing.assert_array_equal(got[name], expected, err_msg=f"seed {seed} B {B} step {step} {name}")


# --- what every drawn task satisfies, over random configs -----------------------------------------


def ranges(low: float, high: float):
    """(low, high) pairs: any order-fixed pair, often far from zero, sometimes degenerate."""
    end = st.floats(low, high, allow_nan=False, allow_infinity=False, width=64)
    pairs = st.tuples(end, end).map(lambda p: (min(p), max(p)))
    degenerate = end.map(lambda v: (v, v))
    return st.one_of(pairs, degenerate)


task_configs = st.builds(
    Config,
    amplitude_range=ranges(-5.0, 5.0),
    frequency_range=ranges(-3.0, 3.0),
    phase_range=ranges(-2 * math.pi, 2 * math.pi),
    x_range=ranges(-10.0, 10.0),
    k_support=st.integers(1, 9),
    k_query=st.integers(1, 9),
    meta_batch=st.integers(1, 8),
    dtype=st.sampled_from(["float32", "float64"]),
    seed=st.integers(0, 2**32 - 1),
)


@BOUNDED
@given(task_configs, st.integers(0, 10**9), st.sampled_from([TRAIN_STREAM, EVAL_STREAM]))
def test_every_drawn_task_is_a_sinusoid_with_parameters_inside_the_ranges(cfg, step, stream):
    b = sample_batch(cfg, step, stream)
    B, K, Q = cfg.meta_batch, cfg.k_support, cfg.k_query
    assert b.amplitude.shape == b.frequency.shape == b.phase.shape == (B,)
    assert b.x_support.shape == b.y_support.shape == (B, K, 1)
    assert b.x_query.shape == b.y_query.shape == (B, Q, 1)
    for field in FIELDS:
        assert_inside(getattr(b, field), getattr(cfg, RANGE_OF[field]), cfg.dtype, field)
    assert_inside(b.x_support, cfg.x_range, cfg.dtype, "x_support")
    assert_inside(b.x_query, cfg.x_range, cfg.dtype, "x_query")
    # Support and query of task i come from one sinusoid: task i's own A, ω, φ fit both.
    assert_sinusoid(b, b.x_support, b.y_support, "support")
    assert_sinusoid(b, b.x_query, b.y_query, "query")
    # The draw is the documented one (in float64 exactly; float32 is its one cast).
    for name, expected in reference_batch(cfg, step, stream).items():
        np.testing.assert_array_equal(getattr(b, name), expected, err_msg=name)


def test_support_and_query_share_their_task_and_tasks_differ():
    """A fixed-φ, fixed-ω family with A ∈ [1, 2]: the ratio y/sin(ω·x + φ) is A for both sets."""
    cfg = Config(amplitude_range=(1.0, 2.0), frequency_range=(1.3, 1.3), phase_range=(0.4, 0.4), x_range=(0.1, 1.0))
    b = sample_batch(cfg.replace(dtype="float64", meta_batch=6, k_support=5, k_query=7), 4)
    for x, y in ((b.x_support, b.y_support), (b.x_query, b.y_query)):
        ratio = y[..., 0] / np.sin(1.3 * x[..., 0] + 0.4)  # sin > 0 on this x range
        np.testing.assert_allclose(ratio, np.broadcast_to(b.amplitude[:, None], ratio.shape), rtol=1e-13)
    assert len(np.unique(b.amplitude)) == 6


@BOUNDED
@given(task_configs, st.integers(0, 10**6))
def test_the_batch_depends_on_seed_stream_step_and_task_fields_only(cfg, step):
    b = sample_batch(cfg, step)
    sample_batch(cfg, step + 1)  # an unrelated call in between changes nothing (no hidden state)
    unrelated = cfg.replace(hidden=(3,), loss="mse", inner_steps=7, alpha_init=0.5, iterations=11, activation="relu")
    for f, g, h in zip(b, sample_batch(cfg, step), sample_batch(unrelated, step)):
        np.testing.assert_array_equal(f, g)
        np.testing.assert_array_equal(f, h)
    if cfg.x_range[1] - cfg.x_range[0] > 1e-3:  # a (nearly) degenerate x range draws (nearly) one x
        for other in (
            sample_batch(cfg, step + 1),
            sample_batch(cfg, step, EVAL_STREAM),
            sample_batch(cfg.replace(seed=(cfg.seed + 1) % 2**32), step),
        ):
            assert not np.array_equal(b.x_support, other.x_support)


def test_degenerate_ranges_draw_exactly_their_value():
    cfg = Config(
        amplitude_range=(-2.5, -2.5),
        frequency_range=(0.75, 0.75),
        phase_range=(1.25, 1.25),
        x_range=(3.0, 3.0),
        meta_batch=5,
        dtype="float64",
    )
    b = sample_batch(cfg, 17)
    assert np.all(b.amplitude == -2.5) and np.all(b.frequency == 0.75) and np.all(b.phase == 1.25)
    assert np.all(b.x_support == 3.0) and np.all(b.x_query == 3.0)
    np.testing.assert_allclose(b.y_query, -2.5 * np.sin(0.75 * 3.0 + 1.25), rtol=1e-15, atol=0)


# --- distributions: Kolmogorov–Smirnov over many draws, fixed seed --------------------------------

KS_CONFIGS = {
    "off-zero": Config(amplitude_range=(0.1, 5.0), frequency_range=(0.5, 2.0), phase_range=(1.0, 3.0), x_range=(2, 9)),
    "negative": Config(amplitude_range=(-4, -1), frequency_range=(-2, -0.5), phase_range=(-3, -1), x_range=(-9, -2)),
    "straddling": Config(amplitude_range=(-1.0, 3.0), frequency_range=(-1, 1), phase_range=(-math.pi, 0.5), seed=3),
}


@pytest.mark.parametrize("name", sorted(KS_CONFIGS))
def test_every_field_is_uniform_over_its_range(name):
    cfg = KS_CONFIGS[name].replace(dtype="float64", k_support=3, k_query=3)
    # 20 steps of 400 tasks: 8,000 draws of A, ω, φ and 24,000 of each x, from different cells.
    batches = [sample_batch(cfg, step, batch_size=400) for step in range(20)]
    for field in FIELDS:
        low, high = getattr(cfg, RANGE_OF[field])
        assert_uniform(np.concatenate([getattr(b, field) for b in batches]), low, high, f"{name} {field}")
    for field in ("x_support", "x_query"):
        assert_uniform(np.concatenate([getattr(b, field) for b in batches]), *cfg.x_range, f"{name} {field}")


def test_ks_check_rejects_what_is_not_uniform_over_the_range():
    """The goodness-of-fit check itself: exact D on a hand-computed case, and it rejects a lower
    bound ignored (U(0, high) for U(low, high)), a squeezed range and a non-uniform shape."""
    assert ks_statistic(np.array([0.5]), 0.0, 1.0) == 0.5
    assert ks_statistic(np.array([0.1, 0.6]), 0.0, 1.0) == pytest.approx(0.4, abs=1e-15)  # max(0.5-0.1, 1-0.6)
    gen = np.random.default_rng(0)
    n = 8000
    assert_uniform(gen.uniform(1.0, 3.0, n), 1.0, 3.0, "control")
    bad = {
        "lower bound ignored": gen.uniform(0.0, 3.0, n),
        "squeezed": gen.uniform(1.1, 2.9, n),
        "triangular": 1.0 + 2.0 * np.sqrt(gen.random(n)),
    }
    for what, sample in bad.items():
        with pytest.raises(AssertionError, match="not U"):
            assert_uniform(sample, 1.0, 3.0, what)

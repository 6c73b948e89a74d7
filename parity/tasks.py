"""The seeded sinusoid task sampler both twins read (NumPy only).

The meta-batch for outer step ``i`` is a pure function of ``(seed, i)``: its random numbers come
from ``numpy.random.SeedSequence([seed, stream, i])``, so any step can be regenerated without
replaying the ones before it. That is what makes resume, sharding and cross-framework runs exact.
Evaluation tasks use a different ``stream`` and so never coincide with training tasks.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from parity.config import Config

# Stream ids keep the seed domains of training, evaluation and initialisation disjoint.
TRAIN_STREAM = 0
EVAL_STREAM = 1
INIT_STREAM = 2


class TaskBatch(NamedTuple):
    """A meta-batch of sinusoid tasks, ``y = A·sin(ω·x + φ)``.

    Leading axes are ``[B]`` for one step or ``[N, B]`` for a stack of steps.
    """

    x_support: np.ndarray  # [B, K, 1]
    y_support: np.ndarray  # [B, K, 1]
    x_query: np.ndarray  # [B, Q, 1]
    y_query: np.ndarray  # [B, Q, 1]
    amplitude: np.ndarray  # [B]
    frequency: np.ndarray  # [B]
    phase: np.ndarray  # [B]


def rng_for(seed: int, stream: int, index: int) -> np.random.Generator:
    """The generator for one (seed, stream, index) cell; independent of every other cell."""
    return np.random.default_rng(np.random.SeedSequence([seed, stream, index]))


def sample_batch(cfg: Config, step: int, stream: int = TRAIN_STREAM, batch_size: int | None = None) -> TaskBatch:
    """The meta-batch of outer step ``step``: a pure function of ``(cfg.seed, stream, step)``.

    Drawn in float64 and cast once to ``cfg.dtype``.
    """
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    B = cfg.meta_batch if batch_size is None else batch_size
    rng = rng_for(cfg.seed, stream, step)
    amplitude = rng.uniform(*cfg.amplitude_range, size=B)  # [B]
    frequency = rng.uniform(*cfg.frequency_range, size=B)  # [B]
    phase = rng.uniform(*cfg.phase_range, size=B)  # [B]
    x_support = rng.uniform(*cfg.x_range, size=(B, cfg.k_support, 1))  # [B, K, 1]
    x_query = rng.uniform(*cfg.x_range, size=(B, cfg.k_query, 1))  # [B, Q, 1]
    batch = TaskBatch(
        x_support=x_support,
        y_support=sinusoid(x_support, amplitude, frequency, phase),
        x_query=x_query,
        y_query=sinusoid(x_query, amplitude, frequency, phase),
        amplitude=amplitude,
        frequency=frequency,
        phase=phase,
    )
    return cast_batch(batch, cfg.dtype)


def sample_batches(cfg: Config, start: int, count: int, stream: int = TRAIN_STREAM) -> TaskBatch:
    """Steps ``start .. start+count-1`` stacked on a leading axis: every field ``[N, B, ...]``."""
    batches = [sample_batch(cfg, step, stream) for step in range(start, start + count)]
    return TaskBatch(*(np.stack(field) for field in zip(*batches)))


def sinusoid(x: np.ndarray, amplitude: np.ndarray, frequency: np.ndarray, phase: np.ndarray) -> np.ndarray:
    """``A·sin(ω·x + φ)`` with per-task A, ω, φ of shape [B] broadcast over x [B, P, 1]."""
    a, w, p = (v[:, None, None] for v in (amplitude, frequency, phase))
    return a * np.sin(w * x + p)


def cast_batch(batch: TaskBatch, dtype: str) -> TaskBatch:
    return TaskBatch(*(np.asarray(field, dtype=dtype) for field in batch))

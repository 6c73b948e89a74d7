"""The seeded task sampler every implementation reads (NumPy only); the family draws the tasks.

The meta-batch for outer step ``i`` is a pure function of ``(seed, i)``: its random numbers come
from ``numpy.random.SeedSequence([seed, stream, i])``, so any step can be regenerated without
replaying the ones before it. That is what makes resume, sharding and cross-framework runs exact.
Evaluation tasks use a different ``stream`` and so never coincide with training tasks.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from parity.config import Config
from parity.families.sinusoid import TaskBatch, sinusoid

__all__ = [
    "EVAL_STREAM",
    "INIT_STREAM",
    "TRAIN_STREAM",
    "VAL_STREAM",
    "TaskBatch",
    "sample_batch",
    "sample_batches",
    "sinusoid",
]

# Stream ids keep the seed domains of training, evaluation and initialisation disjoint.
TRAIN_STREAM = 0
EVAL_STREAM = 1
INIT_STREAM = 2
# Meta-validation tasks (a family with data splits maps it to its validation classes).
VAL_STREAM = 3


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
    batch = cfg.family.sample(rng_for(cfg.seed, stream, step), B, stream=stream)  # type: ignore[attr-defined]
    return cast_batch(batch, cfg.dtype)


def sample_batches(cfg: Config, start: int, count: int, stream: int = TRAIN_STREAM) -> TaskBatch:
    """Steps ``start .. start+count-1`` stacked on a leading axis: every field ``[N, B, ...]``."""
    batches = [sample_batch(cfg, step, stream) for step in range(start, start + count)]
    return type(batches[0])(*(np.stack(field) for field in zip(*batches)))


def cast_batch(batch: Any, dtype: str) -> Any:
    return type(batch)(*(np.asarray(field, dtype=dtype) for field in batch))

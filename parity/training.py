"""The host side of training, shared by both twins: sample, convert once, run a chunk, report."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from parity.config import Config
from parity.init import init_alpha, init_params
from parity.tasks import sample_batches
from parity.twins import Twin

ChunkCallback = Callable[[int, dict[str, Any]], None]
StateCallback = Callable[[int, Any], None]


def initial_state(twin: Twin, cfg: Config) -> Any:
    """The twin's training state at step 0 from the shared NumPy initial parameters."""
    model = twin.model
    return twin.train.init_state(
        model.to_arrays(init_params(cfg), cfg.dtype), model.to_arrays(init_alpha(cfg), cfg.dtype), cfg
    )


def run(
    twin: Twin,
    cfg: Config,
    state: Any = None,
    start: int = 0,
    iterations: int | None = None,
    chunk: int = 250,
    on_chunk: ChunkCallback | None = None,
    checkpoint_every: int = 0,
    on_checkpoint: StateCallback | None = None,
    placement: Any = None,
) -> Any:
    """Train from step ``start`` to ``start + iterations`` (default ``cfg.iterations``).

    ``on_chunk(first_step, metrics)`` receives each chunk's metrics as NumPy arrays with a
    leading [N] axis. With ``checkpoint_every`` > 0, ``on_checkpoint(step, state)`` is called
    after every step that is a multiple of it (after that chunk's ``on_chunk``).
    ``placement`` (``jax_impl.distributed`` / ``torch_impl.distributed``) spreads each
    meta-batch over devices or processes; None runs on one device.
    """
    if state is None:
        state = initial_state(twin, cfg)
    if placement is not None:
        state = placement.state(state)
    end = start + (cfg.iterations if iterations is None else iterations)
    step = start
    while step < end:
        n = chunk_length(step, end, chunk, checkpoint_every)
        tasks = tuple(sample_batches(cfg, step, n)[:4])  # 4 × [N, B, P, 1]
        if placement is None:
            state, metrics = twin.train.train_chunk(state, twin.model.to_arrays(tasks, cfg.dtype), cfg)
        else:
            state, metrics = placement.train_chunk(state, placement.tasks(tasks, cfg.dtype), cfg)
        if on_chunk is not None:
            on_chunk(step, twin.model.to_numpy(metrics))
        step += n
        if on_checkpoint is not None and checkpoint_every > 0 and step % checkpoint_every == 0:
            on_checkpoint(step, state)
    return state


def chunk_length(step: int, end: int, chunk: int, checkpoint_every: int = 0) -> int:
    """Steps in the chunk starting at ``step``: chunks end at multiples of ``chunk`` and of
    ``checkpoint_every`` (absolute step numbers), so a run resumed from any checkpoint is cut into
    the same chunks as the run that never stopped."""
    stop = min(end, (step // chunk + 1) * chunk)
    if checkpoint_every > 0:
        stop = min(stop, (step // checkpoint_every + 1) * checkpoint_every)
    return stop - step


def final_values(twin: Twin, state: Any) -> dict[str, np.ndarray]:
    """Parameters and α of a training state as a flat dict of NumPy arrays."""
    out = {f"params/{k}": v for k, v in twin.model.to_numpy(state.params).items()}
    alpha = twin.model.to_numpy(state.alpha)
    if isinstance(alpha, dict):
        out.update({f"alpha/{k}": v for k, v in alpha.items()})
    else:
        out["alpha"] = alpha
    return out

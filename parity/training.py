"""The host side of training, shared by both twins: sample, convert once, run a chunk, report.

Divergence: each twin's compiled step returns ``metrics["finite"]`` (the outer loss, every
gradient and the updated state finite); the host reads it once per chunk, with the rest of the
metrics, and stops at the first step where it is false with :class:`TrainingDiverged`. The
chunk's end state is thrown away, so nothing computed from a non-finite step is ever checkpointed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from parity.config import Config
from parity.init import init_alpha_variable, init_params
from parity.tasks import sample_batches
from parity.twins import Twin

ChunkCallback = Callable[[int, dict[str, Any]], None]
StateCallback = Callable[[int, Any], None]


class TrainingDiverged(RuntimeError):
    """A step whose outer loss, meta-gradient or updated state is not finite; training stopped there.

    ``step``: the first such step (its update was not kept); ``alpha``: α at that step (a number,
    or ``{"mean", "min", "max"}`` per parameter); ``last_loss``: the last finite outer loss and
    ``last_loss_step`` its step (None if there was none). The message is one line with a hint.
    """

    def __init__(self, step: int, alpha: Any, last_loss: float | None, last_loss_step: int | None, cfg: Config):
        self.step, self.alpha, self.last_loss, self.last_loss_step = step, alpha, last_loss, last_loss_step
        if isinstance(alpha, dict):
            alpha_text = "mean {mean:.6g}, min {min:.6g}, max {max:.6g}".format(**alpha)
        else:
            alpha_text = f"{alpha:.6g}"
        last = "none" if last_loss is None else f"{last_loss:.6g} (step {last_loss_step})"
        rates = "alpha_init, alpha_lr" if cfg.alpha_learned else "alpha_init"
        hint = f"lower alpha ({rates}) or the outer learning rate (outer_lr)"
        if cfg.alpha_learned and cfg.alpha_parametrisation == "identity":
            hint += ", or use --alpha-parametrisation softplus, which keeps alpha positive"
        super().__init__(
            f"step {step}: the outer loss, a gradient or the updated state is not finite; alpha {alpha_text}, "
            f"last finite outer loss {last}; {hint}"
        )


def initial_state(twin: Twin, cfg: Config) -> Any:
    """The twin's training state at step 0 from the shared NumPy initial parameters."""
    return twin.train.init_state(
        twin.to_arrays(init_params(cfg), cfg.dtype), twin.to_arrays(init_alpha_variable(cfg), cfg.dtype), cfg
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
    At the first step whose loss, gradient or new state is not finite, ``on_chunk`` receives the chunk's
    steps before it and :class:`TrainingDiverged` is raised (no ``on_checkpoint`` after it).
    ``placement`` (the twin adapter's ``placement``: its ``distributed`` module) spreads each
    meta-batch over devices or processes; None runs on one device.
    """
    if state is None:
        state = initial_state(twin, cfg)
    if placement is not None:
        state = placement.state(state)
    end = start + (cfg.iterations if iterations is None else iterations)
    step = start
    last_loss: tuple[int, float] | None = None  # (step, outer loss) of the last finite step
    while step < end:
        n = chunk_length(step, end, chunk, checkpoint_every, cfg.first_order_steps)
        tasks = tuple(sample_batches(cfg, step, n)[:4])  # 4 × [N, B, P, 1]
        step_cfg = order_at(cfg, step)
        if placement is None:
            state, metrics = twin.train.train_chunk(
                state, twin.to_arrays(tasks, cfg.dtype), step_cfg, unroll=twin.unroll_for(step_cfg)
            )
        else:
            state, metrics = placement.train_chunk(state, placement.tasks(tasks, cfg.dtype), step_cfg)
        metrics = twin.to_numpy(metrics)  # the one host transfer of the chunk
        bad = first_nonfinite(metrics)
        if bad is not None:
            if on_chunk is not None and bad > 0:
                on_chunk(step, _first(metrics, bad))
            raise diverged(step, bad, metrics, last_loss, cfg)
        last_loss = (step + n - 1, float(metrics["outer_loss"][-1]))
        if on_chunk is not None:
            on_chunk(step, metrics)
        step += n
        if on_checkpoint is not None and checkpoint_every > 0 and step % checkpoint_every == 0:
            on_checkpoint(step, state)
    return state


def chunk_length(step: int, end: int, chunk: int, checkpoint_every: int = 0, first_order_steps: int = 0) -> int:
    """Steps in the chunk starting at ``step``: chunks end at multiples of ``chunk`` and of
    ``checkpoint_every`` (absolute step numbers), so a run resumed from any checkpoint is cut into
    the same chunks as the run that never stopped; and at ``first_order_steps``, where the order
    changes (a chunk is compiled for one order)."""
    stop = min(end, (step // chunk + 1) * chunk)
    if checkpoint_every > 0:
        stop = min(stop, (step // checkpoint_every + 1) * checkpoint_every)
    if step < first_order_steps:
        stop = min(stop, first_order_steps)
    return stop - step


def order_at(cfg: Config, step: int) -> Config:
    """The config outer step ``step`` runs: first order before ``first_order_steps`` (MAML++'s
    first-order annealing), the run's own order from there on."""
    return cfg.replace(first_order=True) if step < cfg.first_order_steps else cfg


def first_nonfinite(metrics: dict[str, Any]) -> int | None:
    """Index of a chunk's first step flagged not finite (``metrics["finite"]`` [N]), or None."""
    finite = np.asarray(metrics.get("finite", True)).reshape(-1)
    bad = np.flatnonzero(~finite)
    return int(bad[0]) if bad.size else None


def diverged(
    first_step: int, bad: int, metrics: dict[str, Any], last_loss: tuple[int, float] | None, cfg: Config
) -> TrainingDiverged:
    """The error for step ``first_step + bad`` of a chunk, with α and the last finite outer loss."""
    losses = np.asarray(metrics["outer_loss"][: bad + 1], dtype=np.float64)
    finite = np.flatnonzero(np.isfinite(losses))
    if finite.size:
        last_loss = (first_step + int(finite[-1]), float(losses[finite[-1]]))
    alpha = metrics["alpha"]
    if isinstance(alpha, dict):
        flat = np.concatenate([np.ravel(v[bad]) for v in alpha.values()])
        alpha_at: Any = {"mean": float(flat.mean()), "min": float(flat.min()), "max": float(flat.max())}
    else:
        alpha_at = float(alpha[bad])
    step, loss = last_loss if last_loss is not None else (None, None)
    return TrainingDiverged(first_step + bad, alpha_at, loss, step, cfg)


def _first(tree: Any, n: int) -> Any:
    """The first ``n`` steps of a chunk's metrics."""
    if isinstance(tree, dict):
        return {k: _first(v, n) for k, v in tree.items()}
    return tree[:n]


def final_values(twin: Twin, state: Any, cfg: Config | None = None) -> dict[str, np.ndarray]:
    """Parameters and α of a training state as a flat dict of NumPy arrays.

    With ``cfg``, ``alpha`` is α itself (softplus(ρ) under ``alpha_parametrisation`` softplus);
    without, it is the learned variable as the state holds it.
    """
    out = {f"params/{k}": v for k, v in twin.to_numpy(state.params).items()}
    alpha = twin.to_numpy(state.alpha if cfg is None else twin.train.alpha_value(state.alpha, cfg))
    if isinstance(alpha, dict):
        out.update({f"alpha/{k}": v for k, v in alpha.items()})
    else:
        out["alpha"] = alpha
    return out

"""The meta-objective of the oracle twin (mirrors jax_impl/meta.py's roles): the oracle's
complex-step meta-gradient, its trace, the batched inner optimiser step evaluation adapts with, and the
stability gate's per-step gains.

Everything is the oracle's arithmetic (``parity.oracle``); what is new here is only the shape of
the calls the twins' ``meta`` modules answer.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from numpy_twin.model import ORACLE, Params
from parity.config import Config
from parity.oracle import INNER_OPTIMIZERS, H, OptState  # noqa: F401 (eval reads meta.INNER_OPTIMIZERS, as in the twins)

Alpha = Any  # a 0-d array, or one array per parameter (per_parameter mode)
Tasks = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def alpha_for(alpha: Alpha, name: str) -> np.ndarray:
    return alpha[name] if isinstance(alpha, dict) else alpha


def alpha_at(alpha: Alpha, t: int, cfg: Config) -> Alpha:
    """α for inner step t (1, 2, …): per_layer_step's entry t − 1 (past T: T − 1), else α itself."""
    if cfg.alpha_mode != "per_layer_step" or not isinstance(alpha, dict):
        return alpha
    return {name: a[min(t, cfg.inner_steps) - 1] for name, a in alpha.items()}


def broadcast_to_tasks(params: Params, x: np.ndarray) -> Params:
    """Every task its own copy of the parameters: the leading axes of ``x`` [..., P, 1]."""
    return {name: np.array(np.broadcast_to(p, x.shape[:-2] + p.shape)) for name, p in params.items()}


def inner_step(params: Params, alpha: Alpha, x: np.ndarray, y: np.ndarray, cfg: Config) -> tuple[Params, np.ndarray]:
    """One SGD step of each task on its own support points; ``params`` leaves [N, ...], ``x`` [N, K, 1].
    Returns (new params, support loss before the step [N])."""
    value, grads = ORACLE.loss_and_grads(params, x, y, cfg)
    adapted = set(cfg.model.adapted(tuple(params)))
    new = {name: p - alpha_for(alpha, name) * grads[name].real if name in adapted else p for name, p in params.items()}
    return new, value.real


def optimizer_step(
    carry: tuple[Params, OptState], t: Any, alpha: Alpha, x: np.ndarray, y: np.ndarray, cfg: Config
) -> tuple[tuple[Params, OptState], np.ndarray]:
    """Step t (1, 2, …) of the inner optimiser (the oracle's table) on each task's own support points:
    ((new params, new state), support loss before the step [N]); ``params`` leaves [N, ...]."""
    params, state = carry
    value, grads = ORACLE.loss_and_grads(params, x, y, cfg)
    direction, state = ORACLE.inner_direction({k: g.real for k, g in grads.items()}, state, t, cfg)
    adapted = set(cfg.model.adapted(tuple(params)))
    step_alpha = alpha_at(alpha, int(t), cfg)
    new = {k: p - alpha_for(step_alpha, k) * direction[k] if k in adapted else p for k, p in params.items()}
    return (new, state), value.real


def meta_value_and_grad(
    params: Params, alpha: Alpha, tasks: Tasks, cfg: Config, unroll: int = 0
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[Params, Alpha]]:
    """((outer loss [], support losses [T]), (dL/dparams, dL/dα)): the oracle's, complex-step outside."""
    del unroll  # NumPy has nothing to unroll
    out = ORACLE.meta_value_and_grad(params, alpha, tasks, cfg)
    return (out["outer_loss"], out["inner_losses"]), (out["grads"], out["alpha_grad"])


def trace(params: Params, alpha: Alpha, tasks: Tasks, cfg: Config) -> dict[str, np.ndarray]:
    """The oracle's trace under the twins' names (``support_loss``, ``inner_grad/<name>``, …)."""
    return {key.split("/", 1)[1]: value for key, value in ORACLE.trace(params, alpha, tasks, cfg).items()}


def inner_step_gains(params: Params, alpha: Alpha, tasks: Tasks, cfg: Config, iterations: int = 30) -> np.ndarray:
    """max|1 − α·λ(H_t)| of each inner step of each task [B, T], by the twins' power iteration on
    J_t = I − α ⊙ H_t from the same start vector; H_t·v is a complex step of the hand-written gradient."""
    x_s, y_s = tasks[0], tasks[1]
    gains = np.zeros((x_s.shape[0], cfg.inner_steps))
    for task in range(x_s.shape[0]):
        p = {name: v[None] for name, v in params.items()}  # one copy: D = 1
        for t in range(cfg.inner_steps):
            alpha_t = alpha_at(alpha, t + 1, cfg)
            gains[task, t] = _step_gain(p, alpha_t, x_s[task], y_s[task], cfg, iterations)
            p = inner_step(p, alpha_t, x_s[task][None], y_s[task][None], cfg)[0]
    return gains


def _gradient(params: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray, cfg: Config) -> dict[str, np.ndarray]:
    return ORACLE.loss_and_grads(params, x, y, cfg)[1]


def _step_gain(p: Params, alpha: Alpha, x: np.ndarray, y: np.ndarray, cfg: Config, iterations: int) -> float:
    def hvp(v: Params) -> Params:
        moved = _gradient({k: p[k] + 1j * H * v[k] for k in p}, x, y, cfg)
        return {k: g.imag / H for k, g in moved.items()}

    v, gain = _start_vector(p), 1.0
    for _ in range(iterations):
        hv = hvp(v)
        jv = {k: v[k] - alpha_for(alpha, k) * hv[k] for k in v}
        gain = float(np.sqrt(sum(np.sum(a * a) for a in jv.values())))
        v = {k: a / (gain + np.finfo(np.float64).tiny) for k, a in jv.items()}
    return gain


def _start_vector(params: Params) -> Params:
    # The twins' start vector: sin(1, 2, …) over the parameters in sorted name order, unit length.
    names = sorted(params)
    sizes = [params[name].size for name in names]
    flat = np.sin(1.0 + np.arange(sum(sizes), dtype=np.float64))
    flat /= np.linalg.norm(flat)
    return {name: flat[s - n : s].reshape(params[name].shape) for name, n, s in zip(names, sizes, np.cumsum(sizes))}

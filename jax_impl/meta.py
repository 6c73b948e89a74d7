"""The unrolled meta-objective (JAX twin); mirrors torch_impl/meta.py function for function.

Inner loop:  w_{t+1} = w_t − α ⊙ ∇L_support(w_t),  t = 0 … T−1, differentiated through
(second order) unless ``cfg.first_order``. Outer loss: L_query(w_T), the mean over tasks.
Tasks are ``(x_support [B, K, 1], y_support [B, K, 1], x_query [B, Q, 1], y_query [B, Q, 1])``;
the functions below are written for the points of one task and any leading task axes, and
``meta_loss`` maps them over the meta-batch with ``jax.vmap``.
"""

from __future__ import annotations

import functools
from typing import Union

import jax
import jax.numpy as jnp

from jax_impl.model import Params, forward, point_loss
from parity.config import Config

Alpha = Union[jax.Array, Params]  # a 0-d array, or one array per parameter (per_parameter mode)
Tasks = tuple[jax.Array, jax.Array, jax.Array, jax.Array]

# Inner loops up to this length are unrolled into straight-line code; longer ones stay a rolled
# scan. 0: never unroll (XLA CPU compiles a rolled scan 1.5-2x faster at T = 5-10, runs as fast).
UNROLL_UP_TO = 0


def inner_loss(params: Params, x: jax.Array, y: jax.Array, cfg: Config) -> jax.Array:
    """Loss of each task on points ``x``, ``y`` [..., P, 1] → [...]."""
    return point_loss(forward(params, x, cfg.activation), y, cfg.loss)


def alpha_for(alpha: Alpha, name: str) -> jax.Array:
    """The step size of parameter ``name``: α itself, or its own entry in per_parameter mode."""
    return alpha[name] if isinstance(alpha, dict) else alpha


def broadcast_to_tasks(params: Params, x: jax.Array) -> Params:
    """Give every task its own copy of the parameters: leading axes of ``x`` [..., P, 1]."""
    tasks_shape = x.shape[:-2]
    return {name: jnp.broadcast_to(p, tasks_shape + p.shape) for name, p in params.items()}


def inner_step(params: Params, alpha: Alpha, x: jax.Array, y: jax.Array, cfg: Config) -> tuple[Params, jax.Array]:
    """One SGD step on the support set; returns (new params, support loss before the step [...])."""

    def summed(p: Params) -> tuple[jax.Array, jax.Array]:
        # Each task's parameters see only that task's loss, so the gradient of the sum over
        # tasks is every task's own gradient.
        losses = inner_loss(p, x, y, cfg)
        return losses.sum(), losses

    (_, losses), grads = jax.value_and_grad(summed, has_aux=True)(params)
    if cfg.first_order:
        grads = jax.lax.stop_gradient(grads)  # FOMAML: the inner gradient is a constant
    new_params = {name: p - alpha_for(alpha, name) * grads[name] for name, p in params.items()}
    return new_params, losses


def adapt(params: Params, alpha: Alpha, x: jax.Array, y: jax.Array, cfg: Config) -> tuple[Params, jax.Array]:
    """``cfg.inner_steps`` steps on the support set; returns (adapted params, losses [..., T])."""
    params = broadcast_to_tasks(params, x)
    T = cfg.inner_steps

    def step(p: Params, _: None) -> tuple[Params, jax.Array]:
        return inner_step(p, alpha, x, y, cfg)

    unroll = T if 0 < T <= UNROLL_UP_TO else 1
    params, losses = jax.lax.scan(step, params, None, length=T, unroll=unroll)  # losses [T, ...]
    return params, jnp.moveaxis(losses, 0, -1)


def task_losses(params: Params, alpha: Alpha, tasks: Tasks, cfg: Config) -> tuple[jax.Array, jax.Array]:
    """Adapt on each task's support set; returns (query loss [...], support losses [..., T])."""
    x_support, y_support, x_query, y_query = tasks
    adapted, support_losses = adapt(params, alpha, x_support, y_support, cfg)
    return inner_loss(adapted, x_query, y_query, cfg), support_losses


def meta_loss(params: Params, alpha: Alpha, tasks: Tasks, cfg: Config) -> tuple[jax.Array, jax.Array]:
    """The meta-objective: (mean query loss over the meta-batch [], mean support losses [T])."""
    outer, inner = jax.vmap(lambda task: task_losses(params, alpha, task, cfg))(tasks)  # [B], [B, T]
    return outer.mean(), inner.mean(0)


def meta_value_and_grad(
    params: Params, alpha: Alpha, tasks: Tasks, cfg: Config
) -> tuple[tuple[jax.Array, jax.Array], tuple[Params, Alpha]]:
    """((outer loss [], support losses [T]), (dL/dparams, dL/dα)), differentiated through T steps."""
    # Compiled once per meta_signature: seeds, α values and learning rates share one executable.
    return _meta_value_and_grad(params, alpha, tasks, cfg.meta_signature())


@functools.partial(jax.jit, static_argnames="cfg")
def _meta_value_and_grad(
    params: Params, alpha: Alpha, tasks: Tasks, cfg: Config
) -> tuple[tuple[jax.Array, jax.Array], tuple[Params, Alpha]]:
    (loss, inner), grads = jax.value_and_grad(meta_loss, argnums=(0, 1), has_aux=True)(params, alpha, tasks, cfg)
    return (loss, inner), grads


def inner_step_gains(
    params: Params, alpha: Alpha, tasks: Tasks, cfg: Config, iterations: int = 30
) -> jax.Array:
    """Gain of each inner step of each task, max|1 − α·λ(H_t)| [B, T], for the stability gate.

    H_t is the support-loss Hessian at w_t. Power iteration runs on the linearised step
    J_t = I − α ⊙ H_t itself (one Hessian-vector product per iteration): its dominant eigenvalue
    is the 1 − α·λ of largest magnitude, the quantity the gate multiplies, and the iteration
    converges even where H_t has eigenvalues of both signs and similar size. The estimate
    ‖J_t v‖ rises towards the true gain and never exceeds it.
    """
    return _inner_step_gains(params, alpha, tasks, cfg.meta_signature(), iterations)


@functools.partial(jax.jit, static_argnames=("cfg", "iterations"))
def _inner_step_gains(params: Params, alpha: Alpha, tasks: Tasks, cfg: Config, iterations: int) -> jax.Array:
    def one_task(task: Tasks) -> jax.Array:
        x, y = task[0], task[1]

        def step(p: Params, _: None) -> tuple[Params, jax.Array]:
            gain = _step_gain(p, alpha, x, y, cfg, iterations)
            p, _ = inner_step(p, alpha, x, y, cfg)
            return p, gain

        _, gains = jax.lax.scan(step, broadcast_to_tasks(params, x), None, length=cfg.inner_steps)
        return gains

    return jax.vmap(one_task)(tasks)


def _step_gain(params: Params, alpha: Alpha, x: jax.Array, y: jax.Array, cfg: Config, iterations: int) -> jax.Array:
    def grad_fn(p: Params) -> Params:
        return jax.grad(lambda q: inner_loss(q, x, y, cfg).sum())(p)

    def hvp(v: Params) -> Params:
        return jax.jvp(grad_fn, (params,), (v,))[1]

    def power_step(_: int, carry: tuple[Params, jax.Array]) -> tuple[Params, jax.Array]:
        v, _ = carry
        hv = hvp(v)
        jv = {name: v[name] - alpha_for(alpha, name) * hv[name] for name in v}
        gain = jnp.sqrt(_dot(jv, jv))
        return _scale(jv, 1.0 / (gain + jnp.finfo(x.dtype).tiny)), gain

    _, gain = jax.lax.fori_loop(0, iterations, power_step, (_start_vector(params), jnp.ones((), x.dtype)))
    return gain


def _start_vector(params: Params) -> Params:
    # Deterministic and identical in both twins; unlikely to be orthogonal to any eigenvector.
    names = sorted(params)  # JAX's tree utilities sort dict keys; use one order in both twins
    sizes = [params[name].size for name in names]
    flat = jnp.sin(1.0 + jnp.arange(sum(sizes), dtype=params[names[0]].dtype))
    flat = flat / jnp.linalg.norm(flat)
    out, start = {}, 0
    for name, size in zip(names, sizes):
        p = params[name]
        out[name] = flat[start : start + size].reshape(p.shape)
        start += size
    return out


def _dot(a: Params, b: Params) -> jax.Array:
    return sum(jnp.sum(a[name] * b[name]) for name in a)  # type: ignore[return-value]


def _scale(a: Params, s: jax.Array) -> Params:
    return {name: v * s for name, v in a.items()}

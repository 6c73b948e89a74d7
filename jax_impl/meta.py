"""The unrolled meta-objective (JAX twin); mirrors torch_impl/meta.py function for function.

Inner loop:  w_{t+1} = w_t − α ⊙ u_t, u_t the inner optimiser's direction from ∇L_support(w_t)
(SGD: the gradient itself; momentum; Adam), t = 0 … T−1, differentiated through (second order)
unless ``cfg.first_order``. Outer loss: L_query(w_T), the mean over tasks; with ``cfg.msl`` (MAML++'s
multi-step loss) Σ_t w_t·L_query(w_t), t = 1 … T, weights ``parity.inner.msl_weights``.
Tasks are ``(x_support [B, K, 1], y_support [B, K, 1], x_query [B, Q, 1], y_query [B, Q, 1])``;
the functions below are written for the points of one task and any leading task axes, and
``meta_loss`` maps them over the meta-batch with ``jax.vmap``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any, Union

import jax
import jax.numpy as jnp

from jax_impl.model import LAYERS, Params, check_inputs, point_loss, predict
from parity.config import Config
from parity.inner import msl_table

Alpha = Union[jax.Array, Params]  # a 0-d array, or one array per parameter (per_parameter mode)
Tasks = tuple[jax.Array, jax.Array, jax.Array, jax.Array]

# ``unroll`` (adapt, task_losses, meta_loss, meta_value_and_grad; train.train_step/train_chunk):
# inner loops of up to that many steps are unrolled into straight-line code; longer ones stay a
# rolled scan. 0 (the default): never unroll. A static argument (part of the compile key), never a
# module global. On one CPU core at seed-alpha (T = 5; docs/performance.md) unrolling saves 11-13%
# per outer step at B = 1 and 20-30% at B = 25, and costs ~1 s more compile (3.05 s against
# 2.05 s); `maml-parity bench --quick --unroll 5` measures both.


def inner_loss(params: Params, x: jax.Array, y: jax.Array, cfg: Config) -> jax.Array:
    """Loss of each task on points ``x``, ``y`` [..., P, 1] → [...]; ``params`` may carry the
    leading task axes of ``x``. Checks shapes and dtypes first (:func:`_inner_loss` does not).
    """
    check_inputs("inner_loss", cfg, batched_params=True, params=params, x=x, y=y)
    return _inner_loss(params, x, y, cfg)


def _inner_loss(params: Params, x: jax.Array, y: jax.Array, cfg: Config) -> jax.Array:
    # inner_loss without the input checks: the inner loop calls it every step.
    return point_loss(predict(params, x, cfg), y, cfg.loss)


def alpha_for(alpha: Alpha, name: str) -> jax.Array:
    """The step size of parameter ``name``: α itself, or its own entry in per_parameter mode."""
    return alpha[name] if isinstance(alpha, dict) else alpha


def alpha_at(alpha: Alpha, t: jax.Array, cfg: Config) -> Alpha:
    """α for inner step t (1, 2, …): α itself, except in per_layer_step mode (LSLR), whose α[name]
    [T] holds one step size per step: entry t − 1 (evaluation's steps past T reuse entry T − 1)."""
    if cfg.alpha_mode != "per_layer_step" or not isinstance(alpha, dict):
        return alpha
    i = jnp.minimum(t, cfg.inner_steps).astype(jnp.int32) - 1
    return {name: a[i] for name, a in alpha.items()}


def broadcast_to_tasks(params: Params, y: jax.Array) -> Params:
    """Give every task its own copy of the parameters: leading axes of the targets ``y`` [..., P, n_outputs]
    (``y``, not ``x``: images carry three axes per point, targets always one)."""
    tasks_shape = y.shape[:-2]
    return {name: jnp.broadcast_to(p, tasks_shape + p.shape) for name, p in params.items()}


def inner_gradient(params: Params, x: jax.Array, y: jax.Array, cfg: Config) -> tuple[Params, jax.Array]:
    """(The support-loss gradient of each task's parameters, the support loss [...])."""

    def summed(p: Params) -> tuple[jax.Array, jax.Array]:
        # Each task's parameters see only that task's loss, so the gradient of the sum over
        # tasks is every task's own gradient.
        losses = _inner_loss(p, x, y, cfg)
        return losses.sum(), losses

    (_, losses), grads = jax.value_and_grad(summed, has_aux=True)(params)
    if cfg.first_order:
        grads = jax.lax.stop_gradient(grads)  # FOMAML: the inner gradient is a constant
    return grads, losses


def inner_step(params: Params, alpha: Alpha, x: jax.Array, y: jax.Array, cfg: Config) -> tuple[Params, jax.Array]:
    """One SGD step on the support set; returns (new params, support loss before the step [...])."""
    grads, losses = inner_gradient(params, x, y, cfg)
    return apply_step(params, alpha, grads, cfg), losses


def apply_step(params: Params, alpha: Alpha, direction: Params, cfg: Config) -> Params:
    """``w − α ⊙ u`` for the parameters the model adapts (``cfg.model.adapted``); the others stay."""
    adapted = cfg.model.adapted(tuple(params))
    return {name: p - alpha_for(alpha, name) * direction[name] if name in adapted else p for name, p in params.items()}


# --- the inner optimisers: pure (init, update) pairs, Optax's shape ------------------------------------
# init(params) -> state {slot: {name: array}}; update(grads, state, t, opt) -> (direction u, state),
# t = 1, 2, … (an array of the parameters' dtype); the step is then w − α ⊙ u.

OptState = dict[str, Params]


def _zeros(params: Params) -> Params:
    return {name: jnp.zeros_like(p) for name, p in params.items()}


def sgd_update(grads: Params, state: OptState, t: jax.Array, opt: Any) -> tuple[Params, OptState]:
    return grads, state


def momentum_update(grads: Params, state: OptState, t: jax.Array, opt: Any) -> tuple[Params, OptState]:
    # torch.optim.SGD with dampening 0: v ← β·v + g; heavy ball u = v, Nesterov u = g + β·v
    buf = {name: opt.momentum * state["momentum"][name] + g for name, g in grads.items()}
    direction = {name: g + opt.momentum * buf[name] for name, g in grads.items()} if opt.nesterov else buf
    return direction, {"momentum": buf}


def adam_update(grads: Params, state: OptState, t: jax.Array, opt: Any) -> tuple[Params, OptState]:
    # Rematerialised: the meta-gradient's backward pass recomputes these few elementwise ops from
    # the step's inputs (g, m, v) instead of reading back the ~7 parameter-sized intermediates per
    # step autodiff would store (roots, masks, quotients: each one more buffer written, zeroed and
    # read per step). The same operations: the inner loop's values are bit for bit those of
    # _adam_update alone, meta-gradients equal to rounding (the backward pass sums in another
    # order); at seed-alpha B = 25 T = 5 the Adam / SGD step-time ratio drops from ~2.3 to ~1.6
    # (docs/performance.md). prevent_cse=False: it runs inside lax.scan, which needs no barrier.
    return jax.checkpoint(functools.partial(_adam_update, opt=opt), prevent_cse=False)(grads, state, t)


def _adam_update(grads: Params, state: OptState, t: jax.Array, opt: Any) -> tuple[Params, OptState]:
    # optax.adam / torch.optim.Adam: bias-corrected m̂ / (√v̂ + ε), ε outside the root
    m = {name: opt.beta1 * state["m"][name] + (1 - opt.beta1) * g for name, g in grads.items()}
    v = {name: opt.beta2 * state["v"][name] + (1 - opt.beta2) * g * g for name, g in grads.items()}
    c1, c2 = bias_correction(opt.beta1, t), bias_correction(opt.beta2, t)
    direction = {name: (m[name] / c1) / (safe_sqrt(v[name] / c2) + opt.eps) for name in grads}
    return direction, {"m": m, "v": v}


def bias_correction(beta: float, t: jax.Array) -> jax.Array:
    """1 − β^t, as −expm1(t·log β) with log β taken in double precision: β^t in float32 rounds β
    first (0.999 becomes 0.99900001), and 1 − β^t then loses five digits to cancellation (relative
    error 1.3e-5 at t = 1, against PyTorch's double-precision Python floats); this form keeps the
    float32 result within a few units of its rounding."""
    return -jnp.expm1(t * math.log(beta))


def safe_sqrt(v: jax.Array) -> jax.Array:
    """√v with derivative 0 where v = 0 (docs/numerics.md): v = 0 only where every gradient so far
    was 0, where v's own derivative is 0 too, so this is the exact derivative, not NaN = ∞·0."""
    positive = v > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, v, 1.0)), 0.0)  # scalars: no fill kernels


INNER_OPTIMIZERS: dict[str, tuple[Callable[[Params], OptState], Callable[..., tuple[Params, OptState]]]] = {
    "sgd": (lambda params: {}, sgd_update),
    "momentum": (lambda params: {"momentum": _zeros(params)}, momentum_update),
    "adam": (lambda params: {"m": _zeros(params), "v": _zeros(params)}, adam_update),
}


def optimizer_step(
    carry: tuple[Params, OptState], t: jax.Array, alpha: Alpha, x: jax.Array, y: jax.Array, cfg: Config
) -> tuple[tuple[Params, OptState], jax.Array]:
    """Step t (1, 2, …) of the inner optimiser: ((new params, new state), support loss before it)."""
    params, state = carry
    grads, losses = inner_gradient(params, x, y, cfg)
    direction, state = INNER_OPTIMIZERS[cfg.inner_optimizer][1](grads, state, t, cfg.inner.optimizer)
    return (apply_step(params, alpha_at(alpha, t, cfg), direction, cfg), state), losses


def adapt(
    params: Params,
    alpha: Alpha,
    x: jax.Array,
    y: jax.Array,
    cfg: Config,
    unroll: int = 0,
    query: tuple[jax.Array, jax.Array] | None = None,
) -> tuple[Params, jax.Array]:
    """``cfg.inner_steps`` steps on the support set; returns (adapted params, losses [..., T]).

    ``unroll``: loops of up to that many steps become straight-line code (0: a rolled scan).
    ``query`` (x_query, y_query), for the multi-step loss: losses are then [2, ..., T], the support
    loss before each step and the query loss after it.
    """
    check_inputs("adapt", cfg, params=params, alpha=alpha, x=x, y=y)
    params = broadcast_to_tasks(params, y)
    T = cfg.inner_steps
    carry = (params, INNER_OPTIMIZERS[cfg.inner_optimizer][0](params))
    steps = jnp.arange(1, T + 1, dtype=x.dtype)  # t, for Adam's bias correction

    def step(c: tuple[Params, OptState], t: jax.Array) -> tuple[tuple[Params, OptState], jax.Array]:
        c, loss = optimizer_step(c, t, alpha, x, y, cfg)
        if query is None:
            return c, loss
        return c, jnp.stack([loss, _inner_loss(c[0], *query, cfg)])  # MSL: the query loss after step t

    if cfg.remat:
        (params, _), losses = rematerialised_loop(step, carry, steps)  # losses [T, ...]
    else:
        straight = T if 0 < T <= unroll else 1
        (params, _), losses = jax.lax.scan(step, carry, steps, unroll=straight)  # losses [T, ...]
    return params, jnp.moveaxis(losses, 0, -1)


def rematerialised_loop(step: Callable[..., Any], carry: Any, steps: jax.Array) -> tuple[Any, jax.Array]:
    """``adapt``'s inner loop with O(√T) memory: returns (final carry, losses [T, ...]).

    √T checkpointing (Chen et al. 2016, "Training deep nets with sublinear memory cost"): the
    loop runs in segments of k = ⌈√T⌉ steps; only each segment's input parameters are kept for
    the backward pass, which recomputes one segment at a time. Memory ≈ T/k saved parameter sets
    plus one segment's intermediates, instead of every step's; time ≈ one more forward pass.
    (Checkpointing each step alone keeps T parameter sets: at the seed's size, with 4 points per
    task, that is already a third of what the plain loop keeps.)
    """
    T = steps.shape[0]
    k = max(1, math.ceil(math.sqrt(T)))
    n_segments, tail = divmod(T, k)

    def segment(c: Any, ts: jax.Array) -> tuple[Any, jax.Array]:
        # jax.checkpoint: the segment's residuals are not stored but recomputed from its input.
        return jax.checkpoint(lambda c, ts: jax.lax.scan(step, c, ts))(c, ts)

    carry, losses = jax.lax.scan(segment, carry, steps[: n_segments * k].reshape(n_segments, k))  # [n, k, ...]
    losses = losses.reshape((n_segments * k, *losses.shape[2:]))
    if tail:
        carry, tail_losses = segment(carry, steps[n_segments * k :])  # [tail, ...]
        losses = jnp.concatenate([losses, tail_losses])
    return carry, losses


def task_losses(
    params: Params, alpha: Alpha, tasks: Tasks, cfg: Config, unroll: int = 0, weights: jax.Array | None = None
) -> tuple[jax.Array, jax.Array]:
    """Adapt on each task's support set; returns (query loss [...], support losses [..., T]).
    ``weights`` [T] (MSL): the query loss is Σ_t w_t·L_query(w_t) over the steps instead."""
    x_support, y_support, x_query, y_query = tasks
    if weights is None:
        adapted, support_losses = adapt(params, alpha, x_support, y_support, cfg, unroll)
        return _inner_loss(adapted, x_query, y_query, cfg), support_losses
    _, losses = adapt(params, alpha, x_support, y_support, cfg, unroll, query=(x_query, y_query))  # [2, ..., T]
    return (losses[1] * weights).sum(-1), losses[0]


def meta_loss(
    params: Params, alpha: Alpha, tasks: Tasks, cfg: Config, unroll: int = 0, weights: jax.Array | None = None
) -> tuple[jax.Array, jax.Array]:
    """The meta-objective: (mean query loss over the meta-batch [], mean support losses [T])."""
    check_inputs("meta_loss", cfg, params=params, alpha=alpha, tasks=tasks)
    outer, inner = jax.vmap(lambda task: task_losses(params, alpha, task, cfg, unroll, weights))(tasks)  # [B], [B, T]
    return outer.mean(), inner.mean(0)


def msl_weights_at(cfg: Config, step: Any, dtype: Any) -> jax.Array:
    """The multi-step loss's weights [T] at outer step ``step`` (an int, or a traced count in a
    compiled chunk): row min(step, msl_anneal) of ``parity.inner.msl_table``, in ``dtype``."""
    return jnp.asarray(msl_table(cfg.inner), dtype)[jnp.minimum(step, cfg.msl_anneal)]


def meta_value_and_grad(
    params: Params, alpha: Alpha, tasks: Tasks, cfg: Config, unroll: int = 0, step: Any = 0
) -> tuple[tuple[jax.Array, jax.Array], tuple[Params, Alpha]]:
    """((outer loss [], support losses [T]), (dL/dparams, dL/dα)), differentiated through T steps.
    ``step``: the outer step, which picks the multi-step loss's weights (0 for the contract)."""
    check_inputs("meta_value_and_grad", cfg, params=params, alpha=alpha, tasks=tasks)
    weights = msl_weights_at(cfg, step, tasks[0].dtype) if cfg.msl else None
    # Compiled once per meta_signature: seeds, α values and learning rates share one executable.
    return _meta_value_and_grad(params, alpha, tasks, cfg.meta_signature(), unroll, weights)


@functools.partial(jax.jit, static_argnames=("cfg", "unroll"))
def _meta_value_and_grad(
    params: Params, alpha: Alpha, tasks: Tasks, cfg: Config, unroll: int = 0, weights: jax.Array | None = None
) -> tuple[tuple[jax.Array, jax.Array], tuple[Params, Alpha]]:
    value_and_grad = jax.value_and_grad(meta_loss, argnums=(0, 1), has_aux=True)
    (loss, inner), grads = value_and_grad(params, alpha, tasks, cfg, unroll, weights)
    return (loss, inner), grads


def trace(params: Params, alpha: Alpha, tasks: Tasks, cfg: Config) -> dict[str, jax.Array]:
    """The inner loop of every task step by step, for locating a first divergence.

    Returns ``support_loss`` [B, T] (before each step), ``inner_grad/<name>``,
    ``state/<slot>/<name>`` and ``adapted/<name>`` [B, T, *shape] (the gradient of step t, the
    inner optimiser's state after it — ``momentum``, or Adam's ``m`` and ``v`` — and the parameters
    after it) and ``query_loss`` [B] (after the last step; under MSL the weighted losses after every
    step: the outer loss is its mean): the loop ``meta_loss`` runs, recorded.
    A model with layers in ``LAYERS`` (the conv net) adds ``activation/<layer>`` [B, T, P, *shape]:
    its layer outputs on the support set before each step (``Config.traced_layers``).
    """
    check_inputs("trace", cfg, params=params, alpha=alpha, tasks=tasks)
    return _trace(params, alpha, tasks, cfg.meta_signature())


@functools.partial(jax.jit, static_argnames="cfg")
def _trace(params: Params, alpha: Alpha, tasks: Tasks, cfg: Config) -> dict[str, jax.Array]:
    x_support, y_support, x_query, y_query = tasks
    p = broadcast_to_tasks(params, y_support)  # [B, ...]
    init, update = INNER_OPTIMIZERS[cfg.inner_optimizer]
    state = init(p)
    losses: list[jax.Array] = []
    grads: list[Params] = []
    states: list[OptState] = []
    adapted: list[Params] = []
    layers: list[Params] = []  # the model's layer outputs on the support set, before each step
    forward_layers = LAYERS.get(cfg.model.name)
    for t in range(1, cfg.inner_steps + 1):
        if forward_layers is not None:
            layers.append(forward_layers(p, x_support, cfg.model))
        g, loss = inner_gradient(p, x_support, y_support, cfg)
        direction, state = update(g, state, jnp.asarray(t, x_support.dtype), cfg.inner.optimizer)
        # step t's α (per parameter: shaped like one task's parameter) broadcast over the task axis
        alpha_t = alpha_at(alpha, jnp.asarray(t), cfg)
        alpha_b = {name: jnp.broadcast_to(alpha_for(alpha_t, name), v.shape) for name, v in p.items()}
        p = apply_step(p, alpha_b, direction, cfg)
        losses.append(loss)
        grads.append(g)
        states.append(state)
        adapted.append(p)
    B, P = x_support.shape[:2]
    out = {"support_loss": _stack_steps(losses, (B,), x_support.dtype)}
    groups = [("inner_grad", grads), ("adapted", adapted)]
    groups += [(f"state/{slot}", [s[slot] for s in states]) for slot in init(params)]
    for group, steps in groups:
        for name, v in params.items():
            out[f"{group}/{name}"] = _stack_steps([s[name] for s in steps], (B, *v.shape), v.dtype)
    if forward_layers is not None:
        for name, shape in cfg.traced_layers.items():
            out[f"activation/{name}"] = _stack_steps([a[name] for a in layers], (B, P, *shape), x_support.dtype)
    out["query_loss"] = _trace_query_loss(p, adapted, x_query, y_query, cfg)
    return out


def _trace_query_loss(
    p: Params, adapted: list[Params], x_query: jax.Array, y_query: jax.Array, cfg: Config
) -> jax.Array:
    # The per-task outer loss, whose mean is meta_loss's: under MSL the weighted query losses
    # after every step (outer step 0's weights, the contract's), else the last step's.
    if not cfg.msl:
        return _inner_loss(p, x_query, y_query, cfg)
    losses = jnp.stack([_inner_loss(a, x_query, y_query, cfg) for a in adapted], axis=-1)  # [B, T]
    return losses @ msl_weights_at(cfg, 0, x_query.dtype)


def _stack_steps(steps: list[jax.Array], shape: tuple[int, ...], dtype: Any) -> jax.Array:
    # T arrays [B, ...] -> [B, T, ...]; T = 0 gives an empty axis
    if not steps:
        return jnp.zeros((shape[0], 0, *shape[1:]), dtype)
    return jnp.stack(steps, axis=1)


def inner_step_gains(params: Params, alpha: Alpha, tasks: Tasks, cfg: Config, iterations: int = 30) -> jax.Array:
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

        def step(p: Params, t: jax.Array) -> tuple[Params, jax.Array]:
            alpha_t = alpha_at(alpha, t, cfg)
            gain = _step_gain(p, alpha_t, x, y, cfg, iterations)
            p, _losses = inner_step(p, alpha_t, x, y, cfg)
            return p, gain

        steps = jnp.arange(1, cfg.inner_steps + 1)
        _, gains = jax.lax.scan(step, broadcast_to_tasks(params, y), steps)
        return gains

    return jax.vmap(one_task)(tasks)


def _step_gain(params: Params, alpha: Alpha, x: jax.Array, y: jax.Array, cfg: Config, iterations: int) -> jax.Array:
    def grad_fn(p: Params) -> Params:
        return jax.grad(lambda q: inner_loss(q, x, y, cfg).sum())(p)

    def hvp(v: Params) -> Params:
        return jax.jvp(grad_fn, (params,), (v,))[1]

    def power_step(_: int, carry: tuple[Params, jax.Array]) -> tuple[Params, jax.Array]:
        v, _previous_gain = carry
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

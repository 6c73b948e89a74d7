"""The unrolled meta-objective (PyTorch twin); mirrors jax_impl/meta.py function for function.

Inner loop:  w_{t+1} = w_t − α ⊙ u_t, u_t the inner optimiser's direction from ∇L_support(w_t)
(SGD: the gradient itself; momentum; Adam), t = 0 … T−1, differentiated through (second order)
unless ``cfg.first_order``. Outer loss: L_query(w_T), the mean over tasks; with ``cfg.msl`` (MAML++'s
multi-step loss) Σ_t w_t·L_query(w_t), t = 1 … T, weights ``parity.inner.msl_weights``.
Tasks are ``(x_support [B, K, 1], y_support [B, K, 1], x_query [B, Q, 1], y_query [B, Q, 1])``;
the functions below are written for the points of one task and any leading task axes, and
``meta_loss`` runs them on the whole meta-batch at once (broadcasting over the task axis).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Union

import torch

from parity.config import Config
from parity.inner import msl_table
from torch_impl.model import LAYERS, Params, check_inputs, point_loss, predict

Alpha = Union[torch.Tensor, Params]  # a 0-d tensor, or one tensor per parameter (per_parameter mode)
Tasks = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]

# ``unroll`` (adapt, task_losses, meta_loss, meta_value_and_grad): accepted so that both twins
# take the same arguments; jax_impl.meta unrolls its compiled inner loop with it. PyTorch runs
# the loop eagerly, one step at a time, so here it changes nothing.


def inner_loss(params: Params, x: torch.Tensor, y: torch.Tensor, cfg: Config) -> torch.Tensor:
    """Loss of each task on points ``x``, ``y`` [..., P, 1] → [...]; ``params`` may carry the
    leading task axes of ``x``. Checks shapes and dtypes first (:func:`_inner_loss` does not).
    """
    check_inputs("inner_loss", cfg, batched_params=True, params=params, x=x, y=y)
    return _inner_loss(params, x, y, cfg)


def _inner_loss(params: Params, x: torch.Tensor, y: torch.Tensor, cfg: Config) -> torch.Tensor:
    # inner_loss without the input checks: the inner loop calls it every step.
    return point_loss(predict(params, x, cfg), y, cfg.loss)


def alpha_for(alpha: Alpha, name: str) -> torch.Tensor:
    """The step size of parameter ``name``: α itself, or its own entry in per_parameter mode."""
    return alpha[name] if isinstance(alpha, dict) else alpha


def alpha_at(alpha: Alpha, t: Any, cfg: Config) -> Alpha:
    """α for inner step t (1, 2, …): α itself, except in per_layer_step mode (LSLR), whose α[name]
    [T] holds one step size per step: entry t − 1 (evaluation's steps past T reuse entry T − 1)."""
    if cfg.alpha_mode != "per_layer_step" or not isinstance(alpha, dict):
        return alpha
    i = min(int(t), cfg.inner_steps) - 1
    return {name: a[i] for name, a in alpha.items()}


def broadcast_to_tasks(params: Params, y: torch.Tensor) -> Params:
    """Give every task its own copy of the parameters: leading axes of the targets ``y`` [..., P, n_outputs]
    (``y``, not ``x``: images carry three axes per point, targets always one)."""
    tasks_shape = y.shape[:-2]
    return {name: torch.broadcast_to(p, tasks_shape + p.shape) for name, p in params.items()}


def inner_gradient(params: Params, x: torch.Tensor, y: torch.Tensor, cfg: Config) -> tuple[Params, torch.Tensor]:
    """(The support-loss gradient of each task's parameters, the support loss [...])."""
    # Each task's parameters see only that task's loss, so the gradient of the sum over
    # tasks is every task's own gradient.
    losses = _inner_loss(params, x, y, cfg)
    # create_graph: the gradient is part of the forward pass (second order). Without it
    # (FOMAML) autograd hands back constants; retain_graph keeps the outer path alive.
    total = losses if losses.dim() == 0 else losses.sum()  # one unbatched task (adapt): no sum kernel
    grads = dict(
        zip(
            params,
            torch.autograd.grad(total, list(params.values()), create_graph=not cfg.first_order, retain_graph=True),
        )
    )
    return grads, losses


def inner_step(
    params: Params, alpha: Alpha, x: torch.Tensor, y: torch.Tensor, cfg: Config
) -> tuple[Params, torch.Tensor]:
    """One SGD step on the support set; returns (new params, support loss before the step [...])."""
    grads, losses = inner_gradient(params, x, y, cfg)
    return apply_step(params, alpha, grads, cfg), losses


def apply_step(params: Params, alpha: Alpha, direction: Params, cfg: Config) -> Params:
    """``w − α ⊙ u`` for the parameters the model adapts (``cfg.model.adapted``); the others stay."""
    adapted = cfg.model.adapted(tuple(params))
    return {name: p - alpha_for(alpha, name) * direction[name] if name in adapted else p for name, p in params.items()}


# --- the inner optimisers: pure (init, update) pairs, Optax's shape ------------------------------------
# init(params) -> state {slot: {name: array}}; update(grads, state, t, opt) -> (direction u, state),
# t = 1, 2, … (a Python float); the step is then w − α ⊙ u.

OptState = dict[str, Params]


def _zeros(params: Params) -> Params:
    return {name: torch.zeros_like(p) for name, p in params.items()}


def sgd_update(grads: Params, state: OptState, t: float, opt: Any) -> tuple[Params, OptState]:
    return grads, state


def momentum_update(grads: Params, state: OptState, t: float, opt: Any) -> tuple[Params, OptState]:
    # torch.optim.SGD with dampening 0: v ← β·v + g; heavy ball u = v, Nesterov u = g + β·v
    buf = {name: opt.momentum * state["momentum"][name] + g for name, g in grads.items()}
    direction = {name: g + opt.momentum * buf[name] for name, g in grads.items()} if opt.nesterov else buf
    return direction, {"momentum": buf}


def adam_update(grads: Params, state: OptState, t: float, opt: Any) -> tuple[Params, OptState]:
    # The JAX twin rematerialises this step (fewer stored buffers, fewer XLA ops); here autograd
    # keeps its saved tensors: recomputing would add kernel launches, this twin's main cost.
    return _adam_update(grads, state, t, opt)


def _adam_update(grads: Params, state: OptState, t: float, opt: Any) -> tuple[Params, OptState]:
    # optax.adam / torch.optim.Adam: bias-corrected m̂ / (√v̂ + ε), ε outside the root
    m = {name: opt.beta1 * state["m"][name] + (1 - opt.beta1) * g for name, g in grads.items()}
    v = {name: opt.beta2 * state["v"][name] + (1 - opt.beta2) * g * g for name, g in grads.items()}
    c1, c2 = 1 - opt.beta1**t, 1 - opt.beta2**t
    direction = {name: (m[name] / c1) / (safe_sqrt(v[name] / c2) + opt.eps) for name in grads}
    return direction, {"m": m, "v": v}


def safe_sqrt(v: torch.Tensor) -> torch.Tensor:
    """√v with derivative 0 where v = 0 (docs/numerics.md): v = 0 only where every gradient so far
    was 0, where v's own derivative is 0 too, so this is the exact derivative, not NaN = ∞·0."""
    positive = v > 0
    return torch.where(positive, torch.sqrt(torch.where(positive, v, 1.0)), 0.0)  # scalars: no fill kernels


INNER_OPTIMIZERS: dict[str, tuple[Callable[[Params], OptState], Callable[..., tuple[Params, OptState]]]] = {
    "sgd": (lambda params: {}, sgd_update),
    "momentum": (lambda params: {"momentum": _zeros(params)}, momentum_update),
    "adam": (lambda params: {"m": _zeros(params), "v": _zeros(params)}, adam_update),
}


def optimizer_step(
    carry: tuple[Params, OptState], t: float, alpha: Alpha, x: torch.Tensor, y: torch.Tensor, cfg: Config
) -> tuple[tuple[Params, OptState], torch.Tensor]:
    """Step t (1, 2, …) of the inner optimiser: ((new params, new state), support loss before it)."""
    params, state = carry
    grads, losses = inner_gradient(params, x, y, cfg)
    direction, state = INNER_OPTIMIZERS[cfg.inner_optimizer][1](grads, state, t, cfg.inner.optimizer)
    return (apply_step(params, alpha_at(alpha, t, cfg), direction, cfg), state), losses


def adapt(
    params: Params,
    alpha: Alpha,
    x: torch.Tensor,
    y: torch.Tensor,
    cfg: Config,
    unroll: int = 0,
    query: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[Params, torch.Tensor]:
    """``cfg.inner_steps`` steps on the support set; returns (adapted params, losses [..., T]).

    ``unroll``: no effect in this twin (eager loop; see the module's note).
    ``query`` (x_query, y_query), for the multi-step loss: losses are then [2, ..., T], the support
    loss before each step and the query loss after it.
    """
    check_inputs("adapt", cfg, params=params, alpha=alpha, x=x, y=y)
    # The inner gradients need a graph even when the caller differentiates nothing (evaluation).
    params = {name: p if p.requires_grad else p.detach().requires_grad_() for name, p in params.items()}
    tasks_shape = y.shape[:-2]  # cls-conv: y, as broadcast_to_tasks
    # One task ([1, K, 1], the seed's B = 1): run it unbatched, as plain matrix products, and put
    # the task axis back at the end. The same arithmetic without the broadcast copies of the
    # parameters, the batched matmuls and the sums that differentiate the broadcast (PyTorch's
    # eager per-kernel cost dominates at this size; XLA drops size-1 axes by itself).
    single = tasks_shape == (1,)
    if single:
        x, y = x[0], y[0]
        query = None if query is None else (query[0][0], query[1][0])
    else:
        params = broadcast_to_tasks(params, y)
    losses: list[torch.Tensor] = []
    with torch.enable_grad():
        if cfg.remat:
            params, losses = rematerialised_loop(params, alpha, x, y, cfg, query)  # T × [...]
        else:
            carry = (params, INNER_OPTIMIZERS[cfg.inner_optimizer][0](params))
            for t in range(1, cfg.inner_steps + 1):
                carry, loss = optimizer_step(carry, float(t), alpha, x, y, cfg)
                if query is not None:  # MSL: the query loss after step t
                    loss = torch.stack([loss, _inner_loss(carry[0], *query, cfg)])
                losses.append(loss)
            params = carry[0]
    if single:
        params = {name: p.unsqueeze(0) for name, p in params.items()}
    if not losses:
        return params, x.new_zeros(tasks_shape + (0,))
    lead = () if query is None else (2,)
    return params, torch.stack(losses, dim=-1).reshape(lead + tasks_shape + (len(losses),))


def rematerialised_loop(
    params: Params,
    alpha: Alpha,
    x: torch.Tensor,
    y: torch.Tensor,
    cfg: Config,
    query: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[Params, list[torch.Tensor]]:
    """``adapt``'s inner loop with O(√T) memory: returns (adapted params, T losses [...]; with
    ``query``, T × [2, ...]: the support loss and the query loss after the step, as in ``adapt``).

    √T checkpointing (Chen et al. 2016, "Training deep nets with sublinear memory cost"): the
    loop runs in segments of k = ⌈√T⌉ steps; only each segment's input parameters are kept for
    the backward pass, which recomputes one segment at a time. Memory ≈ T/k saved parameter sets
    plus one segment's intermediates, instead of every step's; time ≈ one more forward pass.
    (Checkpointing each step alone keeps T parameter sets: at the seed's size, with 4 points per
    task, that is already a third of what the plain loop keeps.)
    """
    T = cfg.inner_steps
    k = max(1, math.ceil(math.sqrt(T)))
    n_segments, tail = divmod(T, k)
    names = list(params)
    state = INNER_OPTIMIZERS[cfg.inner_optimizer][0](params)
    slots = [(slot, name) for slot in state for name in names]  # the state's leaves, flattened
    alpha_names = list(alpha) if isinstance(alpha, dict) else []
    alpha_leaves = [alpha[name] for name in alpha_names] if isinstance(alpha, dict) else [alpha]
    n_carry = len(names) + len(slots)

    def segment(first: int, length: int) -> Callable[..., tuple[torch.Tensor, ...]]:
        def run(*leaves: torch.Tensor) -> tuple[torch.Tensor, ...]:
            p = dict(zip(names, leaves[: len(names)], strict=True))
            s: OptState = {slot: {} for slot in state}
            for (slot, name), leaf in zip(slots, leaves[len(names) : n_carry], strict=True):
                s[slot][name] = leaf
            a = dict(zip(alpha_names, leaves[n_carry:], strict=True)) if alpha_names else leaves[-1]
            segment_losses = []
            carry = (p, s)
            for t in range(first, first + length):
                carry, loss = optimizer_step(carry, float(t), a, x, y, cfg)
                if query is not None:  # MSL: the query loss after step t
                    loss = torch.stack([loss, _inner_loss(carry[0], *query, cfg)])
                segment_losses.append(loss)
            p, s = carry
            return (*p.values(), *(s[slot][name] for slot, name in slots), *segment_losses)

        return run

    losses: list[torch.Tensor] = []
    first = 1
    for length in [k] * n_segments + [tail] * (tail > 0):
        leaves = [*params.values(), *(state[slot][name] for slot, name in slots)]
        out = _Recomputed.apply(segment(first, length), *leaves, *alpha_leaves)
        params = dict(zip(names, out[: len(names)], strict=True))
        for (slot, name), leaf in zip(slots, out[len(names) : n_carry], strict=True):
            state[slot][name] = leaf
        losses.extend(out[n_carry:])
        first += length
    return params, losses


def task_losses(
    params: Params, alpha: Alpha, tasks: Tasks, cfg: Config, unroll: int = 0, weights: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Adapt on each task's support set; returns (query loss [...], support losses [..., T]).
    ``weights`` [T] (MSL): the query loss is Σ_t w_t·L_query(w_t) over the steps instead."""
    x_support, y_support, x_query, y_query = tasks
    if weights is None:
        adapted, support_losses = adapt(params, alpha, x_support, y_support, cfg, unroll)
        return _inner_loss(adapted, x_query, y_query, cfg), support_losses
    _, losses = adapt(params, alpha, x_support, y_support, cfg, unroll, query=(x_query, y_query))  # [2, ..., T]
    return (losses[1] * weights).sum(-1), losses[0]


def meta_loss(
    params: Params, alpha: Alpha, tasks: Tasks, cfg: Config, unroll: int = 0, weights: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The meta-objective: (mean query loss over the meta-batch [], mean support losses [T])."""
    check_inputs("meta_loss", cfg, params=params, alpha=alpha, tasks=tasks)
    outer, inner = task_losses(params, alpha, tasks, cfg, unroll, weights)  # [B], [B, T]
    return outer.mean(), inner.mean(0)


def msl_weights_at(cfg: Config, step: Any, like: torch.Tensor) -> torch.Tensor:
    """The multi-step loss's weights [T] at outer step ``step``: row min(step, msl_anneal) of
    ``parity.inner.msl_table``, in ``like``'s dtype on its device."""
    return like.new_tensor(msl_table(cfg.inner))[min(int(step), cfg.msl_anneal)]


def meta_value_and_grad(
    params: Params, alpha: Alpha, tasks: Tasks, cfg: Config, unroll: int = 0, step: Any = 0
) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[Params, Alpha]]:
    """((outer loss [], support losses [T]), (dL/dparams, dL/dα)), differentiated through T steps.
    ``step``: the outer step, which picks the multi-step loss's weights (0 for the contract)."""
    check_inputs("meta_value_and_grad", cfg, params=params, alpha=alpha, tasks=tasks)
    params = {name: p.detach().requires_grad_() for name, p in params.items()}
    alpha = _detached_leaf(alpha)
    weights = msl_weights_at(cfg, step, tasks[0]) if cfg.msl else None
    loss, inner = meta_loss(params, alpha, tasks, cfg, unroll, weights)
    alpha_leaves = list(alpha.values()) if isinstance(alpha, dict) else [alpha]
    # materialize_grads: T = 0 leaves α unused, and its gradient is then exactly zero.
    grads = torch.autograd.grad(loss, [*params.values(), *alpha_leaves], allow_unused=True, materialize_grads=True)
    grad_params = dict(zip(params, grads[: len(params)]))
    grad_alpha = dict(zip(alpha, grads[len(params) :])) if isinstance(alpha, dict) else grads[-1]
    return (loss.detach(), inner.detach()), (grad_params, grad_alpha)


def trace(params: Params, alpha: Alpha, tasks: Tasks, cfg: Config) -> dict[str, torch.Tensor]:
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
    return _trace(params, alpha, tasks, cfg)


def _trace(params: Params, alpha: Alpha, tasks: Tasks, cfg: Config) -> dict[str, torch.Tensor]:
    x_support, y_support, x_query, y_query = tasks
    p = broadcast_to_tasks({name: v.detach() for name, v in params.items()}, y_support)  # [B, ...]
    alpha = _detached_leaf(alpha)
    init, update = INNER_OPTIMIZERS[cfg.inner_optimizer]
    state = init(p)
    losses: list[torch.Tensor] = []
    grads: list[Params] = []
    states: list[OptState] = []
    adapted: list[Params] = []
    layers: list[Params] = []  # the model's layer outputs on the support set, before each step
    forward_layers = LAYERS.get(cfg.model.name)
    with torch.enable_grad():
        for t in range(1, cfg.inner_steps + 1):
            p = {name: v.detach().requires_grad_() for name, v in p.items()}
            if forward_layers is not None:
                with torch.no_grad():
                    layers.append(forward_layers(p, x_support, cfg.model))
            loss = _inner_loss(p, x_support, y_support, cfg)
            g = dict(zip(p, torch.autograd.grad(loss.sum(), list(p.values()))))
            direction, state = update(g, state, float(t), cfg.inner.optimizer)
            # step t's α (per parameter: shaped like one task's parameter) broadcast over the task axis
            alpha_t = alpha_at(alpha, t, cfg)
            alpha_b = {name: torch.broadcast_to(alpha_for(alpha_t, name), v.shape) for name, v in p.items()}
            p = {name: v.detach() for name, v in apply_step(p, alpha_b, direction, cfg).items()}
            losses.append(loss.detach())
            grads.append(g)
            states.append(state)
            adapted.append(p)
    B, P = x_support.shape[:2]
    out = {"support_loss": _stack_steps(losses, (B,), x_support)}
    groups = [("inner_grad", grads), ("adapted", adapted)]
    groups += [(f"state/{slot}", [s[slot] for s in states]) for slot in init(params)]
    for group, steps in groups:
        for name, v in params.items():
            out[f"{group}/{name}"] = _stack_steps([s[name] for s in steps], (B, *v.shape), v)
    if forward_layers is not None:
        for name, shape in cfg.traced_layers.items():
            out[f"activation/{name}"] = _stack_steps([a[name] for a in layers], (B, P, *shape), x_support)
    with torch.no_grad():
        out["query_loss"] = _trace_query_loss(p, adapted, x_query, y_query, cfg)
    return out


def _trace_query_loss(
    p: Params, adapted: list[Params], x_query: torch.Tensor, y_query: torch.Tensor, cfg: Config
) -> torch.Tensor:
    # The per-task outer loss, whose mean is meta_loss's: under MSL the weighted query losses
    # after every step (outer step 0's weights, the contract's), else the last step's.
    if not cfg.msl:
        return _inner_loss(p, x_query, y_query, cfg)
    losses = torch.stack([_inner_loss(a, x_query, y_query, cfg) for a in adapted], dim=-1)  # [B, T]
    return losses @ msl_weights_at(cfg, 0, x_query)


def _stack_steps(steps: list[torch.Tensor], shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
    # T tensors [B, ...] -> [B, T, ...]; T = 0 gives an empty axis
    if not steps:
        return like.new_zeros((shape[0], 0, *shape[1:]))
    return torch.stack(steps, dim=1)


def inner_step_gains(params: Params, alpha: Alpha, tasks: Tasks, cfg: Config, iterations: int = 30) -> torch.Tensor:
    """Gain of each inner step of each task, max|1 − α·λ(H_t)| [B, T], for the stability gate.

    H_t is the support-loss Hessian at w_t. Power iteration runs on the linearised step
    J_t = I − α ⊙ H_t itself (one Hessian-vector product per iteration): its dominant eigenvalue
    is the 1 − α·λ of largest magnitude, the quantity the gate multiplies, and the iteration
    converges even where H_t has eigenvalues of both signs and similar size. The estimate
    ‖J_t v‖ rises towards the true gain and never exceeds it.
    """

    def one_task(task: Tasks) -> torch.Tensor:
        x, y = task[0], task[1]
        p = broadcast_to_tasks({name: v.detach() for name, v in params.items()}, y)
        gains = []
        for t in range(1, cfg.inner_steps + 1):
            alpha_t = alpha_at(alpha, t, cfg)
            gains.append(_step_gain(p, alpha_t, x, y, cfg, iterations))
            p, _ = inner_step({name: v.detach().requires_grad_() for name, v in p.items()}, alpha_t, x, y, cfg)
        return torch.stack(gains) if gains else x.new_zeros((0,))

    return torch.stack([one_task(tuple(t[b] for t in tasks)) for b in range(tasks[0].shape[0])])  # type: ignore[arg-type]


def _step_gain(
    params: Params, alpha: Alpha, x: torch.Tensor, y: torch.Tensor, cfg: Config, iterations: int
) -> torch.Tensor:
    params = {name: p.detach().requires_grad_() for name, p in params.items()}
    grads = torch.autograd.grad(inner_loss(params, x, y, cfg).sum(), list(params.values()), create_graph=True)

    def hvp(v: Params) -> Params:
        hv = torch.autograd.grad(
            grads, list(params.values()), grad_outputs=[v[name] for name in params], retain_graph=True
        )
        return dict(zip(params, hv))

    v = _start_vector(params)
    gain = x.new_ones(())
    for _ in range(iterations):
        hv = hvp(v)
        jv = {name: v[name] - alpha_for(alpha, name) * hv[name] for name in v}
        gain = torch.sqrt(_dot(jv, jv))
        v = _scale(jv, 1.0 / (gain + torch.finfo(x.dtype).tiny))
    return gain.detach()


def _start_vector(params: Params) -> Params:
    # Deterministic and identical in both twins; unlikely to be orthogonal to any eigenvector.
    names = sorted(params)  # JAX's tree utilities sort dict keys; use one order in both twins
    sizes = [params[name].numel() for name in names]
    flat = torch.sin(1.0 + torch.arange(sum(sizes), dtype=params[names[0]].dtype))
    flat = flat / torch.linalg.norm(flat)
    out, start = {}, 0
    for name, size in zip(names, sizes):
        p = params[name]
        out[name] = flat[start : start + size].reshape(p.shape)
        start += size
    return out


def _dot(a: Params, b: Params) -> torch.Tensor:
    return sum(torch.sum(a[name] * b[name]) for name in a)  # type: ignore[return-value]


def _scale(a: Params, s: torch.Tensor) -> Params:
    return {name: v * s for name, v in a.items()}


def _detached_leaf(alpha: Alpha) -> Alpha:
    if isinstance(alpha, dict):
        return {name: a.detach().requires_grad_() for name, a in alpha.items()}
    return alpha.detach().requires_grad_()


class _Recomputed(torch.autograd.Function):
    """``run(*inputs)`` that keeps only its inputs and recomputes itself in the backward pass.

    torch.utils.checkpoint(use_reentrant=False) gives the same gradients here, but each
    ``autograd.grad`` inside a checkpointed region starts a new graph task, and each graph task
    re-runs the region's recomputation: a k-step segment costs O(k²) inner steps in the backward
    pass (measured: 416 inner steps instead of 128 for T = 64, k = 8). This is the reentrant
    pattern made explicit: the backward recomputes the segment once, builds its second-order
    graph and differentiates it with ``autograd.grad`` (so the outer call may be
    ``autograd.grad`` too). It does not support differentiating the meta-gradient again.
    """

    @staticmethod
    def forward(ctx, run, *inputs):  # type: ignore[no-untyped-def]
        ctx.run = run
        ctx.save_for_backward(*inputs)
        with torch.enable_grad():
            outputs = run(*(t.detach().requires_grad_(t.requires_grad) for t in inputs))
        return tuple(o.detach() for o in outputs)

    @staticmethod
    def backward(ctx, *grad_outputs):  # type: ignore[no-untyped-def]
        inputs = [t.detach().requires_grad_(t.requires_grad) for t in ctx.saved_tensors]
        with torch.enable_grad():
            outputs = ctx.run(*inputs)
        wanted = [i for i, t in enumerate(inputs) if t.requires_grad]
        # First order: the inner optimiser's state is built from constant gradients (no graph).
        live = [(o, g) for o, g in zip(outputs, grad_outputs, strict=True) if o.requires_grad]
        grads = torch.autograd.grad(
            [o for o, _ in live],
            [inputs[i] for i in wanted],
            [g for _, g in live],
            allow_unused=True,
            materialize_grads=True,
        )
        out: list[torch.Tensor | None] = [None] * len(inputs)
        for i, g in zip(wanted, grads, strict=True):
            out[i] = g
        return (None, *out)

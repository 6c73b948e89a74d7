"""Outer-loop training (JAX twin): optax optimisers, the whole chunk of steps compiled as one scan.

Mirrors torch_impl/train.py. The host feeds ``train_chunk`` the shared sampler's meta-batches
for N consecutive steps as arrays with a leading ``[N]`` axis; nothing leaves the device until
the chunk ends.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jax_impl.meta import Alpha, Tasks, meta_value_and_grad
from jax_impl.model import Params, resolve_device, to_arrays, to_numpy
from parity.config import Config, lookup


class TrainState(NamedTuple):
    step: jax.Array  # [] int: outer steps taken
    params: Params
    alpha: Alpha  # what the outer loop learns: α, or ρ with α = softplus(ρ) (alpha_value)
    params_opt: Any  # optax state of the initial-parameter optimiser
    alpha_opt: Any  # optax state of the α optimiser (empty when α is fixed)


# Option choices as a table (an unknown name is refused by parity.config.lookup, never an `else`).
def adam(lr: float, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8) -> optax.GradientTransformation:
    """optax.adam, except for how the bias correction ``1 − β**t`` is computed.

    optax computes ``β**t`` with an int32 count: in float64 under JAX's x64 mode even in a float32 run
    (whose numbers then depended on the mode), in float32 otherwise, where the rounding of β itself (0.999 is
    stored as 0.99900001…) makes ``1 − β`` 1.3e-5 off at t = 1, and a float32 JAX run of seed-alpha
    ended 1.4e-3 away in α from the PyTorch twin, whose torch.optim.Adam takes ``β**t`` in Python
    floats (float64). Here ``1 − β**t = −expm1(t·log β)`` with ``log β`` taken in float64 on the
    host and the count cast to the moments' dtype: accurate to a few float32 ulps at every t, and the
    same with x64 mode on or off (``tests/test_precision.py``). Every other operation is
    optax's own (``scale_by_adam`` then ``scale_by_learning_rate``); the state is its
    ``ScaleByAdamState``, so checkpoints read and write the same layout.
    """
    log_b1, log_b2 = math.log(b1), math.log(b2)

    def init(params: Any) -> optax.ScaleByAdamState:
        zeros = jax.tree.map(jnp.zeros_like, params)
        return optax.ScaleByAdamState(count=jnp.zeros([], jnp.int32), mu=zeros, nu=jax.tree.map(jnp.zeros_like, params))

    def update(updates: Any, state: optax.ScaleByAdamState, params: Any = None) -> tuple[Any, Any]:
        del params
        mu = jax.tree.map(lambda g, m: (1 - b1) * g + b1 * m, updates, state.mu)
        nu = jax.tree.map(lambda g, v: (1 - b2) * (g**2) + b2 * v, updates, state.nu)
        count = state.count + 1

        def corrected(moment: jax.Array, log_b: float) -> jax.Array:
            correction = -jnp.expm1(count.astype(moment.dtype) * jnp.asarray(log_b, moment.dtype))
            return moment / correction

        step = jax.tree.map(lambda m, v: corrected(m, log_b1) / (jnp.sqrt(corrected(v, log_b2)) + eps), mu, nu)
        return step, optax.ScaleByAdamState(count=count, mu=mu, nu=nu)

    return optax.chain(optax.GradientTransformation(init, update), optax.scale_by_learning_rate(lr))


OPTIMIZERS = {"sgd": optax.sgd, "adam": adam}


def make_optimizer(name: str, lr: float) -> optax.GradientTransformation:
    """sgd: w ← w − lr·g (torch.optim.SGD). adam: torch.optim.Adam's defaults (β 0.9/0.999, ε 1e-8)."""
    return lookup(OPTIMIZERS, "optimizer", name)(lr)


def optimizers(cfg: Config) -> tuple[optax.GradientTransformation, optax.GradientTransformation]:
    alpha_tx = make_optimizer(cfg.alpha_optimizer, cfg.alpha_lr) if cfg.alpha_learned else optax.set_to_zero()
    return make_optimizer(cfg.outer_optimizer, cfg.outer_lr), alpha_tx


def init_state(params: Params, alpha: Alpha, cfg: Config, step: int = 0) -> TrainState:
    params_tx, alpha_tx = optimizers(cfg)
    state = TrainState(
        step=jnp.asarray(step, jnp.int32),
        params=params,
        alpha=alpha,
        params_opt=params_tx.init(params),
        alpha_opt=alpha_tx.init(alpha),
    )
    first = jax.tree.leaves(params)[0]
    if first.committed and isinstance(first.sharding, jax.sharding.SingleDeviceSharding):
        state = jax.device_put(state, first.sharding)  # counts and moments where the parameters are
    return state


def alpha_value(variable: Alpha, cfg: Config) -> Alpha:
    """α from the learned variable: the variable itself, or softplus(ρ) = log(1 + e^ρ)."""
    if cfg.alpha_parametrisation != "softplus":
        return variable
    if isinstance(variable, dict):
        return {name: _softplus(rho) for name, rho in variable.items()}
    return _softplus(variable)


def variable_grad(grad_alpha: Alpha, variable: Alpha, cfg: Config) -> Alpha:
    """dL/d(learned variable) from dL/dα: the chain rule through softplus, dα/dρ = sigmoid(ρ)."""
    if cfg.alpha_parametrisation != "softplus":
        return grad_alpha
    if isinstance(variable, dict) and isinstance(grad_alpha, dict):
        return {name: grad_alpha[name] * _sigmoid(rho) for name, rho in variable.items()}
    assert not isinstance(variable, dict) and not isinstance(grad_alpha, dict)
    return grad_alpha * _sigmoid(variable)


def all_finite(*trees: Any) -> jax.Array:
    """[] bool: every entry of every leaf is finite (computed on the device; no host sync)."""
    floats = [jnp.ravel(leaf) for leaf in jax.tree.leaves(trees) if jnp.issubdtype(leaf.dtype, jnp.floating)]
    return jnp.isfinite(jnp.concatenate(floats)).all()  # integer leaves (the step) are always finite


def _softplus(rho: jax.Array) -> jax.Array:
    return jnp.logaddexp(rho, 0.0)


def _sigmoid(rho: jax.Array) -> jax.Array:
    return jax.nn.sigmoid(rho)


def train_step(
    state: TrainState,
    tasks: Tasks,
    cfg: Config,
    grad_fn: Callable[..., Any] = meta_value_and_grad,
    unroll: int = 0,
) -> tuple[TrainState, dict[str, Any]]:
    """One outer step; metrics describe the step (α and losses before its update).

    ``metrics["finite"]``: the outer loss, every gradient and the updated state (parameters, α,
    optimiser moments: Adam's g² overflows before g does) are finite; the host stops the run at the
    first step where this is false (parity.training.TrainingDiverged).

    ``grad_fn``: the meta-gradient (``meta.meta_value_and_grad``'s signature). A sharded run keeps
    the default: XLA inserts the all-reduce over devices itself (jax_impl.distributed); the
    PyTorch twin's torchrun placement passes one that all-reduces over ranks.
    """
    params_tx, alpha_tx = optimizers(cfg)
    alpha = alpha_value(state.alpha, cfg)
    (loss, inner), (grad_params, grad_alpha) = grad_fn(state.params, alpha, tasks, cfg, unroll, **msl_step(state, cfg))
    updates, params_opt = params_tx.update(grad_params, state.params_opt, state.params)
    params = optax.apply_updates(state.params, updates)
    updates, alpha_opt = alpha_tx.update(variable_grad(grad_alpha, state.alpha, cfg), state.alpha_opt, state.alpha)
    variable = optax.apply_updates(state.alpha, updates)
    metrics = {
        "outer_loss": loss,
        "inner_losses": inner,
        "alpha": alpha,
        "alpha_grad": grad_alpha,
        "finite": all_finite(loss, grad_params, grad_alpha, params, variable, params_opt, alpha_opt),
    }
    return TrainState(state.step + 1, params, variable, params_opt, alpha_opt), metrics


def msl_step(state: TrainState, cfg: Config) -> dict[str, Any]:
    """The outer step for the multi-step loss's weights; nothing without MSL, so that a grad_fn
    with the plain signature (distributed, torch.func) still serves every other run."""
    return {"step": state.step} if cfg.msl else {}


def train_chunk(
    state: TrainState,
    tasks: Tasks,
    cfg: Config,
    grad_fn: Callable[..., Any] = meta_value_and_grad,
    unroll: int = 0,
) -> tuple[TrainState, dict[str, Any]]:
    """``N`` outer steps as one compiled scan; ``tasks`` leaves are [N, B, P, 1], metrics [N, ...].

    It runs where its inputs live (``to_arrays(..., device)``, ``state_from_numpy(..., device)``).
    ``unroll``: inner loops of up to that many steps become straight-line code (jax_impl.meta).
    """
    # The run's length and seed never enter a step's arithmetic (the tasks arrive as arrays):
    # dropping them from the compile key lets resumed, extended and re-seeded runs share a compile.
    return _train_chunk(state, tasks, cfg.replace(iterations=0, seed=0), grad_fn, unroll)


@functools.partial(jax.jit, static_argnames=("cfg", "grad_fn", "unroll"))
def _train_chunk(
    state: TrainState, tasks: Tasks, cfg: Config, grad_fn: Callable[..., Any], unroll: int = 0
) -> tuple[TrainState, dict[str, Any]]:
    return jax.lax.scan(lambda s, t: train_step(s, t, cfg, grad_fn, unroll), state, tasks)


def state_to_numpy(state: TrainState, cfg: Config) -> dict[str, Any]:
    """The framework-neutral training state (parity/checkpoint.py's layout) with NumPy leaves."""
    return {
        "step": int(state.step),
        "params": to_numpy(state.params),
        "alpha": to_numpy(state.alpha),
        "opt": {
            "params": _opt_to_numpy(state.params_opt, cfg.outer_optimizer),
            "alpha": _opt_to_numpy(state.alpha_opt, cfg.alpha_optimizer) if cfg.alpha_learned else {},
        },
    }


def state_from_numpy(neutral: dict[str, Any], cfg: Config, device: str | None = None) -> TrainState:
    """Inverse of :func:`state_to_numpy`: continue training exactly where that state stopped, on
    ``device`` (None: JAX's default), whichever device the state was saved from."""
    state = init_state(
        to_arrays(neutral["params"], cfg.dtype, device),
        to_arrays(neutral["alpha"], cfg.dtype, device),
        cfg,
        neutral["step"],
    )
    alpha_opt = state.alpha_opt
    if cfg.alpha_learned:
        alpha_opt = _opt_from_numpy(alpha_opt, neutral["opt"]["alpha"], cfg.alpha_optimizer, cfg.dtype, device)
    params_opt = _opt_from_numpy(state.params_opt, neutral["opt"]["params"], cfg.outer_optimizer, cfg.dtype, device)
    state = state._replace(params_opt=params_opt, alpha_opt=alpha_opt)
    target = resolve_device(device)
    return state if target is None else jax.device_put(state, target)  # the counts too


def _opt_to_numpy(opt_state: Any, name: str) -> dict[str, Any]:
    if name != "adam":
        return {}  # plain SGD keeps no state
    adam = opt_state[0]  # optax.adam = chain(scale_by_adam, scale_by_learning_rate)
    assert isinstance(adam, optax.ScaleByAdamState), type(adam)
    return {"count": int(adam.count), "mu": to_numpy(adam.mu), "nu": to_numpy(adam.nu)}


def _opt_from_numpy(opt_state: Any, neutral: dict[str, Any], name: str, dtype: str, device: str | None) -> Any:
    if name != "adam":
        return opt_state
    adam = opt_state[0]
    assert isinstance(adam, optax.ScaleByAdamState), type(adam)
    adam = adam._replace(
        count=jnp.asarray(neutral["count"], adam.count.dtype),
        mu=to_arrays(neutral["mu"], dtype, device),
        nu=to_arrays(neutral["nu"], dtype, device),
    )
    return (adam, *opt_state[1:])

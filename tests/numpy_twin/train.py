"""Outer-loop training of the oracle twin (mirrors jax_impl/train.py's roles): plain NumPy SGD and
Adam over the oracle's meta-gradient, one step at a time.

Adam is the JAX twin's (optax's ``scale_by_adam`` with the bias correction ``1 − β^t =
−expm1(t·log β)``, then ``−lr``), so a float64 run follows the JAX twin's to rounding. The state's
NumPy layout is ``parity/checkpoint.py``'s: checkpoints move freely between this twin and the others.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np

from numpy_twin import meta
from numpy_twin.model import DTYPE, Params, to_arrays, to_numpy
from parity.config import Config, lookup

ADAM = (0.9, 0.999, 1e-8)  # β1, β2, ε: torch.optim.Adam's and optax's defaults


class TrainState(NamedTuple):
    step: int
    params: Params
    alpha: Any  # α, or ρ with α = softplus(ρ) (alpha_value)
    params_opt: dict[str, Any]  # {} for SGD; {"count", "mu", "nu"} for Adam
    alpha_opt: dict[str, Any]


def _tree_map(fn: Any, *trees: Any) -> Any:
    if isinstance(trees[0], dict):
        return {k: fn(*(t[k] for t in trees)) for k in trees[0]}
    return fn(*trees)


def _sgd(grad: Any, opt: dict[str, Any], lr: float) -> tuple[Any, dict[str, Any]]:
    return _tree_map(lambda g: -lr * g, grad), opt


def _adam(grad: Any, opt: dict[str, Any], lr: float) -> tuple[Any, dict[str, Any]]:
    b1, b2, eps = ADAM
    mu = _tree_map(lambda g, m: (1 - b1) * g + b1 * m, grad, opt["mu"])
    nu = _tree_map(lambda g, v: (1 - b2) * (g**2) + b2 * v, grad, opt["nu"])
    count = opt["count"] + 1
    c1, c2 = -math.expm1(count * math.log(b1)), -math.expm1(count * math.log(b2))
    step = _tree_map(lambda m, v: -lr * ((m / c1) / (np.sqrt(v / c2) + eps)), mu, nu)
    return step, {"count": count, "mu": mu, "nu": nu}


# Option choices as a table (an unknown name is refused by parity.config.lookup, never an `else`).
OPTIMIZERS = {"sgd": _sgd, "adam": _adam}


def _opt_init(name: str, tree: Any) -> dict[str, Any]:
    lookup(OPTIMIZERS, "optimizer", name)
    if name != "adam":
        return {}
    return {"count": 0, "mu": _tree_map(np.zeros_like, tree), "nu": _tree_map(np.zeros_like, tree)}


def init_state(params: Params, alpha: Any, cfg: Config, step: int = 0) -> TrainState:
    alpha_opt = _opt_init(cfg.alpha_optimizer, alpha) if cfg.alpha_learned else {}
    return TrainState(int(step), params, alpha, _opt_init(cfg.outer_optimizer, params), alpha_opt)


def alpha_value(variable: Any, cfg: Config) -> Any:
    """α from the learned variable: the variable itself, or softplus(ρ) = log(1 + e^ρ)."""
    if cfg.alpha_parametrisation != "softplus":
        return variable
    return _tree_map(lambda rho: np.logaddexp(rho, 0.0), variable)


def variable_grad(grad_alpha: Any, variable: Any, cfg: Config) -> Any:
    """dL/dρ = dL/dα · sigmoid(ρ) under softplus; dL/dα itself otherwise."""
    if cfg.alpha_parametrisation != "softplus":
        return grad_alpha
    return _tree_map(lambda g, rho: g / (1.0 + np.exp(-rho)), grad_alpha, variable)


def _finite(*trees: Any) -> bool:
    leaves: list[Any] = []
    for tree in trees:
        leaves.extend(tree.values() if isinstance(tree, dict) else [tree])
    return all(np.isfinite(leaf).all() for leaf in leaves)


def train_step(state: TrainState, tasks: meta.Tasks, cfg: Config) -> tuple[TrainState, dict[str, Any]]:
    """One outer step; metrics describe the step (α and losses before its update)."""
    alpha = alpha_value(state.alpha, cfg)
    (loss, inner), (grad_params, grad_alpha) = meta.meta_value_and_grad(state.params, alpha, tasks, cfg)
    update, params_opt = OPTIMIZERS[cfg.outer_optimizer](grad_params, state.params_opt, cfg.outer_lr)
    params = _tree_map(lambda p, u: p + u, state.params, update)
    variable, alpha_opt = state.alpha, state.alpha_opt
    if cfg.alpha_learned:
        grad_variable = variable_grad(grad_alpha, state.alpha, cfg)
        update, alpha_opt = OPTIMIZERS[cfg.alpha_optimizer](grad_variable, state.alpha_opt, cfg.alpha_lr)
        variable = _tree_map(lambda a, u: a + u, state.alpha, update)
    moments = [o[k] for o in (params_opt, alpha_opt) for k in ("mu", "nu") if o]
    metrics = {
        "outer_loss": loss,
        "inner_losses": inner,
        "alpha": alpha,
        "alpha_grad": grad_alpha,
        "finite": np.asarray(_finite(loss, grad_params, grad_alpha, params, variable, *moments)),
    }
    return TrainState(state.step + 1, params, variable, params_opt, alpha_opt), metrics


def train_chunk(
    state: TrainState, tasks: meta.Tasks, cfg: Config, unroll: int = 0
) -> tuple[TrainState, dict[str, Any]]:
    """``N`` outer steps; ``tasks`` leaves are [N, B, P, 1], metrics [N, ...]."""
    del unroll  # NumPy has nothing to unroll
    steps = []
    for n in range(tasks[0].shape[0]):
        state, metrics = train_step(state, tuple(t[n] for t in tasks), cfg)
        steps.append(metrics)
    return state, {k: _stack([m[k] for m in steps]) for k in steps[0]}


def _stack(values: list[Any]) -> Any:
    if isinstance(values[0], dict):
        return {k: np.stack([v[k] for v in values]) for k in values[0]}
    return np.stack(values)


def state_to_numpy(state: TrainState, cfg: Config) -> dict[str, Any]:
    """The framework-neutral training state (parity/checkpoint.py's layout)."""
    return {
        "step": int(state.step),
        "params": to_numpy(state.params),
        "alpha": to_numpy(state.alpha),
        "opt": {"params": to_numpy(state.params_opt), "alpha": to_numpy(state.alpha_opt) if cfg.alpha_learned else {}},
    }


def state_from_numpy(neutral: dict[str, Any], cfg: Config, device: str | None = None) -> TrainState:
    """Inverse of :func:`state_to_numpy`: continue exactly where that state stopped."""
    state = init_state(
        to_arrays(neutral["params"], DTYPE, device), to_arrays(neutral["alpha"], DTYPE), cfg, neutral["step"]
    )

    def opt(saved: dict[str, Any], fresh: dict[str, Any]) -> dict[str, Any]:
        if not fresh:
            return fresh
        return {"count": int(saved["count"]), "mu": to_arrays(saved["mu"], DTYPE), "nu": to_arrays(saved["nu"], DTYPE)}

    alpha_opt = opt(neutral["opt"]["alpha"], state.alpha_opt) if cfg.alpha_learned else {}
    return state._replace(params_opt=opt(neutral["opt"]["params"], state.params_opt), alpha_opt=alpha_opt)

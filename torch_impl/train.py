"""Outer-loop training (PyTorch twin): torch.optim optimisers, one Python step at a time.

Mirrors jax_impl/train.py. The host feeds ``train_chunk`` the shared sampler's meta-batches
for N consecutive steps as tensors with a leading ``[N]`` axis.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch

from parity.config import Config, lookup
from torch_impl.meta import Alpha, Tasks, meta_value_and_grad
from torch_impl.model import Params, to_arrays, to_numpy


@dataclasses.dataclass
class TrainState:
    step: int  # outer steps taken
    params: Params  # leaf tensors, updated in place by the optimiser
    alpha: Alpha  # what the outer loop learns: α, or ρ with α = softplus(ρ) (alpha_value)
    params_opt: torch.optim.Optimizer
    alpha_opt: torch.optim.Optimizer | None  # None when α is fixed


def make_optimizer(name: str, lr: float, leaves: list[torch.Tensor]) -> torch.optim.Optimizer:
    """sgd: w ← w − lr·g. adam: β 0.9/0.999, ε 1e-8 (optax.adam with the same settings)."""
    return lookup(OPTIMIZERS, "optimizer", name)(leaves, lr)


def _sgd(leaves: list[torch.Tensor], lr: float) -> torch.optim.Optimizer:
    return torch.optim.SGD(leaves, lr=lr)


def _adam(leaves: list[torch.Tensor], lr: float) -> torch.optim.Optimizer:
    """Adam's state is made now, not at its first step: its step count a scalar of the leaves' dtype
    on their device (torch.optim would keep it on the CPU, in the default dtype). Off the CPU, Adam
    runs ``capturable``: it reads that count on the device, with no host sync per step.
    """
    on_device = leaves[0].device.type != "cpu"
    opt = torch.optim.Adam(leaves, lr=lr, betas=(0.9, 0.999), eps=1e-8, capturable=on_device)
    for leaf in leaves:
        opt.state[leaf] = adam_state(leaf, 0, torch.zeros_like(leaf), torch.zeros_like(leaf))
    return opt


# Option choices as a table (an unknown name is refused by parity.config.lookup, never an `else`).
OPTIMIZERS = {"sgd": _sgd, "adam": _adam}


def adam_state(leaf: torch.Tensor, count: int, mu: torch.Tensor, nu: torch.Tensor) -> dict[str, torch.Tensor]:
    """torch.optim.Adam's per-leaf state after ``count`` steps, on ``leaf``'s device and in its dtype.

    A count of 0 is Adam before its first step (exactly what its lazy initialisation makes). The
    count is exact in the leaf's dtype up to 2**24 steps in float32.
    """
    step = torch.tensor(float(count), dtype=leaf.dtype, device=leaf.device)
    return {"step": step, "exp_avg": mu.to(leaf.device), "exp_avg_sq": nu.to(leaf.device)}


def _leaves(tree: Params | torch.Tensor) -> list[torch.Tensor]:
    return list(tree.values()) if isinstance(tree, dict) else [tree]


def init_state(params: Params, alpha: Alpha, cfg: Config, step: int = 0) -> TrainState:
    params = {name: p.detach().clone().requires_grad_() for name, p in params.items()}
    if isinstance(alpha, dict):
        alpha = {name: a.detach().clone().requires_grad_() for name, a in alpha.items()}
    else:
        alpha = alpha.detach().clone().requires_grad_()
    alpha_opt = make_optimizer(cfg.alpha_optimizer, cfg.alpha_lr, _leaves(alpha)) if cfg.alpha_learned else None
    return TrainState(
        step=step,
        params=params,
        alpha=alpha,
        params_opt=make_optimizer(cfg.outer_optimizer, cfg.outer_lr, _leaves(params)),
        alpha_opt=alpha_opt,
    )


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


def all_finite(*trees: Any) -> torch.Tensor:
    """[] bool: every entry of every leaf is finite (computed on the device; no host sync)."""
    # One isfinite over all leaves at once: a third of the time of one per leaf.
    leaves = [leaf.detach() for leaf in _tree_leaves(trees) if leaf.is_floating_point()]
    device = leaves[0].device  # the odd leaf elsewhere (a caller's CPU scalar) joins the first's device
    floats = [leaf.reshape(-1).to(device, non_blocking=True) for leaf in leaves]
    return torch.isfinite(torch.cat(floats)).all()  # integer leaves are always finite


def _softplus(rho: torch.Tensor) -> torch.Tensor:
    # detached: the optimiser's gradient comes from variable_grad, not from autograd.
    return torch.logaddexp(rho.detach(), torch.zeros_like(rho))


def _sigmoid(rho: torch.Tensor) -> torch.Tensor:
    return torch.sigmoid(rho.detach())


def _moments(state: TrainState) -> list[torch.Tensor]:
    # The optimisers' moments (Adam's exp_avg and exp_avg_sq; none for SGD). Not the step count:
    # a count of steps is finite.
    opts = [opt for opt in (state.params_opt, state.alpha_opt) if opt is not None]
    return [v.detach() for opt in opts for s in opt.state.values() for k, v in s.items() if k != "step"]


def _tree_leaves(tree: Any) -> list[torch.Tensor]:
    if isinstance(tree, dict):
        return [leaf for value in tree.values() for leaf in _tree_leaves(value)]
    if isinstance(tree, (tuple, list)):
        return [leaf for value in tree for leaf in _tree_leaves(value)]
    return [tree]


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

    ``grad_fn``: torch_impl.distributed swaps in a meta-gradient averaged over ranks (in the JAX
    twin, XLA inserts that all-reduce itself, so it needs no such argument).
    """
    alpha = alpha_value(state.alpha, cfg)
    (loss, inner), (grad_params, grad_alpha) = grad_fn(state.params, alpha, tasks, cfg, unroll, **msl_step(state, cfg))
    alpha_before = _detached(alpha)
    for name, p in state.params.items():
        p.grad = grad_params[name]
    state.params_opt.step()
    if state.alpha_opt is not None:
        for a, g in zip(_leaves(state.alpha), _leaves(variable_grad(grad_alpha, state.alpha, cfg)), strict=True):
            a.grad = g
        state.alpha_opt.step()
    state.step += 1
    metrics = {
        "outer_loss": loss,
        "inner_losses": inner,
        "alpha": alpha_before,
        "alpha_grad": grad_alpha,
        "finite": all_finite(loss, grad_params, grad_alpha, state.params, state.alpha, _moments(state)),
    }
    return state, metrics


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
    """``N`` outer steps; ``tasks`` leaves are [N, B, P, 1], metrics [N, ...]."""
    steps = []
    for i in range(tasks[0].shape[0]):
        state, metrics = train_step(state, tuple(t[i] for t in tasks), cfg, grad_fn, unroll)  # type: ignore[arg-type]
        steps.append(metrics)
    return state, _stack(steps)


def state_to_numpy(state: TrainState, cfg: Config) -> dict[str, Any]:
    """The framework-neutral training state (parity/checkpoint.py's layout) with NumPy leaves."""
    # Copies: .numpy() shares memory with tensors the optimiser goes on updating in place.
    return {
        "step": int(state.step),
        "params": to_numpy(_detached(state.params)),
        "alpha": to_numpy(_detached(state.alpha)),
        "opt": {
            "params": _opt_to_numpy(state.params_opt, state.params, cfg.outer_optimizer),
            "alpha": _opt_to_numpy(state.alpha_opt, state.alpha, cfg.alpha_optimizer) if cfg.alpha_learned else {},
        },
    }


def state_from_numpy(neutral: dict[str, Any], cfg: Config, device: str | None = None) -> TrainState:
    """Inverse of :func:`state_to_numpy`: continue training exactly where that state stopped, on
    ``device`` (None: the CPU), whichever device the state was saved from."""
    state = init_state(
        to_arrays(neutral["params"], cfg.dtype, device),
        to_arrays(neutral["alpha"], cfg.dtype, device),
        cfg,
        neutral["step"],
    )
    if cfg.alpha_learned:
        _opt_from_numpy(state.alpha_opt, state.alpha, neutral["opt"]["alpha"], cfg.alpha_optimizer, cfg.dtype)
    _opt_from_numpy(state.params_opt, state.params, neutral["opt"]["params"], cfg.outer_optimizer, cfg.dtype)
    return state


def _opt_to_numpy(opt: torch.optim.Optimizer | None, tree: Params | torch.Tensor, name: str) -> dict[str, Any]:
    if name != "adam":
        return {}  # plain SGD keeps no state
    assert isinstance(opt, torch.optim.Adam), type(opt)
    states = [opt.state[leaf] for leaf in _leaves(tree)]  # made with the optimiser (make_optimizer)
    count, mu, nu = int(states[0]["step"].item()), [s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states]
    return {"count": count, "mu": to_numpy(_detached(_like(tree, mu))), "nu": to_numpy(_detached(_like(tree, nu)))}


def _opt_from_numpy(
    opt: torch.optim.Optimizer | None, tree: Params | torch.Tensor, neutral: dict[str, Any], name: str, dtype: str
) -> None:
    if name != "adam":
        return  # SGD keeps no state
    assert isinstance(opt, torch.optim.Adam), type(opt)
    device = _leaves(tree)[0].device
    mu, nu = _leaves(to_arrays(neutral["mu"], dtype, device)), _leaves(to_arrays(neutral["nu"], dtype, device))
    for leaf, m, v in zip(_leaves(tree), mu, nu, strict=True):
        opt.state[leaf] = adam_state(leaf, int(neutral["count"]), m, v)


def _like(tree: Params | torch.Tensor, leaves: list[torch.Tensor]) -> Params | torch.Tensor:
    return dict(zip(tree, leaves, strict=True)) if isinstance(tree, dict) else leaves[0]


def _detached(tree: Alpha) -> Alpha:
    if isinstance(tree, dict):
        return {name: v.detach().clone() for name, v in tree.items()}
    return tree.detach().clone()


def _stack(steps: list[dict[str, Any]]) -> dict[str, Any]:
    def stack(values: list[Any]) -> Any:
        if isinstance(values[0], dict):
            return {name: torch.stack([v[name] for v in values]) for name in values[0]}
        return torch.stack(values)

    return {key: stack([m[key] for m in steps]) for key in steps[0]}

"""Outer-loop training (PyTorch twin): torch.optim optimisers, one Python step at a time.

Mirrors jax_impl/train.py. The host feeds ``train_chunk`` the shared sampler's meta-batches
for N consecutive steps as tensors with a leading ``[N]`` axis.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from parity.config import Config
from torch_impl.meta import Alpha, Tasks, meta_value_and_grad
from torch_impl.model import Params


@dataclasses.dataclass
class TrainState:
    step: int  # outer steps taken
    params: Params  # leaf tensors, updated in place by the optimiser
    alpha: Alpha
    params_opt: torch.optim.Optimizer
    alpha_opt: torch.optim.Optimizer | None  # None when α is fixed


def make_optimizer(name: str, lr: float, leaves: list[torch.Tensor]) -> torch.optim.Optimizer:
    """sgd: w ← w − lr·g. adam: β 0.9/0.999, ε 1e-8 (optax.adam with the same settings)."""
    if name == "sgd":
        return torch.optim.SGD(leaves, lr=lr)
    return torch.optim.Adam(leaves, lr=lr, betas=(0.9, 0.999), eps=1e-8)


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


def train_step(state: TrainState, tasks: Tasks, cfg: Config) -> tuple[TrainState, dict[str, Any]]:
    """One outer step; metrics describe the step (α and losses before its update)."""
    (loss, inner), (grad_params, grad_alpha) = meta_value_and_grad(state.params, state.alpha, tasks, cfg)
    alpha_before = _detached(state.alpha)
    for name, p in state.params.items():
        p.grad = grad_params[name]
    state.params_opt.step()
    if state.alpha_opt is not None:
        for a, g in zip(_leaves(state.alpha), _leaves(grad_alpha)):
            a.grad = g
        state.alpha_opt.step()
    state.step += 1
    metrics = {"outer_loss": loss, "inner_losses": inner, "alpha": alpha_before, "alpha_grad": grad_alpha}
    return state, metrics


def train_chunk(state: TrainState, tasks: Tasks, cfg: Config) -> tuple[TrainState, dict[str, Any]]:
    """``N`` outer steps; ``tasks`` leaves are [N, B, P, 1], metrics [N, ...]."""
    steps = []
    for i in range(tasks[0].shape[0]):
        state, metrics = train_step(state, tuple(t[i] for t in tasks), cfg)  # type: ignore[arg-type]
        steps.append(metrics)
    return state, _stack(steps)


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

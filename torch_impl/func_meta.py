"""The meta-objective written with ``torch.func``: ``functional_call`` + ``grad`` + ``vmap`` over tasks.

The way a researcher writes MAML with torch.func, for the bench's ``torch-func`` row and as a
second PyTorch formulation checked against the twin (tests/test_func_meta.py): one task's inner
loop is written for unbatched parameters, the inner gradient is ``torch.func.grad`` of the
support loss (first order: that gradient detached), and ``vmap`` maps the task over the
meta-batch. It returns what ``torch_impl.meta.meta_value_and_grad`` returns, so
``torch_impl.train.train_chunk(..., grad_fn=meta_value_and_grad)`` trains with it.
No rematerialisation (``cfg.remat``): :func:`supports` says so.
"""

from __future__ import annotations

import functools

import torch
from torch import nn
from torch.func import functional_call, grad_and_value, vmap

from parity.config import Config, lookup
from torch_impl.meta import Alpha, Tasks, alpha_for
from torch_impl.model import Params, check_inputs, point_loss


def supports(cfg: Config) -> str | None:
    """Why this formulation cannot run ``cfg`` (None: it can)."""
    if cfg.model.name != "mlp":
        return f"the torch.func formulation builds the MLP only, not model {cfg.model.name!r}"
    return "no rematerialisation in the torch.func formulation" if cfg.remat else None


ACTIVATION_MODULES = {"tanh": nn.Tanh, "relu": nn.ReLU}


@functools.lru_cache(maxsize=16)
def network(hidden: tuple[int, ...], activation: str) -> nn.Sequential:
    """The MLP 1 → hidden… → 1 as a module; its own parameters are never used (functional_call swaps them)."""
    sizes = (1, *hidden, 1)
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1], device="meta"))
        if i < len(sizes) - 2:
            layers.append(lookup(ACTIVATION_MODULES, "activation", activation)())
    return nn.Sequential(*layers)


def module_names(params: Params) -> dict[str, str]:
    """``w{i}``/``b{i}`` → the module's ``{2i}.weight``/``{2i}.bias`` (activations sit between)."""
    return {name: f"{2 * int(name[1:])}.{'weight' if name[0] == 'w' else 'bias'}" for name in params}


def meta_value_and_grad(
    params: Params, alpha: Alpha, tasks: Tasks, cfg: Config, unroll: int = 0
) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[Params, Alpha]]:
    """((outer loss [], support losses [T]), (dL/dparams, dL/dα)), as torch_impl.meta's; ``unroll``: no effect."""
    check_inputs("meta_value_and_grad", cfg, params=params, alpha=alpha, tasks=tasks)
    reason = supports(cfg)
    if reason is not None:
        raise NotImplementedError(reason)
    net = network(tuple(cfg.hidden), cfg.activation)
    names = module_names(params)

    def loss(p: Params, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:  # one task: x [P, 1] → []
        pred = functional_call(net, {names[k]: v for k, v in p.items()}, (x,))
        return point_loss(pred, y, cfg.loss)

    def one_task(
        p: Params, a: Alpha, xs: torch.Tensor, ys: torch.Tensor, xq: torch.Tensor, yq: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        support_losses = []
        for _ in range(cfg.inner_steps):
            g, value = grad_and_value(loss)(p, xs, ys)
            if cfg.first_order:
                g = {k: v.detach() for k, v in g.items()}  # FOMAML: the inner gradient is a constant
            p = {k: v - alpha_for(a, k) * g[k] for k, v in p.items()}
            support_losses.append(value)
        inner = torch.stack(support_losses) if support_losses else xs.new_zeros((0,))
        return loss(p, xq, yq), inner

    def objective(p: Params, a: Alpha) -> tuple[torch.Tensor, torch.Tensor]:
        outer, inner = vmap(one_task, in_dims=(None, None, 0, 0, 0, 0))(p, a, *tasks)  # [B], [B, T]
        return outer.mean(), inner.mean(0).detach()

    params = {k: v.detach() for k, v in params.items()}
    alpha = {k: v.detach() for k, v in alpha.items()} if isinstance(alpha, dict) else alpha.detach()
    (grad_params, grad_alpha), (outer, inner) = grad_and_value(objective, argnums=(0, 1), has_aux=True)(params, alpha)
    return (outer.detach(), inner), (grad_params, grad_alpha)

"""The meta-objective written with ``torch.func``: ``functional_call`` + ``grad`` + ``vmap`` over tasks.

The way a researcher writes MAML with torch.func, for the bench's ``torch-func`` row and as a
second PyTorch formulation checked against the twin (tests/test_bench_pieces.py): one task's inner
loop is written for unbatched parameters, the inner gradient is ``torch.func.grad`` of the
support loss (first order: that gradient detached), and ``vmap`` maps the task over the
meta-batch. The model is an ``nn.Module`` whose own parameters are never used: the MLP, or the
conv net (``Conv2d``, batch norm with batch statistics (:class:`BatchStatsNorm`), ``ReLU``,
``MaxPool2d``, a ``Linear`` head); the inner loop updates the parameters the model part adapts
(``cfg.model.adapted``). It returns what
``torch_impl.meta.meta_value_and_grad`` returns, so ``torch_impl.train.train_chunk(...,
grad_fn=meta_value_and_grad)`` trains with it.
No rematerialisation (``cfg.remat``): :func:`supports` says so.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable

import torch
from torch import nn
from torch.func import functional_call, grad_and_value, vmap

from parity.config import Config, lookup
from torch_impl.meta import Alpha, Tasks, alpha_for
from torch_impl.model import Params, check_inputs, point_loss


def supports(cfg: Config) -> str | None:
    """Why this formulation cannot run ``cfg`` (None: it can): plain SGD inner steps with a fixed,
    scalar or per-parameter α and the last step's query loss only."""
    if cfg.model.name not in ("mlp", "conv"):
        return f"the torch.func formulation builds the MLP and the conv net, not model {cfg.model.name!r}"
    if cfg.inner_optimizer != "sgd":
        return f"the torch.func formulation takes plain SGD inner steps, not {cfg.inner_optimizer!r}"
    if cfg.msl or cfg.alpha_mode == "per_layer_step":
        return "no multi-step loss or per-step α in the torch.func formulation"
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


def module_names(names: Iterable[str]) -> dict[str, str]:
    """``w{i}``/``b{i}`` → the module's ``{2i}.weight``/``{2i}.bias`` (activations sit between)."""
    return {name: f"{2 * int(name[1:])}.{'weight' if name[0] == 'w' else 'bias'}" for name in names}


class BatchStatsNorm(nn.Module):
    """Batch norm over (images, rows, columns) with these images' statistics (biased variance), γ and β.

    Written out rather than ``nn.BatchNorm2d(track_running_stats=False)`` / ``F.batch_norm(training=True)``:
    under ``vmap`` over tasks, torch 2.13's second derivative of ``F.batch_norm`` is wrong when both
    its input (through an adapted convolution weight) and γ are adapted in the inner loop — the
    meta-gradient was off by 1-2 % against the twin, the NumPy oracle and finite differences, and
    by ~1e-1 against the same function looped over tasks instead of vmapped; written out, ≤ 1e-15.
    """

    def __init__(self, channels: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.empty(channels, device="meta"))
        self.bias = nn.Parameter(torch.empty(channels, device="meta"))

    def forward(self, h: torch.Tensor) -> torch.Tensor:  # [P, C, H, W]
        mean = torch.mean(h, dim=(0, 2, 3), keepdim=True)
        var = torch.mean(torch.square(h - mean), dim=(0, 2, 3), keepdim=True)
        return (h - mean) / torch.sqrt(var + self.eps) * self.weight[:, None, None] + self.bias[:, None, None]


@functools.lru_cache(maxsize=16)
def conv_network(
    depth: int, in_channels: int, width: int, pool: str, eps: float, features: int, n_way: int
) -> nn.Module:
    """The conv net as a module: ``depth`` blocks [Conv2d 3×3 padding 1 (stride 2 for ``pool: stride``),
    batch norm with batch statistics, ReLU, MaxPool2d(2) for ``pool: max``],
    then Flatten (channel, row, column order, as the contract's head) and a Linear head."""
    stride = 2 if pool == "stride" else 1
    blocks: list[nn.Module] = []
    for i in range(depth):
        block = [
            nn.Conv2d(in_channels if i == 0 else width, width, 3, stride=stride, padding=1, device="meta"),
            BatchStatsNorm(width, eps),
            nn.ReLU(),
        ]
        blocks.append(nn.Sequential(*block, *([nn.MaxPool2d(2)] if pool == "max" else [])))
    return nn.Sequential(*blocks, nn.Flatten(), nn.Linear(features, n_way, device="meta"))


def conv_module_names(depth: int) -> dict[str, str]:
    """``w{i}``, ``b{i}``, ``gamma{i}``, ``beta{i}`` → block i's conv and batch norm; the head after Flatten."""
    names = {"w_head": f"{depth + 1}.weight", "b_head": f"{depth + 1}.bias"}
    for i in range(depth):
        names |= {
            f"w{i}": f"{i}.0.weight",
            f"b{i}": f"{i}.0.bias",
            f"gamma{i}": f"{i}.1.weight",
            f"beta{i}": f"{i}.1.bias",
        }
    return names


def model_of(cfg: Config) -> tuple[nn.Module, dict[str, str]]:
    """The module that computes ``cfg``'s model on one task's points, and the contract's names → its own."""
    if cfg.model.name == "mlp":
        return network(tuple(cfg.hidden), cfg.activation), module_names(cfg.param_names)
    m = cfg.model
    shapes = cfg.param_shapes
    channels, (n_way, features) = shapes["w0"][1], shapes["w_head"]
    return conv_network(m.depth, channels, m.width, m.pool, m.bn_eps, features, n_way), conv_module_names(m.depth)


def meta_value_and_grad(
    params: Params, alpha: Alpha, tasks: Tasks, cfg: Config, unroll: int = 0
) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[Params, Alpha]]:
    """((outer loss [], support losses [T]), (dL/dparams, dL/dα)), as torch_impl.meta's; ``unroll``: no effect."""
    check_inputs("meta_value_and_grad", cfg, params=params, alpha=alpha, tasks=tasks)
    reason = supports(cfg)
    if reason is not None:
        raise NotImplementedError(reason)
    net, names = model_of(cfg)
    adapted = set(cfg.model.adapted(tuple(params)))

    def loss(p: Params, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:  # one task: x [P, *input] → []
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
            p = {k: v - alpha_for(a, k) * g[k] if k in adapted else v for k, v in p.items()}
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

"""The seed lab's own PyTorch loop, ported faithfully: the baseline the bench compares against.

What is kept from the seed (``sagargv.com/blog/meta-learning-in-pytorch``, the lab's parts 1 and 4):
parameters as a Python list ``[w0, b0, w1, b1, w2, b2]``, ``F.linear`` layers, ``F.l1_loss``, one
task at a time, a Python loop over the parameters for the inner update with
``torch.autograd.grad(create_graph=True)``, ``loss2.backward()`` for the outer gradient, and
``torch.optim.SGD`` for the weights / ``torch.optim.Adam`` for a learned α.

What is changed, so that the loop can be checked against the twins: tasks come from the shared
sampler (``parity.tasks``) instead of ``torch.rand``, and the initial parameters from
``parity.init``. A meta-batch of ``B > 1`` tasks (the seed only ever uses one) is run the seed's
way: one task after another, each adding ``∇(loss2 / B)`` to ``.grad`` before the optimiser step.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np
import torch
from torch.nn import functional as F

from parity.config import Config, lookup
from parity.init import init_params
from parity.tasks import TaskBatch, sample_batch
from torch_impl.model import ACTIVATIONS


def net(x: torch.Tensor, params: list[torch.Tensor], activation: str = "tanh") -> torch.Tensor:
    """The seed's ``net``: ``x`` [P, 1] → [P, 1]; ``params`` = [w0 (out, in), b0 (out,), w1, b1, ...]."""
    n_layers = len(params) // 2
    for i in range(n_layers):
        x = F.linear(x, params[2 * i], params[2 * i + 1])
        if i < n_layers - 1:
            # The seed calls F.tanh, a deprecated alias of torch.tanh (same kernel, no warning).
            x = lookup(ACTIVATIONS, "activation", activation)(x)
    return x


def _loss_fn(kind: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The seed's F.l1_loss, or F.mse_loss for configs with ``loss="mse"``."""
    return F.l1_loss if kind == "l1" else F.mse_loss


@dataclasses.dataclass
class SeedState:
    """The seed's globals: ``params`` (list of leaves), ``alpha`` (float, or a [1] leaf), optimisers."""

    params: list[torch.Tensor]
    alpha: float | torch.Tensor
    opt: torch.optim.Optimizer
    opt2: torch.optim.Optimizer | None  # the α optimiser; None when α is fixed (seed part 1)
    step: int = 0


def init_state(cfg: Config, device: str | torch.device = "cpu") -> SeedState:
    """Shared initial parameters (``parity.init``) in the seed's list form, ``cfg.dtype``, on ``device``."""
    dtype = getattr(torch, cfg.dtype)
    arrays = init_params(cfg)
    params = [torch.tensor(arrays[name], dtype=dtype, device=device).requires_grad_() for name in cfg.param_names]
    if cfg.outer_optimizer == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(params, lr=cfg.outer_lr)
    else:
        opt = torch.optim.Adam(params, lr=cfg.outer_lr)
    if not cfg.alpha_learned:
        return SeedState(params, cfg.alpha_init, opt, None)
    if cfg.alpha_mode == "per_parameter":
        raise ValueError("the seed loop has one α (fixed or scalar), not one per parameter")
    # The seed's part 4: alpha = torch.FloatTensor([0.1]).requires_grad_(); opt2 = Adam([alpha], lr=1e-4)
    alpha = torch.tensor([cfg.alpha_init], dtype=dtype, device=device).requires_grad_()
    if cfg.alpha_optimizer == "adam":
        opt2: torch.optim.Optimizer = torch.optim.Adam([alpha], lr=cfg.alpha_lr)
    else:
        opt2 = torch.optim.SGD([alpha], lr=cfg.alpha_lr)
    return SeedState(params, alpha, opt, opt2)


def to_tensors(batch: TaskBatch, dtype: str, device: str | torch.device = "cpu") -> tuple[torch.Tensor, ...]:
    """The four point arrays of a meta-batch as tensors: x, y [..., B, K, 1], v_x, v_y [..., B, Q, 1]."""
    return tuple(torch.as_tensor(np.asarray(a), dtype=getattr(torch, dtype), device=device) for a in batch[:4])


def seed_step(
    state: SeedState,
    x: torch.Tensor,
    y: torch.Tensor,
    v_x: torch.Tensor,
    v_y: torch.Tensor,
    cfg: Config,
) -> torch.Tensor:
    """One outer step of the seed's loop on ``B`` tasks, one at a time; returns the last task's loss2.

    ``x``, ``y`` [B, K, 1] support points, ``v_x``, ``v_y`` [B, Q, 1] query points.
    """
    loss_fn = _loss_fn(cfg.loss)
    params, alpha = state.params, state.alpha
    B = x.shape[0]
    state.opt.zero_grad()
    if state.opt2 is not None:
        state.opt2.zero_grad()
    for b in range(B):
        new_params = params
        for _ in range(cfg.inner_steps):
            f = net(x[b], new_params, cfg.activation)
            loss = loss_fn(f, y[b])
            # create_graph=True because computing grads here is part of the forward pass.
            grads = torch.autograd.grad(loss, new_params, create_graph=True)
            new_params = [(new_params[i] - alpha * grads[i]) for i in range(len(params))]
        v_f = net(v_x[b], new_params, cfg.activation)
        loss2 = loss_fn(v_f, v_y[b])
        # One task (the seed): loss2.backward(). B tasks: .grad accumulates the mean over tasks.
        (loss2 if B == 1 else loss2 / B).backward()
    state.opt.step()
    if state.opt2 is not None:
        state.opt2.step()
    state.step += 1
    return loss2.detach()  # no .item(): the seed reads the loss only every 500 steps


def run(cfg: Config, iterations: int | None = None, state: SeedState | None = None) -> SeedState:
    """The seed's ``for it in range(5000)`` loop on the shared sampler's tasks (step i's batch)."""
    state = init_state(cfg) if state is None else state
    n = cfg.iterations if iterations is None else iterations
    for _ in range(n):
        x, y, v_x, v_y = to_tensors(sample_batch(cfg, state.step), cfg.dtype)
        seed_step(state, x, y, v_x, v_y, cfg)
    return state


def final_values(state: SeedState, cfg: Config) -> dict[str, np.ndarray]:
    """Parameters and α as a flat dict of NumPy arrays, keyed as ``parity.training.final_values``."""
    out = {f"params/{name}": p.detach().cpu().numpy() for name, p in zip(cfg.param_names, state.params)}
    alpha = state.alpha
    out["alpha"] = np.asarray(alpha.detach().cpu().numpy().reshape(()) if isinstance(alpha, torch.Tensor) else alpha)
    return out

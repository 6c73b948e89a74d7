"""A worked outside implementation of the maml-parity contract, written with ``torch.func``.

This file is what a researcher would write: a functional MLP, ``torch.func.grad`` for the inner
gradient, ``torch.func.vmap`` over the tasks of a meta-batch and ``torch.func.grad`` again for
the meta-gradient. It is not part of the ``parity`` package and imports nothing from it; it is
written from the contract's text (``parity/contract.py``, ``docs/contract.md``) alone. Check it::

    PYTHONPATH=. python3 -m parity check --impl jax --impl examples/torchfunc_maml.py:IMPL

The contract, in short: NumPy in, NumPy out, in ``cfg.dtype``; ``params`` ``{w0, b0, w1, b1, …}``
with weights ``(out, in)``; ``alpha`` a 0-d array or a dict shaped like ``params``; ``tasks``
``(x_support, y_support, x_query, y_query)`` of ``[B, K|Q, 1]``; per task ``T`` SGD steps
``w ← w − α ⊙ ∇L_support(w)`` differentiated through (or, first order, with each inner gradient
held constant), outer loss ``L_query(w_T)``; losses are the mean over points, then over tasks.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.func import grad_and_value, vmap


def mlp(params: dict[str, torch.Tensor], x: torch.Tensor, activation: str) -> torch.Tensor:
    """``1 → hidden … → 1``: ``x @ W.T + b`` per layer, the activation between layers, none after the last."""
    n = len(params) // 2
    act = torch.tanh if activation == "tanh" else torch.relu
    h = x
    for i in range(n):
        h = h @ params[f"w{i}"].T + params[f"b{i}"]
        if i < n - 1:
            h = act(h)
    return h


def point_loss(pred: torch.Tensor, y: torch.Tensor, kind: str) -> torch.Tensor:
    """The mean over points of |error| (``l1``) or error² (``mse``)."""
    err = pred - y
    return err.abs().mean() if kind == "l1" else (err * err).mean()


class TorchFuncMAML:
    """MAML with a learnable inner learning rate, in ``torch.func``, behind the maml-parity contract."""

    name = "torchfunc"

    def supports(self, cfg: Any) -> str | None:
        # Every config of the contract computes here: remat only changes the memory of the
        # twins' backward pass (same math), the softplus parametrisation hands us α itself, and
        # both float32 and float64 are native. Trajectories need train_trajectory, which this
        # example leaves out (the harness reports those cases unsupported).
        return None

    def meta_value_and_grad(
        self, params: dict[str, np.ndarray], alpha: Any, tasks: tuple[np.ndarray, ...], cfg: Any
    ) -> dict[str, Any]:
        dtype = getattr(torch, cfg.dtype)

        def tensor(a: np.ndarray) -> torch.Tensor:
            return torch.as_tensor(np.asarray(a), dtype=dtype)

        p = {k: tensor(v) for k, v in params.items()}
        a = {k: tensor(v) for k, v in alpha.items()} if isinstance(alpha, dict) else tensor(alpha)
        x_s, y_s, x_q, y_q = (tensor(t) for t in tasks)

        def support_loss(w: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return point_loss(mlp(w, x, cfg.activation), y, cfg.loss)

        def adapt_one(w, a, xs, ys, xq, yq):  # one task: T inner steps, then the query loss
            inner = []
            for _ in range(cfg.inner_steps):
                g, value = grad_and_value(support_loss)(w, xs, ys)
                if cfg.first_order:  # FOMAML: the inner gradient is a constant
                    g = {k: v.detach() for k, v in g.items()}
                inner.append(value)
                step = a if isinstance(a, dict) else {k: a for k in w}
                w = {k: w[k] - step[k] * g[k] for k in w}
            inner_losses = torch.stack(inner) if inner else xs.new_zeros(0)
            return support_loss(w, xq, yq), inner_losses

        def meta_loss(w, a):
            outer, inner = vmap(adapt_one, in_dims=(None, None, 0, 0, 0, 0))(w, a, x_s, y_s, x_q, y_q)
            return outer.mean(), inner.mean(dim=0)

        (d_params, d_alpha), (loss, inner) = grad_and_value(meta_loss, argnums=(0, 1), has_aux=True)(p, a)

        def out(t: torch.Tensor) -> np.ndarray:
            return t.detach().numpy()

        return {
            "outer_loss": out(loss),
            "inner_losses": out(inner),
            "grads": {k: out(v) for k, v in d_params.items()},
            "alpha_grad": {k: out(v) for k, v in d_alpha.items()} if isinstance(d_alpha, dict) else out(d_alpha),
        }


IMPL = TorchFuncMAML()

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


class TorchFuncMAML:
    """MAML with a learnable inner learning rate, in ``torch.func``, behind the maml-parity contract.

    The pieces are small methods (the model, the loss, the inner gradient, the inner step) so that
    a variant, or a deliberately broken copy (``tests/mutants_impls.py``), overrides one of them.
    """

    name = "torchfunc"

    def supports(self, cfg: Any) -> str | None:
        # The sinusoid MLP with plain SGD inner steps computes here: remat only changes the memory
        # of the twins' backward pass (same math), the softplus parametrisation hands us α itself,
        # and float32 and float64 are both native. What this example does not implement it says,
        # so those cases are reported unsupported, never passing (and never computed wrongly):
        # another model or task family, another inner optimiser, LSLR's per-step α, the multi-step
        # loss. Trajectories need train_trajectory, which this example leaves out.
        unsupported = {
            "model": cfg.model.name != "mlp",
            "inner_optimizer": cfg.inner_optimizer != "sgd",
            "alpha_mode": cfg.alpha_mode == "per_layer_step",
            "msl": bool(getattr(cfg, "msl", False)),
        }
        named = [field for field, missing in unsupported.items() if missing]
        return f"this example implements the MLP with SGD inner steps only (not {', '.join(named)})" if named else None

    def model(self, w: dict[str, torch.Tensor], x: torch.Tensor, activation: str) -> torch.Tensor:
        """``1 → hidden … → 1``: ``x @ W.T + b`` per layer, the activation between layers, none after the last."""
        n = len(w) // 2
        act = torch.tanh if activation == "tanh" else torch.relu
        h = x
        for i in range(n):
            h = h @ w[f"w{i}"].T + w[f"b{i}"]
            if i < n - 1:
                h = act(h)
        return h

    def loss(self, pred: torch.Tensor, y: torch.Tensor, kind: str) -> torch.Tensor:
        """The mean over points of |error| (``l1``) or error² (``mse``)."""
        err = pred - y
        return err.abs().mean() if kind == "l1" else (err * err).mean()

    def inner_grad(self, g: dict[str, torch.Tensor], first_order: bool) -> dict[str, torch.Tensor]:
        """Second order: the inner gradient stays in the graph; FOMAML: it is a constant."""
        return {k: v.detach() for k, v in g.items()} if first_order else g

    def inner_step(self, w: dict[str, torch.Tensor], a: Any, g: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``w ← w − α ⊙ g`` with a scalar α or one α per parameter."""
        step = a if isinstance(a, dict) else {k: a for k in w}
        return {k: w[k] - step[k] * g[k] for k in w}

    def meta_value_and_grad(
        self, params: dict[str, np.ndarray], alpha: Any, tasks: tuple[np.ndarray, ...], cfg: Any
    ) -> dict[str, Any]:
        dtype = getattr(torch, cfg.dtype)

        def tensor(a: np.ndarray) -> torch.Tensor:
            return torch.as_tensor(np.asarray(a), dtype=dtype)

        p = {k: tensor(v) for k, v in params.items()}
        a = {k: tensor(v) for k, v in alpha.items()} if isinstance(alpha, dict) else tensor(alpha)
        x_s, y_s, x_q, y_q = (tensor(t) for t in tasks)

        def support_loss(w, x, y):
            return self.loss(self.model(w, x, cfg.activation), y, cfg.loss)

        def adapt_one(w, a, xs, ys, xq, yq):  # one task: T inner steps, then the query loss
            inner = []
            for _ in range(cfg.inner_steps):
                g, value = grad_and_value(support_loss)(w, xs, ys)
                inner.append(value)
                w = self.inner_step(w, a, self.inner_grad(g, cfg.first_order))
            inner_losses = torch.stack(inner) if inner else xs.new_zeros(0)
            return support_loss(w, xq, yq), inner_losses

        def meta_loss(w, a):  # vmap over the meta-batch; mean over tasks
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

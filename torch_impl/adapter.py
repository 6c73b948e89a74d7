"""The PyTorch twin behind the contract (``parity.contract``); mirrors jax_impl/adapter.py.

Everything PyTorch-specific the framework-neutral code needs lives here or in the modules it
names: leaf tensors for differentiation, and the placement of a meta-batch over a
``torch.distributed`` group (``torch_impl.distributed``); devices and precision are
``torch_impl.model``'s ``resolve_device`` and ``precision_scope``.
"""

from __future__ import annotations

import os
from typing import Any

from parity.config import Config, ConfigError
from parity.twins import TwinAdapter
from torch_impl import meta, model, train


class TorchTwin(TwinAdapter):
    """``autograd.grad(create_graph=True)`` through the inner loop, tasks broadcast, torch.optim outside."""

    framework = "torch"
    joins_coordinator = False  # torchrun starts and joins the processes
    model = model
    meta = meta
    train = train

    def prepare(self, dtype: str) -> None:
        model.check_dtype(dtype)

    def set_threads(self, threads: int) -> str:
        import torch

        torch.set_num_threads(threads)  # intra-op threads; allowed at any time
        return f"torch {torch.get_num_threads()}"

    def differentiable(self, params: Any) -> Any:
        # torch_impl.meta.inner_step takes the gradient with torch.autograd.grad, which needs leaf
        # tensors that require grad; JAX differentiates any array.
        return {name: p.detach().clone().requires_grad_() for name, p in params.items()}

    def placement(
        self,
        cfg: Config,
        devices: int | None = None,
        coordinator: str | None = None,
        num_processes: int | None = None,
        process_id: int | None = None,
    ) -> Any:
        if coordinator is not None:
            raise ConfigError("coordinator", "is for the JAX twin; launch PyTorch on several hosts with torchrun")
        from torch_impl import distributed

        if devices is None and int(os.environ.get("WORLD_SIZE", "1")) == 1:
            return None
        return distributed.placement(cfg, devices, self.device)

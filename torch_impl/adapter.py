"""The PyTorch twin behind the contract (``parity.contract``); mirrors jax_impl/adapter.py.

Everything PyTorch-specific the framework-neutral code needs lives here: matmul precision, the
device description, leaf tensors for differentiation and the placement of a meta-batch over a
``torch.distributed`` group.
"""

from __future__ import annotations

import os
import platform
from typing import Any

import torch

from parity.config import Config, ConfigError
from parity.twins import PRECISIONS, TwinAdapter
from torch_impl import meta, model, train


class TorchTwin(TwinAdapter):
    """``autograd.grad(create_graph=True)`` through the inner loop, tasks broadcast, torch.optim outside."""

    framework = "torch"
    model = model
    meta = meta
    train = train

    def prepare(self, dtype: str) -> None:
        model.check_dtype(dtype)

    def set_precision(self, precision: str) -> None:
        assert precision in PRECISIONS, precision
        # PyTorch's own defaults: full float32 matmuls, TF32 convolutions (cuDNN); "highest" turns
        # TF32 off everywhere.
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = precision != "highest"
        torch.set_float32_matmul_precision("highest")

    def device_description(self) -> str:
        device = torch.device(self.device or "cpu")
        if device.type == "cuda":
            return f"cuda ({torch.cuda.get_device_name(device)})"
        return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"

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
        return distributed.placement(cfg, devices)

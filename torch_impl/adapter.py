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
from parity.environment import launched_process
from parity.twins import BENCH, TwinAdapter
from torch_impl import environment, meta, model, train


class TorchTwin(TwinAdapter):
    """``autograd.grad(create_graph=True)`` through the inner loop, tasks broadcast, torch.optim outside."""

    framework = "torch"
    capabilities = frozenset({BENCH})
    environment = environment.VARIABLES
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

        if devices is None and launched_process(os.environ)[1] == 1:
            return None
        return distributed.placement(cfg, devices, self.device)

    # --- bench (torch_impl.bench) -----------------------------------------------------------------

    def bench_rows(self) -> tuple[Any, ...]:
        from torch_impl import bench

        return bench.rows()

    def bench_targets(self) -> tuple[Any, ...]:
        from torch_impl import bench

        return bench.targets()

    def bench_configure(self, device: str, threads: int) -> dict[str, Any]:
        from torch_impl import bench

        return bench.configure(device, threads)

    def bench_machine(self, device: str, options: Any) -> dict[str, Any]:
        from torch_impl import bench

        return bench.machine(device, options)

    def bench_release(self, device: str) -> None:
        from torch_impl import bench

        bench.release(device)

    def device_memory_mb(self, device: str) -> float | None:
        from torch_impl import bench

        return bench.memory_mb(device)

"""Lazy access to the twins, so that the framework-neutral code never imports JAX or PyTorch
until a command actually needs one."""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any, NamedTuple

from parity.config import ConfigError
from parity.devices import parse_device

FRAMEWORKS = ("jax", "torch")


class Twin(NamedTuple):
    name: str
    model: ModuleType  # forward, point_loss, resolve_device, to_arrays, precision_scope, to_numpy, check_dtype
    meta: ModuleType  # inner_loss … meta_value_and_grad, inner_step_gains
    train: ModuleType  # init_state, train_step, train_chunk, state_from_numpy
    device: str | None = None  # cpu | gpu | cuda:N | tpu; None: the framework's default

    def to_arrays(self, tree: Any, dtype: str) -> Any:
        """NumPy → the twin's arrays of ``dtype`` on the twin's device (all host → device goes here)."""
        return self.model.to_arrays(tree, dtype, self.device)

    def to_numpy(self, tree: Any) -> Any:
        return self.model.to_numpy(tree)

    def state_from_numpy(self, neutral: dict[str, Any], cfg: Any) -> Any:
        """A checkpoint's training state on the twin's device, whichever device wrote it."""
        return self.train.state_from_numpy(neutral, cfg, self.device)

    def precision_scope(self, precision: str) -> Any:
        """``with twin.precision_scope("highest"):`` full float32 matmuls inside the block only."""
        return self.model.precision_scope(precision)

    def device_description(self) -> str:
        return str(self.model.device_description(self.device))


def load(framework: str, dtype: str | None = None, device: str | None = None, resolve: bool = True) -> Twin:
    """Import one twin. With ``dtype="float64"`` JAX's x64 mode is switched on first.

    ``device`` (cpu | gpu | cuda:N | tpu) is checked now (``resolve``), so that a device the framework
    cannot see is one line (``ConfigError("device", ...)``) before any work; pass ``resolve=False``
    where JAX must not start its backends yet (before ``jax.distributed.initialize``).
    """
    if framework not in FRAMEWORKS:
        raise ConfigError("framework", f"must be one of {', '.join(FRAMEWORKS)}; got {framework!r}")
    if device is not None:
        parse_device(device)  # a malformed name is refused before anything is imported
    if framework == "jax" and dtype == "float64":
        enable_jax_x64()
    package = f"{framework}_impl"
    twin = Twin(
        name=framework,
        model=importlib.import_module(f"{package}.model"),
        meta=importlib.import_module(f"{package}.meta"),
        train=importlib.import_module(f"{package}.train"),
        device=device,
    )
    if resolve:
        twin.model.resolve_device(device)
    return twin


def enable_jax_x64() -> None:
    """Turn on JAX's float64 support, unless the user switched it off explicitly.

    ``JAX_ENABLE_X64=0`` in the environment is a request for float32-only JAX: a float64 run
    is then refused (by ``jax_impl.model.check_dtype``), never silently run in float32.
    """
    import os

    if os.environ.get("JAX_ENABLE_X64", "").strip().lower() in ("0", "false", "no", "off"):
        return
    import jax

    jax.config.update("jax_enable_x64", True)


def full_precision_matmuls(framework: str) -> None:
    """Parity runs use full float32 matmuls on GPUs: no TF32, no bf16 passes."""
    if framework == "jax":
        import jax

        jax.config.update("jax_default_matmul_precision", "highest")
    else:
        import torch

        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        torch.set_float32_matmul_precision("highest")


def placement_for(
    framework: str,
    cfg: Any,
    devices: int | None = None,
    coordinator: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    device: str | None = None,
) -> Any:
    """How a training run spreads its meta-batch: a twin's ``distributed.Placement``, or None for
    one device (JAX sees one device of ``device``'s kind and none were asked for; PyTorch was not
    started by torchrun).
    """
    import os

    if framework == "jax":
        from jax_impl import distributed as jax_distributed

        jax_distributed.initialize(coordinator, num_processes, process_id)
        if devices is None and jax_distributed.available(device) == 1:
            return None
        return jax_distributed.placement(cfg, devices, device)
    if coordinator is not None:
        raise ConfigError("coordinator", "is for the JAX twin; launch PyTorch on several hosts with torchrun")
    from torch_impl import distributed as torch_distributed

    if devices is None and int(os.environ.get("WORLD_SIZE", "1")) == 1:
        return None
    return torch_distributed.placement(cfg, devices, device)

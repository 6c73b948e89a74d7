"""The JAX twin behind the contract (``parity.contract``); mirrors torch_impl/adapter.py.

Everything JAX-specific the framework-neutral code needs lives here: x64 mode for float64,
matmul precision, the device description and the placement of a sharded meta-batch.
"""

from __future__ import annotations

import os
import platform
from typing import Any

from jax_impl import meta, model, train
from parity.config import Config
from parity.twins import PRECISIONS, TwinAdapter

_FALSE_WORDS = ("0", "false", "no", "off")


class JaxTwin(TwinAdapter):
    """``jax.grad`` through a jit-compiled ``lax.scan`` inner loop, ``vmap`` over tasks, optax outside."""

    framework = "jax"
    joins_coordinator = True  # jax.distributed.initialize, started by parity.startup with a timeout
    model = model
    meta = meta
    train = train

    def prepare(self, dtype: str) -> None:
        if dtype == "float64":
            enable_x64()
        model.check_dtype(dtype)

    def set_precision(self, precision: str) -> None:
        import jax

        assert precision in PRECISIONS, precision
        jax.config.update("jax_default_matmul_precision", "highest" if precision == "highest" else None)

    def device_description(self) -> str:
        import jax

        dev = jax.devices()[0]
        if dev.platform == "cpu":
            return f"cpu ({platform.processor() or platform.machine()}, JAX)"
        return f"{dev.platform} ({dev.device_kind})"

    def placement(
        self,
        cfg: Config,
        devices: int | None = None,
        coordinator: str | None = None,
        num_processes: int | None = None,
        process_id: int | None = None,
    ) -> Any:
        import jax

        from jax_impl import distributed

        distributed.initialize(coordinator, num_processes, process_id)
        if devices is None and jax.device_count() == 1:
            return None
        return distributed.placement(cfg, devices)


def enable_x64() -> None:
    """Turn on JAX's float64 support, unless the user switched it off explicitly.

    ``JAX_ENABLE_X64=0`` in the environment is a request for float32-only JAX: a float64 run
    is then refused (by ``jax_impl.model.check_dtype``), never silently run in float32.
    """
    if os.environ.get("JAX_ENABLE_X64", "").strip().lower() in _FALSE_WORDS:
        return
    import jax

    jax.config.update("jax_enable_x64", True)

"""The JAX twin behind the contract (``parity.contract``); mirrors torch_impl/adapter.py.

Everything JAX-specific the framework-neutral code needs lives here or in the modules it names:
x64 mode for float64, and the placement of a sharded meta-batch (``jax_impl.distributed``);
devices and precision are ``jax_impl.model``'s ``resolve_device`` and ``precision_scope``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from jax_impl import environment, meta, model, train
from parity.config import Config, ConfigError
from parity.devices import parse_device
from parity.twins import BENCH, COST_ANALYSIS, PEAK_PROBES, SCALING, TwinAdapter

UNROLL_ON_ACCELERATORS = 16  # inner loops up to this long are unrolled off the CPU (compile time grows with T)


class JaxTwin(TwinAdapter):
    """``jax.grad`` through a jit-compiled ``lax.scan`` inner loop, ``vmap`` over tasks, optax outside."""

    framework = "jax"
    capabilities = frozenset({BENCH, PEAK_PROBES, COST_ANALYSIS, SCALING})
    environment = environment.VARIABLES
    cost_method = "xla cost analysis, inner loop unrolled"
    joins_coordinator = True  # jax.distributed.initialize, started by parity.startup with a timeout
    model = model
    meta = meta
    train = train

    def prepare(self, dtype: str) -> None:
        if dtype == "float64":
            if environment.x64_refused(os.environ):  # a request for float32-only JAX, even where x64 is on
                raise ConfigError(
                    "dtype",
                    "float64 needs JAX's x64 mode, which JAX_ENABLE_X64 switches off here (unset it or set it to 1); "
                    "allowed here: float32",
                )
            enable_x64()
        model.check_dtype(dtype)

    def set_threads(self, threads: int) -> str:
        # XLA reads XLA_FLAGS once, when its CPU backend starts, and has no flag for an exact thread
        # count: one thread is --xla_cpu_multi_thread_eigen=false, set only before the backend starts.
        flag = "--xla_cpu_multi_thread_eigen=false"
        flags = os.environ.get("XLA_FLAGS", "")
        if threads != 1:
            return "jax: XLA default pool"
        if flag in flags:
            return "jax: single-threaded eigen"
        if _backend_started():
            return "jax: backend already started, XLA default pool"
        os.environ["XLA_FLAGS"] = (flags + " " + flag).strip()
        return "jax: single-threaded eigen"

    def unroll_for(self, cfg: Config) -> int:
        """On a GPU or TPU a short inner loop is unrolled: at B = 1, T = 5 on an H100 a training step
        took 161 us unrolled against 412 us rolled (and 186 us on one CPU core); docs/performance.md.
        On the CPU the rolled loop compiles a second faster and unrolling gains little, so it stays rolled."""
        if self.device is None or parse_device(self.device).kind == "cpu":
            return 0
        return cfg.inner_steps if 0 < cfg.inner_steps <= UNROLL_ON_ACCELERATORS else 0

    def placement(
        self,
        cfg: Config,
        devices: int | None = None,
        coordinator: str | None = None,
        num_processes: int | None = None,
        process_id: int | None = None,
    ) -> Any:
        from jax_impl import distributed

        distributed.initialize(coordinator, num_processes, process_id)
        if devices is None and distributed.available(self.device) == 1:
            return None
        return distributed.placement(cfg, devices, self.device)

    # --- bench, probes, scaling (jax_impl.bench, jax_impl.bench_scaling) ---------------------------

    def bench_rows(self) -> tuple[Any, ...]:
        from jax_impl import bench

        return bench.rows()

    def bench_targets(self) -> tuple[Any, ...]:
        from jax_impl import bench

        return bench.targets()

    def bench_configure(self, device: str, threads: int) -> dict[str, Any]:
        from jax_impl import bench

        return bench.configure(device, threads)

    def bench_machine(self, device: str, options: Any) -> dict[str, Any]:
        from jax_impl import bench

        return bench.machine(device, options)

    def bench_start(self, device: str) -> dict[str, float]:
        from jax_impl import bench

        return bench.start_backend()

    def device_peaks(self, device: str) -> dict[str, Any]:
        from jax_impl import bench

        return bench.device_peaks(device)

    def step_cost_exact(self, setting: Any, device: str) -> dict[str, float]:
        from jax_impl import bench

        return bench.step_cost_exact(setting, device)

    def scaling_measure(
        self, devices: int, meta_batch: int, inner_steps: int, steps: int, repeats: int
    ) -> dict[str, Any]:
        from jax_impl import bench_scaling

        return bench_scaling.measure(self, devices, meta_batch, inner_steps, steps, repeats)

    def scaling_environment(self, device: str, devices: int, environ: Mapping[str, str]) -> dict[str, str]:
        from jax_impl import bench_scaling

        return bench_scaling.child_environment(device, devices, environ)


def _backend_started() -> bool:
    try:
        from jax._src import xla_bridge

        return bool(getattr(xla_bridge, "_backends", {}))
    except ImportError:  # private module moved: assume the worst
        return True


def enable_x64() -> None:
    """Turn on JAX's float64 support, unless the user switched it off explicitly.

    ``JAX_ENABLE_X64=0`` in the environment is a request for float32-only JAX: a float64 run
    is then refused (by ``jax_impl.model.check_dtype``), never silently run in float32.
    """
    if environment.x64_refused(os.environ):
        return
    import jax

    jax.config.update("jax_enable_x64", True)

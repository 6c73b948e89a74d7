"""The built-in twins behind the contract: what their adapters share, and lazy loading.

Each twin package has one adapter module (``jax_impl/adapter.py``, ``torch_impl/adapter.py``)
whose class subclasses :class:`TwinAdapter`: it names the twin's ``model``, ``meta`` and
``train`` modules and owns everything framework-specific the rest of ``parity/`` needs (switching
precision and float64 on, placing arrays on a device, describing it, spreading a meta-batch over
devices). :class:`TwinAdapter` adds, from those, the contract of :mod:`parity.contract` (NumPy in
and out) and its optional capabilities. Nothing here imports a framework.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import ModuleType
from typing import Any, Protocol

import numpy as np

from parity.config import Config, ConfigError
from parity.contract import MetaResult
from parity.devices import check_precision, parse_device
from parity.init import init_alpha, init_params
from parity.registry import TWINS, resolve
from parity.tasks import sample_batch

# Optional capabilities, declared by each adapter in ``capabilities`` (data, never probed).
BENCH = "bench"  # bench_rows, bench_targets and the bench_* set-up below
PEAK_PROBES = "peak_probes"  # device_peaks: the device's matmul and copy peak
COST_ANALYSIS = "cost_analysis"  # step_cost_exact: FLOPs and bytes of one compiled outer step
SCALING = "scaling"  # scaling_measure / scaling_environment: bench --scaling
CAPABILITIES = (BENCH, PEAK_PROBES, COST_ANALYSIS, SCALING)


class FrameworkAdapter(Protocol):
    """What ``parity/`` asks of a framework package beyond the contract: its bench rows, probes,
    scaling, environment and start-up. Which optional parts an adapter offers is ``capabilities``.
    """

    framework: str
    capabilities: frozenset[str]
    environment: tuple[Any, ...]  # parity.environment.Variable: the variables the framework reads

    def set_threads(self, threads: int) -> str:
        """Use ``threads`` CPU threads where the framework allows it; returns what was done."""

    def bench_rows(self) -> tuple[Any, ...]:
        """The rows it offers the bench (``parity.bench.rows.BenchRow``: name, prepare, limits)."""

    def bench_targets(self) -> tuple[Any, ...]:
        """Goals on its rows (``parity.bench.rows.Target``), reported with every bench run."""

    def bench_configure(self, device: str, threads: int) -> dict[str, Any]:
        """Threads and flags before the framework's backend starts; returns what was set (JSON machine)."""

    def bench_machine(self, device: str, options: Any) -> dict[str, Any]:
        """Versions and methods for the bench JSON's machine section (``options``: bench.rows.Options)."""

    def bench_start(self, device: str) -> dict[str, float]:
        """Start the backend before the first row (so its compile time is its own); what it took."""

    def bench_release(self, device: str) -> None:
        """Give back memory cached by the rows before the next setting."""

    def device_memory_mb(self, device: str) -> float | None:
        """The accelerator's memory in MB (None: the host's), for the bench's memory budget."""

    def device_peaks(self, device: str) -> dict[str, Any]:
        """(``peak_probes``) ``{"matmul": {flop_per_s, n, ...}, "copy": {bytes_per_s, mib, ...}}``."""

    def step_cost_exact(self, setting: Any, device: str) -> dict[str, float]:
        """(``cost_analysis``) ``{"flops", "bytes"}`` of one outer step compiled at ``setting``."""

    def scaling_measure(
        self, devices: int, meta_batch: int, inner_steps: int, steps: int, repeats: int
    ) -> dict[str, Any]:
        """(``scaling``) One device count's row of ``bench --scaling``, in the child process."""

    def scaling_environment(self, device: str, devices: int, environ: Mapping[str, str]) -> dict[str, str]:
        """(``scaling``) The child's environment for ``devices`` devices of kind ``device``."""


class TwinAdapter:
    """A built-in twin: the contract plus every optional capability (:class:`FrameworkAdapter`).

    Subclasses set ``framework`` and the modules ``model`` (forward, point_loss, to_arrays,
    to_numpy, check_dtype), ``meta`` (inner_loss … meta_value_and_grad, inner_step_gains) and
    ``train`` (init_state, train_chunk, state_to_numpy, state_from_numpy, alpha_value), and
    implement the framework-specific methods below.
    """

    framework: str
    capabilities: frozenset[str] = frozenset()
    environment: tuple[Any, ...] = ()
    cost_method = ""  # what step_cost_exact counts, for the bench JSON
    joins_coordinator = False  # multi-host: True where `train --coordinator` starts the processes' rendezvous
    model: ModuleType
    meta: ModuleType
    train: ModuleType

    def __init__(self, device: str | None = None, precision: str = "highest"):
        if device is not None:
            parse_device(device)  # a malformed name is refused before the framework is asked
        self.device = device  # cpu | gpu | cuda:N | tpu; None: the framework's default device
        self.precision = check_precision(precision)  # what the contract's calls run under
        self.name = self.framework if device is None else f"{self.framework}@{device}"

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"

    # --- framework-specific: each adapter implements these ----------------------------------------

    def prepare(self, dtype: str) -> None:
        """Make ``dtype`` computable (JAX: x64 mode for float64), or raise ConfigError("dtype")."""
        raise NotImplementedError

    def precision_scope(self, precision: str | None = None) -> Any:
        """``with twin.precision_scope("highest"):`` full float32 matmuls (no TF32 / bf16 passes) inside
        the block only; ``default``: the framework's own. None: the adapter's ``precision``."""
        return self.model.precision_scope(precision or self.precision)

    def check_device(self) -> None:
        """Refuse now, in one line (ConfigError "device"), a device the framework cannot see."""
        self.model.resolve_device(self.device)

    def device_description(self) -> str:
        """The device the twin computes on, e.g. ``cpu (x86_64, JAX)`` or a GPU's name."""
        return str(self.model.device_description(self.device))

    def gpu_visible(self) -> bool:
        """Whether the framework sees a GPU (``check``'s default pairs add the GPU ones then)."""
        try:
            self.model.resolve_device("gpu")
        except ConfigError:
            return False
        return True

    def differentiable(self, params: Any) -> Any:
        """Parameters in the form the twin's ``adapt`` differentiates (eval's adaptation)."""
        return params

    def set_threads(self, threads: int) -> str:
        """Use ``threads`` CPU threads where the framework allows it; returns what was done, for the
        command's first line (``parity.threads``)."""
        raise NotImplementedError

    def unroll_for(self, cfg: Config) -> int:
        """Inner loops up to this many steps run as straight-line code in training (0: never)."""
        return 0

    def placement(
        self,
        cfg: Config,
        devices: int | None = None,
        coordinator: str | None = None,
        num_processes: int | None = None,
        process_id: int | None = None,
    ) -> Any:
        """How training spreads its meta-batch: a ``Placement``, or None for one device."""
        raise NotImplementedError

    # --- the bench, probes and scaling: an adapter overrides what its capabilities name -----------

    def bench_rows(self) -> tuple[Any, ...]:
        return ()

    def bench_targets(self) -> tuple[Any, ...]:
        return ()

    def bench_configure(self, device: str, threads: int) -> dict[str, Any]:
        return {}

    def bench_machine(self, device: str, options: Any) -> dict[str, Any]:
        return {}

    def bench_start(self, device: str) -> dict[str, float]:
        return {}

    def bench_release(self, device: str) -> None:
        return None

    def device_memory_mb(self, device: str) -> float | None:
        return None

    def device_peaks(self, device: str) -> dict[str, Any]:
        raise NotImplementedError(f"{self.framework} has no {PEAK_PROBES}")

    def step_cost_exact(self, setting: Any, device: str) -> dict[str, float]:
        raise NotImplementedError(f"{self.framework} has no {COST_ANALYSIS}")

    def scaling_measure(
        self, devices: int, meta_batch: int, inner_steps: int, steps: int, repeats: int
    ) -> dict[str, Any]:
        raise NotImplementedError(f"{self.framework} has no {SCALING}")

    def scaling_environment(self, device: str, devices: int, environ: Mapping[str, str]) -> dict[str, str]:
        raise NotImplementedError(f"{self.framework} has no {SCALING}")

    # --- the NumPy boundary -------------------------------------------------------------------

    def to_arrays(self, tree: Any, dtype: str) -> Any:
        """NumPy leaves -> the twin's arrays of ``dtype`` on its device (the one way in)."""
        return self.model.to_arrays(tree, dtype, self.device)

    def state_from_numpy(self, neutral: dict[str, Any], cfg: Config) -> Any:
        """A checkpoint's training state on the twin's device, whichever device wrote it."""
        return self.train.state_from_numpy(neutral, cfg, self.device)

    def to_numpy(self, tree: Any) -> Any:
        """The twin's arrays -> NumPy (the one way out)."""
        return self.model.to_numpy(tree)

    # --- the contract -------------------------------------------------------------------------

    def supports(self, cfg: Config) -> str | None:
        try:
            self.prepare(cfg.dtype)
        except ConfigError as err:
            return str(err)
        return None

    def meta_value_and_grad(
        self, params: dict[str, np.ndarray], alpha: Any, tasks: tuple[np.ndarray, ...], cfg: Config
    ) -> MetaResult:
        self.prepare(cfg.dtype)
        with self.precision_scope():
            out = self.meta.meta_value_and_grad(
                self.to_arrays(params, cfg.dtype),
                self.to_arrays(alpha, cfg.dtype),
                self.to_arrays(tasks, cfg.dtype),
                cfg,
            )
            (loss, inner), (grad_params, grad_alpha) = self.to_numpy(out)
        return {
            "outer_loss": np.asarray(loss),
            "inner_losses": np.asarray(inner),
            "grads": dict(grad_params),
            "alpha_grad": dict(grad_alpha) if isinstance(grad_alpha, dict) else np.asarray(grad_alpha),
        }

    # --- optional capabilities ----------------------------------------------------------------

    def stability_gains(self, params: Any, alpha: Any, tasks: tuple[np.ndarray, ...], cfg: Config) -> np.ndarray:
        """The gate's per-step gains ``max|1 − α·λ(H_t)|`` [B, T] (see ``meta.inner_step_gains``)."""
        self.prepare(cfg.dtype)
        with self.precision_scope():
            gains = self.meta.inner_step_gains(
                self.to_arrays(params, cfg.dtype),
                self.to_arrays(alpha, cfg.dtype),
                self.to_arrays(tasks, cfg.dtype),
                cfg,
            )
            return np.asarray(self.to_numpy(gains))

    def trace(
        self, params: dict[str, np.ndarray], alpha: Any, tasks: tuple[np.ndarray, ...], cfg: Config
    ) -> dict[str, np.ndarray]:
        """The inner loop recorded (``meta.trace``), flat NumPy: ``trace/support_loss`` [B, T],
        ``trace/inner_grad/<name>``, ``trace/adapted/<name>`` [B, T, *shape], ``trace/query_loss`` [B]; the
        optimiser's ``trace/state/...`` and a conv net's ``trace/activation/<layer>`` where they exist."""
        self.prepare(cfg.dtype)
        with self.precision_scope():
            out = self.meta.trace(
                self.to_arrays(params, cfg.dtype),
                self.to_arrays(alpha, cfg.dtype),
                self.to_arrays(tasks, cfg.dtype),
                cfg,
            )
            return {f"trace/{key}": np.asarray(value) for key, value in self.to_numpy(out).items()}

    def train_trajectory(self, cfg: Config, steps: int) -> dict[str, np.ndarray]:
        """Parameters and α after ``steps`` outer steps from the shared start, and every step's outer
        loss; ``trajectory/params/<name>``, ``trajectory/alpha`` [steps, ...]: the values after each step."""
        from parity import training

        self.prepare(cfg.dtype)
        losses: list[np.ndarray] = []
        after: list[dict[str, np.ndarray]] = []
        with self.precision_scope():
            state = self._trajectory(cfg, steps, losses, after)
        results = training.final_values(self, state)
        results["outer_loss"] = np.concatenate(losses)
        if after:
            results.update({f"trajectory/{k}": np.stack([a[k] for a in after]) for k in after[0]})
        return results

    def _trajectory(self, cfg: Config, steps: int, losses: list[np.ndarray], after: list[dict[str, np.ndarray]]) -> Any:
        from parity import training

        return training.run(
            self,
            cfg,
            iterations=steps,
            chunk=steps,
            on_chunk=lambda _, m: losses.append(m["outer_loss"]),
            checkpoint_every=1,
            # copies: a state's arrays may share memory with tensors the next step updates in place
            on_checkpoint=lambda _, s: after.append(
                {k: np.array(v) for k, v in training.final_values(self, s).items()}
            ),
        )


# The type the training, evaluation and benchmark code take: any built-in twin's adapter.
Twin = TwinAdapter


def load(framework: str, dtype: str | None = None, device: str | None = None, check_device: bool = True) -> TwinAdapter:
    """A built-in twin's adapter, ready for ``dtype`` (JAX: x64 switched on for float64).

    ``device`` (cpu | gpu | cuda:N | tpu) is checked now (``check_device``), so that a device the
    framework cannot see is one line before any work; pass ``check_device=False`` where JAX must not
    start its backends yet (before ``jax.distributed.initialize``), and call ``twin.check_device()`` after.
    """
    if framework not in TWINS:
        raise ConfigError("framework", f"must be one of {', '.join(TWINS)}; got {framework!r}")
    twin = resolve(framework if device is None else f"{framework}@{device}")
    assert isinstance(twin, TwinAdapter), type(twin)
    if dtype is not None:
        twin.prepare(dtype)
    if check_device:
        twin.check_device()
    return twin


def meta_results(twin: Any, cfg: Config, params: Any, alpha: Any, tasks: tuple[np.ndarray, ...]) -> dict[str, Any]:
    """Any implementation's meta-gradient on NumPy inputs, flat NumPy out: ``outer_loss``,
    ``inner_losses``, ``grad/<name>``, ``grad/alpha`` (or ``grad/alpha/<name>``), checked against the contract."""
    from parity.contract import describe, flatten_result

    return flatten_result(twin.meta_value_and_grad(params, alpha, tasks, cfg), cfg, describe(twin))


def step0_inputs(cfg: Config) -> tuple[dict[str, np.ndarray], Any, tuple[np.ndarray, ...]]:
    """The shared initial parameters, α and the sampler's step-0 meta-batch, in ``cfg.dtype``."""
    dtype = np.dtype(cfg.dtype)
    params = {k: v.astype(dtype) for k, v in init_params(cfg).items()}
    alpha = init_alpha(cfg)
    alpha = {k: v.astype(dtype) for k, v in alpha.items()} if isinstance(alpha, dict) else np.asarray(alpha, dtype)
    tasks = tuple(np.asarray(t, dtype) for t in sample_batch(cfg, 0)[:4])
    return params, alpha, tasks

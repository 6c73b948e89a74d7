"""The meta-batch across devices and hosts (JAX twin): a ``tasks`` mesh axis, XLA's collectives.

The tasks of a meta-batch are laid out along a one-axis ``jax.sharding.Mesh`` (``"tasks"``) with
``NamedSharding``; parameters, α and optimiser state are replicated. The same jitted
``train_chunk`` then runs partitioned (GSPMD): each device adapts its own tasks, and the mean
over tasks, hence the meta-gradient, becomes an all-reduce inside the compiled step. Nothing else
changes, which is why a sharded run computes what the single-device run computes.

Several hosts: call :func:`initialize` (``jax.distributed.initialize``) in every process before
anything else touches JAX; ``jax.devices()`` is then the global device list, and every process
feeds only its addressable shards (``jax.make_array_from_callback``), regenerated from the pure
(seed, step) sampler, so no task data crosses the network.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jax_impl import train
from jax_impl.meta import Tasks
from jax_impl.model import resolve_device
from parity.config import Config, ConfigError
from parity.devices import parse_device

TASKS_AXIS = "tasks"


def initialize(coordinator: str | None, num_processes: int | None, process_id: int | None) -> None:
    """Join a multi-host run (one process per host); a no-op when no coordinator is given."""
    if coordinator is not None:
        jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes, process_id=process_id)


def platform_devices(device: str | None = None) -> list[jax.Device]:
    """Every device (all processes) of ``device``'s kind (cpu | gpu | tpu; None: JAX's default
    backend), in JAX's order; a kind JAX cannot see is one line (``ConfigError("device", ...)``)."""
    if device is None:
        return list(jax.devices())
    resolve_device(device)  # refuses a kind JAX cannot see, and an index past the last
    return list(jax.devices(parse_device(device).kind))


def available(device: str | None = None) -> int:
    """How many devices of ``device``'s kind JAX sees, over every process."""
    return len(platform_devices(device))


def device_count(requested: int | None, meta_batch: int, device: str | None = None) -> int:
    """How many devices to use: ``requested``, or (None) the most that split the meta-batch evenly."""
    available = len(platform_devices(device))
    if requested is None:
        return max(n for n in range(1, available + 1) if meta_batch % n == 0)
    if requested < 1 or requested > available:
        raise ConfigError("devices", f"must be between 1 and the {available} device(s) JAX sees, got {requested}")
    if meta_batch % requested:
        raise ConfigError(
            "devices",
            f"the meta-batch of {meta_batch} tasks does not split evenly over {requested} devices; "
            f"use a meta_batch that is a multiple of {requested}, or --devices dividing {meta_batch}",
        )
    return requested


@dataclasses.dataclass(frozen=True)
class Placement:
    """Where a training run's arrays live: the tasks split over ``mesh``, everything else replicated."""

    mesh: Mesh

    @property
    def devices(self) -> int:
        return int(self.mesh.devices.size)

    @property
    def is_main(self) -> bool:
        """Only process 0 writes files."""
        return jax.process_index() == 0

    def state(self, state: Any) -> Any:
        return jax.device_put(state, NamedSharding(self.mesh, PartitionSpec()))

    def tasks(self, tasks: tuple[np.ndarray, ...], dtype: str) -> Tasks:
        """NumPy ``[N, B, P, 1]`` → global arrays sharded on B; each process fills its own shards."""
        sharding = NamedSharding(self.mesh, PartitionSpec(None, TASKS_AXIS))

        def place(t: np.ndarray) -> jax.Array:
            return jax.make_array_from_callback(t.shape, sharding, lambda index: np.asarray(t[index], dtype=dtype))

        x_support, y_support, x_query, y_query = (place(t) for t in tasks)
        return x_support, y_support, x_query, y_query

    def train_chunk(self, state: Any, tasks: Tasks, cfg: Config) -> tuple[Any, dict[str, Any]]:
        return train.train_chunk(state, tasks, cfg)  # partitioned by the shardings of its inputs


def placement(cfg: Config, devices: int | None = None, device: str | None = None) -> Placement:
    """The first ``devices`` devices of ``device``'s kind (``cuda:N`` / ``gpu:N``: the kind; the
    tasks are spread from device 0)."""
    n = device_count(devices, cfg.meta_batch, device)
    return Placement(Mesh(np.array(platform_devices(device)[:n]), (TASKS_AXIS,)))

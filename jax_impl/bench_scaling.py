"""The JAX twin's side of ``maml-parity bench --scaling`` (``parity.scaling``): one device count, timed.

On a CPU the devices are XLA's forced host devices (``--xla_force_host_platform_device_count=N``,
read once when JAX starts, hence a child process per count); on a GPU machine the first N visible
GPUs. A run is the sharded training step of ``jax_impl.distributed`` (the one ``train --devices N``
runs): compiled first (reported apart), then the median of ``repeats`` chunks, each ended by
``block_until_ready``.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from parity.config import SEED_ALPHA, ConfigError


def child_environment(device: str, devices: int, environ: Mapping[str, str]) -> dict[str, str]:
    """The environment of the child that measures ``devices`` devices (forced host devices on a CPU)."""
    env = dict(environ)
    if device == "cpu":
        env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={devices}".strip()
        env["JAX_PLATFORMS"] = "cpu"
    return env


def measure(twin: Any, devices: int, meta_batch: int, inner_steps: int, steps: int, repeats: int) -> dict[str, Any]:
    """Time the sharded training step on ``devices`` devices (in the child process)."""
    from parity import training
    from parity.tasks import sample_batches

    if jax.device_count() < devices:
        raise ConfigError("devices", f"{devices} requested, JAX sees {jax.device_count()}")
    cfg = SEED_ALPHA.replace(meta_batch=meta_batch, inner_steps=inner_steps)
    placement = twin.placement(cfg, devices)
    state = placement.state(training.initial_state(twin, cfg))
    tasks = placement.tasks(tuple(sample_batches(cfg, 0, steps)[:4]), cfg.dtype)
    t0 = time.perf_counter()
    state, _ = jax.block_until_ready(placement.train_chunk(state, tasks, cfg))  # compile + first run
    first_s = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        state, _ = jax.block_until_ready(placement.train_chunk(state, tasks, cfg))
        times.append(time.perf_counter() - t0)
    per_step = float(np.median(times)) / steps
    return {
        "devices": devices,
        "B": meta_batch,
        "T": inner_steps,
        "us_per_step": per_step * 1e6,
        "tasks_per_s": meta_batch / per_step,
        "first_call_s": first_s,
        "platform": jax.devices()[0].platform,
    }

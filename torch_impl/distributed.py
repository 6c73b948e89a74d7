"""The meta-batch across processes (PyTorch twin): torch.distributed, launched with ``torchrun``.

Each rank takes an equal, contiguous slice of the meta-batch, regenerated from the pure
(seed, step) sampler, so no task data is sent. The meta-gradient of the rank's slice (a mean over
its tasks) is all-reduced and divided by the world size before the optimiser step — equal slices
make that the mean over the whole meta-batch — so every rank applies the same update and holds
the same parameters, as DistributedDataParallel would.

The backend follows the run's device, not what the machine has: ``--device cpu`` is gloo, with
every rank on the CPU; ``--device gpu`` is nccl, with rank r on ``cuda:LOCAL_RANK``
(``torch.cuda.set_device``). A launch that cannot work (more ranks on a host than it has GPUs, a
GPU where none is visible, a process group whose backend cannot hold the run's tensors) is one
line from rank 0 (the other ranks exit with status 2 in silence), before any work.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, NoReturn

import numpy as np
import torch
import torch.distributed as dist

from parity.config import Config, ConfigError
from parity.devices import parse_device
from torch_impl import meta, train
from torch_impl.meta import Tasks
from torch_impl.model import to_arrays


def backend_for(device: str | None) -> str:
    """The collective backend for the run's device: nccl for CUDA, gloo for the CPU."""
    return "nccl" if parse_device(device).kind == "gpu" else "gloo"


def initialize(device: str | None = None) -> tuple[int, int]:
    """Join the process group ``torchrun`` describes in the environment; (rank, world size).

    ``device`` is the run's (cpu | gpu): with gpu, this rank is put on ``cuda:LOCAL_RANK`` first.
    """
    if "WORLD_SIZE" not in os.environ or int(os.environ["WORLD_SIZE"]) == 1:
        return 0, 1
    rank = int(os.environ.get("RANK", "0"))
    backend = backend_for(device)
    if backend == "nccl":
        _use_local_gpu(device, rank)
    elif parse_device(device).kind != "cpu":
        _refuse(rank, ConfigError("device", f"{device!r}: the PyTorch twin runs on cpu or CUDA GPUs (gpu)"))
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    elif backend == "gloo" and "nccl" in str(dist.get_backend()).lower():
        _refuse(
            rank,
            ConfigError(
                "device",
                f"the process group's backend is {dist.get_backend()}, which cannot hold the CPU tensors of "
                "--device cpu; use --device gpu, or a gloo group",
            ),
        )
    return dist.get_rank(), dist.get_world_size()


def _use_local_gpu(device: str | None, rank: int) -> None:
    """Put this rank on ``cuda:LOCAL_RANK``, or refuse (from rank 0) a launch the host cannot hold."""
    if parse_device(device).number is not None:
        _refuse(rank, ConfigError("device", f"{device!r}: under torchrun each rank takes cuda:LOCAL_RANK; pass gpu"))
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ["WORLD_SIZE"]))
    if count == 0:
        _refuse(rank, ConfigError("device", f"{device!r}: no GPU is visible to PyTorch; use --device cpu (gloo)"))
    if local_world > count:
        _refuse(
            rank,
            ConfigError(
                "device",
                f"{local_world} ranks on this host but PyTorch sees {count} GPU(s): one rank per GPU "
                f"(torchrun --nproc_per_node {count}), or --device cpu (gloo)",
            ),
        )
    torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))


def _refuse(rank: int, err: ConfigError) -> NoReturn:
    """Rank 0 raises ``err`` (the CLI prints it: one line, exit 2); every other rank exits 2 silently."""
    if rank == 0:
        raise err
    raise SystemExit(2)


def device_count(requested: int | None, meta_batch: int, device: str | None = None) -> int:
    """The world size, checked against ``--devices`` and the meta-batch."""
    _, world = initialize(device)
    if requested is not None and requested != world:
        raise ConfigError(
            "devices",
            f"the PyTorch twin runs one process per device: launch {requested} with torchrun "
            f"--nproc_per_node {requested}; this run has {world}",
        )
    if meta_batch % world:
        raise ConfigError(
            "devices",
            f"the meta-batch of {meta_batch} tasks does not split evenly over {world} processes; "
            f"use a meta_batch that is a multiple of {world}",
        )
    return world


def all_reduced_meta_value_and_grad(params: Any, alpha: Any, tasks: Any, cfg: Config, unroll: int = 0) -> Any:
    """``meta.meta_value_and_grad`` on this rank's tasks, averaged over every rank."""
    (loss, inner), (grad_params, grad_alpha) = meta.meta_value_and_grad(params, alpha, tasks, cfg, unroll)
    alpha_grads = list(grad_alpha.values()) if isinstance(grad_alpha, dict) else [grad_alpha]
    pieces = [loss, inner, *grad_params.values(), *alpha_grads]
    flat = torch.cat([p.reshape(-1) for p in pieces])  # one collective per step, not one per leaf
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat = flat / dist.get_world_size()
    out, start = [], 0
    for p in pieces:
        out.append(flat[start : start + p.numel()].reshape(p.shape))
        start += p.numel()
    n = len(grad_params)
    reduced_params = dict(zip(grad_params, out[2 : 2 + n], strict=True))
    reduced_alpha = dict(zip(grad_alpha, out[2 + n :], strict=True)) if isinstance(grad_alpha, dict) else out[-1]
    return (out[0], out[1]), (reduced_params, reduced_alpha)


@dataclasses.dataclass(frozen=True)
class Placement:
    """This rank's share of the work: tasks ``[rank·b, (rank+1)·b)`` of every meta-batch."""

    rank: int
    world: int
    device: str | None = None  # the run's device: cpu, or gpu (this rank's cuda:LOCAL_RANK)

    @property
    def devices(self) -> int:
        return self.world

    @property
    def is_main(self) -> bool:
        """Only rank 0 writes files."""
        return self.rank == 0

    def state(self, state: Any) -> Any:
        return state  # every rank builds the same state from the same seed or checkpoint

    def tasks(self, tasks: tuple[np.ndarray, ...], dtype: str) -> Tasks:
        b = tasks[0].shape[1] // self.world
        x_support, y_support, x_query, y_query = (
            to_arrays(t[:, self.rank * b : (self.rank + 1) * b], dtype, self.device) for t in tasks
        )
        return x_support, y_support, x_query, y_query

    def train_chunk(self, state: Any, tasks: Tasks, cfg: Config) -> tuple[Any, dict[str, Any]]:
        if self.world == 1:
            return train.train_chunk(state, tasks, cfg)
        return train.train_chunk(state, tasks, cfg, grad_fn=all_reduced_meta_value_and_grad)


def placement(cfg: Config, devices: int | None = None, device: str | None = None) -> Placement:
    world = device_count(devices, cfg.meta_batch, device)
    rank = dist.get_rank() if world > 1 else 0
    return Placement(rank, world, device)

"""CPU threads for a command: chosen from the work's size unless ``--threads N`` says otherwise.

At the seed's size (one task of 4 points per step, a 1→32→32→1 net) every operation is a few
hundred floating-point operations: a second thread only adds synchronisation, and on a machine
whose cores are busy with other processes a thread pool that waits for a core slows the PyTorch
twin down about five-fold (docs/performance.md has the measurement). So the default is one thread
for seed-sized work; for work large enough to split, every core this process may use unless the
machine is already busy (load average at or above the cores), where one thread was faster again.

What each framework allows:

- **PyTorch**: ``torch.set_num_threads(n)`` at any time (intra-op threads); applied when the
  command first needs torch, through :func:`apply`.
- **JAX (XLA on the CPU)**: XLA reads ``XLA_FLAGS`` once, when its CPU backend starts, and has no
  flag for an exact thread count; ``--xla_cpu_multi_thread_eigen=false`` makes its matrix
  operations single-threaded. :func:`apply` adds it for one thread, but only if JAX's backend has
  not started yet (then it says so); more than one thread leaves XLA at its default (every core).
  An exact cap for both frameworks is the process's CPU affinity (``taskset -c 0-1 maml-parity …``,
  or ``bench``'s pinning).

``--threads N`` (every command, ``bench`` included) must lie in ``1 .. max_threads()``: four times
the machine's cores, at most 1024. More is refused with one line naming ``--threads`` and the
range rather than clamped: a pool of 100 000 threads, or 64 pinned to 2 cores, measures nothing
the user meant, and a silent clamp would report a thread count that was never run.

Nothing here imports a framework at import time.
"""

from __future__ import annotations

import argparse
import math
import os
from typing import Any

# Multiply-adds per hidden layer per outer step below which one thread is used: the seed's
# seed-alpha is ~5e4 (1 task x 8 points x 32·32 x 5 steps), maml-paper ~4e5.
SMALL_WORK = 1_000_000


OVERSUBSCRIPTION = 4  # threads per core past which --threads is refused
MAX_THREADS = 1024


def max_threads() -> int:
    """The largest ``--threads`` accepted: :data:`OVERSUBSCRIPTION` per core of the machine, at most
    :data:`MAX_THREADS`."""
    return min(MAX_THREADS, OVERSUBSCRIPTION * max(1, os.cpu_count() or 1))


def check_requested(threads: int) -> int:
    """``threads`` if it lies in ``1 .. max_threads()``; else a :class:`ConfigError` naming --threads."""
    from parity.config import ConfigError

    cores, top = max(1, os.cpu_count() or 1), max_threads()
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ConfigError("threads", f"must be an integer >= 1, got {threads}")  # the wording of every count flag
    if threads > top:
        raise ConfigError(
            "threads",
            f"must be an integer from 1 to {top} ({OVERSUBSCRIPTION} per core, {cores} cores here), got {threads}",
        )
    return threads


def parse_flag(text: str) -> int:
    """An argparse type for ``--threads``: an integer in ``1 .. max_threads()``."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"threads: must be an integer, got {text!r}") from None
    try:
        return check_requested(value)
    except ValueError as err:  # a ConfigError: argparse shows its message as it is
        raise argparse.ArgumentTypeError(str(err)) from None


def available_cores() -> int:
    """Cores this process may run on (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def work_size(cfg: Any) -> int:
    """A rough count of the numbers one outer step computes: points × numbers kept per point ×
    the widest layer's fan-in (inner steps included); the MLP's widest layer squared, as before."""
    support, query = cfg.family.task_points()
    points = cfg.meta_batch * (support + query)
    fan_in = max(math.prod(shape[1:]) for shape in cfg.param_shapes.values() if len(shape) > 1)
    per_point = cfg.model.activations_per_point(cfg.family.input_shape)
    return points * max(per_point * fan_in // 2, fan_in * fan_in) * max(1, cfg.inner_steps)


def choose(requested: int | None, cfg: Any = None) -> tuple[int, str]:
    """(threads, why): ``requested`` when given; else one for seed-sized work, one when the machine
    is already busy (a load average at or above the usable cores: extra threads would wait for a
    core at every operation), else every usable core."""
    if requested is not None:
        return check_requested(requested), "--threads"
    if cfg is None or work_size(cfg) < SMALL_WORK:
        return 1, "auto: small model, one thread is fastest"
    cores = available_cores()
    load = _load_average()
    if cores == 1:
        return 1, "auto: one usable core"
    if load is not None and load >= cores:
        return 1, f"auto: larger model, but the machine is busy (load {load:.1f} on {cores} cores)"
    return cores, f"auto: larger model, all {cores} usable cores"


def _load_average() -> float | None:
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):  # not on every platform
        return None


def apply(threads: int, frameworks: tuple[str, ...] = ()) -> str:
    """Set the thread count in the named built-in twins (each adapter's ``set_threads``); returns the
    one-line description to print. No framework is imported for an empty ``frameworks``."""
    from parity.registry import resolve

    notes = [resolve(name).set_threads(threads) for name in frameworks]
    return f"{threads} CPU thread{'s' if threads != 1 else ''} ({', '.join(notes) or 'no framework'})"

"""Sizes checked before anything is allocated or written.

Two checks, both before a run's directory or any file is made:

- :data:`CAPS`: generous upper bounds on the fields that size a computation. A value past one is
  a typo or a test of the program, never an experiment (``inner_steps`` 1e7, 3000 hidden layers,
  a hidden width of 1e5); it is refused with one line naming the field.
- :func:`estimate_train` / :func:`estimate_eval`: the host memory a command needs, from the
  config alone — every task's adapted parameters, gradients and activations kept for the
  backward pass through the T inner steps, the sampler's arrays for a chunk of outer steps, the
  optimiser state; for ``eval``, the held-out tasks' adapted parameters and the per-step
  predictions and fits it keeps. Compared with the memory this process may have
  (:func:`memory_budget`: the least of ``MemAvailable``, what the address-space limit ``ulimit -v``
  leaves, and what the cgroup's memory limit leaves) or an explicit ``--max-memory`` budget; a
  config past it is refused with one line that names the field driving the estimate (the one
  whose reset to the preset's value shrinks it most), the two sizes and which limit it met.

The estimate is an upper bound of the right order, not a measurement: it counts arrays, not the
allocator's slack, and it is the host's memory (a GPU's own memory is not looked at).
"""

from __future__ import annotations

import math
import os
import re
import resource
from collections.abc import Callable
from pathlib import Path
from typing import Any

from parity.config import SEED_ALPHA, Config, ConfigError

# field -> largest accepted value (for "hidden": the number of layers and each width).
CAPS: dict[str, int] = {
    "inner_steps": 100_000,
    "hidden_layers": 64,
    "hidden_width": 65_536,
    "k_support": 1_000_000,
    "k_query": 1_000_000,
    "meta_batch": 10_000_000,
    "iterations": 10**12,
    "tasks": 1_000_000,
    "shots": 1_000_000,
    "max_steps": 1_000,  # eval.json keeps every step's statistics and the fits' curves
    "pretrain_steps": 10_000_000,
    "phase_shifts": 64,
}
BASE = 400 << 20  # Python, NumPy and one framework loaded, before any array (measured: 300-340 MB)
CHUNK = 250  # outer steps sampled and run together (parity.run.train_run's default)
QUERY_POINTS = 100  # parity.eval.QUERY_POINTS (not imported: eval imports the twins' helpers)
PRETRAIN_BATCH = 25  # parity.eval.PRETRAIN_BATCH

_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(text: str, field: str = "max_memory") -> int:
    """``"8G"``, ``"512M"``, ``"1.5g"``, ``"1000000"`` (bytes) → bytes; ``KiB`` powers of two."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kKmMgGtT]?)(?:i?[bB])?\s*", text)
    if not match:
        raise ConfigError(field, f"must be a size such as 8G, 512M or a number of bytes, got {text!r}")
    value = float(match.group(1)) * _UNITS[match.group(2).lower()]
    if not math.isfinite(value) or value < 1 << 20:
        raise ConfigError(field, f"must be at least 1M, got {text!r}")
    return int(value)


def human(n: float) -> str:
    for unit, size in (("TB", 1 << 40), ("GB", 1 << 30), ("MB", 1 << 20), ("kB", 1 << 10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} B"


def available_memory() -> int:
    """The bytes :func:`memory_budget` allows."""
    return memory_budget()[0]


def memory_budget(proc: str = "/proc", cgroup_root: str = "/sys/fs/cgroup") -> tuple[int, str]:
    """``(bytes, words)``: the least of the memory this process may use, and which limit that is.

    - ``MemAvailable`` (``/proc/meminfo``; else physical pages × page size);
    - the address-space limit (``RLIMIT_AS``, ``ulimit -v``) less :func:`address_space_slack`: the
      limit counts address space the frameworks reserve but never touch, which the estimate leaves out;
    - the cgroup's memory limit less what the cgroup already uses (:func:`cgroup_headroom`: v2
      ``memory.max`` − ``memory.current``, v1 ``memory.limit_in_bytes`` − ``memory.usage_in_bytes``;
      page cache it could drop, ``inactive_file``, counted as free, as ``MemAvailable`` does).
    """
    options = [(_meminfo(proc), "of memory available")]
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft != resource.RLIM_INFINITY:
        left = max(0, soft - address_space_slack())
        options.append((left, f"the address-space limit (ulimit -v, {human(soft)}) leaves"))
    headroom = cgroup_headroom(proc, cgroup_root)
    if headroom is not None:
        options.append((headroom[0], f"the cgroup's memory limit ({human(headroom[1])}) leaves"))
    return min(options, key=lambda option: option[0])


def address_space_slack() -> int:
    """Address space the frameworks reserve beyond what they touch. Measured after 20 training steps
    of seed-alpha (float32, 2 cores): JAX 1.53 GB of address space for 0.35 GB resident, PyTorch
    0.72 GB for 0.31 GB; each thread's stack (8 MiB) counts too. :data:`BASE` already counts the
    resident part."""
    return (1280 << 20) + (os.cpu_count() or 1) * (16 << 20)


def _meminfo(proc: str) -> int:
    try:
        with open(f"{proc}/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return 1 << 40  # unknown: only the caps and an explicit --max-memory apply


# cgroup v2 and v1 file names: (limit, usage, the memory.stat key of reclaimable page cache).
_CGROUP_FILES = {
    "v2": ("memory.max", "memory.current", "inactive_file"),
    "v1": ("memory.limit_in_bytes", "memory.usage_in_bytes", "total_inactive_file"),
}
_NO_LIMIT = 1 << 60  # v1 writes "no limit" as 2^63 rounded down to a page


def cgroup_headroom(proc: str = "/proc", root: str = "/sys/fs/cgroup") -> tuple[int, int] | None:
    """``(bytes left, limit)`` under the tightest memory limit of this process's cgroup and its
    ancestors (v2, or v1's memory controller), or None where no limit is set or none can be read."""
    best: tuple[int, int] | None = None
    for folder, version in _cgroup_folders(proc, root):
        limit_name, usage_name, cache_key = _CGROUP_FILES[version]
        limit, usage = _read_int(f"{folder}/{limit_name}"), _read_int(f"{folder}/{usage_name}")
        if limit is None or usage is None or limit >= _NO_LIMIT:
            continue
        left = max(0, limit - usage + _memory_stat(f"{folder}/memory.stat", cache_key))
        if best is None or left < best[0]:
            best = (min(left, limit), limit)
    return best


def _cgroup_folders(proc: str, root: str) -> list[tuple[str, str]]:
    """The cgroup folders whose limits apply to this process, own folder first, then its ancestors
    (a container sees its own cgroup as the root, so the root is always looked at)."""
    folders: list[tuple[str, str]] = []
    try:
        with open(f"{proc}/self/cgroup") as f:
            lines = f.read(1 << 16).splitlines()
    except OSError:
        lines = []
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        if parts[0] == "0" and parts[1] == "":
            base, version = root, "v2"
        elif "memory" in parts[1].split(","):
            base, version = f"{root}/memory", "v1"
        else:
            continue
        path = Path(parts[2].strip() or "/")
        for ancestor in (path, *path.parents):
            folders.append((f"{base}{ancestor}".rstrip("/") or "/", version))
    if not folders:  # no /proc: the mount points alone
        folders = [(root, "v2"), (f"{root}/memory", "v1")]
    return folders


def _read_int(path: str) -> int | None:
    try:
        with open(path) as f:
            text = f.read(64).strip()
    except OSError:
        return None
    if text == "max":
        return _NO_LIMIT
    try:
        return int(text)
    except ValueError:
        return None


def _memory_stat(path: str, key: str) -> int:
    try:
        with open(path) as f:
            for line in f:
                name, _, value = line.partition(" ")
                if name == key:
                    return int(value)
    except (OSError, ValueError):
        pass
    return 0


# --- caps ------------------------------------------------------------------------------------------


def _cap(field: str, value: int, cap_name: str | None = None, shown: str | None = None) -> None:
    cap = CAPS[cap_name or field]
    if value > cap:
        raise ConfigError(
            field, f"{shown or value}, past the limit of {cap}; a value this large is refused before any work"
        )


def check_caps(cfg: Config) -> None:
    """Refuse a config whose size fields are past :data:`CAPS`, naming the field."""
    for field, value in cfg.model.values().items():  # the model's sizes: layer widths, depth, filters
        if isinstance(value, tuple) and all(isinstance(v, int) for v in value):
            _cap(field, len(value), "hidden_layers", f"{len(value)} layers")
            for width in value:
                _cap(field, width, "hidden_width", f"a width of {width}")
        elif isinstance(value, int) and not isinstance(value, bool):
            _cap(field, value, "hidden_width")
    for field in ("inner_steps", "k_support", "k_query", "meta_batch", "iterations"):
        _cap(field, getattr(cfg, field))


def check_eval_caps(tasks: int, shots: int | None, max_steps: int, pretrain_steps: int, phase_shifts: int) -> None:
    _cap("tasks", tasks)
    if shots is not None:
        _cap("shots", shots)
    _cap("max_steps", max_steps)
    _cap("pretrain_steps", pretrain_steps)
    _cap("phase_shift", phase_shifts, "phase_shifts", f"{phase_shifts} phase shifts")


# --- estimates -------------------------------------------------------------------------------------


def _sizes(cfg: Config) -> tuple[int, int, int, int, int]:
    """Of one task: (parameters P, activations kept per point H, support points K, query points Q,
    numbers per point in the data D)."""
    P = sum(math.prod(shape) for shape in cfg.param_shapes.values())
    H = cfg.model.activations_per_point(cfg.family.input_shape)
    K, Q = cfg.family.task_points()
    return P, H, K, Q, math.prod(cfg.family.input_shape) + cfg.family.n_outputs


def estimate_train(cfg: Config) -> int:
    """Bytes of host memory one outer step of ``cfg`` needs, chunk of sampled tasks included."""
    b = 8 if cfg.dtype == "float64" else 4
    B, T = cfg.meta_batch, cfg.inner_steps
    P, H, K, Q, D = _sizes(cfg)
    # Per task and inner step, kept for the backward pass: the adapted parameters, their gradient
    # and a second-order temporary; the support activations (and their tangents), the query's once.
    residuals = B * ((T + 1) * (3 * P + 4 * K * H) + 4 * Q * H) * b
    # The sampler: a chunk of outer steps drawn in float64, stacked, cast, then on the device.
    points = B * (K + Q) * D
    chunk = max(1, min(CHUNK, cfg.iterations))
    sampler = chunk * points * (8 + 8 + b) + chunk * points * b
    state = 6 * P * b * (2 if cfg.alpha_mode == "per_parameter" else 1)
    return BASE + residuals + sampler + state


def estimate_eval(cfg: Config, tasks: int, shots: int, max_steps: int, phase_shifts: int) -> int:
    """Bytes of host memory ``eval`` needs: adapted parameters of every task, the predictions
    [S+1, N, P] and their float64 errors, the pretrained baseline's steps, the fits kept for
    eval.json (Python floats)."""
    b = 8 if cfg.dtype == "float64" else 4
    P, H, _, _, _ = _sizes(cfg)
    adapt = tasks * (4 * P + 4 * (shots + QUERY_POINTS) * H) * b
    preds = (max_steps + 1) * tasks * QUERY_POINTS * (b + 4 * 8)
    fits = phase_shifts * 3 * (max_steps + 1) * QUERY_POINTS * 32
    pretrain = estimate_train(
        cfg.replace(inner_steps=0, alpha_mode="fixed", alpha_parametrisation="identity", meta_batch=PRETRAIN_BATCH)
    )
    return adapt + preds + fits + pretrain  # pretrain counts BASE once


def _driver(estimate: Callable[[dict[str, Any]], int], values: dict[str, Any], baseline: dict[str, Any]) -> str:
    """The field whose reset to ``baseline`` shrinks ``estimate`` most."""
    best, best_size = next(iter(values)), math.inf
    for field in values:
        size = estimate({**values, field: baseline[field]})
        if size < best_size:
            best, best_size = field, size
    return best


def _budget(max_memory: int | None) -> tuple[int, str]:
    """The budget to compare with and its words: ``--max-memory``, else :func:`memory_budget`."""
    if max_memory is not None:
        return max_memory, f"the --max-memory budget of {human(max_memory)}"
    budget, words = memory_budget()
    return budget, f"the {human(budget)} {words}"


def _refuse(field: str, value: Any, need: int, where: str, explicit: bool) -> None:
    shown = list(value) if isinstance(value, tuple) else value
    raise ConfigError(
        field,
        f"this run would need about {human(need)} ({field} = {shown} drives it), more than {where}; "
        f"lower {field}" + ("" if explicit else " or pass --max-memory to set the budget"),
    )


def _size_fields(cfg: Config) -> tuple[str, ...]:
    """The model's fields that set its size (widths, depth, filters): the int and int-tuple ones."""
    return tuple(
        f
        for f, v in cfg.model.values().items()
        if (isinstance(v, int) and not isinstance(v, bool))
        or (isinstance(v, tuple) and all(isinstance(x, int) for x in v))
    )


def check_train(cfg: Config, max_memory: int | None = None) -> int:
    """Caps, then the memory estimate of training ``cfg`` against the budget; returns the estimate."""
    check_caps(cfg)
    need = estimate_train(cfg)
    budget, where = _budget(max_memory)
    if need > budget:
        sizes = _size_fields(cfg)
        values = {f: getattr(cfg, f) for f in ("meta_batch", "inner_steps", "k_support", "k_query", *sizes)}
        baseline = {f: getattr(SEED_ALPHA, f) for f in ("meta_batch", "inner_steps", "k_support", "k_query")}
        baseline.update({f: getattr(type(cfg.model)(), f) for f in sizes})
        field = _driver(lambda v: estimate_train(cfg.replace(**v)), values, baseline)
        _refuse(field, values[field], need, where, max_memory is not None)
    return need


def check_eval(
    cfg: Config,
    tasks: int,
    shots: int | None,
    max_steps: int,
    pretrain_steps: int,
    phase_shifts: int,
    max_memory: int | None = None,
) -> int:
    """Caps, then the memory estimate of ``eval`` on a run of ``cfg``; returns the estimate."""
    check_eval_caps(tasks, shots, max_steps, pretrain_steps, phase_shifts)
    k = cfg.k_support if shots is None else shots
    need = estimate_eval(cfg, tasks, k, max_steps, phase_shifts)
    budget, where = _budget(max_memory)
    if need > budget:
        sizes = _size_fields(cfg)
        values = {"tasks": tasks, "shots": k, "max_steps": max_steps, **{f: getattr(cfg, f) for f in sizes}}
        baseline = {"tasks": 600, "shots": SEED_ALPHA.k_support, "max_steps": 10}
        baseline.update({f: getattr(type(cfg.model)(), f) for f in sizes})

        def size(v: dict[str, Any]) -> int:
            changed = cfg.replace(**{f: v[f] for f in sizes})
            return estimate_eval(changed, v["tasks"], v["shots"], v["max_steps"], phase_shifts)

        field = _driver(size, values, baseline)
        _refuse(field, values[field], need, where, max_memory is not None)
    return need

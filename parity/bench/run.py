"""A bench run: threads and device set up, the machine described, the device's peak probed, every
setting of the plan measured (rows interleaved per setting), and the result assembled."""

from __future__ import annotations

import contextlib
import datetime
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from parity.bench import measure as m
from parity.bench.output import TABLE_HEADER, Row, row_dict, row_line, targets
from parity.bench.runners import prepare
from parity.bench.settings import DEVICES, IMPLS, Setting, estimated_mb, plan
from parity.config import ConfigError

# --- setup ---------------------------------------------------------------------------------


# Held open for the process: the bench on a GPU times full float32 matmuls (no TF32).
_PRECISION = contextlib.ExitStack()


def configure(device: str, threads: int, pin: bool = True) -> dict[str, Any]:
    """Threads and device before either framework starts; returns what was actually set.

    With ``pin`` on a CPU run, the process is bound to ``threads`` cores (the last ones it may
    use): XLA compiles with a thread pool of its own and may spread independent ops over
    every core, which a "single core" figure must not count. Raises ConfigError("device", ...)
    when ``device="gpu"`` and no GPU is visible. On a GPU, JAX allocates as it needs instead of
    taking 75% of the memory up front, so that the PyTorch rows in the same process have room.
    """
    if device not in DEVICES:
        raise ConfigError("device", f"must be one of {', '.join(DEVICES)}; got {device!r}")
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ConfigError("threads", f"must be an integer >= 1, got {threads!r}")
    applied: dict[str, Any] = {"threads": threads}
    if pin and device == "cpu" and hasattr(os, "sched_setaffinity"):
        cpus = sorted(os.sched_getaffinity(0))
        if threads < len(cpus):
            os.sched_setaffinity(0, cpus[-threads:])  # threads started from now on inherit it
    if hasattr(os, "sched_getaffinity"):
        applied["cpu_affinity"] = sorted(os.sched_getaffinity(0))
    # XLA reads XLA_FLAGS once, when JAX's backend starts: only possible before that.
    jax_started = "jax" in sys.modules and _jax_backend_started()
    if not jax_started and threads == 1 and device == "cpu":
        flags = os.environ.get("XLA_FLAGS", "")
        if "xla_cpu_multi_thread_eigen" not in flags:
            os.environ["XLA_FLAGS"] = (flags + " --xla_cpu_multi_thread_eigen=false").strip()
    if not jax_started and device == "gpu":
        os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    applied["xla_flags"] = os.environ.get("XLA_FLAGS", "")
    applied["xla_flags_applied"] = not jax_started
    import torch

    torch.set_num_threads(threads)
    with contextlib.suppress(RuntimeError):  # allowed only before the first parallel op
        torch.set_num_interop_threads(1)
    applied["torch_threads"] = torch.get_num_threads()
    if device == "gpu":
        _require_gpu()
        from parity.twins import load

        for name in ("jax", "torch"):  # full float32 matmuls for the rest of the bench process
            _PRECISION.enter_context(load(name).precision_scope("highest"))
    return applied


def _jax_backend_started() -> bool:
    try:
        from jax._src import xla_bridge

        return bool(getattr(xla_bridge, "_backends", {}))
    except Exception:  # private API moved: assume the worst
        return True


def _require_gpu() -> None:
    import torch

    torch_gpu = torch.cuda.is_available()
    try:
        import jax

        jax_gpu = bool(jax.devices("gpu"))
    except RuntimeError:
        jax_gpu = False
    if not (torch_gpu and jax_gpu):
        missing = [name for name, ok in (("JAX", jax_gpu), ("PyTorch", torch_gpu)) if not ok]
        raise ConfigError("device", f"gpu requested but no GPU is visible to {' or '.join(missing)}; allowed here: cpu")


def machine_info(device: str, applied: dict[str, Any]) -> dict[str, Any]:
    """Platform, CPU, versions, threads and the date: recorded with every figure."""
    import jax
    import numpy as np
    import torch

    info: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "load_avg_1_5_15": [round(x, 2) for x in os.getloadavg()],
        "device": device,
        "jax": jax.__version__,
        "jax_backend": jax.default_backend(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "peak_mem_method": {
            "jax": "XLA executable's buffers: temp + arguments + outputs (compiled.memory_analysis())",
            "torch": "torch.cuda.max_memory_allocated above the level before"
            if device == "gpu"
            else m.host_peak_method(),
        },
        "flops_method": (
            "per outer step, XLA's cost analysis of the JAX twin's train_step compiled for this device "
            "(flops and 'bytes accessed'); the same counts credit every row of a setting, PyTorch rows included"
        ),
        **applied,
    }
    with contextlib.suppress(ImportError):
        import optax

        info["optax"] = optax.__version__
    if device == "gpu":
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def _cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


# --- one setting ------------------------------------------------------------------------------------


def measure(
    setting: Setting,
    impls: Sequence[str],
    device: str = "cpu",
    repeats: int = 5,
    min_call_s: float = 0.2,
    row_budget_s: float = 30.0,
    chunk: int | None = None,
    unroll: int = 0,
    skipped: list[dict[str, Any]] | None = None,
) -> list[Row]:
    """Time several implementations on one setting, interleaved: a row each.

    Each implementation is prepared (JAX: compiled) and warmed up once, with its peak memory
    measured on the warm-up call; then :func:`measure.time_rows` times them round by round. An
    implementation that cannot run here (:class:`measure.Unavailable`), or that fails while it is
    prepared or warmed up, goes to ``skipped`` with its reason (given a ``skipped`` list; else it raises).
    """
    prepared: dict[str, m.Prepared] = {}
    first_call_s: dict[str, float] = {}
    peak_mb: dict[str, float] = {}
    for impl in impls:
        try:
            prep = prepare(impl, setting, device, min_call_s, chunk, unroll)
            with prep.peak() as peak:
                t = time.perf_counter()
                prep.call()  # warm-up
                first_call_s[impl] = time.perf_counter() - t
        except ConfigError:
            raise
        except Exception as e:  # one row that cannot run (here) must not lose the others' figures
            reason = str(e) if isinstance(e, m.Unavailable) else f"failed: {type(e).__name__}: {_first_line(e)}"
            if skipped is None:
                raise
            skipped.append({"impl": impl, "setting": setting.label, "reason": reason})
            first_call_s.pop(impl, None)
            continue
        prepared[impl], peak_mb[impl] = prep, peak["mb"]
    if not prepared:
        return []
    return m.time_rows(setting, prepared, first_call_s, peak_mb, repeats, row_budget_s)


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [""])[0][:200]


# --- the run ---------------------------------------------------------------------------------------


def run_bench(
    quick: bool = False,
    device: str = "cpu",
    threads: int = 1,
    repeats: int | None = None,
    impls: Sequence[str] | None = None,
    settings: Sequence[tuple[Setting, Sequence[str]]] | None = None,
    min_call_s: float | None = None,
    max_mem_mb: float | None = None,
    progress: Callable[[str], None] | None = None,
    command: str | None = None,
    unroll: int | None = None,
    chunk: int | None = None,
    pin: bool = True,
    flops: bool = True,
    time_budget_s: float | None = None,
    on_setting: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Measure every setting of the plan (or ``settings``); returns ``{"machine", "rows", "targets", "skipped"}``.

    ``unroll``: the jax rows' static ``unroll`` argument (inner loops up to that length become
    straight-line code; default 0); ``chunk`` fixes the JAX outer steps per compiled call;
    ``pin`` binds the process to ``threads`` cores (see :func:`configure`); ``flops``: probe the
    device's peak and credit each row with XLA's counts; ``time_budget_s``: settings not started
    by then are skipped (with the reason); ``on_setting`` receives the result so far after every
    setting (bench --json writes it, so that a run cut short keeps what it measured).
    """
    for name, value in (("unroll", unroll), ("chunk", chunk)):
        minimum = 0 if name == "unroll" else 1
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < minimum):
            raise ConfigError(name, f"must be an integer >= {minimum}, got {value!r}")
    if repeats is not None and (isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1):
        raise ConfigError("repeats", f"must be an integer >= 1, got {repeats!r}")
    if time_budget_s is not None and not time_budget_s > 0:
        raise ConfigError("time_budget", f"must be a number of seconds > 0, got {time_budget_s!r}")
    unknown = sorted(set(impls or ()) - set(IMPLS))
    if unknown:
        raise ConfigError("impl", f"must be one of {', '.join(IMPLS)}; got {unknown[0]!r}")
    start = time.perf_counter()
    applied = configure(device, threads, pin)
    machine = machine_info(device, applied)
    if command is not None:
        machine["command"] = command
    unroll = unroll or 0
    machine["jax_unroll"] = unroll
    todo = list(settings) if settings is not None else plan(quick, device, impls)
    if any(impl.startswith("jax") for _, chosen in todo for impl in chosen):
        machine["jax_backend_init_s"] = _start_jax()
    if flops:
        machine["peaks"] = m.device_peaks(device)
    if progress is not None:
        progress(f"bench: {'quick' if quick else 'full'} run on {device}, {threads} thread(s)")
        progress(TABLE_HEADER)
    repeats = repeats or 5
    gpu = device == "gpu"
    min_call_s = min_call_s if min_call_s is not None else (0.1 if gpu else 0.2 if quick else 0.25)
    row_budget_s = 8.0 if gpu else 30.0
    max_mem_mb = max_mem_mb if max_mem_mb is not None else _default_mem_budget_mb(device)
    rows: list[Row] = []
    skipped: list[dict[str, Any]] = []

    def result() -> dict[str, Any]:
        return {
            "machine": machine,
            "rows": [row_dict(r) for r in rows],
            "targets": targets(rows, device),
            "skipped": skipped,
        }

    for setting, chosen in todo:
        if time_budget_s is not None and time.perf_counter() - start > time_budget_s:
            reason = f"time budget of {time_budget_s:g} s spent"
            skipped += [{"impl": impl, "setting": setting.label, "reason": reason} for impl in chosen]
            continue
        need = estimated_mb(setting)
        fitting = [impl for impl in chosen if impl == "seed-loop" or need <= max_mem_mb]
        skipped += [
            {"impl": impl, "setting": setting.label, "reason": f"needs ≈{need:.0f} MB > {max_mem_mb:.0f} MB"}
            for impl in chosen
            if impl not in fitting
        ]
        if not fitting:
            continue
        new_rows = measure(
            setting, fitting, device, repeats, min_call_s, row_budget_s, chunk=chunk, unroll=unroll, skipped=skipped
        )
        if flops and new_rows:
            m.add_throughput(new_rows, m.step_cost(setting, device), machine.get("peaks"))
        rows += new_rows
        if gpu:
            import torch

            torch.cuda.empty_cache()  # what the PyTorch rows cached goes back before the next setting
        if progress is not None:
            for row in new_rows:
                progress(row_line(row))
        if on_setting is not None:
            on_setting(result())
    machine["load_avg_end"] = [round(x, 2) for x in os.getloadavg()]
    machine["wall_s"] = time.perf_counter() - start
    return result()


def _start_jax() -> float:
    """Start JAX's backend with a trivial compile, so the first row's compile_s is its own."""
    import jax
    import jax.numpy as jnp

    t = time.perf_counter()
    jax.block_until_ready(jax.jit(lambda x: jnp.tanh(x) @ x)(jnp.ones((4, 4))))
    return time.perf_counter() - t


def _default_mem_budget_mb(device: str) -> float:
    if device == "gpu":
        import torch

        return 0.5 * torch.cuda.get_device_properties(0).total_memory / 2**20
    try:
        pages, size = os.sysconf("SC_AVPHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
        return min(4096.0, 0.25 * pages * size / 2**20)
    except (ValueError, OSError):
        return 2048.0

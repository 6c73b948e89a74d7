"""``maml-parity bench``: the JAX twin, the PyTorch twin and the seed's own loop, side by side.

Every row times one implementation on one setting (config, T inner steps, B tasks per outer step,
hidden width) in the same process, so that ratios between rows are fair even on a noisy machine:

- ``jax``: ``jax_impl.train.train_chunk``, a chunk of ``n`` outer steps per call, compiled ahead
  of time (trace + lower + XLA compile reported apart as ``compile_s``), tasks pre-sampled as
  device arrays.
- ``torch``: ``torch_impl.train.train_chunk``, the batched twin (all B tasks at once, as
  ``torch_impl.meta`` does), ``torch.set_num_threads(threads)``.
- ``seed-loop``: ``torch_impl.seed_loop``, the seed's loop (one task at a time, Python loop over
  parameters), the baseline of ``speedup_vs_seed_loop``.

Times are the median over repeats of one call of ``n`` steps, after a warm-up call, with
``jax.block_until_ready`` / ``torch.cuda.synchronize`` before the clock stops. Peak memory is
measured on the warm-up call: the peak resident set size above the level before it (host) or
the allocator's peak (GPU). The JSON layout is in DESIGN.md (``bench --json``).
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import datetime
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from parity.config import Config, ConfigError, get_preset

IMPLS = ("jax", "torch", "seed-loop")
DEVICES = ("cpu", "gpu")

# The sweep: inner steps, tasks per outer step, hidden width (both hidden layers).
SWEEP_T = (1, 5, 20, 100)
SWEEP_B_CPU = (1, 25, 256)
SWEEP_B_GPU = (1, 25, 256, 4096, 65_536)
SWEEP_WIDTH = (32, 128)
# The seed loop runs one task at a time; past this many tasks per step it measures nothing new.
SEED_LOOP_MAX_B = 256
# Long unrolls, with and without rematerialisation (Config.remat): peak memory is the point.
REMAT_T = 1000
REMAT_B = 25

# Plain (not rematerialised) residuals of one inner step ≈ 3 parameter sets per task (measured:
# T = 1000, B = 25, 1153 parameters: 343 MB); used to skip rows that cannot fit.
_RESIDUAL_PARAM_SETS = 3.0


@dataclasses.dataclass(frozen=True)
class Setting:
    """One point of the bench: a preset changed in T, B, width (and remat)."""

    config: str  # preset name
    T: int  # inner steps
    B: int  # tasks per outer step
    width: int  # both hidden layers
    remat: bool = False

    def cfg(self) -> Config:
        base = get_preset(self.config)
        return base.replace(
            inner_steps=self.T, meta_batch=self.B, hidden=(self.width,) * len(base.hidden), remat=self.remat
        )

    @property
    def label(self) -> str:
        return f"{self.config} T={self.T} B={self.B} w={self.width}" + (" remat" if self.remat else "")


SEED_ALPHA_POINT = Setting("seed-alpha", T=5, B=1, width=32)
BATCH_POINT = Setting("seed-alpha", T=5, B=25, width=32)
QUICK_SETTINGS = (SEED_ALPHA_POINT, BATCH_POINT)


def full_settings(device: str = "cpu") -> list[Setting]:
    """The seed configs, the T × B × width sweep (around seed-alpha) and the long-unroll pair."""
    settings = [Setting("seed-maml", T=3, B=1, width=32)]
    sweep_b = SWEEP_B_GPU if device == "gpu" else SWEEP_B_CPU
    settings += [Setting("seed-alpha", T, B, w) for w in SWEEP_WIDTH for T in SWEEP_T for B in sweep_b]
    # remat first: the host allocator may reuse memory an earlier, larger row freed, which hides
    # growth from the resident-set measurement (the PyTorch rows); the smaller peak goes first.
    settings += [Setting("seed-alpha", REMAT_T, REMAT_B, 32, remat=r) for r in (True, False)]
    return settings


@dataclasses.dataclass
class Row:
    """One measurement: the JSON row of ``bench --json``."""

    impl: str  # jax | torch | seed-loop
    config: str  # preset the setting starts from
    T: int
    B: int
    width: int
    remat: bool
    steps_per_call: int  # outer steps per timed call (the JAX chunk length)
    repeats: int  # timed calls after the warm-up
    us_per_step: float  # median wall time per outer step
    us_per_task_step: float  # us_per_step / (B·T): one task, one inner step
    cpu_us_per_step: float  # median process CPU time per outer step (≈ wall on a quiet core)
    min_us_per_step: float  # fastest repeat
    compile_s: float  # JAX: trace + lower + XLA compile; 0 for the eager implementations
    first_call_s: float  # the warm-up call (after compile_s)
    peak_mem_mb: float  # peak memory of the warm-up call above the level before it
    tasks_per_s: float  # B / step time
    speedup_vs_seed_loop: float | None  # median over rounds of (seed loop's step time / this row's), same setting
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)  # impl-specific details


# --- setup ---------------------------------------------------------------------------------


def configure(device: str, threads: int, pin: bool = True) -> dict[str, Any]:
    """Threads and device before either framework starts; returns what was actually set.

    With ``pin`` on a CPU run, the process is bound to ``threads`` cores (the last ones it may
    use): XLA compiles with a thread pool of its own and may spread independent ops over
    every core, which a "single core" figure must not count. Raises ConfigError("device", ...)
    when ``device="gpu"`` and no GPU is visible.
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

        for name in ("jax", "torch"):
            load(name).set_precision("highest")
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
            else _host_peak_method(),
        },
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


# --- peak memory ---------------------------------------------------------------------------------


def _status_mb(key: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024.0
    raise KeyError(key)


def _host_peak_method() -> str:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        _status_mb("VmHWM")
        return "VmHWM after resetting it (/proc/self/clear_refs) minus VmRSS before, after malloc_trim"
    except (OSError, KeyError):
        return "ru_maxrss delta (under-reports when an earlier row peaked higher)"


@contextlib.contextmanager
def host_peak() -> Iterator[dict[str, float]]:
    """Peak resident memory (MB) reached inside the block, above the level before it."""
    out: dict[str, float] = {}
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # hand freed heap back, so reuse shows as growth
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
        before, exact = _status_mb("VmRSS"), True
    except (OSError, KeyError):
        import resource

        before, exact = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, False
    yield out
    if exact:
        out["mb"] = max(0.0, _status_mb("VmHWM") - before)
    else:
        import resource

        out["mb"] = max(0.0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0 - before)


# --- the three implementations --------------------------------------------------------------------


@dataclasses.dataclass
class Prepared:
    """An implementation ready to run ``steps`` outer steps per ``call()``, synchronised."""

    call: Callable[[], None]
    steps: int
    compile_s: float = 0.0
    peak: Callable[[], contextlib.AbstractContextManager[dict[str, float]]] = host_peak
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)
    compiled: Any = None  # JAX: the compiled executable (for its HLO text)


def jax_chunk_length(setting: Setting) -> int:
    """Outer steps per compiled call: enough to amortise dispatch, few when a step is long."""
    work = setting.B * max(setting.T, 1) * (setting.width / 32) ** 2
    return int(min(500, max(1, math.ceil(20_000 / work))))


def prepare_jax(setting: Setting, device: str, steps: int | None = None) -> Prepared:
    """Compile ``train_chunk`` for ``steps`` outer steps ahead of time; the call runs it once."""
    import jax

    from parity.init import init_alpha, init_params
    from parity.tasks import sample_batches
    from parity.twins import load

    cfg = setting.cfg()
    twin = load("jax", cfg.dtype)
    to = twin.model.to_arrays
    steps = steps or jax_chunk_length(setting)
    state = twin.train.init_state(to(init_params(cfg), cfg.dtype), to(init_alpha(cfg), cfg.dtype), cfg)
    tasks = jax.block_until_ready(to(tuple(sample_batches(cfg, 0, steps)[:4]), cfg.dtype))  # 4 × [N, B, P, 1]
    t0, c0 = time.perf_counter(), time.process_time()
    # jit of train_chunk (itself jitted or not) traces into the same single XLA computation; AOT
    # lowering and compiling it here separates compile time from run time.
    lowered = jax.jit(twin.train.train_chunk, static_argnames="cfg").lower(state, tasks, cfg)
    t1 = time.perf_counter()
    compiled = lowered.compile()
    t2 = time.perf_counter()
    extra: dict[str, Any] = {
        "trace_lower_s": t1 - t0,
        "xla_compile_s": t2 - t1,
        "compile_cpu_s": time.process_time() - c0,  # ≈ compile_s on a quiet core, more with parallel codegen
    }
    with contextlib.suppress(Exception):  # not every backend reports it
        ma = compiled.memory_analysis()
        assert ma is not None
        extra["xla_temp_mb"] = ma.temp_size_in_bytes / 2**20
        extra["xla_total_mb"] = (ma.temp_size_in_bytes + ma.argument_size_in_bytes + ma.output_size_in_bytes) / 2**20

    def call() -> None:
        jax.block_until_ready(compiled(state, tasks))

    # XLA allocates what the executable declares (temp + arguments + outputs): exact, and free of
    # the host allocator's reuse of memory freed by earlier rows. The RSS delta goes in extra.
    peak = _xla_peak(extra, rss=device == "cpu")
    return Prepared(call, steps, compile_s=t2 - t0, peak=peak, extra=extra, compiled=compiled)


def _xla_peak(extra: dict[str, Any], rss: bool) -> Callable[[], contextlib.AbstractContextManager[dict[str, float]]]:
    @contextlib.contextmanager
    def peak() -> Iterator[dict[str, float]]:
        out: dict[str, float] = {}
        measured: contextlib.AbstractContextManager[dict[str, float]] = (
            host_peak() if rss else contextlib.nullcontext({})
        )
        with measured as host:
            yield out
        if "mb" in host:
            extra["rss_peak_mb"] = host["mb"]
        out["mb"] = float(extra.get("xla_total_mb", float("nan")))

    return peak


def _cuda_peak() -> contextlib.AbstractContextManager[dict[str, float]]:
    @contextlib.contextmanager
    def peak() -> Iterator[dict[str, float]]:
        import torch

        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        out: dict[str, float] = {}
        yield out
        torch.cuda.synchronize()
        out["mb"] = (torch.cuda.max_memory_allocated() - before) / 2**20

    return peak()


def _steps_for(seconds_per_step: float, min_call_s: float, max_steps: int) -> int:
    return int(min(max_steps, max(1, math.ceil(min_call_s / max(seconds_per_step, 1e-9)))))


def prepare_torch(setting: Setting, device: str, min_call_s: float) -> Prepared:
    """The batched twin's ``train_chunk`` on enough steps per call to last ``min_call_s``."""
    import torch

    from parity.init import init_alpha, init_params
    from parity.tasks import sample_batches
    from parity.twins import load

    cfg = setting.cfg()
    twin = load("torch", cfg.dtype)
    dev = "cuda" if device == "gpu" else "cpu"

    def to(tree: Any) -> Any:
        return twin.model.to_arrays(tree, cfg.dtype, dev)

    state = twin.train.init_state(to(init_params(cfg)), to(init_alpha(cfg)), cfg)
    sync = torch.cuda.synchronize if device == "gpu" else (lambda: None)

    def make_call(steps: int) -> Callable[[], None]:
        tasks = to(tuple(sample_batches(cfg, 0, steps)[:4]))  # 4 × [N, B, P, 1]

        def call() -> None:
            twin.train.train_chunk(state, tasks, cfg)
            sync()

        return call

    probe = make_call(1)
    t = time.perf_counter()
    probe()  # the first call also pays PyTorch's lazy initialisation
    probe_s = time.perf_counter() - t
    steps = _steps_for(probe_s, min_call_s, 200)
    return Prepared(make_call(steps), steps, peak=_cuda_peak if device == "gpu" else host_peak)


def prepare_seed_loop(setting: Setting, device: str, min_call_s: float) -> Prepared:
    """The seed's loop, ``seed_step`` per outer step, on enough steps per call to last ``min_call_s``."""
    import torch

    from parity.tasks import sample_batches
    from torch_impl import seed_loop

    cfg = setting.cfg()
    dev = "cuda" if device == "gpu" else "cpu"
    state = seed_loop.init_state(cfg, dev)
    sync = torch.cuda.synchronize if device == "gpu" else (lambda: None)

    def make_call(steps: int) -> Callable[[], None]:
        tasks = seed_loop.to_tensors(sample_batches(cfg, 0, steps), cfg.dtype, dev)  # 4 × [N, B, P, 1]

        def call() -> None:
            for i in range(steps):
                x, y, v_x, v_y = (t[i] for t in tasks)
                seed_loop.seed_step(state, x, y, v_x, v_y, cfg)
            sync()

        return call

    # Probe with a few tasks: the loop is the same per task, and B = 256 would take seconds.
    probe_setting = dataclasses.replace(setting, B=min(setting.B, 2))
    probe_tasks = seed_loop.to_tensors(sample_batches(probe_setting.cfg(), 0, 1), cfg.dtype, dev)
    t = time.perf_counter()
    x, y, v_x, v_y = (t[0] for t in probe_tasks)
    seed_loop.seed_step(state, x, y, v_x, v_y, cfg)
    sync()
    per_task = (time.perf_counter() - t) / probe_setting.B
    steps = _steps_for(per_task * setting.B, min_call_s, 200)
    return Prepared(make_call(steps), steps, peak=_cuda_peak if device == "gpu" else host_peak)


# --- measuring -----------------------------------------------------------------------------------


def estimated_mb(setting: Setting) -> float:
    """Rough peak memory of a batched twin's step: the residuals the backward pass keeps."""
    n_params = sum(math.prod(s) for s in setting.cfg().param_shapes.values())
    sets = 2 * math.ceil(math.sqrt(setting.T)) if setting.remat else _RESIDUAL_PARAM_SETS * setting.T
    return sets * setting.B * n_params * 4 / 2**20


def prepare(impl: str, setting: Setting, device: str, min_call_s: float, chunk: int | None = None) -> Prepared:
    """One implementation ready to time; ``chunk`` fixes JAX's outer steps per compiled call."""
    if impl == "jax":
        return prepare_jax(setting, device, chunk)
    if impl == "torch":
        return prepare_torch(setting, device, min_call_s)
    if impl == "seed-loop":
        return prepare_seed_loop(setting, device, min_call_s)
    raise ConfigError("impl", f"must be one of {', '.join(IMPLS)}; got {impl!r}")


def measure(
    setting: Setting,
    impls: Sequence[str],
    device: str = "cpu",
    repeats: int = 5,
    min_call_s: float = 0.2,
    row_budget_s: float = 30.0,
    chunk: int | None = None,
) -> list[Row]:
    """Time several implementations on one setting, interleaved: a row each.

    Each implementation is prepared (JAX: compiled) and warmed up once, with its peak memory
    measured on the warm-up call; then every round times one call of each implementation in
    turn, so that a change in the machine's load hits all of them alike. Rounds: ``repeats``,
    fewer (at least 2) when the slowest warm-up call says they would overrun ``row_budget_s``.
    """
    prepared: dict[str, Prepared] = {}
    first_call_s: dict[str, float] = {}
    peak_mb: dict[str, float] = {}
    for impl in impls:
        prep = prepare(impl, setting, device, min_call_s, chunk)
        with prep.peak() as peak:
            t = time.perf_counter()
            prep.call()  # warm-up
            first_call_s[impl] = time.perf_counter() - t
        prepared[impl], peak_mb[impl] = prep, peak["mb"]
    slowest = max(first_call_s.values())
    n = max(2, min(repeats, math.floor(row_budget_s / max(slowest * len(impls), 1e-9))))
    walls: dict[str, list[float]] = {impl: [] for impl in impls}
    cpus: dict[str, list[float]] = {impl: [] for impl in impls}
    for _ in range(n):
        for impl, prep in prepared.items():
            c, t = time.process_time(), time.perf_counter()
            prep.call()
            walls[impl].append(time.perf_counter() - t)
            cpus[impl].append(time.process_time() - c)
    rows = []
    for impl, prep in prepared.items():
        us_per_step = 1e6 * statistics.median(walls[impl]) / prep.steps
        rows.append(
            Row(
                impl=impl,
                config=setting.config,
                T=setting.T,
                B=setting.B,
                width=setting.width,
                remat=setting.remat,
                steps_per_call=prep.steps,
                repeats=n,
                us_per_step=us_per_step,
                us_per_task_step=us_per_step / (setting.B * max(setting.T, 1)),
                cpu_us_per_step=1e6 * statistics.median(cpus[impl]) / prep.steps,
                min_us_per_step=1e6 * min(walls[impl]) / prep.steps,
                compile_s=prep.compile_s,
                first_call_s=first_call_s[impl],
                peak_mem_mb=peak_mb[impl],
                tasks_per_s=setting.B / (us_per_step * 1e-6),
                speedup_vs_seed_loop=None,
                extra=prep.extra,
            )
        )
    if "seed-loop" in prepared:
        # Ratios within a round, then their median: both sides of each ratio ran back to back,
        # so a change in the machine's load between rounds cancels out.
        base = [w / prepared["seed-loop"].steps for w in walls["seed-loop"]]
        for row in rows:
            per_step = [w / row.steps_per_call for w in walls[row.impl]]
            row.speedup_vs_seed_loop = statistics.median(b / x for b, x in zip(base, per_step, strict=True))
    return rows


def plan(quick: bool, device: str, impls: Sequence[str] = IMPLS) -> list[tuple[Setting, list[str]]]:
    """Which settings a run measures, and with which implementations (the seed loop first)."""
    settings = list(QUICK_SETTINGS) if quick else full_settings(device)
    out = []
    for s in settings:
        chosen = [impl for impl in ("seed-loop", "jax", "torch") if impl in impls]
        if s.remat or s.B > SEED_LOOP_MAX_B or s.T > max(SWEEP_T):
            # The seed loop has no remat, and one task at a time measures nothing new at huge B.
            chosen = [impl for impl in chosen if impl != "seed-loop"]
        out.append((s, chosen))
    return out


def run_bench(
    quick: bool = False,
    device: str = "cpu",
    threads: int = 1,
    repeats: int | None = None,
    impls: Sequence[str] = IMPLS,
    settings: Sequence[tuple[Setting, Sequence[str]]] | None = None,
    min_call_s: float | None = None,
    max_mem_mb: float | None = None,
    progress: Callable[[str], None] | None = None,
    command: str | None = None,
    unroll: int | None = None,
    chunk: int | None = None,
    pin: bool = True,
) -> dict[str, Any]:
    """Measure every setting of the plan (or ``settings``); returns ``{"machine", "rows", "targets", "skipped"}``.

    ``unroll`` overrides ``jax_impl.meta.UNROLL_UP_TO`` for this run (inner loops up to that
    length become straight-line code); ``chunk`` fixes the JAX outer steps per compiled call;
    ``pin`` binds the process to ``threads`` cores (see :func:`configure`).
    """
    for name, value in (("unroll", unroll), ("chunk", chunk)):
        minimum = 0 if name == "unroll" else 1
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < minimum):
            raise ConfigError(name, f"must be an integer >= {minimum}, got {value!r}")
    if repeats is not None and (isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1):
        raise ConfigError("repeats", f"must be an integer >= 1, got {repeats!r}")
    unknown = sorted(set(impls) - set(IMPLS))
    if unknown:
        raise ConfigError("impl", f"must be one of {', '.join(IMPLS)}; got {unknown[0]!r}")
    applied = configure(device, threads, pin)
    machine = machine_info(device, applied)
    if command is not None:
        machine["command"] = command
    if unroll is not None and "jax" in impls:
        import jax

        from jax_impl import meta

        meta.UNROLL_UP_TO = unroll
        jax.clear_caches()  # executables traced with the old value must not be reused
    machine["jax_unroll_up_to"] = _jax_unroll()
    if "jax" in impls:
        machine["jax_backend_init_s"] = _start_jax()
    if progress is not None:
        progress(f"bench: {'quick' if quick else 'full'} run on {device}, {threads} thread(s)")
        progress(TABLE_HEADER)
    repeats = repeats or 5
    min_call_s = min_call_s if min_call_s is not None else (0.2 if quick else 0.25)
    max_mem_mb = max_mem_mb if max_mem_mb is not None else _default_mem_budget_mb(device)
    rows: list[Row] = []
    skipped: list[dict[str, Any]] = []
    for setting, chosen in settings if settings is not None else plan(quick, device, impls):
        need = estimated_mb(setting)
        fitting = [impl for impl in chosen if impl == "seed-loop" or need <= max_mem_mb]
        skipped += [
            {"impl": impl, "setting": setting.label, "reason": f"needs ≈{need:.0f} MB > {max_mem_mb:.0f} MB"}
            for impl in chosen
            if impl not in fitting
        ]
        if not fitting:
            continue
        new_rows = measure(setting, fitting, device, repeats, min_call_s, chunk=chunk)
        rows += new_rows
        if progress is not None:
            for row in new_rows:
                progress(row_line(row))
    machine["load_avg_end"] = [round(x, 2) for x in os.getloadavg()]
    return {
        "machine": machine,
        "rows": [row_dict(r) for r in rows],
        "targets": targets(rows),
        "skipped": skipped,
    }


def _start_jax() -> float:
    """Start JAX's backend with a trivial compile, so the first row's compile_s is its own."""
    import jax
    import jax.numpy as jnp

    t = time.perf_counter()
    jax.block_until_ready(jax.jit(lambda x: jnp.tanh(x) @ x)(jnp.ones((4, 4))))
    return time.perf_counter() - t


def _jax_unroll() -> int | None:
    from jax_impl import meta

    return getattr(meta, "UNROLL_UP_TO", None)


def _default_mem_budget_mb(device: str) -> float:
    if device == "gpu":
        import torch

        return 0.5 * torch.cuda.get_device_properties(0).total_memory / 2**20
    try:
        pages, size = os.sysconf("SC_AVPHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
        return min(4096.0, 0.25 * pages * size / 2**20)
    except (ValueError, OSError):
        return 2048.0


def _key(row: Row) -> tuple[Any, ...]:
    return (row.config, row.T, row.B, row.width, row.remat)


def row_dict(row: Row) -> dict[str, Any]:
    out = dataclasses.asdict(row)
    out.update(out.pop("extra"))
    return out


# --- targets (issue 4) -----------------------------------------------------------------------------


def targets(rows: list[Row]) -> list[dict[str, Any]]:
    """The issue's targets, each with the measured value and whether it is met (None: not measured)."""

    def find(impl: str, setting: Setting) -> Row | None:
        key = (setting.config, setting.T, setting.B, setting.width, setting.remat)
        return next((r for r in rows if r.impl == impl and _key(r) == key), None)

    out = []

    def add(name: str, row: Row | None, value: Callable[[Row], float | None], op: str, goal: float) -> None:
        v = value(row) if row is not None else None
        met = None if v is None else (v >= goal if op == ">=" else v <= goal)
        out.append({"target": name, "value": v, "goal": f"{op} {goal:g}", "met": met})

    add(
        "jax speedup vs seed loop per outer step, seed-alpha B=1 T=5",
        find("jax", SEED_ALPHA_POINT),
        lambda r: r.speedup_vs_seed_loop,
        ">=",
        75,
    )
    add("jax us per task-step, B=25 T=5", find("jax", BATCH_POINT), lambda r: r.us_per_task_step, "<=", 15)
    add(
        "torch speedup vs seed loop per task-step, B=25 T=5",
        find("torch", BATCH_POINT),
        lambda r: r.speedup_vs_seed_loop,
        ">=",
        10,
    )
    add("jax compile s, seed-alpha", find("jax", SEED_ALPHA_POINT), lambda r: r.compile_s, "<=", 2)
    add("jax compile s, seed-maml", find("jax", Setting("seed-maml", 3, 1, 32)), lambda r: r.compile_s, "<=", 2)
    for impl in ("jax", "torch"):
        plain = find(impl, Setting("seed-alpha", REMAT_T, REMAT_B, 32))
        remat = find(impl, Setting("seed-alpha", REMAT_T, REMAT_B, 32, remat=True))
        ratio = plain.peak_mem_mb / remat.peak_mem_mb if plain and remat and remat.peak_mem_mb > 0 else None
        out.append(
            {
                "target": f"{impl} peak memory without / with remat, T={REMAT_T} B={REMAT_B}",
                "value": ratio,
                "goal": ">= 5",
                "met": None if ratio is None else ratio >= 5,
            }
        )
    return out


# --- output --------------------------------------------------------------------------------------

TABLE_HEADER = (
    f"{'impl':<10} {'config':<10} {'T':>5} {'B':>6} {'w':>4} {'remat':>5} {'us/step':>11} {'us/task-step':>12} "
    f"{'compile s':>9} {'peak MB':>8} {'tasks/s':>10} {'vs seed':>8}"
)


def row_line(row: Row | dict[str, Any]) -> str:
    r = row_dict(row) if isinstance(row, Row) else row
    speed = r["speedup_vs_seed_loop"]
    return (
        f"{r['impl']:<10} {r['config']:<10} {r['T']:>5} {r['B']:>6} {r['width']:>4} {'yes' if r['remat'] else '':>5} "
        f"{r['us_per_step']:>11.1f} {r['us_per_task_step']:>12.2f} {r['compile_s']:>9.2f} {r['peak_mem_mb']:>8.1f} "
        f"{r['tasks_per_s']:>10.0f} {'' if speed is None else f'{speed:.1f}x':>8}"
    )


def table_lines(result: dict[str, Any]) -> list[str]:
    """The whole table: header, a line per row, then :func:`summary_lines`."""
    return [TABLE_HEADER, *(row_line(r) for r in result["rows"]), *summary_lines(result)]


def summary_lines(result: dict[str, Any]) -> list[str]:
    """The targets, met or not, and the rows skipped for memory."""
    lines = []
    for t in result["targets"]:
        value = "not measured" if t["value"] is None else f"{t['value']:.3g}"
        verdict = {True: "met", False: "NOT met", None: "-"}[t["met"]]
        lines.append(f"target: {t['target']}: {value} (goal {t['goal']}) {verdict}")
    lines += [f"skipped: {s['impl']} {s['setting']}: {s['reason']}" for s in result["skipped"]]
    return lines


def write_json(result: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1) + "\n")


def write_plot(result: dict[str, Any], path: Path) -> None:
    """Time per task-step against B (at T = 5) and against T (at B = 25), width 32, log axes.

    Where the run has no such rows (a custom plan), the most common T, B and the smallest width.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in result["rows"] if not r["remat"]]
    widths = sorted({r["width"] for r in rows})
    width = 32 if 32 in widths else (widths[0] if widths else 32)
    rows = [r for r in rows if r["width"] == width]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, axis, fixed_name, preferred in zip(axes, ("B", "T"), ("T", "B"), (5, 25), strict=True):
        values = [r[fixed_name] for r in rows]
        fixed = preferred if preferred in values or not values else max(set(values), key=values.count)
        for impl in IMPLS:
            points = sorted(
                (r[axis], r["us_per_task_step"]) for r in rows if r["impl"] == impl and r[fixed_name] == fixed
            )
            if points:
                ax.plot(*zip(*points, strict=True), marker="o", label=impl)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(f"{axis} ({'tasks per outer step' if axis == 'B' else 'inner steps'})")
        ax.set_ylabel("µs per task-step")
        ax.set_title(f"{fixed_name} = {fixed}, width {width}")
        ax.grid(True, which="both", alpha=0.3)
        if ax.get_lines():
            ax.legend()
    m = result["machine"]
    where = m["cpu"] if m["device"] == "cpu" else m.get("gpu", "")
    fig.suptitle(f"maml-parity bench: {m['device']} ({where}), {m['threads']} thread(s), {m['date'][:10]}", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


# --- profiling helpers (docs/performance.md) ------------------------------------------------------


def jax_hlo_summary(setting: Setting, unroll: int | None = None, steps: int = 10) -> dict[str, Any]:
    """What XLA runs for one compiled ``train_chunk``: ops per computation, compile time.

    XLA CPU executes every op left after fusion (fusion, dot, copy, while, ...) as its own
    "thunk"; at these sizes their number, not the arithmetic, sets the time per step. ``ops``
    maps each computation that is not a fusion's body (the entry, the outer and inner loops'
    bodies and conditions) to its op counts. ``unroll`` overrides ``UNROLL_UP_TO`` and clears
    JAX's caches, so that the executable is compiled afresh.
    """
    import re

    import jax

    if unroll is not None:
        from jax_impl import meta

        meta.UNROLL_UP_TO = unroll
        jax.clear_caches()
    prep = prepare_jax(setting, "cpu", steps)
    text = prep.compiled.as_text()
    called = set(re.findall(r"(?:calls|to_apply)=(%[\w.\-]+)", text))
    skip = ("parameter", "get-tuple-element", "tuple", "constant", "bitcast")
    ops: dict[str, dict[str, int]] = {}
    current = ""
    for line in text.splitlines():
        head = re.match(r"^(?:ENTRY )?(%[\w.\-]+) ", line)
        if head:
            current = head.group(1)
            continue
        op = re.match(r"\s+(?:ROOT )?%[\w.\-]+ = .*? ([a-z][\w\-]*)\(", line)
        if op and current not in called and op.group(1) not in skip:
            counts = ops.setdefault(current, {})
            counts[op.group(1)] = counts.get(op.group(1), 0) + 1
    return {
        "setting": setting.label,
        "unroll_up_to": _jax_unroll(),
        "compile_s": prep.compile_s,
        **prep.extra,
        "ops": ops,
    }


def torch_profile(setting: Setting, impl: str = "torch", steps: int = 10, rows: int = 15) -> str:
    """``torch.profiler``'s table (self CPU time) for ``steps`` outer steps of the twin or the seed loop."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    torch.set_num_threads(1)
    prep = prepare(impl, setting, "cpu", min_call_s=0.0)
    prep.call()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(max(1, steps // prep.steps)):
            prep.call()
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)

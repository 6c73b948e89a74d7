"""Measuring: peak memory, the device's peak (matmul and copy probes), XLA's cost analysis, timing.

- Peak memory of a row's warm-up call: the resident set's high-water mark above the level before
  it (host), the CUDA allocator's peak (PyTorch on a GPU), or what XLA's executable declares
  (JAX: temp + arguments + outputs).
- The device's peak, measured once per run by two probes in JAX on the bench's device: a large
  float32 matmul in full precision (``Precision.HIGHEST``: no TF32 or bf16 passes), in FLOP/s,
  and an elementwise ``x + 1`` over a large array (one read and one write per element), in
  bytes/s. Each is the best of a few calls: a peak, not a typical figure.
- FLOPs and bytes of one outer step: XLA's cost analysis of the JAX twin's ``train_step``
  compiled for the bench's device, with the inner loop unrolled (a rolled loop's body would be
  counted once, whatever its trip count). The step is linear in T (every inner step repeats the
  same forward, gradient and backward work) and in B (vmap), so the counts of a large setting
  are extrapolated from small compiles (:func:`step_cost`).
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import functools
import math
import statistics
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from parity.bench.output import Row
from parity.bench.settings import Setting

# --- peak memory ---------------------------------------------------------------------------------


def _status_mb(key: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024.0
    raise KeyError(key)


def host_peak_method() -> str:
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


def xla_peak(extra: dict[str, Any], rss: bool) -> Callable[[], contextlib.AbstractContextManager[dict[str, float]]]:
    """JAX rows: what the executable declares (``extra["xla_total_mb"]``); the RSS delta goes in extra."""

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


@contextlib.contextmanager
def cuda_peak() -> Iterator[dict[str, float]]:
    """PyTorch rows on a GPU: the caching allocator's peak above the level before."""
    import torch

    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    out: dict[str, float] = {}
    yield out
    torch.cuda.synchronize()
    out["mb"] = (torch.cuda.max_memory_allocated() - before) / 2**20


@dataclasses.dataclass
class Prepared:
    """An implementation ready to run ``steps`` outer steps per ``call()``, synchronised."""

    call: Callable[[], None]
    steps: int
    compile_s: float = 0.0
    peak: Callable[[], contextlib.AbstractContextManager[dict[str, float]]] = host_peak
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)
    compiled: Any = None  # JAX: the compiled executable (for its HLO text)


class Unavailable(Exception):
    """A row that cannot run here (no GPU for a CUDA graph, capture refused, ...): skipped with this reason."""


# --- the device's peak ----------------------------------------------------------------------------


def jax_device(device: str) -> Any:
    import jax

    return jax.devices("gpu" if device == "gpu" else "cpu")[0]


def _best_time(fn: Callable[[], Any], repeats: int) -> float:
    fn()  # compile and warm up
    best = math.inf
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def matmul_probe(device: str = "cpu", n: int | None = None, repeats: int = 5) -> dict[str, Any]:
    """FLOP/s of an ``n × n`` float32 matmul in full precision (``2n³`` FLOPs), best of ``repeats``."""
    import jax
    import jax.numpy as jnp

    n = n or (8192 if device == "gpu" else 1024)
    dev = jax_device(device)
    a = jax.device_put(jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32), dev)
    b = jax.device_put(jax.random.normal(jax.random.PRNGKey(1), (n, n), jnp.float32), dev)
    f = jax.jit(lambda a, b: jnp.dot(a, b, precision=jax.lax.Precision.HIGHEST))
    seconds = _best_time(lambda: jax.block_until_ready(f(a, b)), repeats)
    return {"n": n, "dtype": "float32", "precision": "highest", "seconds": seconds, "flop_per_s": 2 * n**3 / seconds}


def copy_probe(device: str = "cpu", mb: float | None = None, iterations: int = 10, repeats: int = 5) -> dict[str, Any]:
    """Bytes/s of ``x ← x + 1`` over ``mb`` MiB of float32, ``iterations`` times in one call (read + write)."""
    import jax
    import jax.numpy as jnp

    mb = mb or (1024.0 if device == "gpu" else 64.0)
    size = int(mb * 2**20) // 4
    x = jax.device_put(jnp.zeros((size,), jnp.float32), jax_device(device))
    # A loop XLA cannot fuse across: every iteration reads and writes the whole array.
    f = jax.jit(lambda x: jax.lax.fori_loop(0, iterations, lambda _, v: v + 1.0, x))
    seconds = _best_time(lambda: jax.block_until_ready(f(x)), repeats)
    moved = 2 * 4 * size * iterations
    return {"mib": mb, "iterations": iterations, "seconds": seconds, "bytes_per_s": moved / seconds}


def device_peaks(device: str) -> dict[str, Any]:
    """Both probes, for the JSON's machine section and the table's % of peak."""
    return {"matmul": matmul_probe(device), "copy": copy_probe(device)}


# --- FLOPs and bytes of one outer step (XLA's cost analysis) -------------------------------------


def _cost_dict(compiled: Any) -> dict[str, float]:
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):  # older JAX: one dict per program
        cost = cost[0] if cost else {}
    return dict(cost or {})


@functools.lru_cache(maxsize=64)
def step_cost_exact(setting: Setting, device: str = "cpu") -> dict[str, float]:
    """XLA's counts for one outer step (``jax_impl.train.train_step``), inner loop unrolled, compiled at ``setting``."""
    import jax

    from parity.init import init_alpha, init_params
    from parity.tasks import sample_batches
    from parity.twins import load

    cfg = dataclasses.replace(setting, remat=False).cfg()
    twin = load("jax", cfg.dtype)
    dev = jax_device(device)

    def to(tree: Any) -> Any:
        return jax.device_put(twin.model.to_arrays(tree, cfg.dtype), dev)

    state = twin.train.init_state(to(init_params(cfg)), to(init_alpha(cfg)), cfg)
    tasks = to(tuple(sample_batches(cfg, 0, 1)[:4]))
    tasks = tuple(t[0] for t in tasks)  # one step: [B, P, 1]
    step = jax.jit(twin.train.train_step, static_argnames=("cfg", "unroll"))
    compiled = step.lower(state, tasks, cfg, unroll=max(cfg.inner_steps, 1)).compile()
    cost = _cost_dict(compiled)
    return {"flops": float(cost.get("flops", math.nan)), "bytes": float(cost.get("bytes accessed", math.nan))}


def step_cost(setting: Setting, device: str = "cpu") -> dict[str, Any]:
    """FLOPs and bytes accessed per outer step at ``setting``, from small compiles.

    Every inner step repeats the same work, and every task too (vmap), so the counts are linear
    in T and in B (bilinear together). T ≤ 3 and B ≤ 3 are compiled as they are; a larger T is
    extrapolated from T = 2 and 3 (T = 1 is slightly special: its first step's backward is
    simpler), a larger B from B = 2 and 3 (B = 1 drops size-1 axes). Measured on the CPU against
    direct compiles: FLOPs within 0.5%, bytes within a few % (tests/test_bench_pieces.py). For a
    remat setting: the plain program's counts (the useful work; recomputation not counted).
    """
    ts = (setting.T,) if setting.T <= 3 else (2, 3)
    bs = (setting.B,) if setting.B <= 3 else (2, 3)
    base = dataclasses.replace(setting, remat=False)
    costs = {(t, b): step_cost_exact(dataclasses.replace(base, T=t, B=b), device) for t in ts for b in bs}
    out: dict[str, Any] = {}
    for key in ("flops", "bytes"):

        def at(t: int, b: int, key: str = key) -> float:
            return costs[(t, b)][key]

        # Bilinear in (T, B) through the compiled points (linear, or exact, where one point).
        t0, b0 = ts[0], bs[0]
        value = at(t0, b0)
        dt = (at(ts[1], b0) - value) if len(ts) == 2 else 0.0
        db = (at(t0, bs[1]) - value) if len(bs) == 2 else 0.0
        dtb = (at(ts[1], bs[1]) - at(ts[1], b0) - at(t0, bs[1]) + value) if len(ts) == len(bs) == 2 else 0.0
        x, y = setting.T - t0, setting.B - b0
        out[key] = value + x * dt + y * db + x * y * dtb
    exact = len(ts) == len(bs) == 1
    how = "" if exact else ", bilinear in T and B from small compiles"
    out["method"] = "xla cost analysis, inner loop unrolled" + how
    return out


# --- timing --------------------------------------------------------------------------------------


def time_rows(
    setting: Setting,
    prepared: dict[str, Prepared],
    first_call_s: dict[str, float],
    peak_mb: dict[str, float],
    repeats: int,
    row_budget_s: float,
) -> list[Row]:
    """Time prepared (and warmed-up) implementations on one setting, interleaved: a row each.

    Every round times one call of each implementation in turn, so that a change in the machine's
    load hits all of them alike. Rounds: ``repeats``, fewer (at least 2) when the slowest warm-up
    call says they would overrun ``row_budget_s``.
    """
    impls = list(prepared)
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


def add_throughput(rows: list[Row], cost: dict[str, Any] | None, peaks: dict[str, Any] | None) -> None:
    """Achieved FLOP/s and bytes/s of each row from the JAX program's counts, and their % of the probes' peak.

    Every row of a setting (the PyTorch ones and the seed loop too) is credited with the same
    counts: the JAX program's, the work the meta-gradient step needs, not what each framework ran.
    """
    if not cost:
        return
    for row in rows:
        seconds = row.us_per_step * 1e-6
        row.flops_per_step = cost["flops"]
        row.bytes_per_step = cost["bytes"]
        row.gflop_per_s = cost["flops"] / seconds / 1e9
        row.gb_per_s = cost["bytes"] / seconds / 1e9
        if peaks:
            row.pct_peak_flops = 100 * cost["flops"] / seconds / peaks["matmul"]["flop_per_s"]
            row.pct_peak_bw = 100 * cost["bytes"] / seconds / peaks["copy"]["bytes_per_s"]

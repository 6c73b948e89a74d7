"""Measuring: peak memory, FLOPs per step from small compiles, timing (framework-neutral parts).

- Peak memory of a row's warm-up call: the resident set's high-water mark above the level before
  it (:func:`host_peak`); a twin's rows may measure their own way (an accelerator allocator's
  peak, what a compiled executable declares): ``Prepared.peak``.
- The device's peak (matmul and copy probes) and the FLOPs and bytes of one compiled outer step
  come from the twin whose adapter has the capabilities ``peak_probes`` and ``cost_analysis``
  (docs/performance.md). The step is linear in T (every inner step repeats the same forward,
  gradient and backward work) and in B (tasks are vectorised), so the counts of a large setting
  are extrapolated from small compiles (:func:`step_cost`).
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
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


@dataclasses.dataclass
class Prepared:
    """An implementation ready to run ``steps`` outer steps per ``call()``, synchronised."""

    call: Callable[[], None]
    steps: int
    compile_s: float = 0.0
    peak: Callable[[], contextlib.AbstractContextManager[dict[str, float]]] = host_peak
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)
    compiled: Any = None  # compiled rows: the executable (for its program text)


class Unavailable(Exception):
    """A row that cannot run here (no GPU for a CUDA graph, capture refused, ...): skipped with this reason."""


# --- FLOPs and bytes of one outer step, from small compiles ------------------------------------


def step_cost(
    setting: Setting, device: str, exact: Callable[[Setting, str], dict[str, float]], how: str
) -> dict[str, Any]:
    """FLOPs and bytes accessed per outer step at ``setting``, from small compiles.

    ``exact(setting, device)``: a twin's counts for one compiled step (its ``step_cost_exact``,
    capability ``cost_analysis``); ``how``: what those counts are, for ``method``.

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
    costs = {(t, b): exact(dataclasses.replace(base, T=t, B=b), device) for t in ts for b in bs}
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
    exact_point = len(ts) == len(bs) == 1
    out["method"] = how + (", bilinear in T and B from small compiles" if not exact_point else "")
    return out


# --- timing --------------------------------------------------------------------------------------


def time_rows(
    setting: Setting,
    prepared: dict[str, Prepared],
    first_call_s: dict[str, float],
    peak_mb: dict[str, float],
    repeats: int,
    row_budget_s: float,
    baseline: str | None = None,
) -> list[Row]:
    """Time prepared (and warmed-up) implementations on one setting, interleaved: a row each.

    Every round times one call of each implementation in turn, so that a change in the machine's
    load hits all of them alike. Rounds: ``repeats``, fewer (at least 2) when the slowest warm-up
    call says they would overrun ``row_budget_s``. ``baseline``: the row ``speedup_vs_seed_loop``
    divides by (the seed's loop), when it is among them.
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
                inner_optimizer=setting.inner_optimizer,
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
    if baseline is not None and baseline in prepared:
        # Ratios within a round, then their median: both sides of each ratio ran back to back,
        # so a change in the machine's load between rounds cancels out.
        base = [w / prepared[baseline].steps for w in walls[baseline]]
        for row in rows:
            per_step = [w / row.steps_per_call for w in walls[row.impl]]
            row.speedup_vs_seed_loop = statistics.median(b / x for b, x in zip(base, per_step, strict=True))
    return rows


def add_throughput(rows: list[Row], cost: dict[str, Any] | None, peaks: dict[str, Any] | None) -> None:
    """Achieved FLOP/s and bytes/s of each row from one compiled program's counts, and their % of the probes' peak.

    Every row of a setting is credited with the same counts (those of the twin with the capability
    ``cost_analysis``): the work the meta-gradient step needs, not what each framework ran.
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

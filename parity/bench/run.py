"""A bench run: threads and device set up, the machine described, the device's peak probed, every
setting of the plan measured (rows interleaved per setting), and the result assembled.

Everything framework-specific is the twins' adapters' (``bench_configure``, ``bench_machine``,
``bench_start``, ``bench_release``, ``device_peaks``, ``step_cost_exact``; parity.twins)."""

from __future__ import annotations

import contextlib
import datetime
import os
import platform
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from parity.bench import measure as m
from parity.bench.output import TABLE_HEADER, Row, row_dict, row_line, targets
from parity.bench.rows import BenchRow, Options, bench_twins, choose, owner
from parity.bench.settings import Setting, estimated_mb, is_accelerator, plan
from parity.config import ConfigError
from parity.devices import parse_device

# --- setup ---------------------------------------------------------------------------------


# Held open for the process: the bench on an accelerator times full float32 matmuls (no TF32).
_PRECISION = contextlib.ExitStack()


def configure(device: str, threads: int, pin: bool = True, twins: Sequence[Any] | None = None) -> dict[str, Any]:
    """Threads and device before any framework starts; returns what was actually set.

    With ``pin`` on a CPU run, the process is bound to ``threads`` cores (the last ones it may
    use): a compiler may keep a thread pool of its own and spread independent ops over every
    core, which a "single core" figure must not count. Each twin then sets its own threads and
    flags (``bench_configure``); ``twins`` (default: every bench twin) must see ``device``, else
    ConfigError("device", ...).
    """
    parse_device(device)  # one line for a device outside the vocabulary
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ConfigError("threads", f"must be an integer >= 1, got {threads!r}")
    applied: dict[str, Any] = {"threads": threads}
    if pin and not is_accelerator(device) and hasattr(os, "sched_setaffinity"):
        cpus = sorted(os.sched_getaffinity(0))
        if threads < len(cpus):
            os.sched_setaffinity(0, cpus[-threads:])  # threads started from now on inherit it
    if hasattr(os, "sched_getaffinity"):
        applied["cpu_affinity"] = sorted(os.sched_getaffinity(0))
    everyone = bench_twins()
    for twin in everyone:
        applied.update(twin.bench_configure(parse_device(device).kind, threads))
    from parity.twins import load

    for twin in everyone if twins is None else twins:
        load(twin.framework, device=device)  # refuses, in one line, a device this twin cannot see
        if is_accelerator(device):  # full float32 matmuls for the rest of the bench process
            _PRECISION.enter_context(twin.precision_scope("highest"))
    return applied


def machine_info(device: str, applied: dict[str, Any], options: Options | None = None) -> dict[str, Any]:
    """Platform, CPU, versions, threads and the date: recorded with every figure."""
    import numpy as np

    info: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "load_avg_1_5_15": [round(x, 2) for x in os.getloadavg()],
        "device": device,
        "numpy": np.__version__,
        "peak_mem_method": {},
        **applied,
    }
    for twin in bench_twins():
        part = dict(twin.bench_machine(device, options or Options()))
        info["peak_mem_method"].update(part.pop("peak_mem_method", {}))
        info.update(part)
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
    rows: Sequence[BenchRow],
    device: str = "cpu",
    repeats: int = 5,
    options: Options | None = None,
    row_budget_s: float = 30.0,
    skipped: list[dict[str, Any]] | None = None,
) -> list[Row]:
    """Time several rows on one setting, interleaved: a row each.

    Each is prepared (a compiled row: compiled) and warmed up once, with its peak memory measured
    on the warm-up call; then :func:`measure.time_rows` times them round by round. A row that
    cannot run here (:class:`measure.Unavailable`), or that fails while it is prepared or warmed
    up, goes to ``skipped`` with its reason (given a ``skipped`` list; else it raises).
    """
    options = options or Options()
    prepared: dict[str, m.Prepared] = {}
    first_call_s: dict[str, float] = {}
    peak_mb: dict[str, float] = {}
    for row in rows:
        try:
            if row.inner_optimizers is not None and setting.inner_optimizer not in row.inner_optimizers:
                # Explicit settings bypass the plan: never time another inner loop under this name.
                raise m.Unavailable(
                    f"no {setting.inner_optimizer} inner optimiser (only {', '.join(sorted(row.inner_optimizers))})"
                )
            prep = row.prepare(setting, device, options)
            with prep.peak() as peak:
                t = time.perf_counter()
                prep.call()  # warm-up
                first_call_s[row.name] = time.perf_counter() - t
        except ConfigError:
            raise
        except Exception as e:  # one row that cannot run (here) must not lose the others' figures
            reason = str(e) if isinstance(e, m.Unavailable) else f"failed: {type(e).__name__}: {_first_line(e)}"
            if skipped is None:
                raise
            skipped.append({"impl": row.name, "setting": setting.label, "reason": reason})
            first_call_s.pop(row.name, None)
            continue
        prepared[row.name], peak_mb[row.name] = prep, peak["mb"]
    if not prepared:
        return []
    baseline = next((row.name for row in rows if row.baseline), None)
    return m.time_rows(setting, prepared, first_call_s, peak_mb, repeats, row_budget_s, baseline)


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [""])[0][:200]


# --- the run ---------------------------------------------------------------------------------------


def _check_counts(repeats: int | None, unroll: int | None, chunk: int | None, time_budget_s: float | None) -> None:
    for name, value, minimum in (("unroll", unroll, 0), ("chunk", chunk, 1), ("repeats", repeats, 1)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < minimum):
            raise ConfigError(name, f"must be an integer >= {minimum}, got {value!r}")
    if time_budget_s is not None and not time_budget_s > 0:
        raise ConfigError("time_budget", f"must be a number of seconds > 0, got {time_budget_s!r}")


def _todo(
    quick: bool, device: str, impls: Sequence[str] | None, settings: Sequence[tuple[Setting, Sequence[str]]] | None
) -> list[tuple[Setting, list[BenchRow]]]:
    """The plan (or ``settings``) with each name turned into its row (outside SPECs resolved once)."""
    todo = [(s, list(names)) for s, names in settings] if settings is not None else plan(quick, device, impls)
    wanted = list(dict.fromkeys(name for _, names in todo for name in names))
    by_name = {row.name: row for row in choose(wanted, device)[0]} if wanted else {}
    return [(s, [by_name[name] for name in names]) for s, names in todo]


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

    ``impls``: rows by name, or any implementation SPEC (timed through its contract call);
    ``device``: cpu | gpu | cuda:N | tpu; ``unroll``: the compiled rows' inner loops up to that
    length become straight-line code (default 0); ``chunk`` fixes their outer steps per compiled
    call; ``pin`` binds the process to ``threads`` cores (see :func:`configure`); ``flops``: probe
    the device's peak and credit each row with one compiled step's counts; ``time_budget_s``:
    settings not started by then are skipped (with the reason); ``on_setting`` receives the result
    so far after every setting (bench --json writes it, so that a run cut short keeps what it measured).
    """
    _check_counts(repeats, unroll, chunk, time_budget_s)
    parse_device(device)
    start = time.perf_counter()
    todo = _todo(quick, device, impls, settings)
    found = (owner(r.name) for _, chosen in todo for r in chosen)
    owners = list({t.framework: t for t in found if t is not None}.values())  # twins whose rows run
    options = Options(chunk=chunk, unroll=unroll or 0)
    applied = configure(device, threads, pin, owners)
    machine = machine_info(device, applied, options)
    if command is not None:
        machine["command"] = command
    for twin in owners:
        machine.update(twin.bench_start(device))
    cost = _capable("cost_analysis") if flops else None
    peaks = _capable("peak_probes") if flops else None
    if peaks is not None:
        machine["peaks"] = peaks.device_peaks(device)
    if progress is not None:
        progress(f"bench: {'quick' if quick else 'full'} run on {device}, {threads} thread(s)")
        progress(TABLE_HEADER)
    accelerator = is_accelerator(device)
    default_call_s = 0.1 if accelerator else 0.2 if quick else 0.25
    options = Options(min_call_s if min_call_s is not None else default_call_s, chunk, unroll or 0)
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
            skipped += [{"impl": r.name, "setting": setting.label, "reason": reason} for r in chosen]
            continue
        need = estimated_mb(setting)
        fitting = [r for r in chosen if not r.batched or need <= max_mem_mb]
        skipped += [
            {"impl": r.name, "setting": setting.label, "reason": f"needs ≈{need:.0f} MB > {max_mem_mb:.0f} MB"}
            for r in chosen
            if r not in fitting
        ]
        if not fitting:
            continue
        row_budget_s = 8.0 if accelerator else 30.0
        new_rows = measure(setting, fitting, device, repeats or 5, options, row_budget_s, skipped=skipped)
        if cost is not None and new_rows:
            counts = m.step_cost(setting, device, cost.step_cost_exact, cost.cost_method)
            m.add_throughput(new_rows, counts, machine.get("peaks"))
        rows += new_rows
        for twin in owners:
            twin.bench_release(device)  # what a setting's rows cached goes back before the next
        if progress is not None:
            for row in new_rows:
                progress(row_line(row))
        if on_setting is not None:
            on_setting(result())
    machine["load_avg_end"] = [round(x, 2) for x in os.getloadavg()]
    machine["wall_s"] = time.perf_counter() - start
    return result()


def _capable(capability: str) -> Any:
    """The first bench twin with ``capability`` (parity.twins), or None."""
    return next((twin for twin in bench_twins() if capability in twin.capabilities), None)


def _default_mem_budget_mb(device: str) -> float:
    sizes = [mb for twin in bench_twins() if (mb := twin.device_memory_mb(device)) is not None]
    if sizes:
        return 0.5 * min(sizes)
    try:
        pages, size = os.sysconf("SC_AVPHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
        return min(4096.0, 0.25 * pages * size / 2**20)
    except (ValueError, OSError):
        return 2048.0

"""The bench's rows as data: which implementations a run can time, and the goals some of them carry.

Each built-in twin's adapter offers its rows (``bench_rows()``: the twin's training chunk and its
variants, a baseline) and its goals (``bench_targets()``); :func:`table` collects them, baselines
first, then twin by twin in the registry's order. Any other implementation a SPEC names (a
built-in that is not a row, ``module:NAME``, ``file.py:NAME``, an entry point) becomes a row
through :func:`contract_row`: its contract call ``meta_value_and_grad`` timed on NumPy inputs.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

from parity.bench.measure import Prepared, Unavailable, host_peak
from parity.bench.output import Row
from parity.bench.settings import Setting
from parity.config import ConfigError

ACCELERATOR = "accelerator"  # a run on a GPU or TPU (BenchRow.default_on)


@dataclasses.dataclass(frozen=True)
class Options:
    """What a row's ``prepare`` gets besides the setting and the device."""

    min_call_s: float = 0.2  # eager rows: enough outer steps per call to last this long
    chunk: int | None = None  # compiled rows: outer steps per compiled call (None: their own choice)
    unroll: int = 0  # compiled rows: inner loops up to this many steps as straight-line code


@dataclasses.dataclass(frozen=True)
class BenchRow:
    """One row a bench run can time, and where the plan puts it."""

    name: str
    prepare: Callable[[Setting, str, Options], Prepared]  # (setting, device, options) -> ready to time; Unavailable
    default_on: frozenset[str] = frozenset({"cpu", ACCELERATOR})  # runs whose default rows include it
    baseline: bool = False  # speedup_vs_seed_loop divides by this row's time
    batched: bool = True  # memory grows with B·T (the budget applies); False: one task at a time
    remat: bool = True  # times rematerialised settings
    max_B: int | None = None  # larger meta-batches are left out ...
    max_B_accelerator: int | None = None  # ... and on a GPU or TPU
    max_T: int | None = None  # longer inner loops are left out
    only_at: Setting | None = None  # the only setting it times (in an accelerator run)
    accelerator_only: bool = False  # planned in accelerator runs only
    inner_optimizers: frozenset[str] | None = None  # the inner optimisers it has (None: every one)
    cpu_default_at: tuple[Setting, ...] = ()  # a CPU run's default rows include it at these settings too


@dataclasses.dataclass(frozen=True)
class Target:
    """A goal: ``value(find)`` (find(row name, setting) -> Row or None) compared with ``goal``."""

    name: str
    value: Callable[[Callable[[str, Setting], Row | None]], float | None]
    op: str  # ">=" or "<="
    goal: float
    accelerator: bool = False  # reported by accelerator runs (else by CPU runs)


def row_value(
    impl: str, setting: Setting, field: str
) -> Callable[[Callable[[str, Setting], Row | None]], float | None]:
    """A target's value: ``field`` of row ``impl`` at ``setting``."""

    def value(find: Callable[[str, Setting], Row | None]) -> float | None:
        row = find(impl, setting)
        return None if row is None else getattr(row, field)

    return value


def remat_ratio(impl: str, plain: Setting) -> Callable[[Callable[[str, Setting], Row | None]], float | None]:
    """A target's value: peak memory of ``impl`` at ``plain`` over the same setting rematerialised."""

    def value(find: Callable[[str, Setting], Row | None]) -> float | None:
        a, b = find(impl, plain), find(impl, dataclasses.replace(plain, remat=True))
        return a.peak_mem_mb / b.peak_mem_mb if a and b and b.peak_mem_mb > 0 else None

    return value


def optimizer_ratio(
    impl: str, setting: Setting, baseline: str = "sgd"
) -> Callable[[Callable[[str, Setting], Row | None]], float | None]:
    """A target's value: ``impl``'s time per step at ``setting`` over the same setting with the
    ``baseline`` inner optimiser (issue 19: what the optimiser's state costs)."""

    def value(find: Callable[[str, Setting], Row | None]) -> float | None:
        a, b = find(impl, setting), find(impl, dataclasses.replace(setting, inner_optimizer=baseline))
        return a.us_per_step / b.us_per_step if a and b and b.us_per_step > 0 else None

    return value


def table() -> list[BenchRow]:
    """Every built-in twin's rows: baselines first, then twin by twin (the registry's order)."""
    rows = [row for twin in bench_twins() for row in twin.bench_rows()]
    return [r for r in rows if r.baseline] + [r for r in rows if not r.baseline]


def targets_of_twins() -> list[Target]:
    return [target for twin in bench_twins() for target in twin.bench_targets()]


def bench_twins() -> list[Any]:
    """The built-in twins' adapters that offer bench rows (capability ``bench``)."""
    from parity.registry import TWINS
    from parity.twins import BENCH, load

    twins = [load(name, check_device=False) for name in TWINS]
    return [twin for twin in twins if BENCH in twin.capabilities]


def owner(row_name: str) -> Any:
    """The adapter whose rows include ``row_name``."""
    for twin in bench_twins():
        if any(row.name == row_name for row in twin.bench_rows()):
            return twin
    return None


def choose(specs: Sequence[str] | None, device: str) -> tuple[list[BenchRow], bool]:
    """The rows ``--impl`` names (a row's name, else any implementation SPEC); (rows, explicit).

    None: the run's default rows. Table rows keep the table's order; outside ones follow, in the
    order given."""
    from parity.devices import parse_device

    known = table()
    if not specs:
        kind = "cpu" if parse_device(device).kind == "cpu" else ACCELERATOR
        return [row for row in known if kind in row.default_on], False
    names = {row.name for row in known}
    chosen = [row for row in known if row.name in specs]
    outside = [contract_row(spec, device, names) for spec in dict.fromkeys(specs) if spec not in names]
    return chosen + outside, True


def contract_row(spec: str, device: str, names: set[str]) -> BenchRow:
    """A row for any implementation: ``SPEC`` resolved now (errors are one line naming ``impl``)."""
    from parity.devices import parse_device
    from parity.registry import resolve, split_spec

    where, given = split_spec(spec)
    # The bench's --device reaches an implementation only when it is not the default CPU: one that
    # takes no device must not be refused for an "@cpu" the user never wrote.
    full = spec if given is not None or parse_device(device).kind == "cpu" else f"{where}@{device}"
    try:
        impl = resolve(full)
    except ConfigError as err:
        message = str(err).removeprefix(f"{err.field}: ")
        raise ConfigError(err.field, f"{message} (bench rows: {', '.join(sorted(names))})") from None
    return BenchRow(spec, lambda setting, _device, options: prepare_contract(impl, setting, options))


def prepare_contract(impl: Any, setting: Setting, options: Options) -> Prepared:
    """``impl.meta_value_and_grad`` on pre-sampled NumPy meta-batches, one call per outer step.

    The first call (a compile, a cache filled) is timed apart as ``compile_s``; its result is
    checked against the contract once, so a broken implementation is a skipped row with the reason.
    """
    from parity.contract import unsupported_reason
    from parity.tasks import sample_batches
    from parity.twins import meta_results, step0_inputs

    cfg = setting.cfg()
    reason = unsupported_reason(impl, cfg)
    if reason is not None:
        raise Unavailable(reason)
    params, alpha, first = step0_inputs(cfg)
    t = time.perf_counter()
    meta_results(impl, cfg, params, alpha, first)
    compile_s = time.perf_counter() - t
    probe = time.perf_counter()
    impl.meta_value_and_grad(params, alpha, first, cfg)
    per_step = time.perf_counter() - probe
    steps = steps_for(per_step, options.min_call_s, 200)
    batches = sample_batches(cfg, 0, steps)[:4]  # 4 × [N, B, P, 1]
    dtype = cfg.dtype
    tasks = [tuple(b[i].astype(dtype, copy=False) for b in batches) for i in range(steps)]

    def call() -> None:
        for step_tasks in tasks:
            impl.meta_value_and_grad(params, alpha, step_tasks, cfg)

    extra = {"timed": "meta_value_and_grad on NumPy inputs (no optimiser step)", "implementation": impl.name}
    return Prepared(call, steps, compile_s=compile_s, peak=host_peak, extra=extra)


def steps_for(seconds_per_step: float, min_call_s: float, max_steps: int) -> int:
    """Outer steps per timed call: enough to last ``min_call_s``, at most ``max_steps``."""
    return int(min(max_steps, max(1, math.ceil(min_call_s / max(seconds_per_step, 1e-9)))))

"""``maml-parity bench``: implementations of the same training step timed side by side.

Every row times one implementation on one setting (config, T inner steps, B tasks per outer step,
hidden width) in the same process, so that ratios between rows are fair even on a noisy machine.
Which rows exist is data the twins' adapters declare (:mod:`parity.bench.rows`: each built-in
twin's training chunk and its variants, the seed's own loop as the baseline); any other
implementation a SPEC names is timed through its contract call. What a run measures is in
:mod:`parity.bench.settings`; how (timing, peak memory, FLOPs from small compiles) in
:mod:`parity.bench.measure`; the table, targets, JSON and plot in :mod:`parity.bench.output`;
the run itself in :mod:`parity.bench.run`.

Times are the median over repeats of one call of ``n`` steps, after a warm-up call, each call
synchronised with its device before the clock stops. The JSON layout is in docs/performance.md
(``bench --json``).
"""

from __future__ import annotations

from parity.bench.measure import Prepared, Unavailable, host_peak, step_cost
from parity.bench.output import (
    TABLE_HEADER,
    Row,
    row_dict,
    row_line,
    summary_lines,
    table_lines,
    targets,
    write_json,
    write_plot,
)
from parity.bench.rows import BenchRow, Options, Target, choose, contract_row, optimizer_ratio, table
from parity.bench.run import configure, machine_info, measure, run_bench
from parity.bench.settings import (
    ADAM_BATCH_POINT,
    BATCH_POINT,
    BIG_BATCH_POINT,
    CONV_POINTS,
    DEVICES,
    LONG_POINT,
    QUICK_SETTINGS,
    QUICK_SETTINGS_GPU,
    REMAT_B,
    REMAT_T,
    SEED_ALPHA_POINT,
    SEED_LOOP_MAX_B,
    SWEEP_B_CPU,
    SWEEP_B_GPU,
    SWEEP_T,
    SWEEP_WIDTH,
    Setting,
    estimated_mb,
    full_settings,
    plan,
)

__all__ = [
    "ADAM_BATCH_POINT",
    "BATCH_POINT",
    "BIG_BATCH_POINT",
    "CONV_POINTS",
    "DEVICES",
    "LONG_POINT",
    "QUICK_SETTINGS",
    "QUICK_SETTINGS_GPU",
    "REMAT_B",
    "REMAT_T",
    "SEED_ALPHA_POINT",
    "SEED_LOOP_MAX_B",
    "SWEEP_B_CPU",
    "SWEEP_B_GPU",
    "SWEEP_T",
    "SWEEP_WIDTH",
    "TABLE_HEADER",
    "BenchRow",
    "Options",
    "Prepared",
    "Row",
    "Setting",
    "Target",
    "Unavailable",
    "choose",
    "configure",
    "contract_row",
    "estimated_mb",
    "full_settings",
    "host_peak",
    "machine_info",
    "measure",
    "optimizer_ratio",
    "plan",
    "row_dict",
    "row_line",
    "run_bench",
    "step_cost",
    "summary_lines",
    "table",
    "table_lines",
    "targets",
    "write_json",
    "write_plot",
]

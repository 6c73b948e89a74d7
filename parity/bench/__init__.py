"""``maml-parity bench``: the JAX twin, the PyTorch twin (and its variants) and the seed's own loop, side by side.

Every row times one implementation on one setting (config, T inner steps, B tasks per outer step,
hidden width) in the same process, so that ratios between rows are fair even on a noisy machine.
The rows are described in :mod:`parity.bench.runners`; what a run measures in
:mod:`parity.bench.settings`; how (timing, peak memory, the device's probed peak, XLA's FLOP and
byte counts) in :mod:`parity.bench.measure`; the table, targets, JSON and plot in
:mod:`parity.bench.output`; the run itself in :mod:`parity.bench.run`.

Times are the median over repeats of one call of ``n`` steps, after a warm-up call, with
``jax.block_until_ready`` / ``torch.cuda.synchronize`` before the clock stops. The JSON layout
is in docs/performance.md (``bench --json``).
"""

from __future__ import annotations

from parity.bench.measure import (
    Prepared,
    Unavailable,
    copy_probe,
    device_peaks,
    host_peak,
    matmul_probe,
    step_cost,
    step_cost_exact,
)
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
from parity.bench.profiling import jax_hlo_summary, torch_profile
from parity.bench.run import configure, machine_info, measure, run_bench
from parity.bench.runners import (
    prepare,
    prepare_jax,
    prepare_seed_loop,
    prepare_torch,
    prepare_torch_graph,
    prepare_torchfunc,
)
from parity.bench.settings import (
    BATCH_POINT,
    BIG_BATCH_POINT,
    DEFAULT_IMPLS,
    DEVICES,
    IMPLS,
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
    jax_chunk_length,
    plan,
)

__all__ = [
    "BATCH_POINT",
    "BIG_BATCH_POINT",
    "DEFAULT_IMPLS",
    "DEVICES",
    "IMPLS",
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
    "Prepared",
    "Row",
    "Setting",
    "Unavailable",
    "configure",
    "copy_probe",
    "device_peaks",
    "estimated_mb",
    "full_settings",
    "host_peak",
    "jax_chunk_length",
    "jax_hlo_summary",
    "machine_info",
    "matmul_probe",
    "measure",
    "plan",
    "prepare",
    "prepare_jax",
    "prepare_seed_loop",
    "prepare_torch",
    "prepare_torch_graph",
    "prepare_torchfunc",
    "row_dict",
    "row_line",
    "run_bench",
    "step_cost",
    "step_cost_exact",
    "summary_lines",
    "table_lines",
    "targets",
    "torch_profile",
    "write_json",
    "write_plot",
]

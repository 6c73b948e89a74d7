"""Output: the rows, the issues' targets, the table, the JSON file and the plot."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from parity.bench.settings import Setting


@dataclasses.dataclass
class Row:
    """One measurement: the JSON row of ``bench --json``."""

    impl: str  # a row's name (parity.bench.rows) or the SPEC of an implementation
    config: str  # preset the setting starts from
    T: int
    B: int
    width: int
    remat: bool
    steps_per_call: int  # outer steps per timed call (a compiled row's chunk length)
    repeats: int  # timed calls after the warm-up
    us_per_step: float  # median wall time per outer step
    us_per_task_step: float  # us_per_step / (B·T): one task, one inner step
    cpu_us_per_step: float  # median process CPU time per outer step (≈ wall on a quiet core)
    min_us_per_step: float  # fastest repeat
    compile_s: float  # compiled rows: trace + lower + compile; contract rows: the first call; 0 for eager rows
    first_call_s: float  # the warm-up call (after compile_s)
    peak_mem_mb: float  # peak memory of the warm-up call above the level before it
    tasks_per_s: float  # B / step time
    speedup_vs_seed_loop: float | None  # median over rounds of (seed loop's step time / this row's), same setting
    # Throughput from one compiled program's counts for this setting (measure.step_cost; the same counts for
    # every row of the setting), and its share of the device's probed peak (machine["peaks"]).
    flops_per_step: float | None = None
    bytes_per_step: float | None = None
    gflop_per_s: float | None = None
    gb_per_s: float | None = None
    pct_peak_flops: float | None = None
    pct_peak_bw: float | None = None
    inner_optimizer: str = "sgd"  # the setting's (parity.inner.INNER_OPTIMIZERS)
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)  # impl-specific details


def _key(row: Row) -> tuple[Any, ...]:
    return (row.config, row.T, row.B, row.width, row.remat, row.inner_optimizer)


def row_dict(row: Row) -> dict[str, Any]:
    out = dataclasses.asdict(row)
    out.update(out.pop("extra"))
    return out


# --- targets (issues 4 and 10) ---------------------------------------------------------------------


def targets(rows: list[Row], device: str = "cpu", declared: list[Any] | None = None) -> list[dict[str, Any]]:
    """The goals the twins declare (``bench_targets()``; ``declared`` instead, given), each with the
    measured value and whether it is met (None: not measured). A CPU run reports the CPU goals,
    a GPU or TPU run the accelerator ones."""
    from parity.bench.rows import targets_of_twins
    from parity.bench.settings import is_accelerator

    def find(impl: str, setting: Setting) -> Row | None:
        key = (setting.config, setting.T, setting.B, setting.width, setting.remat, setting.inner_optimizer)
        return next((r for r in rows if r.impl == impl and _key(r) == key), None)

    accelerator = is_accelerator(device)
    out = []
    for target in targets_of_twins() if declared is None else declared:
        if target.accelerator != accelerator:
            continue
        v = target.value(find)
        met = None if v is None else (v >= target.goal if target.op == ">=" else v <= target.goal)
        out.append({"target": target.name, "value": v, "goal": f"{target.op} {target.goal:g}", "met": met})
    return out


# --- the table -------------------------------------------------------------------------------------

TABLE_HEADER = (
    f"{'impl':<12} {'config':<10} {'T':>5} {'B':>6} {'w':>4} {'remat':>5} {'inner':>8} "
    f"{'us/step':>11} {'us/task-step':>12} {'compile s':>9} {'peak MB':>8} {'tasks/s':>10} "
    f"{'vs seed':>8} {'GFLOP/s':>9} {'%pk F':>6} {'%pk BW':>6}"
)


def _opt(value: float | None, spec: str, width: int) -> str:
    return f"{'' if value is None else format(value, spec):>{width}}"


def row_line(row: Row | dict[str, Any]) -> str:
    r = row_dict(row) if isinstance(row, Row) else row
    speed = r["speedup_vs_seed_loop"]
    return (
        f"{r['impl']:<12} {r['config']:<10} {r['T']:>5} {r['B']:>6} {r['width']:>4} {'yes' if r['remat'] else '':>5} "
        f"{r.get('inner_optimizer', 'sgd'):>8} {r['us_per_step']:>11.1f} {r['us_per_task_step']:>12.2f} "
        f"{r['compile_s']:>9.2f} {r['peak_mem_mb']:>8.1f} "
        f"{r['tasks_per_s']:>10.0f} {'' if speed is None else f'{speed:.1f}x':>8} "
        f"{_opt(r.get('gflop_per_s'), '.2f', 9)} {_opt(r.get('pct_peak_flops'), '.2f', 6)} "
        f"{_opt(r.get('pct_peak_bw'), '.2f', 6)}"
    )


def peak_lines(result: dict[str, Any]) -> list[str]:
    """The device's probed peak (what the table's % columns divide by)."""
    peaks = result["machine"].get("peaks")
    if not peaks:
        return []
    mm, cp = peaks["matmul"], peaks["copy"]
    return [
        f"peak: matmul {mm['flop_per_s'] / 1e9:,.1f} GFLOP/s (float32 {mm['n']}x{mm['n']}, precision highest); "
        f"copy {cp['bytes_per_s'] / 1e9:,.1f} GB/s (x+1 over {cp['mib']:g} MiB, read + write)"
    ]


def table_lines(result: dict[str, Any]) -> list[str]:
    """The whole table: header, a line per row, then :func:`summary_lines`."""
    return [TABLE_HEADER, *(row_line(r) for r in result["rows"]), *summary_lines(result)]


def summary_lines(result: dict[str, Any]) -> list[str]:
    """The device's peak, the targets, met or not, and the rows skipped."""
    lines = peak_lines(result)
    for t in result["targets"]:
        value = "not measured" if t["value"] is None else f"{t['value']:.3g}"
        verdict = {True: "met", False: "NOT met", None: "-"}[t["met"]]
        lines.append(f"target: {t['target']}: {value} (goal {t['goal']}) {verdict}")
    lines += [f"skipped: {s['impl']} {s['setting']}: {s['reason']}" for s in result["skipped"]]
    return lines


def write_json(result: dict[str, Any], path: Path) -> None:
    """Written to a temporary file and renamed: a reader (or a killed run) never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(result, indent=1) + "\n")
    tmp.replace(path)


def write_plot(result: dict[str, Any], path: Path) -> None:
    """Time per task-step against B (at T = 5) and against T (at B = 25), width 32, log axes.

    Where the run has no such rows (a custom plan, a GPU run), the most common T, B and the smallest width.
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
        for impl in dict.fromkeys(r["impl"] for r in rows):  # the run's order: the table's
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

"""The bench's machinery on a tiny setting: structure and sanity of what it reports.

No timing assertions: only that every number is there, finite and positive where it must be.
"""

from __future__ import annotations

import json
import math
import os

import pytest

from parity import bench
from parity.bench import Setting
from parity.cli import main
from parity.config import ConfigError

TINY = Setting("seed-alpha", T=2, B=3, width=8)
ROW_KEYS = {
    "impl",
    "config",
    "T",
    "B",
    "width",
    "remat",
    "us_per_step",
    "us_per_task_step",
    "compile_s",
    "peak_mem_mb",
    "speedup_vs_seed_loop",
    "tasks_per_s",
}
POSITIVE = ("us_per_step", "us_per_task_step", "cpu_us_per_step", "min_us_per_step", "tasks_per_s", "first_call_s")


@pytest.fixture
def restore_env(monkeypatch):
    # configure() may add to XLA_FLAGS for single-threaded runs; keep the session's value.
    monkeypatch.setenv("XLA_FLAGS", os.environ.get("XLA_FLAGS", ""))


@pytest.fixture(scope="module")
def result():
    saved = os.environ.get("XLA_FLAGS")
    settings = [
        (TINY, ["seed-loop", "jax", "torch"]),
        (Setting("seed-alpha", T=3, B=2, width=8, remat=True), ["jax", "torch"]),
    ]
    yield bench.run_bench(settings=settings, repeats=2, min_call_s=0.001, command="pytest", pin=False)
    if saved is None:
        os.environ.pop("XLA_FLAGS", None)
    else:
        os.environ["XLA_FLAGS"] = saved


def test_json_structure(result, tmp_path, restore_env):
    path = tmp_path / "bench.json"
    bench.write_json(result, path)
    loaded = json.loads(path.read_text())
    assert set(loaded) == {"machine", "rows", "targets", "skipped"}
    machine = loaded["machine"]
    for key in ("platform", "cpu", "threads", "device", "jax", "torch", "numpy", "date", "command"):
        assert key in machine, key
    assert machine["device"] == "cpu" and machine["threads"] == 1 and machine["command"] == "pytest"
    impls = [(r["impl"], r["remat"]) for r in loaded["rows"]]
    assert impls == [("seed-loop", False), ("jax", False), ("torch", False), ("jax", True), ("torch", True)]
    for row in loaded["rows"]:
        assert ROW_KEYS <= set(row), ROW_KEYS - set(row)
    peaks = machine["peaks"]
    assert peaks["matmul"]["flop_per_s"] > 0 and peaks["copy"]["bytes_per_s"] > 0


def test_throughput_from_xla_counts(result):
    """Every row carries the JAX program's counts for its setting, and rates consistent with its time."""
    peaks = result["machine"]["peaks"]
    by_setting: dict[tuple, set] = {}
    for row in result["rows"]:
        assert math.isfinite(row["flops_per_step"]) and row["flops_per_step"] > 0
        assert math.isfinite(row["bytes_per_step"]) and row["bytes_per_step"] > 0
        assert row["gflop_per_s"] == pytest.approx(row["flops_per_step"] / row["us_per_step"] / 1e3)
        assert row["pct_peak_flops"] == pytest.approx(100 * row["gflop_per_s"] * 1e9 / peaks["matmul"]["flop_per_s"])
        assert row["pct_peak_bw"] == pytest.approx(100 * row["gb_per_s"] * 1e9 / peaks["copy"]["bytes_per_s"])
        by_setting.setdefault((row["T"], row["B"], row["width"]), set()).add(row["flops_per_step"])
    assert all(len(counts) == 1 for counts in by_setting.values())


def test_numbers_are_positive_and_finite(result):
    for row in result["rows"]:
        for key in POSITIVE:
            assert math.isfinite(row[key]) and row[key] > 0, (row["impl"], key, row[key])
        assert math.isfinite(row["compile_s"]) and row["compile_s"] >= 0
        assert math.isfinite(row["peak_mem_mb"]) and row["peak_mem_mb"] >= 0
        assert row["us_per_task_step"] == pytest.approx(row["us_per_step"] / (row["B"] * row["T"]))
        assert row["tasks_per_s"] == pytest.approx(row["B"] * 1e6 / row["us_per_step"])
    by_impl = {(r["impl"], r["remat"]): r for r in result["rows"]}
    assert by_impl[("seed-loop", False)]["speedup_vs_seed_loop"] == pytest.approx(1.0)
    jax_row = by_impl[("jax", False)]
    assert jax_row["compile_s"] > 0 and jax_row["peak_mem_mb"] == pytest.approx(jax_row["xla_total_mb"])
    assert math.isfinite(jax_row["speedup_vs_seed_loop"]) and jax_row["speedup_vs_seed_loop"] > 0
    # No seed loop for the remat setting: no speedup to report.
    assert by_impl[("jax", True)]["speedup_vs_seed_loop"] is None


def test_targets_and_table(result, tmp_path):
    names = [t["target"] for t in result["targets"]]
    assert len(names) == 9 and all(t["met"] is None and t["value"] is None for t in result["targets"])
    lines = bench.table_lines(result)
    assert lines[0] == bench.TABLE_HEADER and len(lines) == 1 + len(result["rows"]) + 1 + len(names)
    assert lines[1 + len(result["rows"])].startswith("peak: matmul ")
    bench.write_plot(result, tmp_path / "plot.png")
    assert (tmp_path / "plot.png").stat().st_size > 0


def test_plans():
    quick = bench.plan(quick=True, device="cpu")
    assert [(s, impls) for s, impls in quick] == [
        (bench.SEED_ALPHA_POINT, ["seed-loop", "jax", "torch"]),
        (bench.BATCH_POINT, ["seed-loop", "jax", "torch"]),
        (bench.ADAM_BATCH_POINT, ["jax", "torch"]),  # the seed's loop has plain gradient steps only
    ]
    full = bench.plan(quick=False, device="cpu")
    settings = [s for s, _ in full]
    assert Setting("seed-maml", 3, 1, 32) in settings and bench.SEED_ALPHA_POINT in settings
    assert len(settings) == 1 + 4 * 3 * 2 + 2 + 2 + 2  # ... + the inner optimisers' two + the conv steps' two
    assert [s.config for s in settings if s in bench.CONV_POINTS] == ["digits-5w1s", "omniglot-5w1s"]
    # issue 18: the torch.func formulation beside the twins at the conv steps only (a CPU run's default)
    assert [impls for s, impls in full if s in bench.CONV_POINTS] == [["seed-loop", "jax", "torch", "torch-func"]] * 2
    assert all("torch-func" not in impls for s, impls in full if s not in bench.CONV_POINTS)
    assert all("torch-func" not in impls for _, impls in bench.plan(False, "cpu", ["jax", "torch"]))
    conv = bench.plan(False, "cpu", only=bench.CONV_POINTS)  # bench --conv
    assert conv == [(s, ["seed-loop", "jax", "torch", "torch-func"]) for s in bench.CONV_POINTS]
    assert {s.inner_optimizer for s in settings} == {"sgd", "momentum", "adam"}
    remat = [impls for s, impls in full if s.T == bench.REMAT_T]
    assert remat == [["jax", "torch"], ["jax", "torch"]]  # the seed loop has no remat
    assert max(s.B for s in bench.full_settings("gpu")) == 65_536


def test_memory_budget_skips_rows(restore_env):
    out = bench.run_bench(settings=[(TINY, ["jax", "torch"])], max_mem_mb=1e-6, repeats=1, pin=False)
    assert out["rows"] == [] and [s["impl"] for s in out["skipped"]] == ["jax", "torch"]


@pytest.mark.parametrize(
    "argv, field",
    [
        (["--threads", "0"], "threads"),
        (["--unroll", "-1"], "unroll"),
        (["--chunk", "0"], "chunk"),
        (["--time-budget", "0"], "time_budget"),
        (["--conv"], "conv"),  # with --quick: two different sets of settings
    ],
    ids=["threads", "unroll", "chunk", "time-budget", "conv-and-quick"],
)
def test_bad_flags_are_one_line_errors(argv, field, capsys, restore_env):
    assert main(["bench", "--quick", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and field in err[0]


def test_gpu_request_without_gpu_fails_clearly(capsys, restore_env):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is visible here")
    assert main(["bench", "--quick", "--device", "gpu"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and "device" in err[0] and "gpu" in err[0]


def test_scaling_rows_from_forced_host_devices():
    """bench --scaling machinery on a tiny setting: structure and self-consistent ratios, no timing claims."""
    from parity.scaling import run_scaling

    result = run_scaling(counts=(1, 2), strong_batch=4, weak_batch=2, inner_steps=1, steps=2, repeats=1)
    rows = result["rows"]
    assert [(r["mode"], r["devices"], r["B"]) for r in rows] == [
        ("strong", 1, 4),
        ("strong", 2, 4),
        ("weak", 1, 2),
        ("weak", 2, 4),
    ]
    for r in rows:
        assert r["platform"] == "cpu" and r["tasks_per_s"] > 0 and math.isfinite(r["us_per_step"])
        assert r["tasks_per_s"] == pytest.approx(r["B"] / (r["us_per_step"] * 1e-6), rel=1e-9)
    assert rows[0]["speedup"] == rows[2]["speedup"] == 1.0
    assert rows[1]["efficiency"] == pytest.approx(rows[1]["speedup"] / 2)


def test_an_implementation_by_spec_is_timed_through_its_contract(restore_env):
    """A user's file (not a bench row) and a row by name, side by side; the oracle is float64-only."""
    spec = "examples/torchfunc_maml.py:IMPL"
    settings = [(TINY, ["seed-loop", spec, "numpy"])]
    out = bench.run_bench(settings=settings, repeats=2, min_call_s=0.001, pin=False, flops=False)
    rows = {r["impl"]: r for r in out["rows"]}
    assert list(rows) == ["seed-loop", spec]
    assert out["skipped"] == [
        {
            "impl": "numpy",
            "setting": TINY.label,
            "reason": "the NumPy oracle computes in float64 only (it is the float64 reference)",
        }
    ]
    row = rows[spec]
    assert row["timed"].startswith("meta_value_and_grad on NumPy inputs") and row["implementation"] == "torchfunc"
    assert row["compile_s"] > 0 and row["first_call_s"] > 0 and row["steps_per_call"] >= 1
    assert row["us_per_task_step"] == pytest.approx(row["us_per_step"] / (TINY.B * TINY.T))
    assert math.isfinite(row["speedup_vs_seed_loop"]) and row["speedup_vs_seed_loop"] > 0


def test_an_implementation_that_breaks_the_contract_is_a_skipped_row(tmp_path, restore_env):
    path = tmp_path / "broken.py"
    path.write_text(
        "import numpy as np\n"
        "class Broken:\n"
        "    name = 'broken'\n"
        "    def meta_value_and_grad(self, params, alpha, tasks, cfg):\n"
        "        return {'outer_loss': np.float64(1.0)}\n"
    )
    spec = f"{path}:Broken"
    out = bench.run_bench(settings=[(TINY, ["torch", spec])], repeats=1, min_call_s=0.001, pin=False, flops=False)
    assert [r["impl"] for r in out["rows"]] == ["torch"]
    assert [s["impl"] for s in out["skipped"]] == [spec] and "failed" in out["skipped"][0]["reason"]


def test_an_unknown_spec_is_one_error_naming_the_rows(restore_env):
    with pytest.raises(ConfigError) as err:
        bench.plan(quick=True, device="cpu", impls=["jax", "no-such-row"])
    assert err.value.field == "impl" and "'no-such-row'" in str(err.value) and "torch-graph" in str(err.value)

"""A user's implementation is untrusted code: it cannot fake a pass, hang check or corrupt its output.

Each planted misbehaviour is a small implementation file written to the test's folder (the NumPy
oracle with one method overridden, so that no framework is imported) and checked by a real
``python -m parity check`` in a subprocess with a timeout: the exit status, the FAIL row's text and
the absence of a traceback are asserted. The worker (``parity.worker``) is what makes each of these
a row instead of the end of the command.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from parity import harness
from parity.config import ConfigError
from parity.golden import golden_arrays
from parity.oracle import NumpyOracle
from parity.worker import RemoteImpl, load

ROOT = Path(__file__).resolve().parents[1]
MUTANTS = ROOT / "tests" / "mutants_impls.py"
CASE = "T1-a0.01-mse-scalar-first"  # one cheap case of the quick matrix

PLANTED = """\
import os, sys, threading, time
import numpy as np
from parity.oracle import NumpyOracle

class Planted(NumpyOracle):
    name = "planted"

    def meta_value_and_grad(self, params, alpha, tasks, cfg):
        {body}
        return super().meta_value_and_grad(params, alpha, tasks, cfg)

{extra}
IMPL = Planted()
"""


def plant(tmp_path: Path, body: str = "pass", extra: str = "", top: str = "") -> str:
    source = PLANTED.format(body=body, extra=textwrap.dedent(extra))
    (tmp_path / "planted.py").write_text(top + source)
    return "planted.py:IMPL"


def check(tmp_path: Path, spec: str, *more: str, timeout: int = 240) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    argv = [sys.executable, "-m", "parity", "check", "--quick", "--cases", CASE, "--impl", "numpy", "--impl", spec]
    proc = subprocess.run([*argv, *more], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=timeout)
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr
    return proc


def fail_rows(proc: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in (proc.stdout + proc.stderr).splitlines() if line.startswith(CASE) and " FAIL: " in line]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("sys.exit(0)", "planted raised SystemExit: sys.exit(0) called inside meta_value_and_grad"),
        ("sys.exit(3)", "planted raised SystemExit: sys.exit(3) called inside meta_value_and_grad"),
        (
            "os._exit(0)",
            "planted: the worker exited with status 0 in meta_value_and_grad() (os._exit or a crash in the",
        ),
        ("os.kill(os.getpid(), 9)", "planted: the worker was killed by SIGKILL in meta_value_and_grad()"),
        ("raise KeyboardInterrupt('planted')", "planted raised KeyboardInterrupt: planted"),
        ("raise type('Boom', (BaseException,), {})('base')", "planted raised Boom: base"),
    ],
    ids=["sys-exit-0", "sys-exit-3", "os-exit", "sigkill", "keyboard-interrupt", "base-exception"],
)
def test_an_implementation_that_exits_dies_or_raises_is_a_fail_row(tmp_path, body, message):
    proc = check(tmp_path, plant(tmp_path, body))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    rows = fail_rows(proc)
    assert rows and all(message in row for row in rows), proc.stdout
    assert proc.stdout.splitlines()[-1].startswith("failing: ") or "FAIL:" in proc.stdout


@pytest.mark.parametrize(
    ("top", "extra", "message"),
    [
        ("import sys\nsys.exit(0)\n", "", "loading it failed (SystemExit: sys.exit(0) called while it was imported)"),
        ("import os\nos._exit(0)\n", "", "the worker exited with status 0 while loading it"),
        ("", "class Bad(Planted):\n    def __init__(self):\n        raise ValueError('no')\n", ""),
    ],
    ids=["sys-exit-at-import", "os-exit-at-import", "raising-constructor"],
)
def test_a_file_that_exits_at_import_is_one_line_and_exit_2(tmp_path, top, extra, message):
    spec = plant(tmp_path, top=top, extra=extra)
    if not message:  # the raising constructor: IMPL replaced by the class, called by the registry
        spec, message = "planted.py:Bad", "loading it failed (ValueError: no)"
    proc = check(tmp_path, spec)
    assert proc.returncode == 2 and proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("maml-parity: error: impl: ") and message in lines[0], lines


def test_supports_that_raises_is_a_fail_row(tmp_path):
    spec = plant(tmp_path, extra="Planted.supports = lambda self, cfg: 1 / 0\n")
    proc = check(tmp_path, spec)
    assert proc.returncode == 1
    assert any("planted raised ZeroDivisionError: division by zero" in row for row in fail_rows(proc)), proc.stdout


def test_a_trace_that_raises_leaves_the_failure_reported(tmp_path):
    body = "out = super().meta_value_and_grad(params, alpha, tasks, cfg); out['outer_loss'] *= 2; return out"
    spec = plant(
        tmp_path, body, extra="def _t(self, *a):\n    raise RuntimeError('no trace today')\nPlanted.trace = _t\n"
    )
    proc = check(tmp_path, spec)
    assert proc.returncode == 1
    assert "trace failed (RuntimeError: no trace today)" in proc.stdout
    assert any("outer_loss" in line and line.rstrip().endswith("FAIL") for line in proc.stdout.splitlines())


def test_stray_output_never_corrupts_json_on_stdout(tmp_path):
    proc = check(tmp_path, plant(tmp_path, "print('debugging output'); os.write(1, b'raw bytes\\n')"), "--json", "-")
    document = json.loads(proc.stdout)  # stdout is the JSON document and nothing else
    assert document["ok"] is True and proc.returncode == 0
    assert "[planted stdout] debugging output" in proc.stderr and "[planted stdout] raw bytes" in proc.stderr


def test_chdir_inside_the_implementation_does_not_move_the_json_file(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    proc = check(tmp_path, plant(tmp_path, f"os.chdir({str(elsewhere)!r})"), "--json", "out.json")
    assert proc.returncode == 0, proc.stdout
    assert json.loads((tmp_path / "out.json").read_text())["ok"] is True
    assert not (elsewhere / "out.json").exists()


def test_a_non_daemon_thread_does_not_keep_the_command_alive(tmp_path):
    started = time.monotonic()
    body = "threading.Thread(target=time.sleep, args=(600,)).start()"
    proc = check(tmp_path, plant(tmp_path, body), timeout=120)
    assert proc.returncode == 0, proc.stdout
    assert time.monotonic() - started < 120


def test_a_hang_is_stopped_at_the_case_time_limit_and_named(tmp_path):
    plant(tmp_path, "time.sleep(600)")
    impls = [NumpyOracle(), load(str(tmp_path / "planted.py") + ":IMPL", timeout=3)]
    started = time.monotonic()
    rows = harness.run_case(harness.Case(CASE, harness.BASE.replace(inner_steps=1)), impls)
    assert time.monotonic() - started < 60
    errors = [r for r in rows if r.verdict == "FAIL" and r.quantity == "error"]
    assert errors and "timed out in meta_value_and_grad(): the limit of 3 s per case" in errors[0].detail
    assert not harness.overall_ok(rows)
    # the next case gets a fresh worker (and fails the same way, not with a dead pipe)
    rows = harness.run_case(harness.Case(CASE, harness.BASE.replace(inner_steps=1)), impls)
    assert any("timed out" in r.detail for r in rows if r.verdict == "FAIL")


def test_built_ins_stay_in_process_and_others_run_in_a_worker(tmp_path):
    assert isinstance(load("numpy"), NumpyOracle)
    remote = load(f"{MUTANTS}:CONTROL")
    try:
        assert isinstance(remote, RemoteImpl) and remote.name == "control"
        assert getattr(remote, "trace", None) is None and callable(remote.supports)
    finally:
        remote.close()
    with pytest.raises(ConfigError, match="case_timeout: must be a number of seconds > 0"):
        harness.load_impls(["numpy", f"{MUTANTS}:CONTROL"], case_timeout=0)


# --- nothing compared is never a PASS -----------------------------------------------------------------


def test_a_dtype_where_nothing_was_compared_is_not_a_pass(tmp_path):
    extra = "Planted.supports = lambda self, cfg: 'float64 only' if cfg.dtype != 'float64' else None\n"
    proc = check(tmp_path, plant(tmp_path, extra=extra))
    assert proc.returncode == 0 and "\nINCOMPLETE: 1 cases" in proc.stdout and "\nPASS" not in proc.stdout
    gap = proc.stdout[proc.stdout.index("not compared: planted in float32 (") :]
    assert "planted (float32): float64 only" in gap and "--strict fails this" in " ".join(gap.split())
    proc = check(tmp_path, "planted.py:IMPL", "--strict")
    assert proc.returncode == 1 and proc.stdout.count("\nFAIL: ") == 1


def test_nothing_compared_at_all_fails_without_strict(tmp_path):
    proc = check(tmp_path, plant(tmp_path, extra="Planted.supports = lambda self, cfg: 'nothing'\n"))
    assert proc.returncode == 1 and "not compared: planted in any case (" in proc.stdout
    assert "planted (float64): nothing" in proc.stdout and "fails the check" in proc.stdout


@pytest.mark.slow
def test_jax_without_x64_is_not_a_pass(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_ENABLE_X64": "0"}
    argv = [sys.executable, "-m", "parity", "check", "--quick", "--cases", "T0-"]
    proc = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0 and "INCOMPLETE" in proc.stdout and "\nPASS" not in proc.stdout
    assert "not compared: jax in float64" in proc.stdout
    proc = subprocess.run([*argv, "--strict"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1


# --- the output: compact, explained ------------------------------------------------------------------------


PATTERN_CASE = harness.Case(
    "T2-a0.05-l1-per_parameter-second",
    harness.BASE.replace(inner_steps=2, alpha_init=0.05, loss="l1", alpha_mode="per_parameter"),
)
PATTERNS = {
    "NO_CREATE_GRAPH": "missing create_graph=True or a detached inner gradient",
    "ALPHA_DETACHED": "alpha is detached from the graph",
    "SUM_LOSS": "before any update is 4 = K (support points) = Q (query points) = B (tasks) times the reference's",
    "TRANSPOSED_W1": "the forward pass, the loss or the model differs",
    "ALPHA_WRONG_SIGN": "the inner update differs",
}


@pytest.mark.parametrize("mutant", sorted(PATTERNS))
def test_patterns_name_the_planted_bugs(mutant):
    import mutants_impls  # tests/ is on sys.path (conftest.py)

    rows = harness.run_case(PATTERN_CASE, [NumpyOracle(), getattr(mutants_impls, mutant)])
    failing = [r for r in rows if r.verdict == "FAIL" and r.dtype == "float64"]
    assert failing and all(PATTERNS[mutant] in (r.divergence or {}).get("pattern", "") for r in failing), [
        (r.divergence or {}).get("pattern") for r in failing
    ]
    summary = harness.summary(rows)
    assert "pattern (1 of 1 failing cases): " in summary
    assert all(len(line) <= 120 for line in harness.table_lines(rows) + summary.splitlines() if "raised" not in line)


def test_a_sum_over_tasks_is_named_by_its_factor():
    class SumOverTasks(NumpyOracle):
        name = "sum-over-tasks"

        def meta_value_and_grad(self, params, alpha, tasks, cfg):
            out = super().meta_value_and_grad(params, alpha, tasks, cfg)
            b = cfg.meta_batch
            return {
                "outer_loss": out["outer_loss"] * b,
                "inner_losses": out["inner_losses"] * b,
                "grads": {k: v * b for k, v in out["grads"].items()},
                "alpha_grad": out["alpha_grad"] * b,
            }

    rows = harness.run_case(harness.Case(CASE, harness.BASE.replace(inner_steps=1)), [NumpyOracle(), SumOverTasks()])
    pattern = next(r.divergence["pattern"] for r in rows if r.verdict == "FAIL" and r.divergence)
    assert "every failing quantity is 4 = K (support points) = Q (query points) = B (tasks) times" in pattern


def test_the_default_output_is_a_line_per_passing_case_and_explains_what_it_prints(tmp_path):
    proc = check(tmp_path, plant(tmp_path))
    lines = proc.stdout.splitlines()
    assert [line for line in lines if line.startswith(CASE)] == [next(x for x in lines if x.startswith(CASE))]
    assert all(len(line) <= 120 for line in lines[1:]), [line for line in lines if len(line) > 120]
    assert "legend: gain∏ is the stability gate's product (nan: no implementation measures it" in proc.stdout
    assert "unsupported in 1 case: numpy (float32)" in proc.stdout


def test_an_untraced_failure_says_it_is_located_by_magnitude(tmp_path):
    body = "out = super().meta_value_and_grad(params, alpha, tasks, cfg); out['inner_losses'] *= 3; return out"
    proc = check(tmp_path, plant(tmp_path, body, extra="Planted.trace = None\n"))
    assert proc.returncode == 1
    assert "located by the largest difference among the returned results, not the first" in proc.stdout
    assert "docs/contract.md" in proc.stdout


# --- dump -----------------------------------------------------------------------------------------------------


def test_dump_refuses_results_that_are_not_finite():
    class NaNs(NumpyOracle):
        name = "nans"

        def meta_value_and_grad(self, params, alpha, tasks, cfg):
            out = super().meta_value_and_grad(params, alpha, tasks, cfg)
            out["outer_loss"] = np.asarray(np.nan)
            return out

    with pytest.raises(ConfigError, match=r"framework: nans returned results that are not all finite \(outer_loss"):
        golden_arrays(NaNs(), harness.BASE)


def test_dump_of_a_failing_implementation_is_one_line():
    class Raises(NumpyOracle):
        name = "raises"

        def meta_value_and_grad(self, params, alpha, tasks, cfg):
            raise SystemError("planted")

    with pytest.raises(ConfigError, match="framework: raises raised SystemError: planted; nothing written"):
        golden_arrays(Raises(), harness.BASE)


@pytest.mark.slow
def test_dump_with_traces_from_two_implementations_is_accepted_by_diff(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for framework in ("jax", "torch"):
        argv = [
            sys.executable,
            "-m",
            "parity",
            "dump",
            "--framework",
            framework,
            "--trace",
            "--out",
            f"{framework}.npz",
        ]
        subprocess.run(argv, cwd=tmp_path, env=env, check=True, capture_output=True, timeout=600)
    proc = subprocess.run(
        [sys.executable, "-m", "parity", "diff", "jax.npz", "torch.npz"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0 and "SAME: " in proc.stdout, proc.stdout + proc.stderr
    assert "trace/support_loss" in proc.stdout


# --- the pytest plugin ------------------------------------------------------------------------------------------


def test_plugin_resolves_an_ini_file_path_from_the_ini_folder(tmp_path):
    plant(tmp_path)
    (tmp_path / "pytest.ini").write_text(
        "[pytest]\naddopts = -p no:cacheprovider\nmaml_parity_impl = planted.py:IMPL\n"
        f"maml_parity_reference = numpy\nmaml_parity_matrix = quick\nmaml_parity_cases = {CASE}\n"
    )
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_it.py").write_text("def test_case(maml_parity_case):\n    maml_parity_case.check()\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "parity.pytest_plugin", "test_it.py", "-q"],
        cwd=tmp_path / "tests",
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0 and "1 passed" in proc.stdout, proc.stdout + proc.stderr


def test_a_rounding_sized_factor_is_not_explained_as_a_sum_for_a_mean():
    """A lone failing 0-d quantity is always some factor of its reference: only a whole number (a
    size of the problem) is a sum-for-mean signature, not the 1.00025 of a float32 rounding."""
    from parity.patterns import explain

    cfg = harness.BASE.replace(inner_steps=1)
    ref = {"outer_loss": np.float64(0.5), "grad/alpha": np.float64(-1.173295639)}
    off = {"outer_loss": np.float64(0.5), "grad/alpha": np.float64(-1.173588395)}  # 1.00025 x
    assert "a sum where the contract takes a mean" not in (explain(cfg, ref, off, {"grad/alpha"}, "float32") or "")
    summed = {"outer_loss": np.float64(2.0), "grad/alpha": np.float64(-1.173295639 * 4)}  # 4 = K = Q = B
    pattern = explain(cfg, ref, summed, {"outer_loss", "grad/alpha"}, "float64")
    assert "every failing quantity is 4 = K (support points)" in pattern

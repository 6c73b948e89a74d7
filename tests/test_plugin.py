"""The pytest plugin (parity/pytest_plugin.py), run the way a downstream project runs it.

Each test runs pytest in a subprocess on a small project written to a temporary folder, with
``-p parity.pytest_plugin`` (the same module the ``pytest11`` entry point names, so it also works
where maml-parity is installed). The framework-free tests use the NumPy oracle as the reference
and a copy of it as the implementation under test; the downstream example (the worked torch.func
implementation against JAX) is marked slow.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOWNSTREAM = ROOT / "examples" / "downstream"
MUTANTS = ROOT / "tests" / "mutants_impls.py"

INI = """\
[pytest]
addopts = --strict-markers -p no:cacheprovider -ra
maml_parity_reference = numpy
maml_parity_matrix = quick
maml_parity_cases = {cases}
{impl}
"""

IMPLS = '''\
import numpy as np

from parity.oracle import NumpyOracle


class Mine(NumpyOracle):
    name = "mine"


class Wrong(NumpyOracle):
    """Twice the outer loss: the sum over two points instead of their mean, say."""

    name = "wrong"

    def meta_value_and_grad(self, params, alpha, tasks, cfg):
        out = super().meta_value_and_grad(params, alpha, tasks, cfg)
        out["outer_loss"] = np.asarray(2 * out["outer_loss"])
        return out


class Narrow(NumpyOracle):
    """Built for one hidden layer of 8: wrong for any other net (a user's own configuration)."""

    name = "narrow"

    def meta_value_and_grad(self, params, alpha, tasks, cfg):
        out = super().meta_value_and_grad(params, alpha, tasks, cfg)
        if params["w0"].shape != (8, 1):
            out["outer_loss"] = np.asarray(2 * out["outer_loss"])
        return out


MINE = Mine()
WRONG = Wrong()
NARROW = Narrow()
'''

TESTS = """\
import os

import numpy as np
import pytest


def test_case(maml_parity_case):
    maml_parity_case.check()


@pytest.mark.maml_parity
def test_golden(maml_parity_golden):
    scale = float(os.environ.get("GOLDEN_SCALE", "1"))
    arrays = {"grad/w0": np.linspace(0.0, 1.0, 6).reshape(2, 3) * scale, "outer_loss": np.asarray(0.5)}
    maml_parity_golden.check(arrays, "mine")
"""


def project(tmp_path: Path, impl: str | None = "mine.py:MINE", cases: str = "T0-") -> Path:
    (tmp_path / "pytest.ini").write_text(INI.format(cases=cases, impl=f"maml_parity_impl = {impl}" if impl else ""))
    (tmp_path / "mine.py").write_text(IMPLS)
    (tmp_path / "test_mine.py").write_text(TESTS)
    return tmp_path


def run_pytest(where: Path, *args: str, env: dict[str, str] | None = None, timeout: int = 600) -> tuple[int, str]:
    environ = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "parity.pytest_plugin", *args],
        cwd=where,
        env=environ,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return proc.returncode, proc.stdout + proc.stderr


def test_importing_the_plugin_imports_no_framework():
    code = (
        "import json, sys, time; import pytest; t = time.perf_counter(); import parity.pytest_plugin; "
        "s = time.perf_counter() - t; "
        "print(json.dumps({'seconds': s, 'loaded': sorted(m for m in ('numpy', 'jax', 'torch') if m in sys.modules)}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["loaded"] == []  # not even NumPy: the hooks import what they need when they act


def test_marker_is_registered_for_strict_markers(tmp_path):
    code, out = run_pytest(project(tmp_path), "--markers")
    assert code == 0 and "@pytest.mark.maml_parity(cases=SUBSTRING" in out


def test_generated_cases_pass_for_a_correct_implementation(tmp_path):
    code, out = run_pytest(project(tmp_path), "-k", "test_case", "-v")
    assert code == 0, out
    assert "test_case[T0-a0.001-l1-fixed-second] PASSED" in out


def test_generated_case_fails_with_the_table(tmp_path):
    code, out = run_pytest(project(tmp_path), "-k", "test_case", "--maml-parity-impl", "mine.py:WRONG")
    assert code == 1, out
    assert "Traceback" not in out
    assert "the implementation differs from the reference" in out
    assert "case                               pair" in out  # the table's header
    fail_rows = [line for line in out.splitlines() if line.startswith("T0-a0.001-l1-fixed-second") and "FAIL" in line]
    assert any("numpy~wrong" in line and "outer_loss" in line for line in fail_rows), out


def test_no_implementation_named_fails_with_one_line(tmp_path):
    code, out = run_pytest(project(tmp_path, impl=None), "-k", "test_case")
    assert code == 1
    assert "no implementation under test: pass --maml-parity-impl SPEC or set maml_parity_impl" in out


def test_a_bad_spec_fails_naming_it(tmp_path):
    # one usage error at collection (exit 4), not a failure per case (issue 20)
    code, out = run_pytest(project(tmp_path, impl="mine.py:NOPE"), "-k", "test_case")
    assert code == 4 and "impl: '" in out and "mine.py:NOPE': " in out and "has no attribute 'NOPE'" in out
    assert out.count("has no attribute 'NOPE'") == 1 and "Traceback" not in out


def test_unsupported_is_skipped_never_passed_and_fails_under_strict(tmp_path):
    where = project(tmp_path, cases="trajectory-seed-alpha")
    code, out = run_pytest(where, "-k", "test_case")
    assert code == 0 and "1 skipped" in out and "passed" not in out.splitlines()[-1]
    assert "mine does not support trajectory-seed-alpha: no train_trajectory capability" in out
    code, out = run_pytest(where, "-k", "test_case", "--maml-parity-strict")
    assert code == 1 and "(strict)" in out


@pytest.mark.slow  # seven pytest runs
def test_golden_file_written_then_compared_then_regenerated(tmp_path):
    where = project(tmp_path)
    golden = where / "test_mine" / "mine.npz"
    code, out = run_pytest(where, "-k", "test_golden")
    assert code == 1 and "did not exist: written" in out and golden.exists()  # a new golden file never passes unseen
    code, out = run_pytest(where, "-k", "test_golden")
    assert code == 0, out
    # float64 tolerance is rtol 1e-10 of max|ref| = 1: a change of 1e-9 fails, naming the quantity
    code, out = run_pytest(where, "-k", "test_golden", env={"GOLDEN_SCALE": str(1 + 1e-9)})
    assert code == 1, out
    assert any(line.startswith("grad/w0") and line.rstrip().endswith("FAIL") for line in out.splitlines()), out
    assert any(line.startswith("outer_loss") and line.rstrip().endswith("ok") for line in out.splitlines()), out
    code, out = run_pytest(where, "-k", "test_golden", env={"GOLDEN_SCALE": str(1 + 1e-13)})
    assert code == 0, out  # within tolerance
    code, out = run_pytest(where, "-k", "test_golden", "--maml-parity-regen", env={"GOLDEN_SCALE": "2"})
    assert code == 1 and "regenerated (--maml-parity-regen)" in out
    code, out = run_pytest(where, "-k", "test_golden", env={"GOLDEN_SCALE": "2"})
    assert code == 0, out


# --- the downstream example: the worked torch.func implementation against JAX ----------------------------


@pytest.mark.slow
def test_downstream_project_passes():
    code, out = run_pytest(DOWNSTREAM, "--strict-markers", "--maml-parity-cases", "T2-")
    assert code == 0, out
    last = out.splitlines()[-1]  # the T2 cases the example computes pass; the others are skipped with the reason
    passed = re.search(r"(\d+) passed", last)
    assert passed and int(passed.group(1)) >= 4 and "failed" not in last, out
    assert "does not support" in out and "(not inner_optimizer)" in out


@pytest.mark.slow
def test_downstream_project_fails_with_a_table_for_a_mutant():
    code, out = run_pytest(
        DOWNSTREAM,
        "--strict-markers",
        "--maml-parity-cases",
        "T2-",
        "--maml-parity-impl",
        f"{MUTANTS}:ALPHA_WRONG_SIGN",
    )
    assert code == 1, out
    assert "Traceback" not in out
    assert "case                               pair" in out
    rows = [line for line in out.splitlines() if line.startswith("T2-a0.05-l1-per_parameter-second")]
    assert any("jax~alpha-wrong-sign" in line and line.rstrip().endswith("FAIL") for line in rows), out
    failed = re.search(r"(\d+) failed", out.splitlines()[-1])
    assert failed and int(failed.group(1)) >= 4, out


def test_set_changes_every_generated_case_like_check_set(tmp_path):
    where = project(tmp_path, impl="mine.py:NARROW")
    code, out = run_pytest(where, "-k", "test_case", "--maml-parity-set", "hidden=[8]", "-v")
    assert code == 0 and "PASSED" in out, out
    code, out = run_pytest(where, "-k", "test_case")  # the matrix's own nets: the planted bug shows
    assert code == 1 and "numpy~narrow" in out, out
    code, out = run_pytest(where, "-k", "test_case", "--maml-parity-set", "hiden=[8]")
    assert code == 4 and "maml_parity_set: hiden: unknown config field" in out, out

"""Environment variables a framework or the command line reads: one line naming the variable, exit 2.

Each case runs the real command line in a subprocess (the variables are read at import time, and
a traceback is what used to come out). Also: Ctrl-C while a module is being imported (where a
framework loads its native libraries) ends with 130 and one line, never SIGABRT.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _run(args: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, "PYTHONPATH": str(ROOT), **env}
    return subprocess.run(
        [sys.executable, "-m", "parity", *args], capture_output=True, text=True, env=full, cwd=ROOT, timeout=300
    )


CASES = {
    "JAX_DEBUG_NANS": "boolean word",
    "JAX_DISABLE_JIT": "boolean word",
    "JAX_ENABLE_X64": "boolean word",
    "WORLD_SIZE": "integer >= 1",
    "RANK": "integer >= 0 and below WORLD_SIZE",
    "MPLBACKEND": "matplotlib backend",
}


@pytest.mark.parametrize("variable", list(CASES))
def test_a_bad_value_is_one_line_naming_the_variable(variable: str) -> None:
    out = _run(["check", "--quick"], **{variable: "banana"})
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in out.stderr and out.stdout == ""
    assert lines[0].startswith(f"maml-parity: error: {variable}: must be ") and CASES[variable] in lines[0]
    assert "'banana'" in lines[0]


def test_a_rank_past_the_world_size_is_refused() -> None:
    out = _run(["report", "no-such-run"], WORLD_SIZE="2", RANK="2")
    assert out.returncode == 2 and out.stderr.strip() == (
        "maml-parity: error: RANK: must be an integer >= 0 and below WORLD_SIZE; got '2'"
    )


def test_a_boolean_flag_jax_refuses_that_is_not_declared_is_one_line_too() -> None:
    out = _run(["check", "--quick"], JAX_THREEFRY_PARTITIONABLE="banana")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines() == [
        "maml-parity: error: JAX_THREEFRY_PARTITIONABLE: JAX refuses it: invalid truth value 'banana' "
        "for environment 'JAX_THREEFRY_PARTITIONABLE'"
    ]


def test_good_values_pass_the_check() -> None:
    from parity import environment

    good = {"JAX_DEBUG_NANS": "0", "WORLD_SIZE": "2", "RANK": "1", "MPLBACKEND": "Agg", "JAX_PLATFORMS": "cpu"}
    environment.check(("jax", "torch"), good)
    assert environment.launched_process(good) == (1, 2)
    assert environment.launched_process({}) == (0, 1)


def test_interrupt_during_an_import_ends_with_130_and_one_line(tmp_path: Path) -> None:
    """The module being imported interrupts itself half-way (as a Ctrl-C during ``import jax`` does)."""
    (tmp_path / "slow_native.py").write_text(
        "import os, signal, time\nos.kill(os.getpid(), signal.SIGINT)\ntime.sleep(30)\nLOADED = True\n"
    )
    code = (
        "import sys; sys.path.insert(0, sys.argv[1])\n"
        "from parity.startup import install_interrupt_handler\n"
        "install_interrupt_handler(grace_s=30)\n"
        "import slow_native\n"
        "print('imported')\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, env=env, timeout=60
    )
    assert out.returncode == 130 and out.returncode != -signal.SIGABRT
    assert out.stdout == "" and out.stderr.strip() == "maml-parity: interrupted"

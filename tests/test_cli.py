"""The command line: bad input is one line naming the field, exit status 2, no traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "parity", *args],
        capture_output=True,
        text=True,
        env=full_env,
        cwd=cwd or ROOT,
        timeout=300,
    )


def write_config(tmp_path: Path, text: str) -> str:
    path = tmp_path / "cfg.json"
    path.write_text(text)
    return str(path)


BAD_INPUTS = {
    "negative-T": (["--inner-steps", "-1"], "inner_steps: must be an integer >= 0, got -1"),
    "non-integer-T": (["--inner-steps", "2.5"], "inner_steps: must be an integer, got '2.5'"),
    "K-zero": (["--config", '{"k_support": 0}'], "k_support: must be an integer >= 1, got 0"),
    "inverted-range": (["--config", '{"frequency_range": [1.0, 0.5]}'], "frequency_range: must satisfy low <= high"),
    "nan-alpha": (["--config", '{"alpha_init": NaN}'], "alpha_init: must be a finite number, got nan"),
    "infinite-alpha": (["--config", '{"alpha_init": Infinity}'], "alpha_init: must be a finite number, got inf"),
    "unknown-key": (["--config", '{"alpha": 0.1}'], "alpha: unknown config field"),
    "wrong-type": (["--config", '{"hidden": "32"}'], "hidden: must be a non-empty list"),
    "unknown-preset": (["--preset", "maml-2"], "preset: unknown preset 'maml-2'"),
    "unknown-framework": (["--framework", "mxnet"], "framework: must be one of jax, torch; got 'mxnet'"),
    "unknown-dtype": (["--dtype", "float16"], "dtype: must be one of float32, float64; got 'float16'"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_is_one_line_and_exit_2(tmp_path, case):
    args, expected = BAD_INPUTS[case]
    if args[0] == "--config":
        args = ["--config", write_config(tmp_path, args[1])]
    out = tmp_path / "run"
    result = run_cli("train", *args, "--out", str(out))
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("maml-parity: error: ")
    assert expected in lines[0]
    assert "Traceback" not in result.stderr
    assert not out.exists()  # nothing written for a refused run


def test_float64_with_jax_x64_switched_off_is_refused(tmp_path):
    result = run_cli(
        "dump",
        "--framework",
        "jax",
        "--dtype",
        "float64",
        "--out",
        str(tmp_path / "g.npz"),
        env={"JAX_ENABLE_X64": "0"},
    )
    assert result.returncode == 2
    assert result.stderr.strip().startswith("maml-parity: error: dtype: float64 needs JAX's x64 mode")
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "g.npz").exists()


def test_missing_required_flag_and_unknown_command():
    result = run_cli("dump")
    assert result.returncode == 2 and "--out" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    result = run_cli("frobnicate")
    assert result.returncode == 2 and "invalid choice" in result.stderr


def test_help_imports_neither_framework():
    code = (
        "import sys; from parity.cli import build_parser; build_parser(); "
        "print(sorted(m for m in ('jax', 'torch') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}
    )
    assert result.stdout.strip() == "[]"
    result = run_cli("--help")
    assert result.returncode == 0
    for command in ("check", "dump", "train", "demo"):
        assert command in result.stdout


def test_train_writes_config_and_metrics(tmp_path):
    out = tmp_path / "run"
    result = run_cli(
        "train", "--framework", "torch", "--iterations", "12", "--inner-steps", "2", "--out", str(out), "--no-progress"
    )
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(12))
    assert {"step", "outer_loss", "inner_losses", "alpha", "alpha_grad", "wall_s"} <= set(rows[0])
    assert len(rows[0]["inner_losses"]) == 2 and rows[0]["alpha"] == pytest.approx(0.1)
    assert json.loads((out / "config.json").read_text())["inner_steps"] == 2

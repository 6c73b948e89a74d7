"""Resume: a run stopped and resumed ends bit for bit where the uninterrupted run ends."""

from __future__ import annotations

import itertools
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from parity.checkpoint import flatten_state, read_checkpoint
from parity.compare import compare_trees
from parity.config import SEED_ALPHA, ConfigError
from parity.registry import TWINS
from parity.run import read_metrics, train_run
from parity.twins import load

N = 12
# Adam on both groups, so the resumed optimizer state matters for every parameter.
CFG = SEED_ALPHA.replace(
    hidden=(8, 8), inner_steps=3, outer_optimizer="adam", outer_lr=1e-3, dtype="float64", iterations=N
)


def train(framework: str, out: Path, iterations: int, resume: bool = False, checkpoint_every: int = 0) -> None:
    train_run(
        load(framework, "float64"),
        CFG.replace(iterations=iterations),
        out,
        progress=False,
        resume=resume,
        checkpoint_every=checkpoint_every,
    )


def final_arrays(out: Path) -> dict[str, np.ndarray]:
    return flatten_state(read_checkpoint(out).state)


def without_wall(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k != "wall_s"} for row in rows]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> dict[str, Path]:
    runs = {}
    for framework in TWINS:
        runs[framework] = tmp_path_factory.mktemp(f"full-{framework}")
        train(framework, runs[framework], N)
    return runs


def test_half_then_resume_is_bit_identical(tmp_path, uninterrupted, twin_name: str) -> None:
    train(twin_name, tmp_path, N // 2)
    assert read_checkpoint(tmp_path).step == N // 2
    train(twin_name, tmp_path, N, resume=True)
    expected, actual = final_arrays(uninterrupted[twin_name]), final_arrays(tmp_path)
    assert expected.keys() == actual.keys()
    assert {"opt/params/mu/w1", "opt/alpha/nu", "alpha", "params/w2"} <= expected.keys()
    for name in expected:
        assert np.array_equal(expected[name], actual[name]), name
    assert int(actual["step"]) == N and int(actual["opt/params/count"]) == N
    # every step logged once, with the numbers of the uninterrupted run
    assert without_wall(read_metrics(tmp_path / "metrics.jsonl")) == without_wall(
        read_metrics(uninterrupted[twin_name] / "metrics.jsonl")
    )


@pytest.mark.parametrize(("first", "second"), list(itertools.permutations(TWINS, 2)))
def test_resume_in_the_other_twin(tmp_path, uninterrupted, first: str, second: str) -> None:
    train(first, tmp_path, N // 2)
    train(second, tmp_path, N, resume=True)
    assert read_checkpoint(tmp_path).manifest["framework"] == second
    leaves = compare_trees(final_arrays(uninterrupted[first]), final_arrays(tmp_path), "float64")
    bad = [leaf for leaf in leaves if not leaf.ok]
    assert not bad, bad
    # α moved, so the comparison is of a trained state, not of the initial one.
    assert abs(float(final_arrays(tmp_path)["alpha"]) - CFG.alpha_init) > 1e-4


def test_checkpoints_every_n_steps_and_metrics_are_cut_back_on_resume(tmp_path, uninterrupted) -> None:
    # Chunks of N/2 steps: the compiles the tests above made serve this one too.
    train("jax", tmp_path, N, checkpoint_every=N // 2)
    # Pretend the process died at step N/2 + 3, after its step-N/2 checkpoint: the log ran ahead of
    # the checkpoint and its last line was cut mid-write.
    full = (tmp_path / "metrics.jsonl").read_text().splitlines(keepends=True)
    train("jax", tmp_path, N // 2)
    (tmp_path / "metrics.jsonl").write_text("".join(full[: N // 2 + 3]) + full[N // 2 + 3][:15])
    train("jax", tmp_path, N, resume=True, checkpoint_every=N // 2)
    rows = read_metrics(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in rows] == list(range(N))
    assert without_wall(rows) == without_wall(read_metrics(uninterrupted["jax"] / "metrics.jsonl"))
    expected, actual = final_arrays(uninterrupted["jax"]), final_arrays(tmp_path)
    assert all(np.array_equal(expected[k], actual[k]) for k in expected)


def test_resume_with_another_config_names_the_field(tmp_path) -> None:
    train("jax", tmp_path, N // 2)
    with pytest.raises(ConfigError) as err:
        train_run(load("jax", "float64"), CFG.replace(alpha_lr=1e-3), tmp_path, progress=False, resume=True)
    assert err.value.field == "alpha_lr"
    assert "the checkpoint was trained with alpha_lr = 0.0001" in str(err.value)


def test_cli_resume_with_another_config_is_one_line_and_exit_2(tmp_path, capsys) -> None:
    from parity.cli import main

    train("jax", tmp_path, N // 2)
    # The preset's hidden = [32, 32] is not the checkpoint's [8, 8].
    assert main(["train", "--out", str(tmp_path), "--resume", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("maml-parity: error: hidden: the checkpoint was trained with hidden = [8, 8]")
    assert err.count("\n") == 1


@pytest.mark.slow
def test_sigkill_mid_run_then_resume(tmp_path) -> None:
    """A real process killed with SIGKILL after a checkpoint, resumed by a second process."""
    steps = 200
    config = tmp_path / "config_in.json"
    config.write_text(CFG.replace(iterations=steps).to_json())
    out = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "parity",
        "train",
        "--config",
        str(config),
        "--framework",
        "torch",
        "--out",
        str(out),
        "--checkpoint-every",
        "5",
        "--no-progress",
    ]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1]), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            manifest = out / "checkpoint.json"
            if manifest.exists() and json.loads(manifest.read_text())["step"] >= 10:
                break
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()
    killed_at = read_checkpoint(out).step
    assert 10 <= killed_at < steps
    done = subprocess.run([*cmd, "--resume"], env=env, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert f"resuming {out} at step {killed_at}" in done.stderr
    reference = tmp_path / "reference"
    train("torch", reference, steps)
    expected, actual = final_arrays(reference), final_arrays(out)
    assert all(np.array_equal(expected[k], actual[k]) for k in expected)
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl")] == list(range(steps))


def test_sigkill_at_a_random_moment_then_resume_is_bit_identical(tmp_path, twin_name: str) -> None:
    """``python -m parity train`` killed with SIGKILL at a random (seeded) moment: mid-step,
    mid-checkpoint or mid-log-line, wherever it lands. ``--resume`` then ends bit for bit where
    the run that was never killed ends: every array of the final checkpoint and every logged step."""
    steps, every = 200, 5
    rng = random.Random(f"sigkill-{twin_name}")  # the same moments on every run of the test
    kill_after_rows, extra_sleep_s = rng.randint(1, steps - 60), rng.uniform(0.0, 0.05)
    config = tmp_path / "config_in.json"
    config.write_text(CFG.replace(iterations=steps).to_json())
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "parity", "train", "--config", str(config), "--framework", twin_name]
    cmd += ["--out", str(out), "--checkpoint-every", str(every), "--no-progress"]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1]), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        log = out / "metrics.jsonl"
        while time.monotonic() < deadline and proc.poll() is None:
            if log.exists() and log.read_bytes().count(b"\n") >= kill_after_rows:
                break
            time.sleep(0.002)
        time.sleep(extra_sleep_s)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before the kill: make it longer"
    killed_at = read_checkpoint(out).step if (out / "checkpoint.safetensors").exists() else 0
    assert killed_at % every == 0 and killed_at < steps

    done = subprocess.run([*cmd, "--resume"], env=env, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert (f"resuming {out} at step {killed_at}" if killed_at else "starting at step 0") in done.stderr
    reference = tmp_path / "reference"
    train(twin_name, reference, steps, checkpoint_every=every)  # the same chunks, never stopped
    expected, actual = final_arrays(reference), final_arrays(out)
    assert expected.keys() == actual.keys()
    for name in expected:
        assert np.array_equal(expected[name], actual[name]), name
    assert without_wall(read_metrics(out / "metrics.jsonl")) == without_wall(read_metrics(reference / "metrics.jsonl"))
    assert not list(out.glob(".*.tmp"))  # --resume swept what the kill left half-written

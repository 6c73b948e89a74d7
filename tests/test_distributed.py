"""Sharded runs compute what the single-device run computes (JAX: forced host devices;
PyTorch: a 2-process gloo group under torchrun). Each run is a subprocess, so that XLA_FLAGS
and the process group take effect."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
TRAIN = ["train", "--preset", "seed-alpha", "--dtype", "float64", "--iterations", "12", "--no-progress"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("localhost", 0))
        return int(sock.getsockname()[1])


def run(args: list[str], devices: int = 1, torchrun: int = 0) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    launcher = [sys.executable, "-m", "parity"]
    if torchrun:
        launcher = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nnodes=1",
            "--rdzv-backend=c10d",
            f"--rdzv-endpoint=localhost:{free_port()}",  # never a port a previous run still holds
            f"--nproc_per_node={torchrun}",
            "-m",
            "parity",
        ]
    return subprocess.run([*launcher, *args], capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)


def final_state(out: Path) -> dict[str, np.ndarray]:
    with np.load(out / "final.npz", allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


def losses(out: Path) -> np.ndarray:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return np.array([[r["outer_loss"], *r["inner_losses"]] for r in rows])


# README: sharded and single-device runs end equal to ≤ 1.1e-15 relative (seen); held at 1e-14.
SHARDED_RTOL = 1e-14


def assert_same_run(a: Path, b: Path) -> None:
    sa, sb = final_state(a), final_state(b)
    assert sa.keys() == sb.keys()
    for k in sa:
        scale = max(float(np.abs(sb[k]).max()), 1e-300)
        rel = float(np.abs(sa[k] - sb[k]).max()) / scale
        assert rel <= SHARDED_RTOL, (k, rel)
    la, lb = losses(a), losses(b)
    assert la.shape == lb.shape == (12, 6)
    rel = float(np.abs(la - lb).max()) / float(np.abs(lb).max())
    assert rel <= SHARDED_RTOL, ("losses", rel)


@pytest.fixture(scope="module")
def config_b8(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("cfg") / "b8.json"
    path.write_text('{"meta_batch": 8}')
    return str(path)


def test_jax_on_four_host_devices_matches_one_device(tmp_path, config_b8):
    one = run([*TRAIN, "--framework", "jax", "--config", config_b8, "--out", str(tmp_path / "one")])
    assert one.returncode == 0, one.stderr
    four = run(
        [*TRAIN, "--framework", "jax", "--config", config_b8, "--devices", "4", "--out", str(tmp_path / "four")],
        devices=4,
    )
    assert four.returncode == 0, four.stderr
    assert "split over 4 devices" in four.stdout
    assert_same_run(tmp_path / "four", tmp_path / "one")


def test_jax_sharded_step_reduces_with_collectives(config_b8):
    """The gradient's mean over tasks is an all-reduce inside the compiled step."""
    code = f"""
import jax, numpy as np
from parity.config import Config
from parity import training
from parity.twins import load
from parity.tasks import sample_batches
cfg = Config.from_json(open({config_b8!r}).read())
twin = load("jax")
p = load("jax").placement(cfg, 4)
state = p.state(training.initial_state(twin, cfg))
tasks = p.tasks(tuple(sample_batches(cfg, 0, 2)[:4]), cfg.dtype)
hlo = jax.jit(lambda s, t: twin.train.train_chunk(s, t, cfg)).lower(state, tasks).compile().as_text()
print(hlo.count("all-reduce") > 0, tuple(tasks[0].sharding.spec), tuple(state.params["w1"].sharding.spec))
"""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "True (None, 'tasks') ()"


def test_uneven_meta_batch_is_refused(tmp_path, config_b8):
    result = run(
        [*TRAIN, "--framework", "jax", "--config", config_b8, "--devices", "3", "--out", str(tmp_path / "x")], devices=4
    )
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "maml-parity: error: devices: the meta-batch of 8 tasks does not split evenly over 3 devices; "
        "use a multiple of 3, e.g. --meta-batch 6 (or --set meta_batch=6)"
    )
    assert not (tmp_path / "x").exists()


def test_jax_default_uses_the_devices_that_divide_the_meta_batch(tmp_path):
    result = run([*TRAIN, "--framework", "jax", "--out", str(tmp_path / "b1")], devices=4)  # seed-alpha: B = 1
    assert result.returncode == 0, result.stderr
    assert "split over 1 devices" in result.stdout


def test_torch_two_process_gloo_group_matches_one_process(tmp_path, config_b8):
    one = run([*TRAIN, "--framework", "torch", "--config", config_b8, "--out", str(tmp_path / "one")])
    assert one.returncode == 0, one.stderr
    two = run([*TRAIN, "--framework", "torch", "--config", config_b8, "--out", str(tmp_path / "two")], torchrun=2)
    assert two.returncode == 0, two.stderr
    assert "split over 2 devices" in two.stdout, (two.stdout, two.stderr)
    assert_same_run(tmp_path / "two", tmp_path / "one")


def test_torch_devices_without_torchrun_is_refused(tmp_path, config_b8):
    result = run(
        [*TRAIN, "--framework", "torch", "--config", config_b8, "--devices", "2", "--out", str(tmp_path / "x")]
    )
    assert result.returncode == 2
    assert "devices: the PyTorch twin runs one process per device: launch 2 with torchrun" in result.stderr

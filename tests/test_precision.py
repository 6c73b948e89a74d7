"""A float32 run is float32 whatever the process's global state: JAX's x64 mode, what ran before,
PyTorch's thread count. And ``precision_scope`` sets full float32 matmuls only inside its block.

Before the fix, optax's Adam bias correction ``1 − β**count`` (β a Python float, count an int32)
was computed in float64 under x64 mode, and ``train --preset seed-alpha`` in float32 first
differed between ``JAX_ENABLE_X64=0`` and ``=1`` at step 36 (the jaxpr of the float32 training
step then held six float64 operations; see jax_impl.train.adam).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from parity import training
from parity.config import SEED_ALPHA
from parity.tasks import sample_batches
from parity.twins import load

ROOT = Path(__file__).resolve().parents[1]

# seed-alpha (SGD on the parameters, Adam on α) and Adam on both with α = softplus(ρ), per parameter.
CONFIGS = {
    "seed-alpha": {},
    "adam-softplus-per-parameter": {
        "outer_optimizer": "adam",
        "outer_lr": 0.001,
        "alpha_mode": "per_parameter",
        "alpha_parametrisation": "softplus",
        "alpha_init": 0.01,
        "loss": "mse",
        "meta_batch": 4,
    },
}


@pytest.mark.parametrize("name", CONFIGS)
def test_float32_training_step_has_no_float64_operation_under_x64(name):
    """conftest switches x64 on: a float32 chunk must still trace to float32 and int32 only."""
    assert jax.config.read("jax_enable_x64")
    cfg = SEED_ALPHA.replace(dtype="float32", **CONFIGS[name])
    twin = load("jax", "float32")
    state = training.initial_state(twin, cfg)
    tasks = twin.model.to_arrays(tuple(sample_batches(cfg, 0, 2)[:4]), cfg.dtype)
    text = str(jax.make_jaxpr(lambda s, t: twin.train.train_chunk(s, t, cfg))(state, tasks))
    assert "f32" in text
    assert "f64" not in text and "i64" not in text


def _train(out: Path, x64: str, config: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_ENABLE_X64": x64, "OMP_NUM_THREADS": "1"}
    args = ["train", "--framework", "jax", "--preset", "seed-alpha", "--config", str(config), "--dtype", "float32"]
    args += ["--iterations", "40", "--no-progress", "--out", str(out)]
    result = subprocess.run(
        [sys.executable, "-m", "parity", *args], capture_output=True, text=True, env=env, cwd=ROOT, timeout=600
    )
    assert result.returncode == 0, result.stderr


def _metrics(out: Path) -> list[dict]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    for row in rows:
        row.pop("wall_s")
    return rows


@pytest.mark.slow
@pytest.mark.parametrize("name", CONFIGS)
def test_float32_jax_run_is_bit_identical_with_x64_on_and_off(tmp_path, name):
    config = tmp_path / "config.json"
    config.write_text(json.dumps(CONFIGS[name]))
    _train(tmp_path / "off", "0", config)
    _train(tmp_path / "on", "1", config)
    off, on = _metrics(tmp_path / "off"), _metrics(tmp_path / "on")
    assert len(off) == 40 and off == on  # every loss, α and α-gradient of every step, to the last bit
    with np.load(tmp_path / "off" / "final.npz") as a, np.load(tmp_path / "on" / "final.npz") as b:
        assert a.files == b.files
        for key in a.files:
            assert a[key].dtype == np.float32, key
            assert np.array_equal(a[key], b[key]), key


def test_float32_jax_run_does_not_depend_on_what_ran_before():
    """x64 on (conftest) and switched off for a while in the same process: the same bits."""
    cfg = SEED_ALPHA.replace(dtype="float32", iterations=40, outer_optimizer="adam", outer_lr=0.001)
    twin = load("jax", "float32")

    def run() -> dict[str, np.ndarray]:
        losses: list[np.ndarray] = []
        state = training.run(twin, cfg, chunk=40, on_chunk=lambda _, m: losses.append(m["outer_loss"]))
        return {**training.final_values(twin, state), "outer_loss": np.concatenate(losses)}

    with_x64 = run()
    jax.config.update("jax_enable_x64", False)
    try:
        without = run()
    finally:
        jax.config.update("jax_enable_x64", True)
    assert with_x64.keys() == without.keys()
    for key in with_x64:
        assert with_x64[key].dtype == np.float32, key
        assert np.array_equal(with_x64[key], without[key]), key


TORCH_THREADS = """
import sys, numpy as np, torch
torch.set_num_threads(int(sys.argv[1]))
from parity import training
from parity.config import SEED_ALPHA
from parity.twins import load
cfg = SEED_ALPHA.replace(dtype="float32", meta_batch=256, outer_optimizer="adam", outer_lr=1e-3, iterations=6)
twin = load("torch", "float32")
losses = []
state = training.run(twin, cfg, chunk=6, on_chunk=lambda _, m: losses.append(m["outer_loss"]))
out = {k.replace("/", "_"): v for k, v in training.final_values(twin, state).items()}
np.savez(sys.argv[2], outer_loss=np.concatenate(losses), threads=torch.get_num_threads(), **out)
"""


@pytest.mark.slow
def test_float32_torch_run_is_bit_identical_on_one_and_two_threads(tmp_path):
    """Measured: PyTorch's CPU kernels give the same float32 bits on 1 and 2 threads (B = 256 and
    B = 4,096, seed-alpha with Adam). JAX's CPU thread pool is XLA's and not set per run; not tested."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for threads in (1, 2):
        result = subprocess.run(
            [sys.executable, "-c", TORCH_THREADS, str(threads), str(tmp_path / f"t{threads}.npz")],
            capture_output=True,
            text=True,
            env=env,
            cwd=ROOT,
            timeout=600,
        )
        assert result.returncode == 0, result.stderr
    with np.load(tmp_path / "t1.npz") as one, np.load(tmp_path / "t2.npz") as two:
        assert (int(one["threads"]), int(two["threads"])) == (1, 2)
        assert one["outer_loss"].shape == (6,)
        for key in one.files:
            if key != "threads":
                assert one[key].dtype == np.float32, key
                assert np.array_equal(one[key], two[key]), key

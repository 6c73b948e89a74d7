"""Framework-neutral checkpoints: layout, round trips, atomic writes, and optimizer-state mapping."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from parity import training
from parity.checkpoint import (
    CHECKPOINT_FILE,
    MANIFEST_FILE,
    CheckpointError,
    check_resumable,
    expected_layout,
    flatten_state,
    read_checkpoint,
    remove_stale_temporaries,
    unflatten_state,
    write_checkpoint,
)
from parity.compare import compare_trees
from parity.config import SEED_ALPHA, ConfigError
from parity.registry import TWINS
from parity.twins import load

# Small but complete: every optimizer group carries Adam state.
SMALL = SEED_ALPHA.replace(hidden=(8,), inner_steps=2, outer_optimizer="adam", outer_lr=1e-3, dtype="float64")


def trained_state(framework: str, cfg, steps: int = 3):  # type: ignore[no-untyped-def]
    twin = load(framework, cfg.dtype)
    state = training.run(twin, cfg, iterations=steps)
    return twin.train.state_to_numpy(state, cfg)


def test_layout_of_the_seed_alpha_config_with_adam() -> None:
    names = set(expected_layout(SMALL))
    params = {f"{k}{i}" for i in range(2) for k in "wb"}
    assert names == (
        {"step", "alpha", "opt/alpha/count", "opt/alpha/mu", "opt/alpha/nu", "opt/params/count"}
        | {f"params/{p}" for p in params}
        | {f"opt/params/mu/{p}" for p in params}
        | {f"opt/params/nu/{p}" for p in params}
    )
    assert expected_layout(SMALL)["params/w0"] == ((8, 1), "float64")
    # SGD keeps no state and a fixed α has no optimizer at all.
    sgd_fixed = SMALL.replace(outer_optimizer="sgd", alpha_mode="fixed")
    assert set(expected_layout(sgd_fixed)) == {"step", "alpha"} | {f"params/{p}" for p in params}
    per_param = SMALL.replace(alpha_mode="per_parameter")
    assert expected_layout(per_param)["opt/alpha/nu/w0"] == ((8, 1), "float64")


@pytest.mark.parametrize("alpha_mode", ["fixed", "scalar", "per_parameter"])
def test_write_read_round_trip_is_exact(tmp_path, twin_name: str, alpha_mode: str) -> None:
    cfg = SMALL.replace(alpha_mode=alpha_mode)
    state = trained_state(twin_name, cfg)
    write_checkpoint(tmp_path, state, cfg, twin_name)
    ckpt = read_checkpoint(tmp_path)
    assert ckpt.step == 3 and ckpt.config == cfg and ckpt.manifest["framework"] == twin_name
    written, read = flatten_state(state), flatten_state(ckpt.state)
    assert written.keys() == read.keys() == expected_layout(cfg).keys()
    for name in written:
        assert np.array_equal(written[name], read[name]), name
        assert written[name].dtype == read[name].dtype, name
    # The twin rebuilds the same state from it.
    twin = load(twin_name, cfg.dtype)
    again = flatten_state(twin.train.state_to_numpy(twin.train.state_from_numpy(ckpt.state, cfg), cfg))
    assert all(np.array_equal(again[k], written[k]) for k in written)


def test_manifest_copy_matches_the_file_and_no_temporary_files_remain(tmp_path) -> None:
    state = trained_state("jax", SMALL, steps=2)
    write_checkpoint(tmp_path, state, SMALL, "jax")
    write_checkpoint(tmp_path, state, SMALL, "jax")  # overwrite in place
    assert sorted(p.name for p in tmp_path.iterdir()) == [MANIFEST_FILE, CHECKPOINT_FILE]
    manifest = json.loads((tmp_path / MANIFEST_FILE).read_text())
    assert manifest["sha256"] == hashlib.sha256((tmp_path / CHECKPOINT_FILE).read_bytes()).hexdigest()
    assert manifest["step"] == 2 and manifest["sampler"] == {"seed": 0, "stream": 0, "next_step": 2}
    assert manifest["config"] == SMALL.to_dict()
    assert {"numpy", "jax", "torch", "optax", "safetensors"} <= set(manifest["versions"])


def test_adam_state_means_the_same_in_both_twins(tmp_path) -> None:
    """optax (count, mu, nu) and torch (step, exp_avg, exp_avg_sq) after the same 3 steps agree:
    the neutral layout maps each to the same quantity (mu/nu swapped would fail by orders)."""
    states = {fw: flatten_state(trained_state(fw, SMALL)) for fw in TWINS}
    assert int(states["jax"]["opt/params/count"]) == int(states["torch"]["opt/params/count"]) == 3
    leaves = compare_trees(states["jax"], states["torch"], "float64")
    worst = max(leaves, key=lambda leaf: leaf.max_rel_err)
    assert all(leaf.ok for leaf in leaves), worst
    # The moments are real numbers, not zeros: the comparison has something to compare.
    assert np.abs(states["jax"]["opt/params/nu/w0"]).max() > 0


def test_torch_adam_before_its_first_step_is_written_as_zeros(tmp_path) -> None:
    twin = load("torch", "float64")
    state = twin.train.state_to_numpy(training.initial_state(twin, SMALL), SMALL)
    assert state["opt"]["params"]["count"] == 0
    assert all(not np.any(v) for v in state["opt"]["params"]["mu"].values())
    jax_twin = load("jax", "float64")
    jax_state = jax_twin.train.state_to_numpy(training.initial_state(jax_twin, SMALL), SMALL)
    flat_t, flat_j = flatten_state(state), flatten_state(jax_state)
    assert all(np.array_equal(flat_t[k], flat_j[k]) for k in flat_j)


def test_config_mismatch_names_the_field() -> None:
    with pytest.raises(ConfigError, match=r"^inner_steps: the checkpoint was trained with inner_steps = 2"):
        check_resumable(SMALL, SMALL.replace(inner_steps=3))
    with pytest.raises(ConfigError) as err:
        check_resumable(SMALL, SMALL.replace(dtype="float32"))
    assert err.value.field == "dtype"
    check_resumable(SMALL, SMALL.replace(iterations=99))  # more steps is the same trajectory


def test_unreadable_or_foreign_files_are_clear_errors(tmp_path) -> None:
    with pytest.raises(CheckpointError, match="no checkpoint at"):
        read_checkpoint(tmp_path)
    (tmp_path / CHECKPOINT_FILE).write_bytes(b"\x00" * 40)
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        read_checkpoint(tmp_path)
    from safetensors.numpy import save_file

    save_file({"x": np.zeros(2)}, str(tmp_path / CHECKPOINT_FILE))
    with pytest.raises(CheckpointError, match="no embedded manifest"):
        read_checkpoint(tmp_path)


def test_arrays_that_do_not_fit_the_config_are_refused(tmp_path) -> None:
    state = trained_state("jax", SMALL, steps=1)
    state["params"]["w0"] = np.zeros((9, 1))
    with pytest.raises(CheckpointError, match=r"'params/w0' is float64\[9, 1\], the config needs float64\[8, 1\]"):
        write_checkpoint(tmp_path, state, SMALL, "jax")
    del state["opt"]["alpha"]["nu"]
    state["opt"]["alpha"] = {}
    with pytest.raises(CheckpointError, match=r"missing \['opt/alpha/count', 'opt/alpha/mu', 'opt/alpha/nu'\]"):
        write_checkpoint(tmp_path, state, SMALL, "jax")
    assert not list(tmp_path.iterdir())  # nothing half-written


# A child process that writes one checkpoint and is made to stop inside ``atomic_write``: after
# half the safetensors bytes reached the disk (mid-write), or after the safetensors file was
# renamed into place but before checkpoint.json was (between the two renames). It prints
# "paused" and sleeps until the parent SIGKILLs it.
PAUSED_WRITER = r"""
import io, os, sys, time
from pathlib import Path
import numpy as np
from parity import checkpoint
from parity.config import Config

out, target, cfg = Path(sys.argv[1]), sys.argv[2], Config.from_json(sys.argv[3])
real = checkpoint.atomic_write

def paused(path, write):
    if path.name != target:
        return real(path, write)
    def half_then_wait(f):
        buffer = io.BytesIO()
        write(buffer)
        data = buffer.getvalue()
        f.write(data[: len(data) // 2])
        f.flush()
        os.fsync(f.fileno())
        print("paused", flush=True)
        time.sleep(120)
    return real(path, half_then_wait)

checkpoint.atomic_write = paused
flat = checkpoint.flatten_state(checkpoint.read_checkpoint(out).state)  # step 4 -> step 8, values + 1
flat = {k: v + 1.0 if k.startswith(("params", "alpha")) else v for k, v in flat.items()}
flat["step"] = np.asarray(8, dtype=np.int64)
checkpoint.write_checkpoint(out, checkpoint.unflatten_state(flat, cfg), cfg, "torch")
"""


def _state_at(cfg, step: int) -> dict:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(step)
    arrays = {
        name: np.asarray(step if name == "step" else 2, dtype=np.int64) if dtype == "int64" else rng.random(shape)
        for name, (shape, dtype) in expected_layout(cfg).items()
    }
    return unflatten_state(arrays, cfg)


@pytest.mark.parametrize("target", [CHECKPOINT_FILE, MANIFEST_FILE], ids=["mid-write", "between-renames"])
def test_sigkill_inside_a_checkpoint_write_leaves_a_loadable_checkpoint(tmp_path, target: str) -> None:
    cfg = SMALL
    previous = _state_at(cfg, 4)
    write_checkpoint(tmp_path, previous, cfg, "jax")
    before = (tmp_path / CHECKPOINT_FILE).read_bytes()
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    child = subprocess.Popen(
        [sys.executable, "-c", PAUSED_WRITER, str(tmp_path), target, cfg.to_json()],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None and child.stdout.readline() == "paused\n", child.stderr
        child.send_signal(signal.SIGKILL)
    finally:
        child.wait(timeout=30)
        for stream in (child.stdout, child.stderr):
            if stream is not None:
                stream.close()
    assert child.returncode == -signal.SIGKILL
    stale = sorted(p.name for p in tmp_path.glob(f".{target}.*.tmp"))
    assert len(stale) == 1  # the kill did land inside the write
    ckpt = read_checkpoint(tmp_path)
    if target == CHECKPOINT_FILE:  # the old checkpoint, byte for byte
        assert (tmp_path / CHECKPOINT_FILE).read_bytes() == before
        assert ckpt.step == 4
        expected = flatten_state(previous)
    else:  # the new one is in place; checkpoint.json is the previous copy, which loading does not need
        assert ckpt.step == 8 and json.loads((tmp_path / MANIFEST_FILE).read_text())["step"] == 4
        expected = {k: v + 1.0 if k.startswith(("params", "alpha")) else v for k, v in flatten_state(previous).items()}
        expected["step"] = np.asarray(8)
    got = flatten_state(ckpt.state)
    assert all(np.array_equal(got[k], expected[k]) for k in expected)
    # --resume sweeps the leftovers; the next write is whole again.
    assert [p.name for p in remove_stale_temporaries(tmp_path)] == stale
    write_checkpoint(tmp_path, previous, cfg, "jax")
    assert sorted(p.name for p in tmp_path.iterdir()) == [MANIFEST_FILE, CHECKPOINT_FILE]

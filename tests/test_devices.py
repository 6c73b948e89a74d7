"""Every twin on every device: placement, device-independent checkpoints, cross-device parity.

Parametrised over ``cpu`` and ``gpu``; the gpu cases carry the ``gpu`` marker and skip, with the
reason, where the framework sees no GPU (run them on a GPU machine with ``pytest -m gpu``). On a
CPU-only machine the cpu cases and the refusals run and assert real numbers.
"""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np
import pytest
import torch

from parity import training
from parity.checkpoint import flatten_state
from parity.compare import compare_trees
from parity.config import SEED_ALPHA, ConfigError
from parity.devices import canonical, parse_device
from parity.registry import TWINS
from parity.twins import load, meta_results, step0_inputs

ROOT = Path(__file__).resolve().parents[1]


def _jax_gpus() -> int:
    try:
        return len(jax.devices("gpu"))
    except RuntimeError:
        return 0


GPUS = {"jax": _jax_gpus(), "torch": torch.cuda.device_count() if torch.cuda.is_available() else 0}


def on(framework: str, device: str) -> object:
    """A (framework, device) parameter; the gpu ones marked ``gpu`` and skipped where none is visible."""
    if device == "cpu":
        return pytest.param(framework, device, id=f"{framework}@cpu")
    reason = f"no GPU is visible to {framework}"
    marks = [pytest.mark.gpu, pytest.mark.skipif(GPUS[framework] == 0, reason=reason)]
    return pytest.param(framework, device, marks=marks, id=f"{framework}@{device}")


def pair(framework: str, src: str, dst: str) -> object:
    marks = []
    if "gpu" in (src, dst):
        marks = [pytest.mark.gpu, pytest.mark.skipif(GPUS[framework] == 0, reason=f"no GPU is visible to {framework}")]
    return pytest.param(framework, src, dst, marks=marks, id=f"{framework}@{src}->{dst}")


EVERY = [on(f, d) for f in TWINS for d in ("cpu", "gpu")]
# Adam on both groups, so the optimiser state (moments and step count) has to travel too.
CFG = SEED_ALPHA.replace(
    hidden=(8, 8), inner_steps=3, meta_batch=4, outer_optimizer="adam", outer_lr=1e-3, dtype="float64", iterations=12
)


def _devices_of(framework: str, tree: object) -> set[str]:
    """Where every leaf of a twin's tree lives, as ``cpu`` / ``gpu:N`` names."""
    if framework == "jax":
        return {f"{d.platform}:{d.id}" for leaf in jax.tree.leaves(tree) for d in leaf.devices()}
    if isinstance(tree, dict):
        return set().union(*(_devices_of(framework, v) for v in tree.values()))
    if isinstance(tree, (list, tuple)):
        return set().union(*(_devices_of(framework, v) for v in tree))
    assert isinstance(tree, torch.Tensor)
    return {"cpu:0" if tree.device.type == "cpu" else f"gpu:{tree.device.index}"}


def _expected(framework: str, device: str) -> set[str]:
    if framework == "jax":
        dev = jax.devices(parse_device(device).kind)[0]
        return {f"{dev.platform}:{dev.id}"}
    return {"cpu:0"} if device == "cpu" else {f"gpu:{torch.cuda.current_device()}"}


def _state_leaves(framework: str, state: object) -> list[object]:
    """Parameters, α and the optimisers' whole state (Adam's step counts included)."""
    if framework == "jax":
        return [state]
    opts = [o for o in (state.params_opt, state.alpha_opt) if o is not None]  # type: ignore[attr-defined]
    return [state.params, state.alpha, [dict(s) for o in opts for s in o.state.values()]]  # type: ignore[attr-defined]


@pytest.mark.parametrize(("framework", "device"), EVERY)
def test_training_state_lives_on_the_device(framework, device):
    twin = load(framework, "float64", device)
    state = training.initial_state(twin, CFG)
    state = training.run(twin, CFG, state=state, iterations=2, chunk=2)
    want = _expected(framework, device)
    assert _devices_of(framework, _state_leaves(framework, state)) == want
    if framework == "torch":
        adam = next(iter(state.params_opt.state.values()))
        assert set(adam) == {"step", "exp_avg", "exp_avg_sq"}
        assert adam["step"].dtype == torch.float64 and float(adam["step"]) == 2.0  # counted on the device
    tasks = twin.to_arrays(tuple(np.zeros((2, 4, 4, 1)) for _ in range(4)), "float64")
    assert _devices_of(framework, tasks) == want


def _run(twin, state, start: int, steps: int) -> tuple[object, np.ndarray]:
    losses: list[np.ndarray] = []
    state = training.run(
        twin,
        CFG,
        state=state,
        start=start,
        iterations=steps,
        chunk=6,
        on_chunk=lambda _, m: losses.append(m["outer_loss"]),
    )
    return state, np.concatenate(losses)


@pytest.mark.parametrize(
    ("framework", "src", "dst"),
    [pair(f, s, d) for f in TWINS for s, d in (("cpu", "cpu"), ("cpu", "gpu"), ("gpu", "cpu"), ("gpu", "gpu"))],
)
def test_a_run_resumes_on_another_device(framework, src, dst):
    """Six steps on ``src``, the neutral (NumPy) state, six more on ``dst``. The state crosses devices
    bit for bit; on one device the resumed run is the uninterrupted run, bit for bit; across
    devices (different kernels) it agrees to float64 tolerance."""
    here, there = load(framework, "float64", src), load(framework, "float64", dst)
    half, first_losses = _run(here, None, 0, 6)
    saved = here.train.state_to_numpy(half, CFG)
    moved = there.state_from_numpy(saved, CFG)
    assert _devices_of(framework, _state_leaves(framework, moved)) == _expected(framework, dst)
    again = flatten_state(there.train.state_to_numpy(moved, CFG))
    for key, value in flatten_state(saved).items():
        assert np.array_equal(again[key], value), key  # nothing lost on the way to the device and back
    resumed, later_losses = _run(there, moved, 6, 6)
    whole, whole_losses = _run(here, None, 0, 12)
    got = {**training.final_values(there, resumed), "outer_loss": np.concatenate([first_losses, later_losses])}
    want = {**training.final_values(here, whole), "outer_loss": whole_losses}
    assert got.keys() == want.keys()
    if src == dst:
        for key in want:
            assert np.array_equal(got[key], want[key]), key
    else:
        leaves = compare_trees(want, got, "float64")
        assert leaves and all(leaf.ok for leaf in leaves), [(lf.name, lf.max_rel_err) for lf in leaves if not lf.ok]


GRADIENT_CASES = {
    "seed-alpha": SEED_ALPHA.replace(dtype="float64", meta_batch=4, seed=7),
    "per-parameter-mse-relu": SEED_ALPHA.replace(
        dtype="float64",
        meta_batch=4,
        seed=7,
        alpha_mode="per_parameter",
        loss="mse",
        activation="relu",
        alpha_init=0.01,
    ),
}


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("case", list(GRADIENT_CASES))
def test_cpu_and_gpu_give_the_same_meta_gradient(twin_name, dtype, case):
    """twin@cpu ~ twin@gpu at the parity tolerances, full float32 matmuls."""
    if GPUS[twin_name] == 0:
        pytest.skip(f"no GPU is visible to {twin_name}")
    cfg = GRADIENT_CASES[case].replace(dtype=dtype)
    results = {}
    for device in ("cpu", "gpu"):
        twin = load(twin_name, dtype, device)
        with twin.precision_scope("highest"):
            results[device] = meta_results(twin, cfg, *step0_inputs(cfg))
    leaves = compare_trees(results["cpu"], results["gpu"], dtype)
    assert leaves and all(leaf.ok for leaf in leaves), [(lf.name, lf.max_rel_err) for lf in leaves if not lf.ok]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_jax_and_torch_agree_on_the_gpu(dtype):
    if min(GPUS.values()) == 0:
        pytest.skip(f"a GPU is not visible to both twins ({GPUS})")
    cfg = GRADIENT_CASES["seed-alpha"].replace(dtype=dtype)
    results = {}
    for framework in TWINS:
        twin = load(framework, dtype, "gpu")
        with twin.precision_scope("highest"):
            results[framework] = meta_results(twin, cfg, *step0_inputs(cfg))
    leaves = compare_trees(results["jax"], results["torch"], dtype)
    assert leaves and all(leaf.ok for leaf in leaves), [(lf.name, lf.max_rel_err) for lf in leaves if not lf.ok]


# --- device names and refusals ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "name"),
    [("cpu", "cpu"), ("gpu", "gpu"), ("cuda", "gpu"), ("cuda:1", "gpu:1"), ("GPU:0", "gpu:0"), ("tpu", "tpu")],
)
def test_device_names(text, name):
    assert canonical(text) == name


@pytest.mark.parametrize("text", ["cpu:1", "npu", "cuda:", "cuda:-1", "gpu0", ""])
def test_a_malformed_device_is_refused(text):
    with pytest.raises(ConfigError) as err:
        parse_device(text)
    assert err.value.field == "device"
    assert str(err.value) == f"device: must be one of cpu | gpu | cuda:N | tpu; got {text!r}"


def test_a_gpu_index_past_the_last_is_refused(twin_name):
    with pytest.raises(ConfigError) as err:
        load(twin_name, "float32", f"cuda:{GPUS[twin_name] + 3}")
    assert err.value.field == "device"


@pytest.mark.parametrize("command", ["train", "dump", "eval", "check", "demo"])
def test_device_gpu_without_a_gpu_is_one_line_and_exit_2(tmp_path, capsys, twin_name, command):
    from parity.cli import main
    from parity.run import train_run

    if GPUS[twin_name] > 0:
        pytest.skip(f"a GPU is visible to {twin_name}: the refusal cannot happen here")
    out = tmp_path / "out"
    run = tmp_path / "run"
    args = {
        "train": ["train", "--framework", twin_name, "--iterations", "2", "--out", str(out)],
        "dump": ["dump", "--framework", twin_name, "--out", str(out) + ".npz"],
        "eval": ["eval", str(run), "--framework", twin_name, "--tasks", "2"],
        "check": ["check", "--quick"],
        "demo": ["demo", "--iterations", "2", "--out", str(out)],
    }[command]
    if command == "eval":  # a real run, made on the CPU, evaluated on the GPU
        train_run(load(twin_name, "float32", "cpu"), SEED_ALPHA.replace(iterations=2), run, progress=False)
        assert (run / "checkpoint.safetensors").exists()
    capsys.readouterr()
    assert main([*args, "--device", "gpu"]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("maml-parity: error: device: 'gpu': no GPU is visible to "), lines
    assert not out.exists() and not Path(str(out) + ".npz").exists()
    assert captured.out == ""  # refused before any work
    if command == "eval":
        assert not (run / "eval.json").exists()


# --- precision ---------------------------------------------------------------------------------------


def test_jax_precision_scope_holds_inside_the_block_only():
    twin = load("jax", "float32", "cpu")
    before = jax.config.jax_default_matmul_precision
    with twin.precision_scope("highest"):
        assert jax.config.jax_default_matmul_precision == "highest"
    assert jax.config.jax_default_matmul_precision == before
    with twin.precision_scope("default"):
        assert jax.config.jax_default_matmul_precision == before


def test_torch_precision_scope_holds_inside_the_block_only():
    twin = load("torch", "float32", "cpu")
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.get_float32_matmul_precision())
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.set_float32_matmul_precision("high")
    try:
        with twin.precision_scope("highest"):
            assert torch.backends.cuda.matmul.allow_tf32 is False
            assert torch.backends.cudnn.allow_tf32 is False
            assert torch.get_float32_matmul_precision() == "highest"
        assert torch.backends.cuda.matmul.allow_tf32 is True
        assert torch.get_float32_matmul_precision() == "high"
        with twin.precision_scope("default"):
            assert torch.get_float32_matmul_precision() == "high"
    finally:
        torch.backends.cuda.matmul.allow_tf32 = saved[0]
        torch.set_float32_matmul_precision(saved[1])


def test_an_unknown_precision_is_refused(twin_name):
    with pytest.raises(ConfigError) as err, load(twin_name, "float32").precision_scope("tf32"):
        pass
    assert str(err.value) == "precision: must be one of highest, default; got 'tf32'"


def test_placing_on_the_cpu_changes_no_bit(twin_name):
    """to_arrays(…, "cpu") and the framework's default placement convert the same way."""
    values = np.random.default_rng(0).normal(size=(3, 5)) * 1e3
    for dtype in ("float32", "float64"):
        placed = load(twin_name, dtype).model.to_numpy(load(twin_name, dtype, "cpu").to_arrays(values, dtype))
        default = load(twin_name, dtype).model.to_numpy(load(twin_name, dtype).model.to_arrays(values, dtype))
        assert placed.dtype == np.dtype(dtype) and np.array_equal(placed, default)
        assert np.array_equal(placed, values.astype(dtype))


# --- distributed: the backend follows the run's device ----------------------------------------------


def test_torch_backend_follows_the_device():
    from torch_impl.distributed import backend_for

    assert [backend_for(d) for d in ("cpu", None, "gpu", "cuda")] == ["gloo", "gloo", "nccl", "nccl"]


def _torchrun_env(monkeypatch, rank: int, world: int = 2) -> None:
    for key, value in {"WORLD_SIZE": world, "LOCAL_WORLD_SIZE": world, "RANK": rank, "LOCAL_RANK": rank}.items():
        monkeypatch.setenv(key, str(value))


def test_more_ranks_than_gpus_is_one_line_from_rank_0(monkeypatch):
    from torch_impl import distributed

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    _torchrun_env(monkeypatch, rank=0)
    with pytest.raises(ConfigError) as err:
        distributed.initialize("gpu")
    assert str(err.value) == (
        "device: 2 ranks on this host but PyTorch sees 1 GPU(s): one rank per GPU "
        "(torchrun --nproc_per_node 1), or --device cpu (gloo)"
    )
    _torchrun_env(monkeypatch, rank=1)
    with pytest.raises(SystemExit) as gone:  # the other ranks stop in silence
        distributed.initialize("gpu")
    assert gone.value.code == 2


@pytest.mark.skipif(GPUS["torch"] > 0, reason="a GPU is visible to PyTorch")
def test_torchrun_on_a_gpu_without_one_is_refused_before_the_process_group(monkeypatch):
    import torch.distributed as dist

    from torch_impl import distributed

    _torchrun_env(monkeypatch, rank=0)
    with pytest.raises(ConfigError) as err:
        distributed.initialize("gpu")
    assert err.value.field == "device" and "no GPU is visible to PyTorch" in str(err.value)
    assert not dist.is_initialized()


def test_jax_shards_over_the_devices_of_the_requested_kind():
    from jax_impl import distributed

    assert distributed.available("cpu") == len(jax.devices("cpu"))
    p = distributed.placement(CFG, 1, "cpu")
    assert [d.platform for d in p.mesh.devices.flat] == ["cpu"]
    if GPUS["jax"] == 0:
        with pytest.raises(ConfigError) as err:
            distributed.placement(CFG, None, "gpu")
        assert err.value.field == "device"


@pytest.mark.gpu
@pytest.mark.slow
@pytest.mark.skipif(GPUS["torch"] < 2, reason="needs two GPUs visible to PyTorch")
def test_torchrun_puts_one_rank_on_each_gpu(tmp_path):
    from test_distributed import TRAIN, assert_same_run, run

    config = tmp_path / "b8.json"
    config.write_text('{"meta_batch": 8}')
    args = [*TRAIN, "--framework", "torch", "--config", str(config), "--device", "gpu"]
    one = run([*args, "--out", str(tmp_path / "one")])
    assert one.returncode == 0, one.stderr
    two = run([*args, "--out", str(tmp_path / "two")], torchrun=2)
    assert two.returncode == 0, two.stderr
    assert "split over 2 devices" in two.stdout
    assert_same_run(tmp_path / "two", tmp_path / "one")

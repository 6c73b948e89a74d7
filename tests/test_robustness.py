"""Bad input, divergence, corrupt files: a clear error or a clean stop, and nothing lost.

docs/robustness.md lists every class of bad input tried here and what the user sees.
"""

from __future__ import annotations

import json
import math
import os
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from parity import training
from parity.checkpoint import (
    CHECKPOINT_FILE,
    MANIFEST_FILE,
    CheckpointError,
    expected_layout,
    flatten_state,
    read_checkpoint,
    unflatten_state,
    write_checkpoint,
)
from parity.cli import EXIT_DIVERGED, EXIT_USAGE, main
from parity.config import SEED_ALPHA, Config, ConfigError, field_names
from parity.golden import GoldenFileError, read_golden, write_golden
from parity.init import alpha_from_variable, init_alpha, init_alpha_variable, init_params
from parity.registry import TWINS
from parity.run import read_metrics, train_run
from parity.tasks import sample_batch
from parity.training import TrainingDiverged
from parity.twins import load
from parity.validate import ArrayShapeError, ArrayTypeError, TwinInputError

ROOT = Path(__file__).resolve().parents[1]
FRAMEWORKS = TWINS
SMALL = SEED_ALPHA.replace(hidden=(8,), inner_steps=2, meta_batch=3, dtype="float64")


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` with its bytes: 'nothing written' and 'unchanged' in one."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def neutral_state(cfg: Config, step: int, seed: int = 0) -> dict:
    """A checkpointable state for ``cfg`` made in NumPy alone (random values, the right layout)."""
    rng = np.random.default_rng(seed)
    arrays = {
        name: np.asarray(step if name == "step" else 3, dtype=np.int64)
        if dtype == "int64"
        else rng.standard_normal(shape).astype(dtype)
        for name, (shape, dtype) in expected_layout(cfg).items()
    }
    return unflatten_state(arrays, cfg)


# --- 1. arrays handed to the twins' public functions ---------------------------------------------


def twin_inputs(framework: str, cfg: Config = SMALL):
    twin = load(framework, cfg.dtype)
    to = twin.model.to_arrays
    tasks = to(tuple(sample_batch(cfg, 0)[:4]), cfg.dtype)
    return twin, to(init_params(cfg), cfg.dtype), to(init_alpha(cfg), cfg.dtype), tasks


def bad_call(case: str, framework: str):
    """``(function, call)`` for one class of bad argument."""
    twin, params, alpha, tasks = twin_inputs(framework)
    meta, model, to = twin.meta, twin.model, twin.model.to_arrays
    xs, ys, xq, yq = tasks
    calls = {
        "tasks-without-batch-axis": lambda: meta.meta_loss(params, alpha, (xs[0], ys[0], xq[0], yq[0]), SMALL),
        "tasks-float32": lambda: meta.meta_value_and_grad(
            params, alpha, to(tuple(sample_batch(SMALL, 0)[:4]), "float32"), SMALL
        ),
        "tasks-not-four": lambda: meta.meta_loss(params, alpha, (xs, ys, xq), SMALL),
        "tasks-no-trailing-1": lambda: meta.meta_loss(params, alpha, (xs[..., 0], ys, xq, yq), SMALL),
        "support-query-batch-differ": lambda: meta.meta_loss(params, alpha, (xs, ys, xq[:2], yq[:2]), SMALL),
        "x-y-shapes-differ": lambda: meta.meta_loss(params, alpha, (xs, ys[:, :1], xq, yq), SMALL),
        "params-missing-key": lambda: meta.meta_loss(
            {k: v for k, v in params.items() if k != "b1"}, alpha, tasks, SMALL
        ),
        "params-wrong-shape": lambda: meta.meta_value_and_grad({**params, "w0": params["w1"]}, alpha, tasks, SMALL),
        "alpha-vector": lambda: meta.meta_loss(params, to(np.zeros(3), "float64"), tasks, SMALL),
        "alpha-dict-in-scalar-mode": lambda: meta.meta_loss(params, dict(params), tasks, SMALL),
        "adapt-y-float32": lambda: meta.adapt(
            params, alpha, xs, to(sample_batch(SMALL, 0).y_support, "float32"), SMALL
        ),
        "inner-loss-points-1d": lambda: meta.inner_loss(params, xs[0, :, 0], ys[0, :, 0], SMALL),
        "forward-x-without-trailing-1": lambda: model.forward(params, xs[..., 0], SMALL),
        "forward-int-x": lambda: model.forward(params, to(np.zeros((4, 1)), "int64"), SMALL),
        "tasks-a-list-of-numbers": lambda: meta.meta_loss(params, alpha, [1.0, 2.0, 3.0, 4.0], SMALL),
    }
    return calls[case]


BAD_CALLS = {
    # case: (error class, message both twins give)
    "tasks-without-batch-axis": (
        ArrayShapeError,
        "meta_loss: tasks[0] (x_support) must be float64 [B, K, 1]; got float64 [4, 1]",
    ),
    "tasks-float32": (
        ArrayTypeError,
        "meta_value_and_grad: tasks[0] (x_support) must be float64 [B, K, 1]; got float32 [3, 4, 1]",
    ),
    "tasks-not-four": (
        ArrayShapeError,
        "meta_loss: tasks must be a tuple (x_support, y_support, x_query, y_query) of 4 arrays; got 3 values",
    ),
    "tasks-no-trailing-1": (
        ArrayShapeError,
        "meta_loss: tasks[0] (x_support) must be float64 [B, K, 1]; got float64 [3, 4]",
    ),
    "support-query-batch-differ": (
        ArrayShapeError,
        "meta_loss: the support and query sets must hold the same number of tasks B; got 3 and 2",
    ),
    "x-y-shapes-differ": (
        ArrayShapeError,
        "meta_loss: tasks[0] (x_support) and tasks[1] (y_support) must have the same shape; "
        "got [3, 4, 1] and [3, 1, 1]",
    ),
    "params-missing-key": (ArrayShapeError, "meta_loss: params must have the keys ['b0', 'b1', 'w0', 'w1']"),
    "params-wrong-shape": (
        ArrayShapeError,
        "meta_value_and_grad: params['w0'] must be float64 [8, 1]; got float64 [1, 8]",
    ),
    "alpha-vector": (ArrayShapeError, "meta_loss: alpha must be float64 [] (alpha_mode scalar); got float64 [3]"),
    "alpha-dict-in-scalar-mode": (ArrayShapeError, "meta_loss: alpha must be one array float64 [] (alpha_mode scalar)"),
    "adapt-y-float32": (ArrayTypeError, "adapt: y must be float64 [..., P, 1]; got float32 [3, 4, 1]"),
    "inner-loss-points-1d": (ArrayShapeError, "inner_loss: x must be float64 [..., P, 1]; got float64 [4]"),
    "forward-x-without-trailing-1": (ArrayShapeError, "forward: x must be float64 [..., P, 1]; got float64 [3, 4]"),
    "forward-int-x": (ArrayTypeError, "forward: x must be float64 [..., P, 1]; got int64 [4, 1]"),
    "tasks-a-list-of-numbers": (ArrayTypeError, "meta_loss: tasks[0] must be a "),
}


@pytest.mark.parametrize("framework", FRAMEWORKS)
@pytest.mark.parametrize("case", sorted(BAD_CALLS))
def test_bad_arrays_raise_a_named_error_with_the_same_words_in_both_twins(framework: str, case: str) -> None:
    error, message = BAD_CALLS[case]
    with pytest.raises(error) as info:
        bad_call(case, framework)()
    assert isinstance(info.value, TwinInputError)
    assert str(info.value).startswith(message), str(info.value)


def test_torch_twin_refuses_numpy_arrays_by_name() -> None:
    twin, params, alpha, tasks = twin_inputs("torch")
    with pytest.raises(ArrayTypeError, match=r"^meta_loss: tasks\[2\] must be a torch.Tensor; got ndarray$"):
        twin.meta.meta_loss(params, alpha, (*tasks[:2], np.zeros((3, 4, 1)), tasks[3]), SMALL)


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_the_checks_stay_off_the_inner_loop(framework: str, monkeypatch) -> None:
    """One meta-gradient runs the checks a fixed number of times, whatever T: never per inner step.
    (In JAX they run only while tracing: a second call with the same shapes runs none.)"""
    twin, params, alpha, tasks = twin_inputs(framework)
    calls: list[str] = []
    real = twin.model.check_inputs

    def counted(function: str, *args, **kwargs) -> None:
        calls.append(function)
        real(function, *args, **kwargs)

    monkeypatch.setattr(twin.meta, "check_inputs", counted)
    cfg = SMALL.replace(inner_steps=7)
    twin.meta.meta_value_and_grad(params, alpha, tasks, cfg)
    assert calls[0] == "meta_value_and_grad" and set(calls) <= {"meta_value_and_grad", "meta_loss", "adapt"}
    assert len(calls) <= 3  # T = 7 inner steps, at most three checks
    calls.clear()
    twin.meta.meta_value_and_grad(params, alpha, tasks, cfg)
    assert calls == (["meta_value_and_grad"] if framework == "jax" else ["meta_value_and_grad", "meta_loss", "adapt"])


# --- 1. the command line: every subcommand's flags ------------------------------------------------


def _bad_cli_cases(tmp: Path) -> dict[str, tuple[list[str], str]]:
    a_file = tmp / "a_file"
    cfg = lambda text: str(tmp / "cfg") + text  # noqa: E731
    return {
        "train-negative-iterations": (
            ["train", "--iterations", "-1", "--out", str(tmp / "r")],
            "iterations: must be an integer >= 0, got -1",
        ),
        "train-checkpoint-every-0": (
            ["train", "--checkpoint-every", "0", "--out", str(tmp / "r")],
            "checkpoint_every: must be an integer >= 1, got 0",
        ),
        "train-print-every-negative": (
            ["train", "--print-every", "-5", "--out", str(tmp / "r")],
            "print_every: must be an integer >= 0, got -5",
        ),
        "train-non-integer-seed": (
            ["train", "--seed", "x1", "--out", str(tmp / "r")],
            "seed: must be an integer, got 'x1'",
        ),
        "train-config-missing": (
            ["train", "--config", cfg("missing.json"), "--out", str(tmp / "r")],
            "config: cannot read",
        ),
        "train-config-directory": (["train", "--config", str(tmp), "--out", str(tmp / "r")], "config: cannot read"),
        "train-config-not-json": (
            ["train", "--config", cfg("bad.json"), "--out", str(tmp / "r")],
            "config: not valid JSON (Expecting",
        ),
        "train-config-not-object": (
            ["train", "--config", cfg("list.json"), "--out", str(tmp / "r")],
            "config: must be a JSON object, got list",
        ),
        "train-config-binary": (["train", "--config", cfg("binary.json"), "--out", str(tmp / "r")], "config: "),
        "train-out-is-a-file": (["train", "--out", str(a_file)], "out: "),
        "train-out-under-a-file": (["train", "--out", str(a_file / "run")], "out: "),
        "train-softplus-with-fixed-alpha": (
            ["train", "--preset", "seed-maml", "--alpha-parametrisation", "softplus", "--out", str(tmp / "r")],
            "alpha_parametrisation: softplus applies to a learned alpha",
        ),
        "train-softplus-alpha-init-0": (
            ["train", "--config", cfg("alpha0.json"), "--alpha-parametrisation", "softplus", "--out", str(tmp / "r")],
            "alpha_init: must be a finite number > 0 (alpha_parametrisation softplus), got 0.0",
        ),
        "train-unknown-parametrisation": (
            ["train", "--alpha-parametrisation", "exp", "--out", str(tmp / "r")],
            "alpha_parametrisation: must be one of identity, softplus; got 'exp'",
        ),
        "train-devices-0": (
            ["train", "--devices", "0", "--out", str(tmp / "r")],
            "devices: must be an integer >= 1, got 0",
        ),
        "dump-out-not-npz": (["dump", "--out", str(tmp / "golden.txt")], "out: must be a file name ending in .npz"),
        "dump-out-is-a-directory": (["dump", "--out", str(tmp / "dir.npz")], "out: "),
        "dump-negative-T": (
            ["dump", "--inner-steps", "-2", "--out", str(tmp / "g.npz")],
            "inner_steps: must be an integer >= 0, got -2",
        ),
        "eval-tasks-0": (["eval", str(tmp), "--tasks", "0"], "tasks: must be an integer >= 2, got 0"),
        "eval-shots-0": (["eval", str(tmp), "--shots", "0"], "shots: must be an integer >= 1, got 0"),
        "eval-max-steps-negative": (
            ["eval", str(tmp), "--max-steps", "-1"],
            "max_steps: must be an integer >= 0, got -1",
        ),
        "eval-phase-shift-not-a-number": (
            ["eval", str(tmp), "--phase-shift", "half"],
            "phase_shift: must be a number or a multiple of pi, got 'half'",
        ),
        "eval-phase-shift-nan": (
            ["eval", str(tmp), "--phase-shift", "nan"],
            "phase_shift: must be one or more finite numbers",
        ),
        "eval-dir-missing": (["eval", str(tmp / "nowhere")], "dir: no such directory"),
        "eval-dir-is-a-file": (["eval", str(a_file)], "dir: "),
        "eval-dir-without-a-run": (["eval", str(tmp)], "dir: "),
        "eval-unknown-dtype": (
            ["eval", str(tmp), "--dtype", "bfloat16"],
            "dtype: must be one of float32, float64; got 'bfloat16'",
        ),
        "report-dir-missing": (["report", str(tmp / "nowhere")], "dir: no such directory"),
        "report-dir-without-a-run": (["report", str(tmp)], "dir: "),
        "check-json-is-a-directory": (["check", "--json", str(tmp)], "json: "),
        "check-no-such-case": (["check", "--cases", "no-such-case"], "cases: no case name contains 'no-such-case'"),
        "bench-threads-0": (["bench", "--threads", "0"], "threads: must be an integer >= 1, got 0"),
        "bench-repeats-0": (["bench", "--repeats", "0"], "repeats: must be an integer >= 1, got 0"),
        "bench-json-is-a-directory": (["bench", "--json", str(tmp)], "json: "),
        "demo-iterations-0": (
            ["demo", "--iterations", "0", "--out", str(tmp / "demo")],
            "iterations: must be an integer >= 1, got 0",
        ),
        "demo-out-is-a-file": (["demo", "--out", str(a_file)], "out: "),
    }


BAD_CLI = sorted(_bad_cli_cases(Path("/x")))


@pytest.mark.parametrize("case", BAD_CLI)
def test_bad_flags_are_one_line_exit_2_and_write_nothing(tmp_path, capsys, case: str) -> None:
    (tmp_path / "a_file").write_text("not a directory\n")
    (tmp_path / "dir.npz").mkdir()
    (tmp_path / "cfgbad.json").write_text("{not json")
    (tmp_path / "cfglist.json").write_text("[1, 2]")
    (tmp_path / "cfgbinary.json").write_bytes(b"\xff\xfe\x00{")
    (tmp_path / "cfgalpha0.json").write_text('{"alpha_init": 0.0}')
    before = snapshot(tmp_path)
    args, expected = _bad_cli_cases(tmp_path)[case]
    assert main(args) == EXIT_USAGE
    out, err = capsys.readouterr()
    assert err.count("\n") == 1, err
    assert err.startswith("maml-parity: error: " + expected), err
    assert "Traceback" not in err and out == ""
    assert snapshot(tmp_path) == before  # nothing written, nothing changed


def test_a_real_process_exits_2_without_a_traceback(tmp_path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-m", "parity", "eval", str(tmp_path / "missing")], capture_output=True, text=True, env=env
    )
    assert result.returncode == 2
    assert result.stderr == f"maml-parity: error: dir: no such directory {str(tmp_path / 'missing')!r}\n"


def test_train_refuses_to_overwrite_a_run_without_resume(tmp_path, capsys) -> None:
    write_checkpoint(tmp_path, neutral_state(SMALL, 3), SMALL, "jax")
    (tmp_path / "metrics.jsonl").write_text("")
    before = snapshot(tmp_path)
    assert main(["train", "--out", str(tmp_path), "--no-progress"]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert err.startswith("maml-parity: error: out: ") and "already holds a training run; pass --resume" in err
    assert snapshot(tmp_path) == before


def minimal_eval(max_steps: int = 1) -> dict:
    """The smallest eval.json that passes ``parity.readers.eval_problem``: one phase shift, 2 tasks."""
    curve = [1.0] * (max_steps + 1)
    record = {"phase_shift": 0.0, "steps": list(range(max_steps + 1)), "diverged": [0] * (max_steps + 1)}
    record.update({key: curve for key in ("mse_mean", "mse_ci95", "l1_mean", "l1_ci95")})
    return {
        "format": "maml-parity-eval/1",
        **{"tasks": 2, "shots": 4, "max_steps": max_steps, "query_points": 100, "pretrain_steps": 0},
        **{"random_seed": 1, "framework": "jax", "dtype": "float64", "inner_loss": "l1", "alpha": 0.1},
        "phase_shifts": [0.0],
        **{name: [dict(record)] for name in ("meta", "random", "pretrained")},
        "fits": [],
    }


REPORT_INPUTS = {
    "eval-json-not-json": ('{"x":', "", "eval.json' is not valid JSON (Expecting value"),
    "eval-json-not-an-eval": ("[]", "", "eval.json' is not a maml-parity-eval/1 file"),
    "metrics-cut-mid-line": (
        json.dumps(minimal_eval()),
        '{"step": 0, "outer',
        "metrics.jsonl' is not JSON lines",
    ),
}


@pytest.mark.parametrize("case", sorted(REPORT_INPUTS))
def test_report_on_damaged_run_files_is_one_line(tmp_path, capsys, case: str) -> None:
    eval_json, metrics, expected = REPORT_INPUTS[case]
    (tmp_path / "config.json").write_text(SMALL.to_json())
    (tmp_path / "eval.json").write_text(eval_json)
    (tmp_path / "metrics.jsonl").write_text(metrics)
    before = snapshot(tmp_path)
    assert main(["report", str(tmp_path)]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert err.startswith(f"maml-parity: error: dir: {str(tmp_path)!r}"[:-1] + "/") and expected in err, err
    assert err.count("\n") == 1 and snapshot(tmp_path) == before


def test_resume_with_a_gap_in_the_log_is_refused(tmp_path, capsys) -> None:
    config = tmp_path / "small.json"
    config.write_text(SMALL.to_json())
    run = tmp_path / "run"
    write_checkpoint(run, neutral_state(SMALL, 4), SMALL, "torch")
    (run / "metrics.jsonl").write_text("".join(json.dumps({"step": i}) + "\n" for i in (0, 1, 3)))
    before = snapshot(tmp_path)
    args = ["train", "--config", str(config), "--framework", "torch", "--out", str(run), "--resume", "--no-progress"]
    assert main(args) == EXIT_USAGE
    err = capsys.readouterr().err
    assert err.endswith(
        "resume: " + f"{run / 'metrics.jsonl'} does not hold steps 0..3 before the checkpoint's step 4\n"
    )
    assert snapshot(tmp_path) == before


# --- 2. divergence ---------------------------------------------------------------------------------

# Learned α, MSE, a large α learning rate: α is driven negative, the inner loop then climbs the
# loss and it overflows within a few dozen steps.
DIVERGING = SEED_ALPHA.replace(loss="mse", alpha_lr=0.5, hidden=(8, 8), dtype="float64", iterations=80)


@pytest.fixture(scope="module")
def diverged_runs(tmp_path_factory) -> dict[str, tuple[Path, TrainingDiverged]]:
    runs = {}
    for framework in FRAMEWORKS:
        out = tmp_path_factory.mktemp(f"diverged-{framework}")
        with pytest.raises(TrainingDiverged) as info:
            train_run(load(framework, "float64"), DIVERGING, out, progress=False, checkpoint_every=25)
        runs[framework] = (out, info.value)
    return runs


def test_both_twins_stop_at_the_same_step(diverged_runs) -> None:
    (_, jax_err), (_, torch_err) = diverged_runs["jax"], diverged_runs["torch"]
    assert jax_err.step == torch_err.step
    assert 25 < jax_err.step < DIVERGING.iterations
    assert jax_err.alpha < 0 and torch_err.alpha < 0  # what went wrong, in the message
    assert jax_err.last_loss_step in (jax_err.step - 1, jax_err.step) and math.isfinite(jax_err.last_loss)
    assert jax_err.last_loss_step == torch_err.last_loss_step
    assert jax_err.last_loss == pytest.approx(torch_err.last_loss, rel=1e-6)


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_a_diverged_run_keeps_its_last_good_checkpoint_and_writes_nothing_after(diverged_runs, framework) -> None:
    out, err = diverged_runs[framework]
    kept = (err.step // 25) * 25
    ckpt = read_checkpoint(out)
    assert ckpt.step == kept
    assert all(np.all(np.isfinite(v)) for v in flatten_state(ckpt.state).values())
    rows = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in rows] == list(range(err.step))  # the finite steps, every one
    assert all(math.isfinite(r["outer_loss"]) for r in rows)
    assert not (out / "final.npz").exists()
    assert sorted(p.name for p in out.iterdir()) == [MANIFEST_FILE, CHECKPOINT_FILE, "config.json", "metrics.jsonl"]


def test_divergence_is_one_line_and_exit_3(tmp_path, capsys) -> None:
    config = tmp_path / "diverging.json"
    config.write_text(DIVERGING.to_json())
    out = tmp_path / "run"
    args = ["train", "--config", str(config), "--framework", "torch", "--checkpoint-every", "25", "--no-progress"]
    assert main([*args, "--out", str(out)]) == EXIT_DIVERGED
    err = capsys.readouterr().err
    assert err == (
        "maml-parity: training diverged at step 31: the outer loss, a gradient or the updated state is not finite; "
        "alpha -0.0852626, last finite outer loss 5.24598e+154 (step 31); lower alpha (alpha_init, alpha_lr) or the "
        "outer learning rate (outer_lr), or use --alpha-parametrisation softplus, which keeps alpha positive; "
        f"the checkpoint of step 25 in {str(out)!r} is kept\n"
    )
    assert read_checkpoint(out).step == 25 and not (out / "final.npz").exists()


SOFTPLUS = DIVERGING.replace(alpha_parametrisation="softplus", iterations=60)


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_softplus_keeps_alpha_positive_where_identity_diverges(tmp_path, framework) -> None:
    _, rows = train_run(load(framework, "float64"), SOFTPLUS, tmp_path, progress=False)
    alphas = np.array([r["alpha"] for r in rows])
    assert len(rows) == 60 and np.all(alphas > 0)
    assert alphas[0] == pytest.approx(SOFTPLUS.alpha_init, rel=1e-14)  # α itself is logged, and starts at alpha_init
    # The checkpoint holds ρ (what Adam updates); softplus(ρ) is the α in final.npz.
    ckpt = read_checkpoint(tmp_path)
    rho = ckpt.state["alpha"]
    with np.load(tmp_path / "final.npz", allow_pickle=False) as final:
        alpha = final["alpha"]
    np.testing.assert_allclose(alpha_from_variable(rho, SOFTPLUS), alpha, rtol=1e-15)
    assert float(rho) < float(alpha)  # ρ = log(e^α − 1) < α: not α stored twice


def test_softplus_twins_agree_and_store_the_same_variable() -> None:
    cfg = SOFTPLUS.replace(iterations=15, loss="l1", alpha_lr=1e-2)
    states = {}
    for framework in FRAMEWORKS:
        twin = load(framework, "float64")
        states[framework] = flatten_state(twin.train.state_to_numpy(training.run(twin, cfg), cfg))
    assert float(init_alpha_variable(cfg)) == pytest.approx(math.log(math.expm1(0.1)), rel=1e-15)
    for name in states["jax"]:
        np.testing.assert_allclose(states["torch"][name], states["jax"][name], rtol=1e-9, atol=1e-12, err_msg=name)
    assert abs(float(states["jax"]["alpha"]) - float(init_alpha_variable(cfg))) > 1e-3  # ρ moved


def test_softplus_config_validation() -> None:
    with pytest.raises(ConfigError, match=r"^alpha_init: must be a finite number > 0 \(alpha_parametrisation"):
        SEED_ALPHA.replace(alpha_parametrisation="softplus", alpha_init=-0.1)
    with pytest.raises(ConfigError, match=r"^alpha_parametrisation: softplus applies to a learned alpha"):
        SEED_ALPHA.replace(alpha_parametrisation="softplus", alpha_mode="fixed")
    assert Config.from_json(SOFTPLUS.to_json()) == SOFTPLUS


# --- 3 and 7. corrupt, foreign and fuzzed files -----------------------------------------------------

CKPT_CFG = SMALL.replace(outer_optimizer="adam", alpha_mode="per_parameter")


def _mutations(blob: bytes, rng: np.random.Generator, n: int) -> list[tuple[str, bytes]]:
    """``n`` damaged copies of ``blob``: truncations, flipped bytes, garbage, a huge length field."""
    (header_len,) = struct.unpack("<Q", blob[:8]) if len(blob) >= 8 else (0,)
    out = [("empty", b""), ("one byte", blob[:1]), ("header only", blob[: 8 + header_len]), ("zeros", bytes(len(blob)))]
    out.append(("huge header length", struct.pack("<Q", 2**63 - 1) + blob[8:]))
    out.append(("header length past the end", struct.pack("<Q", len(blob)) + blob[8:]))
    out.append(("garbage appended", blob + b"garbage"))
    for i in range(n):
        kind = i % 4
        if kind == 0:
            cut = int(rng.integers(0, len(blob)))
            out.append((f"truncated at {cut}", blob[:cut]))
        elif kind == 1:
            data = bytearray(blob)
            for pos in rng.integers(0, len(blob), size=int(rng.integers(1, 6))):
                data[pos] ^= 1 << int(rng.integers(0, 8))
            out.append(("bits flipped", bytes(data)))
        elif kind == 2:  # within the header, where structure lives
            data = bytearray(blob)
            pos = int(rng.integers(0, min(len(blob), 8 + header_len)))
            data[pos] = int(rng.integers(0, 256))
            out.append((f"header byte {pos} replaced", bytes(data)))
        else:
            out.append(("random bytes", rng.bytes(int(rng.integers(1, 2 * len(blob))))))
    return out


def test_fuzzed_checkpoints_only_ever_raise_checkpoint_error(tmp_path) -> None:
    state = neutral_state(CKPT_CFG, 7)
    write_checkpoint(tmp_path, state, CKPT_CFG, "jax")
    blob = (tmp_path / CHECKPOINT_FILE).read_bytes()
    expected = flatten_state(state)
    rng = np.random.default_rng(6)
    errors = 0
    damaged = _mutations(blob, rng, 400)
    for name, data in damaged:
        (tmp_path / CHECKPOINT_FILE).write_bytes(data)
        try:
            ckpt = read_checkpoint(tmp_path)
        except CheckpointError as err:
            assert str(err).startswith("checkpoint: ") and "\n" not in str(err), (name, str(err))
            errors += 1
            continue
        # A change that leaves every array and the manifest as they were may load; nothing else.
        got = flatten_state(ckpt.state)
        assert got.keys() == expected.keys(), name
        assert all(np.array_equal(got[k], expected[k]) for k in expected), name
    print(f"{errors} of {len(damaged)} damaged checkpoints refused, the rest read back unchanged")
    assert errors >= 0.95 * len(damaged)  # nearly every mutation is caught (trailing bytes may not matter)


def test_checksum_catches_a_flipped_bit_in_the_arrays(tmp_path) -> None:
    write_checkpoint(tmp_path, neutral_state(CKPT_CFG, 7), CKPT_CFG, "jax")
    data = bytearray((tmp_path / CHECKPOINT_FILE).read_bytes())
    data[-3] ^= 0x01  # the last array's bytes: still a valid float, silently different without a checksum
    (tmp_path / CHECKPOINT_FILE).write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="is corrupt: its contents do not match the checksum written with them"):
        read_checkpoint(tmp_path)


def test_foreign_and_mismatched_checkpoints_are_clear_errors(tmp_path) -> None:
    from safetensors.numpy import save_file

    save_file({"weight": np.zeros((2, 2))}, str(tmp_path / CHECKPOINT_FILE), metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="no embedded manifest; not a maml-parity checkpoint"):
        read_checkpoint(tmp_path)
    save_file({"weight": np.zeros(2)}, str(tmp_path / CHECKPOINT_FILE), metadata={"manifest": '{"format": "x"}'})
    with pytest.raises(CheckpointError, match=r"format 'x', expected 'maml-parity-checkpoint/2'"):
        read_checkpoint(tmp_path)
    (tmp_path / CHECKPOINT_FILE).unlink()
    (tmp_path / CHECKPOINT_FILE).mkdir()
    with pytest.raises(CheckpointError, match="is not a file"):
        read_checkpoint(tmp_path)


def test_a_corrupt_checkpoint_is_one_cli_line_and_left_alone(tmp_path, capsys) -> None:
    write_checkpoint(tmp_path, neutral_state(CKPT_CFG, 7), CKPT_CFG, "torch")
    (tmp_path / "config.json").write_text(CKPT_CFG.to_json())
    blob = (tmp_path / CHECKPOINT_FILE).read_bytes()
    (tmp_path / CHECKPOINT_FILE).write_bytes(blob[: len(blob) // 2])
    before = snapshot(tmp_path)
    for args in (
        ["eval", str(tmp_path), "--tasks", "2"],
        ["train", "--out", str(tmp_path), "--resume", "--no-progress"],
    ):
        assert main(args) == EXIT_USAGE
        err = capsys.readouterr().err
        assert err.startswith("maml-parity: error: checkpoint: ") and "is not a readable safetensors file" in err
        assert err.count("\n") == 1
        assert snapshot(tmp_path) == before


def golden_blob(tmp_path: Path) -> tuple[bytes, dict]:
    from parity.golden import golden_arrays

    cfg = SMALL.replace(meta_batch=2)
    path = write_golden(tmp_path / "golden.npz", golden_arrays(load("jax", "float64"), cfg))
    return path.read_bytes(), read_golden(path)


def test_fuzzed_golden_files_only_ever_raise_golden_file_error(tmp_path) -> None:
    blob, expected = golden_blob(tmp_path)
    rng = np.random.default_rng(7)
    starts = [
        i
        for i in range(len(blob) - 4)
        if blob[i : i + 2] == b"PK" and blob[i + 2 : i + 4] in (b"\x03\x04", b"\x01\x02")
    ]
    damaged: list[tuple[str, bytes]] = [(name, data) for name, data in _mutations(blob, rng, 240)]
    for i in range(120):  # zip entries: bytes of local and central headers replaced
        data = bytearray(blob)
        pos = starts[i % len(starts)] + int(rng.integers(4, 46))
        data[pos] = int(rng.integers(0, 256))
        damaged.append((f"zip header byte {pos}", bytes(data)))
    errors = 0
    path = tmp_path / "damaged.npz"
    for name, data in damaged:
        path.write_bytes(data)
        try:
            got = read_golden(path)
        except GoldenFileError as err:
            assert str(err).startswith("golden: ") and "\n" not in str(err), (name, str(err))
            errors += 1
            continue
        assert got.keys() == expected.keys(), name
        assert got["config"] == expected["config"], name
        assert all(np.array_equal(got[k], expected[k]) for k in expected if k != "config"), name
    print(f"{errors} of {len(damaged)} damaged golden files refused, the rest read back unchanged")
    assert errors >= 0.7 * len(damaged)


def test_golden_files_with_a_missing_or_misshapen_entry(tmp_path) -> None:
    _, golden = golden_blob(tmp_path)
    arrays = {k: (np.asarray(v.to_json()) if k == "config" else v) for k, v in golden.items()}
    broken = {k: v for k, v in arrays.items() if k != "grad/w1"}
    write_golden(tmp_path / "missing.npz", broken)
    with pytest.raises(GoldenFileError, match=r"entries missing for its config: \['grad/w1'\]"):
        read_golden(tmp_path / "missing.npz")
    write_golden(tmp_path / "shape.npz", {**arrays, "tasks/x_query": arrays["tasks/x_query"][:1]})
    with pytest.raises(
        GoldenFileError, match=r"entry 'tasks/x_query' is float64\[1, 4, 1\], its config needs float64\[2, 4, 1\]"
    ):
        read_golden(tmp_path / "shape.npz")
    write_golden(tmp_path / "config.npz", {**arrays, "config": np.asarray('{"inner_steps": -1}')})
    with pytest.raises(GoldenFileError, match=r"the 'config' entry is not a valid config \(inner_steps: must be"):
        read_golden(tmp_path / "config.npz")
    with zipfile.ZipFile(tmp_path / "pickled.npz", "w") as z:  # an object array: refused, never unpickled
        with z.open("config.npy", "w") as f:
            np.lib.format.write_array(f, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(GoldenFileError, match="holds Python objects; refused unread"):
        read_golden(tmp_path / "pickled.npz")


# --- 6. property: any JSON value given as a config gives a Config or a ConfigError ------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.sampled_from([10**400, -(10**400)])  # JSON integers too large for a float
    | st.floats()
    | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
config_objects = st.dictionaries(st.sampled_from([*field_names(), "alpha", "lr"]), json_values, max_size=5)


@settings(derandomize=True, max_examples=300, deadline=None)
@given(st.one_of(config_objects, json_values))
def test_any_json_config_is_a_config_or_a_config_error(data) -> None:
    try:
        cfg = Config.from_dict(data)
    except ConfigError as err:
        named = err.field.split(".")[0]  # "family.A": a field "A" inside the nested "family" object
        assert err.field in (*field_names(), "config") or (isinstance(data, dict) and named in data), err.field
        assert str(err).startswith(f"{err.field}: ") and "\n" not in str(err)
        return
    assert Config.from_json(cfg.to_json()) == cfg  # what was accepted is a valid, serialisable config
    json.dumps(cfg.to_dict(), allow_nan=False)

"""Evaluation: the held-out task set, the statistics, adaptation, cross-framework agreement, report."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest

from parity.checkpoint import read_checkpoint
from parity.cli import main
from parity.config import SEED_ALPHA, ConfigError
from parity.eval import (
    QUERY_POINTS,
    STARTS,
    EvalSpec,
    adaptation_curves,
    error_summary,
    eval_tasks,
    evaluate_run,
)
from parity.init import init_params
from parity.registry import TWINS
from parity.run import train_run
from parity.tasks import TRAIN_STREAM, sample_batch
from parity.twins import load

CFG = SEED_ALPHA.replace(hidden=(8, 8), inner_steps=3, alpha_init=0.05, dtype="float64", iterations=6)
SPEC = EvalSpec(tasks=40, max_steps=4, phase_shifts=(0.0, math.pi), pretrain_steps=10)


@pytest.fixture(scope="module")
def jax_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("jax-run")
    train_run(load("jax", "float64"), CFG, out, progress=False)
    return out


def test_eval_tasks_are_held_out_and_phase_shifted_exactly() -> None:
    tasks = eval_tasks(CFG, 30, 5, 0.0)
    shifted = eval_tasks(CFG, 30, 5, math.pi / 3)
    assert tasks.x_support.shape == (30, 5, 1) and tasks.x_query.shape == (30, QUERY_POINTS, 1)
    np.testing.assert_array_equal(tasks.x_query[7, :, 0], np.linspace(-2 * math.pi, 2 * math.pi, QUERY_POINTS))
    # Same tasks, shifted phase: amplitude, frequency and support inputs unchanged.
    np.testing.assert_array_equal(shifted.x_support, tasks.x_support)
    np.testing.assert_array_equal(shifted.frequency, tasks.frequency)
    np.testing.assert_allclose(shifted.phase - tasks.phase, math.pi / 3, rtol=0, atol=1e-15)
    a, w = tasks.amplitude[:, None, None], tasks.frequency[:, None, None]
    np.testing.assert_allclose(shifted.y_support, a * np.sin(w * tasks.x_support + math.pi / 3), rtol=0, atol=1e-14)
    np.testing.assert_allclose(tasks.y_query, a * np.sin(w * tasks.x_query), rtol=0, atol=1e-14)
    # No training step's support inputs coincide with the held-out ones.
    train = sample_batch(CFG.replace(k_support=5), 0, TRAIN_STREAM, batch_size=30)
    assert not np.isin(tasks.x_support, train.x_support).any()


def test_error_summary_against_hand_computed_numbers() -> None:
    y = np.array([[1.0, -1.0], [2.0, 2.0], [0.0, 3.0]])  # [N=3, P=2]
    preds = np.stack([np.zeros_like(y), y])  # [S+1=2, N, P]: before and a perfect fit
    out = error_summary(preds, y)
    per_task_mse = np.array([1.0, 4.0, 4.5])
    assert out["steps"] == [0, 1]
    assert out["mse_mean"] == pytest.approx([per_task_mse.mean(), 0.0], abs=1e-15)
    assert out["mse_ci95"][0] == pytest.approx(1.959963984540054 * per_task_mse.std(ddof=1) / math.sqrt(3), rel=1e-14)
    assert out["l1_mean"][0] == pytest.approx(np.mean([1.0, 2.0, 1.5]), abs=1e-15)
    assert out["mse_ci95"][1] == out["l1_ci95"][1] == 0.0


def test_diverged_tasks_are_counted_and_left_out_never_passed_along_as_nan() -> None:
    y = np.array([[1.0, -1.0], [2.0, 2.0], [0.0, 3.0]])  # [N=3, P=2]
    preds = np.stack([np.zeros_like(y), y, y])  # [S+1=3, N, P]
    preds[1, 0, 0] = np.nan  # task 0 diverged at step 1
    preds[2] = 1e5  # every task off by ~1e5 at step 2: MSE ~1e10 > DIVERGED_MSE
    out = error_summary(preds, y)
    assert out["diverged"] == [0, 1, 3]
    assert out["mse_mean"][1] == 0.0  # tasks 1 and 2 fit perfectly; task 0 is left out
    assert out["mse_mean"][2] is None and out["mse_ci95"][2] is None and out["l1_mean"][2] is None
    json.dumps(out, allow_nan=False)  # strict JSON: no NaN anywhere


def test_adaptation_steps_equal_the_training_inner_loop(twin_name: str) -> None:
    """Step k of the evaluation equals the twin's own ``adapt`` with T = k (another code path:
    vmap / scan in JAX, the batched loop in torch); α = 0 leaves every prediction unchanged."""
    twin = load(twin_name, "float64")
    tasks = eval_tasks(CFG, 6, 4, 0.0)
    params, alpha = init_params(CFG), np.asarray(0.05)
    preds = adaptation_curves(twin, params, alpha, tasks, CFG, 3)  # [4, 6, P]
    model = twin.model
    p, a, (xs, ys, xq) = (model.to_arrays(v, "float64") for v in (params, alpha, tasks[:3]))
    adapted, _ = twin.meta.adapt(p, a, xs, ys, CFG.replace(inner_steps=3))
    expected = model.to_numpy(model.forward(adapted, xq, CFG))[..., 0]
    np.testing.assert_allclose(preds[3], expected, rtol=1e-12, atol=1e-12)
    assert np.abs(preds[3] - preds[0]).max() > 1e-3  # the steps did move the fit
    frozen = adaptation_curves(twin, params, np.asarray(0.0), tasks, CFG, 2)
    assert np.array_equal(frozen[2], frozen[0])


# Every mean and CI half-width, entry by entry. Seen here (2-core CPU, jax 0.10.2, torch 2.13.0):
# 6.9e-16 relative in float64, 7.1e-8 in float32.
@pytest.mark.parametrize(("dtype", "rtol"), [("float64", 2e-14), ("float32", 1e-6)])
def test_jax_trained_run_evaluates_the_same_in_torch(jax_run, dtype: str, rtol: float) -> None:
    results = {fw: evaluate_run(jax_run, fw, dtype, SPEC, write=False) for fw in TWINS}
    assert results["jax"]["dtype"] == results["torch"]["dtype"] == dtype
    for start in STARTS:
        for i in range(len(SPEC.phase_shifts)):
            for key in ("mse_mean", "mse_ci95", "l1_mean", "l1_ci95"):
                ref, got = np.array(results["jax"][start][i][key]), np.array(results["torch"][start][i][key])
                assert ref.shape == (SPEC.max_steps + 1,)
                np.testing.assert_allclose(got, ref, rtol=rtol, atol=0, err_msg=f"{start} shift {i} {key}")


def test_eval_json_layout_and_cli(jax_run, capsys) -> None:
    assert (
        main(
            [
                "eval",
                str(jax_run),
                "--tasks",
                "20",
                "--max-steps",
                "2",
                "--phase-shift",
                "0",
                "pi/2",
                "--pretrain-steps",
                "5",
            ]
        )
        == 0
    )
    result = json.loads((jax_run / "eval.json").read_text())
    assert result["tasks"] == 20 and result["shots"] == CFG.k_support and result["max_steps"] == 2
    assert result["phase_shifts"] == [0.0, math.pi / 2]
    assert result["framework"] == result["trained_with"] == "jax" and result["checkpoint_step"] == CFG.iterations
    for start in STARTS:
        assert [r["phase_shift"] for r in result[start]] == [0.0, math.pi / 2]
        assert result[start][0]["steps"] == [0, 1, 2]
        assert set(result[start][0]) == {
            "phase_shift",
            "steps",
            "diverged",
            "mse_mean",
            "mse_ci95",
            "l1_mean",
            "l1_ci95",
        }
    # Before adapting, `meta` is the checkpoint's network: its error by a NumPy forward pass.
    params = read_checkpoint(jax_run).state["params"]
    tasks = eval_tasks(CFG, 20, CFG.k_support, 0.0)
    h = tasks.x_query  # [N, P, 1]
    for i in range(3):
        h = h @ params[f"w{i}"].T + params[f"b{i}"]
        h = np.tanh(h) if i < 2 else h
    mse = np.mean((h - tasks.y_query) ** 2, axis=(1, 2))  # [N]
    assert result["meta"][0]["mse_mean"][0] == pytest.approx(mse.mean(), rel=1e-12)
    assert "phase shift 1.571" in capsys.readouterr().out


def test_report_writes_markdown_and_pngs(jax_run) -> None:
    evaluate_run(jax_run, "jax", None, SPEC)
    assert main(["report", str(jax_run)]) == 0
    text = (jax_run / "report.md").read_text()
    for needle in (
        "## Summary",
        "| meta-learned init |",
        "![",
        "fit.png",
        "| jax |",
        "CPU count",
        "| hidden | `[8, 8]` |",
    ):
        assert needle in text, needle
    for name in ("fit.png", "adaptation.png", "phase_shift.png", "alpha.png", "training_loss.png"):
        head = (jax_run / name).read_bytes()[:24]
        assert head[:8] == b"\x89PNG\r\n\x1a\n", name
        width, height = int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
        assert width > 500 and height > 300, (name, width, height)


def test_every_evaluation_is_kept_and_the_report_sets_jax_beside_torch(jax_run, tmp_path) -> None:
    """A second evaluation never loses the first: evals/<framework>-<n>.json each, eval.json the latest;
    the report puts the latest JAX and PyTorch evaluations of the run side by side, with the difference."""
    run = tmp_path / "run"
    shutil.copytree(jax_run, run, ignore=shutil.ignore_patterns("evals", "eval.json"))
    args = ["--tasks", "10", "--max-steps", "3", "--phase-shift", "0", "pi", "--pretrain-steps", "5"]
    assert main(["eval", str(run), *args]) == 0
    first = (run / "evals" / "jax-1.json").read_bytes()
    assert main(["eval", str(run), *args[:-1], "6"]) == 0  # other work: kept apart, not compared
    assert main(["eval", str(run), *args, "--framework", "torch"]) == 0
    kept = sorted(p.name for p in (run / "evals").iterdir())
    assert kept == ["jax-1.json", "jax-2.json", "torch-1.json"]
    assert (run / "evals" / "jax-1.json").read_bytes() == first  # never rewritten
    assert (run / "eval.json").read_bytes() == (run / "evals" / "torch-1.json").read_bytes()
    (run / "evals" / "jax-3.json").write_text("{}")  # a name taken by hand is skipped, not replaced
    assert main(["eval", str(run), *args]) == 0
    assert (run / "evals" / "jax-3.json").read_text() == "{}" and (run / "evals" / "jax-4.json").exists()
    assert main(["eval", str(run), *args, "--framework", "torch"]) == 0
    assert main(["report", str(run)]) == 0
    text = (run / "report.md").read_text()
    assert "## The same run evaluated in each framework" in text
    header = next(line for line in text.splitlines() if line.startswith("| phase shift | starting point |"))
    assert [c.strip() for c in header.strip("|").split("|")][2:] == [
        "torch",
        "jax",
        "jax − torch",
        "largest difference",
    ]
    torch_result = json.loads((run / "evals" / "torch-2.json").read_text())
    jax_result = json.loads((run / "evals" / "jax-4.json").read_text())
    rows = [line for line in text.splitlines() if line.startswith("| phase shift 3.142 (π) |")]
    assert len(rows) == len(STARTS)
    for row, start in zip(rows, STARTS):
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert float(cells[2]) == pytest.approx(torch_result[start][1]["mse_mean"][3], rel=1e-3)
        assert float(cells[3]) == pytest.approx(jax_result[start][1]["mse_mean"][3], rel=1e-3)
        assert abs(float(cells[4])) < 1e-13 and float(cells[5]) < 1e-13  # float64, the same tasks and steps


@pytest.mark.parametrize(
    ("argv", "field"),
    [
        (["--tasks", "1"], "tasks"),
        (["--max-steps", "-1"], "max_steps"),
        (["--shots", "0"], "shots"),
        (["--phase-shift", "nan"], "phase_shift"),
        (["--dtype", "float16"], "dtype"),
    ],
)
def test_bad_eval_input_is_one_line_and_exit_2(jax_run, capsys, argv: list[str], field: str) -> None:
    assert main(["eval", str(jax_run), *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"maml-parity: error: {field}: ") and err.count("\n") == 1


def test_eval_of_a_folder_without_checkpoint_names_it(tmp_path) -> None:
    with pytest.raises(ConfigError, match="no checkpoint at"):
        evaluate_run(tmp_path)


@pytest.mark.slow
def test_demo_meta_init_is_over_8x_better_than_random_and_worse_when_phase_shifted(tmp_path) -> None:
    """The seed's parts 2 and 3 at the demo's size: 5000 steps of seed-alpha in JAX (float32),
    200 held-out tasks, T = 5 adaptation steps. The README's figures come from this run: query MSE
    0.058 (meta) against 0.531 (random), 9.1× lower; shifted by π, 1.52."""
    cfg = SEED_ALPHA  # 5000 steps, as `maml-parity demo` trains it
    train_run(load("jax", "float32"), cfg, tmp_path, progress=False)
    result = evaluate_run(tmp_path, "jax", None, EvalSpec(tasks=200, max_steps=5, pretrain_steps=500), write=False)
    T = cfg.inner_steps
    meta, rand = result["meta"][0]["mse_mean"][T], result["random"][0]["mse_mean"][T]
    assert rand / meta >= 8.0, (meta, rand, rand / meta)
    assert 0.05 <= meta <= 0.07 and 0.45 <= rand <= 0.62, (meta, rand)
    shifted = result["meta"][1]["mse_mean"][T]  # shifted by π
    assert shifted > 2 * rand and shifted > 20 * meta, (shifted, meta, rand)

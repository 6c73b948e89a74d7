"""Classification evaluation (issue 18 items 4, 8): scores against hand-computed numbers, held-out
episodes, the pretraining baseline's batches, eval.json checks, and train → eval → report end to end."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest

from parity import eval_classification as ec
from parity.config import PRESETS, Config
from parity.data import load, split_classes
from parity.readers import eval_problem

TINY = Config(
    family="classification", dataset="digits", n_way=3, k_support=1, k_query=2, image_size=8, model="conv",
    depth=2, width=2, meta_batch=2, alpha_init=0.4, inner_steps=1,
)  # fmt: skip


def test_scores_against_hand_computed_numbers() -> None:
    logits = np.array([[[2.0, 0.0, 0.0], [0.0, 1.0, 3.0]]])  # 1 episode, 2 points, 3 classes
    y = np.array([[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]])
    got = ec.per_episode(logits, y)
    ce0 = -(2.0 - math.log(math.exp(2.0) + 2.0))
    ce1 = -(1.0 - math.log(1.0 + math.exp(1.0) + math.exp(3.0)))
    assert got["accuracy"][0] == 0.5
    assert abs(got["cross_entropy"][0] - (ce0 + ce1) / 2) < 1e-12
    # huge logits: the max is subtracted, nothing overflows
    assert abs(ec.per_episode(logits * 1e4, y)["cross_entropy"][0] - (0 + 2e4) / 2) < 1e-6


def test_summary_ci_and_diverged_episodes() -> None:
    rng = np.random.default_rng(0)
    curves = rng.standard_normal((2, 5, 4, 3))  # [S+1, n, P, N]
    y = np.eye(3)[rng.integers(0, 3, (5, 4))]
    curves[1, 2, 0, 0] = np.nan  # episode 2 diverges at step 1
    out = ec.score_summary(curves, y)
    assert out["diverged"] == [0, 1]
    acc = ec.per_episode(curves, y[None])["accuracy"]
    kept = np.delete(acc[1], 2)
    assert out["accuracy_mean"][1] == pytest.approx(kept.mean(), abs=1e-15)
    assert out["accuracy_ci95"][1] == pytest.approx(1.959963984540054 * kept.std(ddof=1) / 2.0, abs=1e-15)


def test_episodes_come_from_meta_test_classes_only() -> None:
    batch = ec.episodes(TINY, 20, 1)
    data = load("digits", "", 8)
    test_ids = {4 * base + k for base, k in split_classes(data, "test", True)}
    assert set(batch.classes.ravel()) <= test_ids
    assert batch.x_support.shape == (20, 3, 1, 8, 8) and batch.y_query.shape == (20, 6, 3)


def test_pretraining_batches_label_every_meta_train_class_fixed() -> None:
    classes = split_classes(load("digits", "", 8), "train", True)
    plain = ec.classifier_config(TINY, len(classes))
    assert plain.n_way == 24 and plain.inner_steps == 0
    _, _, x_q, y_q = ec.classifier_batches(plain, 0, 2)
    assert x_q.shape == (2, ec.PRETRAIN_BATCH, 24 * ec.PRETRAIN_PER_CLASS, 1, 8, 8)
    # label c is always meta-train class c: its images are that class's (rotated) images
    base, turns = classes[5]
    pool = np.rot90(load("digits", "", 8).images[base], turns, axes=(1, 2))
    label5 = x_q[0, 0][np.argmax(y_q[0, 0], axis=-1) == 5][:, 0]
    assert all(np.any(np.all(np.isclose(pool, im), axis=(1, 2))) for im in label5)
    assert np.array_equal(ec.classifier_batches(plain, 1, 1)[2][0], x_q[1])  # a pure function of the step


def test_eval_problem_names_a_bad_record() -> None:
    rec: dict[str, list[float]] = {"steps": [0, 1], "diverged": [0, 0]}
    rec.update({f"{s}_{t}": [0.5, 0.6] for s in ec.SCORES for t in ("mean", "ci95")})
    good = {
        "format": "maml-parity-eval/1", "family": "classification", "framework": "jax", "dtype": "float32",
        "inner_loss": "cross_entropy", "alpha": 0.4, "tasks": 10, "shots": 1, "max_steps": 1, "n_way": 5,
        "query_per_class": 5, "pretrain_steps": 3, "random_seed": 1, **{s: [rec] for s in ec.STARTS},
    }  # fmt: skip
    assert eval_problem(good) is None
    bad = json.loads(json.dumps(good))
    bad["meta"][0]["accuracy_mean"] = [0.5]
    assert eval_problem(bad) == "meta.accuracy_mean must be a list of 2 numbers (or null)"
    assert "'family' must be one of" in str(eval_problem({**good, "family": "speech"}))


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "parity", *args], capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_train_jax_eval_torch_report(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The issue's sequence at reduced size: the preset's model, fewer steps and episodes."""
    run = tmp_path / "R"
    assert "digits-5w1s" in PRESETS
    small = ["--set", "width=8", "--set", "meta_batch=8"]
    done = _cli("train", "--preset", "digits-5w1s", "--framework", "jax", "--iterations", "60", *small,
                "--out", str(run), "--no-progress")  # fmt: skip
    assert done.returncode == 0, done.stderr
    for framework in ("torch", "jax"):
        done = _cli("eval", str(run), "--framework", framework, "--tasks", "40", "--max-steps", "2",
                    "--pretrain-steps", "5")  # fmt: skip
        assert done.returncode == 0, done.stderr
    results = [json.loads(p.read_text()) for p in sorted((run / "evals").iterdir())]
    jax_r, torch_r = (next(r for r in results if r["framework"] == f) for f in ("jax", "torch"))
    for name in ec.STARTS:  # the same episodes and starting points: the twins agree to float32 rounding
        assert np.allclose(jax_r[name][0]["accuracy_mean"], torch_r[name][0]["accuracy_mean"], atol=0.01)
        assert np.allclose(jax_r[name][0]["cross_entropy_mean"], torch_r[name][0]["cross_entropy_mean"], rtol=1e-3)
    done = _cli("report", str(run))
    assert done.returncode == 0, done.stderr
    text = (run / "report.md").read_text()
    assert "query accuracy" in text and (run / "accuracy.png").stat().st_size > 10_000
    bad = _cli("eval", str(run), "--framework", "torch", "--phase-shift", "1")
    assert bad.returncode == 2 and "phase_shift" in bad.stderr

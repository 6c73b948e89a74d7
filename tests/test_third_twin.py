"""Any number of twins: the NumPy oracle wrapped as a third built-in twin (tests/numpy_twin), registered
for one test at a time (``third_twin`` in conftest.py), runs through check, train, eval, report and
demo, and agrees with the JAX twin in float64 to rounding."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from parity.cli import main
from parity.config import SEED_ALPHA

# Small and float64 (the oracle computes nothing else): α learned by Adam through a softplus, outer SGD;
# and a Meta-SGD-like run (α per parameter, outer Adam, MSE, ReLU).
SMALL = ["--preset", "seed-alpha", "--hidden", "8", "8", "--meta-batch", "2", "--set", "dtype=float64"]
META_SGD = [*SMALL, "--alpha-mode", "per_parameter", "--set", "outer_optimizer=adam", "--loss", "mse"]
META_SGD += ["--activation", "relu", "--alpha-parametrisation", "softplus"]
EVAL = ["--tasks", "12", "--max-steps", "3", "--phase-shift", "0", "pi", "--pretrain-steps", "5"]


def _train(framework: str, flags: list[str], out, steps: int = 8) -> dict[str, np.ndarray]:
    assert (
        main(
            ["train", "--framework", framework, *flags, "--iterations", str(steps), "--out", str(out), "--no-progress"]
        )
        == 0
    )
    return dict(np.load(out / "final.npz"))


@pytest.mark.parametrize("flags", [SMALL, META_SGD], ids=["seed-alpha", "meta-sgd-like"])
def test_the_third_twin_trains_as_the_jax_twin_does_in_float64(third_twin, tmp_path, flags):
    ours, jax = _train(third_twin, flags, tmp_path / third_twin), _train("jax", flags, tmp_path / "jax")
    assert sorted(ours) == sorted(jax) and any(k.startswith("alpha") for k in ours)
    manifest = json.loads((tmp_path / third_twin / "checkpoint.json").read_text())
    assert manifest["framework"] == third_twin and manifest["step"] == 8
    for key, value in jax.items():
        assert ours[key].dtype == np.float64, key
        np.testing.assert_allclose(ours[key], value, rtol=0, atol=1e-10, err_msg=key)
    # Not a vacuous agreement: 8 steps moved every parameter from the shared start.
    from parity.config import Config
    from parity.init import init_params

    cfg = Config.from_json((tmp_path / "jax" / "config.json").read_text())
    for name, p0 in init_params(cfg).items():
        assert np.abs(ours[f"params/{name}"] - p0).max() > 1e-6, name


def test_every_module_sees_three_twins_and_a_plain_check_loads_them(third_twin):
    from parity import harness, registry

    assert registry.TWINS == ("jax", "torch", third_twin)
    assert [impl.name for impl in harness.load_impls()] == ["jax", "torch", third_twin]


@pytest.mark.slow
def test_check_compares_the_third_twin_and_catches_a_bug_planted_in_it(third_twin, tmp_path, monkeypatch, capsys):
    """A gradient case and a training trajectory (per-parameter α, Adam): every float64 quantity within
    the parity tolerance, float32 reported unsupported (never passing); a wrong Adam β2 in the oracle
    twin's training fails the trajectory."""
    cases = ["--cases", "T2-a0.05-l1-per_parameter-second"]
    out = tmp_path / "check.json"
    assert main(["check", "--impl", "jax", "--impl", third_twin, *cases, "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    pair = f"jax~{third_twin}"
    compared = [r for r in rows if r["framework_pair"] == pair and r["dtype"] == "float64"]
    assert len(compared) >= 9 and all(r["verdict"] == "ok" for r in compared), compared
    assert max(r["max_abs_err"] for r in compared) < 1e-12  # the oracle: exact to rounding
    float32 = {r["verdict"] for r in rows if r["framework_pair"].endswith(third_twin) and r["dtype"] == "float32"}
    assert float32 == {"unsupported"}
    assert main(["check", "--impl", "jax", "--impl", third_twin, *cases, "--strict"]) == 1  # nothing in float32

    import numpy_twin.train

    trajectory = ["--cases", "trajectory-meta-sgd-style"]
    assert main(["check", "--impl", "jax", "--impl", third_twin, *trajectory, "--json", str(out)]) == 0
    rows = [r for r in json.loads(out.read_text())["rows"] if r["dtype"] == "float64"]
    assert {r["verdict"] for r in rows} == {"ok"} and any(r["quantity"].startswith("params/") for r in rows)
    monkeypatch.setattr(numpy_twin.train, "ADAM", (0.9, 0.99, 1e-8))  # the planted bug: β2 0.99
    capsys.readouterr()
    assert main(["check", "--impl", "jax", "--impl", third_twin, *trajectory, "--json", str(out)]) == 1
    failed = {r["quantity"] for r in json.loads(out.read_text())["rows"] if r["verdict"] == "FAIL"}
    assert "params/w1" in failed and "alpha/w1" in failed


def test_eval_in_the_third_twin_is_kept_beside_jax_and_the_report_compares_them(third_twin, tmp_path, capsys):
    run = tmp_path / "run"
    _train("jax", SMALL, run)
    assert main(["eval", str(run), "--framework", third_twin, *EVAL]) == 0
    assert main(["eval", str(run), "--framework", "jax", *EVAL]) == 0
    assert main(["report", str(run)]) == 0
    kept = {p.name: json.loads(p.read_text()) for p in (run / "evals").iterdir()}
    assert sorted(kept) == sorted([f"{third_twin}-1.json", "jax-1.json"])
    ours, jax = kept[f"{third_twin}-1.json"], kept["jax-1.json"]
    assert json.loads((run / "eval.json").read_text()) == jax  # the latest
    assert ours["framework"] == third_twin and ours["trained_with"] == "jax"
    for start in ("meta", "random", "pretrained"):
        for i in range(2):
            for key in ("mse_mean", "mse_ci95", "l1_mean", "l1_ci95"):
                np.testing.assert_allclose(ours[start][i][key], jax[start][i][key], rtol=1e-12, atol=0)
    # The report's side-by-side table: both frameworks' numbers and their difference, at rounding size.
    text = (run / "report.md").read_text()
    rows = [line for line in text.splitlines() if line.startswith("| phase shift 0 (the training distribution) |")]
    header = next(line for line in text.splitlines() if line.startswith("| phase shift | starting point |"))
    assert header.split("|")[3:5] == [" jax ", f" {third_twin} "]
    meta_row = next(r for r in rows if "| meta-learned init |" in r)
    cells = [c.strip() for c in meta_row.strip("|").split("|")]
    assert float(cells[2]) == pytest.approx(jax["meta"][0]["mse_mean"][3], rel=1e-3)
    assert float(cells[2]) == pytest.approx(float(cells[3]), rel=1e-12)
    assert abs(float(cells[4])) < 1e-12 and float(cells[5]) < 1e-12
    # float32 is refused in one line before any work, and nothing is written.
    capsys.readouterr()
    assert main(["eval", str(run), "--framework", third_twin, "--dtype", "float32", *EVAL]) == 2
    assert "dtype: the oracle twin computes in float64 only" in capsys.readouterr().err
    assert len(list((run / "evals").iterdir())) == 2


@pytest.mark.slow
def test_the_demo_runs_every_twin_against_the_first(third_twin, tmp_path, capsys):
    from test_report import png_size

    from parity.demo import run_demo

    cfg = SEED_ALPHA.replace(hidden=(8, 8), dtype="float64")
    assert run_demo(tmp_path, iterations=3, progress=False, eval_tasks=4, cfg=cfg) == 0
    demo = json.loads((tmp_path / "demo.json").read_text())
    assert set(demo["train_s"]) == {"jax", "torch", third_twin}
    assert demo["alpha_max_diff_by_twin"][third_twin] < 1e-12  # float64, the same arithmetic to rounding
    pairs = {(r["pair"], r["dtype"]) for r in demo["parity"]}
    assert pairs == {("jax~torch", "float64"), ("jax~torch", "float32"), (f"jax~{third_twin}", "float64")}
    assert all(r["ok"] for r in demo["parity"])
    assert demo["parity_summary"][f"float32 jax~{third_twin}"].startswith("not compared (oracle: dtype: ")
    text = (tmp_path / "report.md").read_text()
    assert "| step | α, JAX twin | α, PyTorch twin | α, oracle twin | α, the seed's run |" in text
    row = next(line for line in text.splitlines() if line.startswith("| 0 |"))
    assert row.count("0.10000") == 3
    assert f"**JAX ~ {third_twin}**" in text and "**JAX ~ PyTorch**" in text
    figures = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert "twins.png" in figures
    for name in figures:
        png_size(tmp_path / name)

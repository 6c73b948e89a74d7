"""First-divergence localisation, traces and `maml-parity diff`: bugs planted at known places are
found there, and files that differ in config, inputs or one number are told apart."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from parity.cli import main
from parity.config import Config
from parity.golden import read_golden, write_golden
from parity.harness import BASE, Case, overall_ok, row_dict, run_case, table_lines
from parity.localise import first_divergence, locate, points
from parity.oracle import NumpyOracle
from parity.tasks import sample_batch
from parity.twins import load, step0_inputs

SMALL = BASE.replace(hidden=(8, 8), inner_steps=3, alpha_mode="scalar", alpha_init=0.05)


# --- bugs planted in the NumPy oracle, one piece at a time -------------------------------------------


class WrongActivationDerivative(NumpyOracle):
    name = "wrong-act-grad"

    def act_grad(self, z: np.ndarray, kind: str) -> np.ndarray:
        return 1.0 - np.tanh(z)  # should be 1 - tanh(z)**2


class MissingSecondOrder(NumpyOracle):
    name = "no-second-order"

    def inner_gradient(self, params: dict, x: np.ndarray, y: np.ndarray, cfg: Config) -> Any:
        # the inner gradient held constant although cfg asks for second order
        return super().inner_gradient(params, x, y, cfg.replace(first_order=True))


class WrongLearningRateSign(NumpyOracle):
    name = "wrong-lr-sign"

    def inner_update(self, w: np.ndarray, a: np.ndarray, g: np.ndarray) -> np.ndarray:
        return w + a * g


def failing_divergence(rows: list) -> dict[str, Any]:
    """The divergence of the float64 pair, which must fail, and the same record on all its FAIL rows."""
    bad = [r for r in rows if r.verdict == "FAIL" and r.dtype == "float64"]
    assert bad, [(r.quantity, r.verdict) for r in rows]
    divergence = bad[0].divergence
    assert divergence is not None and divergence["found"] and divergence["traced"], divergence
    assert all(r.divergence == divergence for r in bad)
    return divergence


@pytest.fixture(scope="module")
def torch_gauge() -> Any:
    return load("torch", "float64")  # the stability gains, for the gate products


def test_a_wrong_activation_derivative_first_differs_at_the_inner_gradient_of_step_0(torch_gauge) -> None:
    rows = run_case(Case("planted", SMALL), [NumpyOracle(), WrongActivationDerivative()], gauges=[torch_gauge])
    d = failing_divergence(rows)
    assert (d["inner_step"], d["quantity"], d["parameter"]) == (0, "inner_grad", "w0")
    assert d["task"] in range(SMALL.meta_batch) and len(d["index"]) == 2
    assert abs(d["actual"] - d["reference"]) > d["threshold"]
    # the gate product before step 0 is 1; the steps after it are what can amplify the difference
    assert d["gate_product_to_here"] == 1.0 and d["gate_product_from_here"] >= 1.0
    lines = table_lines(rows)
    first = [line for line in lines if line.startswith("  first divergence:")]
    assert len(first) == 1, lines
    assert first[0].startswith("  first divergence: inner step 0, inner_grad/w0 task ")
    assert "gate product to here 1" in first[0]
    assert row_dict(next(r for r in rows if r.verdict == "FAIL"))["divergence"] == d
    json.dumps([row_dict(r) for r in rows])  # JSON-ready


def test_a_missing_second_order_term_shows_equal_traces_and_first_differs_at_dl_dw0(torch_gauge) -> None:
    rows = run_case(Case("planted", SMALL), [NumpyOracle(), MissingSecondOrder()], gauges=[torch_gauge])
    d = failing_divergence(rows)
    assert (d["inner_step"], d["quantity"], d["parameter"]) == (None, "grad", "w0")
    params, alpha, tasks = step0_inputs(SMALL)
    good, bad = NumpyOracle(), MissingSecondOrder()
    # losses, inner gradients and adapted parameters agree exactly; only the backward pass differs
    assert (
        first_divergence(
            good.trace(params, alpha, tasks, SMALL), bad.trace(params, alpha, tasks, SMALL), SMALL, "float64"
        )
        is None
    )
    assert d["gate_product_to_here"] >= 1.0 and d["gate_product_from_here"] == 1.0


def test_a_wrong_learning_rate_sign_first_differs_at_the_adapted_parameters_of_step_0(torch_gauge) -> None:
    rows = run_case(Case("planted", SMALL), [NumpyOracle(), WrongLearningRateSign()], gauges=[torch_gauge])
    d = failing_divergence(rows)
    assert (d["inner_step"], d["quantity"], d["parameter"]) == (0, "adapted", "w0")
    assert d["gate_product_to_here"] >= 1.0


def test_a_twin_as_reference_locates_a_planted_bug_through_its_own_trace() -> None:
    """The same localisation across implementations: the PyTorch twin against a buggy oracle."""
    rows = run_case(Case("planted", SMALL), [load("torch"), WrongLearningRateSign()])
    d = failing_divergence(rows)
    assert (d["inner_step"], d["quantity"], d["parameter"]) == (0, "adapted", "w0")


def test_without_traces_the_first_returned_quantity_that_differs_is_named() -> None:
    class NoTrace(WrongActivationDerivative):
        trace = None  # the capability switched off

    rows = run_case(Case("planted", SMALL), [NumpyOracle(), NoTrace()])
    d = next(r for r in rows if r.verdict == "FAIL").divergence
    assert d is not None and d["found"] and not d["traced"]
    assert "no trace from wrong-act-grad" in d["note"]
    assert d["key"] in ("inner_losses", "outer_loss") or d["key"].startswith("grad/")


def test_passing_cases_carry_no_divergence() -> None:
    rows = run_case(Case("clean", SMALL), [NumpyOracle(), load("torch")])
    assert overall_ok(rows) and all(r.divergence is None for r in rows)
    assert not any(line.startswith("  first divergence") for line in table_lines(rows))


# --- traces: the twins and the oracle record the same loop -------------------------------------------


@pytest.mark.parametrize(
    "framework, mode",
    [
        ("torch", "scalar"),
        ("torch", "per_parameter"),
        pytest.param("jax", "scalar", marks=pytest.mark.slow),  # compiling: ~10 s on a busy core
        pytest.param("jax", "per_parameter", marks=pytest.mark.slow),
    ],
)
def test_the_twins_traces_match_the_oracle_and_their_own_results(framework: str, mode: str) -> None:
    cfg = SMALL.replace(alpha_mode=mode, loss="mse", activation="relu", inner_steps=2)
    params, alpha, tasks = step0_inputs(cfg)
    reference = NumpyOracle().trace(params, alpha, tasks, cfg)
    B, T = cfg.meta_batch, cfg.inner_steps
    assert reference["trace/support_loss"].shape == (B, T) and reference["trace/query_loss"].shape == (B,)
    assert reference["trace/adapted/w1"].shape == (B, T, 8, 8)
    twin = load(framework, "float64")
    got = twin.trace(params, alpha, tasks, cfg)
    assert set(got) == set(reference) and all(v.dtype == np.float64 for v in got.values())
    assert first_divergence(reference, got, cfg, "float64") is None
    result = twin.meta_value_and_grad(params, alpha, tasks, cfg)
    np.testing.assert_allclose(got["trace/query_loss"].mean(), result["outer_loss"], rtol=1e-12)
    np.testing.assert_allclose(got["trace/support_loss"].mean(0), result["inner_losses"], rtol=1e-12)
    # step 0's adapted parameters are the start minus alpha times step 0's inner gradient
    a = alpha["w1"] if isinstance(alpha, dict) else alpha
    np.testing.assert_allclose(
        reference["trace/adapted/w1"][:, 0], params["w1"] - a * reference["trace/inner_grad/w1"][:, 0], rtol=1e-12
    )


def test_points_follow_the_order_of_computation() -> None:
    cfg = SMALL.replace(inner_steps=2, hidden=(4,))
    keys = {"trace/support_loss", "trace/query_loss", "outer_loss", "inner_losses", "grad/alpha"}
    keys |= {f"{g}/{n}" for g in ("grad", "trace/inner_grad", "trace/adapted") for n in cfg.param_names}
    order = points(cfg, keys)
    assert order[:6] == [
        ("trace/support_loss", 0),
        ("trace/inner_grad/w0", 0),
        ("trace/inner_grad/b0", 0),
        ("trace/inner_grad/w1", 0),
        ("trace/inner_grad/b1", 0),
        ("trace/adapted/w0", 0),
    ]
    assert order[9] == ("trace/support_loss", 1)
    tail = [key for key, _ in order[18:]]
    assert tail == [
        "trace/query_loss",
        "inner_losses",
        "outer_loss",
        "grad/w0",
        "grad/b0",
        "grad/w1",
        "grad/b1",
        "grad/alpha",
    ]


# --- trajectories: a bug that bites at outer step k is reported at k ----------------------------------


class TinyTrainer(NumpyOracle):
    """Plain SGD on the oracle's meta-gradient (α fixed), recording every step like the twins."""

    name = "tiny-trainer"

    def outer_lr(self, cfg: Config, step: int) -> float:
        return cfg.outer_lr

    def train_trajectory(self, cfg: Config, steps: int) -> dict[str, np.ndarray]:
        params, alpha, _ = step0_inputs(cfg)
        losses, after = [], []
        for step in range(steps):
            tasks = tuple(np.asarray(t, np.float64) for t in sample_batch(cfg, step)[:4])
            result = self.meta_value_and_grad(params, alpha, tasks, cfg)
            params = {k: v - self.outer_lr(cfg, step) * result["grads"][k] for k, v in params.items()}
            losses.append(result["outer_loss"])
            after.append(params)
        out = {f"params/{k}": v for k, v in params.items()}
        out.update({f"trajectory/params/{k}": np.stack([a[k] for a in after]) for k in params})
        out["alpha"] = np.asarray(alpha)
        out["trajectory/alpha"] = np.full(steps, alpha)
        out["outer_loss"] = np.array(losses)
        return out


@pytest.mark.parametrize("k", [0, 3])
def test_a_bug_that_bites_at_outer_step_k_is_reported_at_k(k: int) -> None:
    class BitesAtK(TinyTrainer):
        name = "bites-at-k"

        def outer_lr(self, cfg: Config, step: int) -> float:
            return cfg.outer_lr * (1.001 if step == k else 1.0)

    cfg = SMALL.replace(hidden=(4,), inner_steps=1, alpha_mode="fixed")
    rows = run_case(Case("trajectory", cfg, "trajectory", 5), [TinyTrainer(), BitesAtK()])
    bad = [r for r in rows if r.verdict == "FAIL"]
    assert {"params/w0", "trajectory/params/w0"} <= {r.quantity for r in bad}
    d = bad[0].divergence
    assert d is not None and d["found"]
    assert (d["outer_step"], d["quantity"], d["parameter"]) == (k, "params", "w0")
    line = next(x for x in table_lines(rows) if x.startswith("  first divergence"))
    assert line.startswith(f"  first divergence: outer step {k}, params/w0 index ")


def test_trajectories_without_per_step_entries_are_still_compared() -> None:
    class FinalOnly(TinyTrainer):
        name = "final-only"

        def train_trajectory(self, cfg: Config, steps: int) -> dict[str, np.ndarray]:
            return {k: v for k, v in super().train_trajectory(cfg, steps).items() if not k.startswith("trajectory/")}

    cfg = SMALL.replace(hidden=(4,), inner_steps=1, alpha_mode="fixed")
    rows = run_case(Case("trajectory", cfg, "trajectory", 2), [TinyTrainer(), FinalOnly()])
    assert overall_ok(rows)
    skipped = [r for r in rows if r.verdict == "not compared"]
    assert [r.quantity for r in skipped] == ["trajectory/*"] and "final-only returned none" in skipped[0].detail
    assert {r.quantity for r in rows if r.verdict == "ok"} >= {"params/w0", "outer_loss"}


def test_locate_reports_when_a_trace_fails() -> None:
    class BrokenTrace(WrongActivationDerivative):
        def trace(self, *args: Any) -> Any:
            raise RuntimeError("no recording today")

    ref, bad = NumpyOracle(), BrokenTrace()
    params, alpha, tasks = step0_inputs(SMALL)
    expected = ref.meta_value_and_grad(params, alpha, tasks, SMALL)
    got = bad.meta_value_and_grad(params, alpha, tasks, SMALL)

    def flat(r: Any) -> dict[str, Any]:
        return {
            "outer_loss": r["outer_loss"],
            "inner_losses": r["inner_losses"],
            **{f"grad/{k}": v for k, v in r["grads"].items()},
        }

    d = locate(SMALL, "gradient", (ref, "float64"), (bad, "float64"), flat(expected), flat(got), "float64", [])
    assert d["found"] and not d["traced"] and "trace failed (RuntimeError: no recording today)" in d["note"]


# --- dL/dalpha under a fixed alpha is optional ---------------------------------------------------------


class NoAlphaGrad(NumpyOracle):
    name = "no-alpha-grad"

    def meta_value_and_grad(self, params: Any, alpha: Any, tasks: Any, cfg: Config) -> Any:
        return {**super().meta_value_and_grad(params, alpha, tasks, cfg), "alpha_grad": None}


def test_a_missing_alpha_gradient_is_not_compared_under_a_fixed_alpha_and_fails_otherwise() -> None:
    cfg = SMALL.replace(hidden=(4,), inner_steps=1)
    rows = run_case(Case("fixed", cfg.replace(alpha_mode="fixed")), [NumpyOracle(), NoAlphaGrad()])
    assert overall_ok(rows, strict=False)
    skipped = [r for r in rows if r.verdict == "not compared"]
    assert [r.quantity for r in skipped] == ["grad/alpha"]
    assert "optional; no-alpha-grad returned none" in skipped[0].detail
    assert {r.quantity for r in rows if r.verdict == "ok"} >= {"grad/w0", "outer_loss"}
    rows = run_case(Case("scalar", cfg.replace(alpha_mode="scalar")), [NumpyOracle(), NoAlphaGrad()])
    errors = [r for r in rows if r.verdict == "FAIL"]
    assert errors and "alpha_grad is None, allowed only for alpha_mode 'fixed'" in errors[0].detail


# --- maml-parity diff --------------------------------------------------------------------------------------


def dump(tmp_path, name: str, framework: str, overrides: dict[str, Any], *flags: str) -> str:
    config = tmp_path / f"{name}.json"
    config.write_text(json.dumps({"hidden": [8, 8], "meta_batch": 2, "inner_steps": 2, **overrides}))
    out = str(tmp_path / f"{name}.npz")
    args = ["dump", "--framework", framework, "--dtype", "float64", "--config", str(config), "--out", out, *flags]
    assert main(args) == 0
    return out


@pytest.mark.slow  # compiles the JAX twin: ~8 s on a busy core
def test_diff_of_the_twins_dumps_is_clean_and_one_perturbed_entry_is_named(tmp_path, capsys) -> None:
    a = dump(tmp_path, "jax", "jax", {}, "--trace")
    b = dump(tmp_path, "torch", "torch", {}, "--trace")
    capsys.readouterr()
    assert main(["diff", a, b, "--json", str(tmp_path / "same.json")]) == 0
    out = capsys.readouterr().out
    assert "SAME: 24 entries within tolerance (float64)" in out and "FAIL" not in out
    report = json.loads((tmp_path / "same.json").read_text())
    assert report["ok"] and report["status"] == "same" and report["divergence"] is None

    golden = read_golden(b)
    arrays = {k: (np.asarray(v.to_json()) if k == "config" else v) for k, v in golden.items()}
    grad = arrays["grad/w1"].copy()
    index = (3, 5)
    grad[index] *= 1 + 1e-6
    arrays["grad/w1"] = grad
    write_golden(tmp_path / "perturbed.npz", arrays)
    assert main(["diff", a, str(tmp_path / "perturbed.npz"), "--json", str(tmp_path / "diff.json")]) == 1
    out = capsys.readouterr().out
    assert "MISMATCH in 1 of 24 entries: grad/w1" in out
    assert "  first divergence: after the inner loop, grad/w1 index (3, 5): " in out
    report = json.loads((tmp_path / "diff.json").read_text())
    assert report["divergence"]["key"] == "grad/w1" and report["divergence"]["index"] == [3, 5]
    # a looser tolerance lets it pass
    assert main(["diff", a, str(tmp_path / "perturbed.npz"), "--rtol", "1e-5"]) == 0


def test_diff_names_config_fields_and_different_inputs_before_numbers(tmp_path, capsys) -> None:
    a = dump(tmp_path, "a", "torch", {})
    b = dump(tmp_path, "b", "torch", {"inner_steps": 3, "loss": "mse", "outer_lr": 0.5})
    c = dump(tmp_path, "c", "torch", {"seed": 11})
    capsys.readouterr()
    assert main(["diff", a, b]) == 1
    out = capsys.readouterr().out
    assert "DIFFERENT CONFIGS (fields that change the numbers): loss: 'l1' vs 'mse'; inner_steps: 2 vs 3" in out
    assert "outer_lr" not in out  # the outer learning rate does not change a golden file's numbers
    assert main(["diff", a, c]) == 1
    out = capsys.readouterr().out
    assert (
        "DIFFERENT INPUTS, not a numerical mismatch: init/w0" in out and "the configs differ in seed (0 vs 11)" in out
    )


def test_diff_refuses_a_bad_file_in_one_line(tmp_path, capsys) -> None:
    a = dump(tmp_path, "a", "torch", {})
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    assert main(["diff", a, str(tmp_path / "bad.npz")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("maml-parity: error: golden: ") and "bad.npz" in err and err.count("\n") == 1
    assert main(["diff", a, a, "--atol", "-1"]) == 2
    assert "atol: must be a finite number >= 0" in capsys.readouterr().err


@pytest.mark.slow  # the oracle at the matrix's full size: ~7 s on a busy core
def test_check_prints_the_first_divergence_and_writes_it_to_json(tmp_path, capsys) -> None:
    plugin = tmp_path / "planted.py"
    plugin.write_text(
        "from parity.oracle import NumpyOracle\n\n\n"
        "class WrongSign(NumpyOracle):\n"
        "    name = 'wrong-sign'\n\n"
        "    def inner_update(self, w, a, g):\n"
        "        return w + a * g\n"
    )
    out = tmp_path / "check.json"
    args = ["check", "--impl", "numpy", "--impl", f"{plugin}:WrongSign", "--cases", "T2-a0.01-l1-scalar-second"]
    assert main([*args, "--json", str(out)]) == 1
    printed = capsys.readouterr().out
    lines = [line for line in printed.splitlines() if line.startswith("  first divergence: ")]
    assert len(lines) == 1 and lines[0].startswith("  first divergence: inner step 0, adapted/w0 task "), printed
    rows = json.loads(out.read_text())["rows"]
    located = [r["divergence"] for r in rows if r["verdict"] == "FAIL"]
    assert located and all(d == located[0] for d in located)
    assert (located[0]["inner_step"], located[0]["quantity"], located[0]["parameter"]) == (0, "adapted", "w0")
    assert located[0]["gate_product_to_here"] is None  # neither side measures the gate's gains

"""The inner optimisers (issue 19): momentum and Adam unrolled and differentiated through agree
across the JAX twin, the PyTorch twin and the NumPy oracle; Adam's √v at v = 0 gives finite
meta-gradients (docs/numerics.md, "Adam in the inner loop")."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from parity.config import Config, ConfigError
from parity.harness import BASE
from parity.oracle import NumpyOracle
from parity.twins import load, step0_inputs

SMALL = BASE.replace(hidden=(8,), meta_batch=2, inner_steps=3, alpha_mode="scalar", alpha_init=0.05)


def _run(impl: Any, cfg: Config, params: dict, alpha: Any, tasks: tuple) -> dict[str, np.ndarray]:
    r = impl.meta_value_and_grad(params, alpha, tasks, cfg)
    out = {f"grad/{k}": np.asarray(v, np.float64) for k, v in r["grads"].items()}
    out["grad/alpha"] = np.asarray(r["alpha_grad"], np.float64)
    out["outer_loss"] = np.asarray(r["outer_loss"], np.float64)
    return out


def _max_rel(a: dict, b: dict) -> float:
    scale = max(np.abs(v).max() for v in b.values())
    return max(float(np.abs(a[k] - b[k]).max()) for k in b) / scale


@pytest.mark.parametrize(
    "optimizer",
    [{"inner_optimizer": "momentum"}, {"inner_optimizer": "momentum", "nesterov": True}, {"inner_optimizer": "adam"}],
)
@pytest.mark.parametrize("order", [False, True], ids=["second", "first"])
def test_both_twins_equal_the_oracle_float64(optimizer: dict, order: bool) -> None:
    cfg = SMALL.replace(first_order=order, **optimizer)
    params, alpha, tasks = step0_inputs(cfg)
    expected = _run(NumpyOracle(), cfg, params, alpha, tasks)
    sgd = _run(NumpyOracle(), cfg.replace(inner_optimizer="sgd"), params, alpha, tasks)
    assert _max_rel(sgd, expected) > 1e-3  # the optimiser changes the meta-gradient
    for twin in ("jax", "torch"):
        assert _max_rel(_run(load(twin), cfg, params, alpha, tasks), expected) < 1e-12, twin


def _dead_unit_inputs(cfg: Config) -> tuple[dict, Any, tuple]:
    # ReLU unit 0 dead on every input (weight row 0, bias −1): its gradient entries are exactly 0
    # at every inner step, so Adam's v stays exactly 0 there.
    params, alpha, tasks = step0_inputs(cfg)
    params = {k: np.array(v) for k, v in params.items()}
    params["w0"][0] = 0.0
    params["b0"][0] = -1.0
    return params, alpha, tasks


ADAM32 = SMALL.replace(inner_optimizer="adam", activation="relu", dtype="float32")


def test_adam_at_v_zero_gives_finite_float32_meta_gradients_that_match_across_twins() -> None:
    params, alpha, tasks = _dead_unit_inputs(ADAM32)
    got = {twin: _run(load(twin), ADAM32, params, alpha, tasks) for twin in ("jax", "torch")}
    for twin, result in got.items():
        assert all(np.isfinite(v).all() for v in result.values()), twin
    p64 = {k: np.asarray(v, np.float64) for k, v in params.items()}
    a64, t64 = np.asarray(alpha, np.float64), tuple(np.asarray(t, np.float64) for t in tasks)
    expected = _run(NumpyOracle(), ADAM32.replace(dtype="float64"), p64, a64, t64)
    # the point of the test: v is exactly 0 there at every inner step (the oracle's trace)
    trace = NumpyOracle().trace(p64, a64, t64, ADAM32.replace(dtype="float64"))
    assert (trace["trace/state/v/b0"][:, :, 0] == 0).all() and (trace["trace/state/v/b0"] > 0).any()
    for twin, result in got.items():
        assert _max_rel(result, expected) < 1e-4, twin
    assert _max_rel(got["jax"], got["torch"]) < 1e-4


def test_a_naive_square_root_at_v_zero_gives_nan(monkeypatch) -> None:
    """The planted bug the test above guards against: d√v/dv = ∞ at v = 0 times 0 is NaN."""
    import torch

    import torch_impl.meta

    monkeypatch.setattr(torch_impl.meta, "safe_sqrt", torch.sqrt)
    params, alpha, tasks = _dead_unit_inputs(ADAM32)
    result = _run(load("torch"), ADAM32, params, alpha, tasks)
    assert np.isnan(result["grad/w0"]).any()


def test_optimiser_fields_are_checked() -> None:
    with pytest.raises(ConfigError, match="beta2"):
        SMALL.replace(inner_optimizer="adam", beta2=1.0)
    with pytest.raises(ConfigError, match="momentum"):
        SMALL.replace(inner_optimizer="momentum", momentum=-0.1)
    with pytest.raises(ConfigError, match="eps"):
        SMALL.replace(inner_optimizer="adam", eps=0.0)


# --- ports' mistakes, planted in the oracle: check fails and names the first inner step ----------------


class EpsInsideTheRoot(NumpyOracle):
    name = "eps-inside"

    def inner_direction(self, grads: dict, state: dict, t: int, cfg: Config) -> Any:
        opt = cfg.inner.optimizer
        m = {k: opt.beta1 * state["m"][k] + (1 - opt.beta1) * g for k, g in grads.items()}
        v = {k: opt.beta2 * state["v"][k] + (1 - opt.beta2) * g * g for k, g in grads.items()}
        c1, c2 = 1 - opt.beta1**t, 1 - opt.beta2**t
        return {k: (m[k] / c1) / np.sqrt(v[k] / c2 + opt.eps) for k in grads}, {"m": m, "v": v}


class BiasCorrectionOffByOne(NumpyOracle):
    name = "bias-off-by-one"

    def inner_direction(self, grads: dict, state: dict, t: int, cfg: Config) -> Any:
        return super().inner_direction(grads, state, t + 1, cfg)


@pytest.mark.parametrize("bad", [EpsInsideTheRoot(), BiasCorrectionOffByOne()], ids=lambda b: b.name)
def test_an_adam_port_mistake_fails_check_at_the_first_inner_step(bad: NumpyOracle) -> None:
    from parity.harness import Case, run_case

    rows = run_case(Case("adam", SMALL.replace(inner_optimizer="adam")), [NumpyOracle(), bad])
    failed = [r for r in rows if r.verdict == "FAIL"]
    assert {"grad/w0", "outer_loss"} <= {r.quantity for r in failed}
    d = failed[0].divergence
    assert d is not None and d["found"] and (d["inner_step"], d["quantity"], d["parameter"]) == (0, "adapted", "w0")


# --- one quick check case per inner optimiser: the test scripts/mutants points its port mistakes at --


def _where(rows: list) -> str:
    """The first failing row and where check places the first divergence (the mutant's report)."""
    failed = [r for r in rows if r.verdict != "ok"]
    if not failed:
        return "all ok"
    d = failed[0].divergence or {}
    place = (d.get("inner_step"), d.get("quantity"), d.get("parameter"))
    return f"{failed[0].framework_pair} {failed[0].dtype} {failed[0].quantity}: first divergence {place}"


# Adam's ε at 1e-3 so that ε inside or outside the root differs far beyond float64's tolerance;
# T = 3 so that a buffer's order and a bias-correction step show after the first step too.
INNER_CASES = {
    "adam": SMALL.replace(inner_optimizer="adam", eps=1e-3, alpha_init=0.01),
    "momentum": SMALL.replace(inner_optimizer="momentum", momentum=0.5),
    # LSLR (alpha_mode per_layer_step): a step read from the wrong column moves dL/dα to another step
    "lslr": SMALL.replace(alpha_mode="per_layer_step"),
}


@pytest.mark.parity
@pytest.mark.parametrize("name", sorted(INNER_CASES))
def test_check_passes_between_the_twins_on_one_case_per_inner_optimizer(name: str) -> None:
    from parity.harness import Case, load_impls, run_case

    rows = run_case(Case(name, INNER_CASES[name]), load_impls(["jax", "torch"]))
    assert rows and all(r.verdict == "ok" for r in rows), _where(rows)
    assert max(r.max_rel_err for r in rows if r.dtype == "float64") <= 1e-10


# --- evaluation adapts with the run's inner optimiser ---------------------------------------------


@pytest.mark.parametrize("optimizer", ["adam", "momentum"])
def test_eval_adapts_with_the_inner_optimiser_as_the_meta_code_does(twin_name: str, optimizer: str) -> None:
    """Step k of ``eval``'s adaptation equals the twin's own ``adapt`` (the meta-objective's loop) with
    T = k, Adam's m, v and bias correction or momentum's buffer included; and it is not SGD's."""
    from parity.eval import adaptation_curves, eval_tasks
    from parity.init import init_params

    cfg = SMALL.replace(inner_optimizer=optimizer, hidden=(8, 8), alpha_mode="fixed", alpha_init=0.02)
    twin = load(twin_name, "float64")
    tasks = eval_tasks(cfg, 5, 4, 0.0)
    params, alpha = init_params(cfg), np.asarray(cfg.alpha_init)
    preds = adaptation_curves(twin, params, alpha, tasks, cfg, 3)  # [4, 5, P]
    model = twin.model
    p, a, (xs, ys, xq) = (model.to_arrays(v, "float64") for v in (params, alpha, tasks[:3]))
    for k in (1, 3):
        adapted, _ = twin.meta.adapt(p, a, xs, ys, cfg.replace(inner_steps=k))
        expected = model.to_numpy(model.forward(adapted, xq, cfg))[..., 0]
        np.testing.assert_allclose(preds[k], expected, rtol=1e-12, atol=1e-12)
    sgd = adaptation_curves(twin, params, alpha, tasks, cfg.replace(inner_optimizer="sgd"), 3)
    if optimizer == "momentum":  # v starts at 0: the first step is SGD's, bit for bit
        np.testing.assert_array_equal(sgd[1], preds[1])
    assert np.abs(sgd[3] - preds[3]).max() > 1e-3  # the optimiser, not SGD, moved the fit


def test_the_numpy_twin_evaluates_adam_as_the_jax_twin_does(third_twin: str) -> None:
    from parity.eval import adaptation_curves, eval_tasks
    from parity.init import init_params

    cfg = SMALL.replace(inner_optimizer="adam", hidden=(8, 8), alpha_mode="fixed", alpha_init=0.02)
    tasks = eval_tasks(cfg, 5, 4, 0.0)
    params, alpha = init_params(cfg), np.asarray(cfg.alpha_init)
    ours = adaptation_curves(load(third_twin, "float64"), params, alpha, tasks, cfg, 3)
    jax = adaptation_curves(load("jax", "float64"), params, alpha, tasks, cfg, 3)
    np.testing.assert_allclose(ours, jax, rtol=1e-11, atol=1e-12)
    assert np.abs(ours[3] - ours[0]).max() > 1e-3

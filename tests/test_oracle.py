"""The NumPy oracle against both twins, float64: every preset, and first-order, remat, softplus,
per-parameter, ReLU and MSE cases.

The oracle (hand-written backpropagation for the inner gradient, complex-step differentiation
for the outer one) shares no code with the twins, so a loss or update formula the two twins got
wrong together fails here. Presets keep their architecture, loss, α mode, T and init scheme; the
meta-batch and K are shrunk so that the complex step (one pass per parameter entry) stays fast.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from parity.config import SEED_ALPHA, SEED_MAML, Config, get_preset
from parity.init import alpha_from_variable, init_alpha, init_alpha_variable, init_params
from parity.oracle import NumpyOracle, flat
from parity.registry import TWINS
from parity.tasks import sample_batch
from parity.twins import (
    load,
    meta_results,  # NumPy in, the flat results out (checked against the contract)
)

ORACLE = NumpyOracle()
FRAMEWORKS = TWINS
# A leaf passes when max|twin − oracle| ≤ ATOL + RTOL·max|oracle|. Seen over these cases (2-core
# CPU, jax 0.10.2, torch 2.13.0): ≤ 3.9e-15 relative on every leaf above 1e-12; ATOL covers the
# leaves that are exactly zero (dL/dα of the output bias under L1, whose Hessian row is zero).
RTOL = 2e-14
ATOL = 1e-15

SMALL = {"meta_batch": 2, "dtype": "float64", "seed": 4}
PRESETS = ("seed-maml", "seed-alpha", "maml-paper", "maml-paper-code", "meta-sgd")
# The paper presets' K = 10 halved: the complex step's cost grows with it.
CASES: dict[str, Config] = {
    f"preset-{name}": get_preset(name).replace(**SMALL, **({"k_support": 5, "k_query": 5} if "paper" in name else {}))
    for name in PRESETS
}
CASES.update(
    {
        "first-order": SEED_ALPHA.replace(first_order=True, **SMALL),
        "first-order-per-parameter-mse": SEED_ALPHA.replace(
            first_order=True, alpha_mode="per_parameter", loss="mse", inner_steps=2, **SMALL
        ),
        "remat": SEED_ALPHA.replace(remat=True, **SMALL),  # T = 5: segments of 3 and 2 steps
        "remat-first-order": SEED_ALPHA.replace(remat=True, first_order=True, **SMALL),
        "per-parameter": SEED_ALPHA.replace(alpha_mode="per_parameter", inner_steps=3, **SMALL),
        "relu": SEED_ALPHA.replace(activation="relu", **SMALL),
        "mse": SEED_MAML.replace(loss="mse", **SMALL),
        "no-inner-step": SEED_ALPHA.replace(inner_steps=0, **SMALL),
    }
)
SOFTPLUS = {
    "softplus": SEED_ALPHA.replace(alpha_parametrisation="softplus", inner_steps=3, **SMALL),
    "softplus-per-parameter": SEED_ALPHA.replace(
        alpha_parametrisation="softplus", alpha_mode="per_parameter", inner_steps=2, **SMALL
    ),
}


def inputs(cfg: Config) -> tuple[dict[str, np.ndarray], Any, tuple[np.ndarray, ...]]:
    """The shared initial parameters, α and the step-0 meta-batch (what a golden file holds)."""
    return init_params(cfg), init_alpha(cfg), tuple(sample_batch(cfg, 0)[:4])


def assert_close(expected: dict[str, np.ndarray], actual: dict[str, np.ndarray], what: str) -> None:
    assert sorted(expected) == sorted(actual), what
    for key, value in expected.items():
        got = np.asarray(actual[key])
        assert got.shape == np.shape(value) and got.dtype == np.float64, (what, key, got.shape, got.dtype)
        scale = float(np.abs(value).max(initial=0.0))
        err = float(np.abs(got - value).max(initial=0.0))
        assert err <= ATOL + RTOL * scale, f"{what} {key}: max abs error {err:.2e} at scale {scale:.2e}"


@pytest.mark.parametrize("case", sorted(CASES))
def test_both_twins_equal_the_numpy_oracle(case):
    cfg = CASES[case]
    params, alpha, tasks = inputs(cfg)
    expected = flat(ORACLE.meta_value_and_grad(params, alpha, tasks, cfg))
    assert expected["inner_losses"].shape == (cfg.inner_steps,)
    if cfg.inner_steps:
        assert float(np.abs(expected["grad/w1"]).max()) > 0
    for framework in FRAMEWORKS:
        assert_close(
            expected, meta_results(load(framework, "float64"), cfg, params, alpha, tasks), f"{case} {framework}"
        )


@pytest.mark.parametrize("case", sorted(SOFTPLUS))
def test_both_twins_softplus_variable_gradient_equals_the_oracle(case):
    """α = softplus(ρ): each twin's dL/dρ (its meta-gradient through ``train.variable_grad``)
    against the oracle's complex step taken through the softplus itself."""
    cfg = SOFTPLUS[case]
    params, _, tasks = inputs(cfg)
    rho = init_alpha_variable(cfg)
    alpha = alpha_from_variable(rho, cfg)
    expected = ORACLE.softplus_variable_grad(params, rho, tasks, cfg)
    for framework in FRAMEWORKS:
        twin = load(framework, "float64")
        grad_alpha = meta_results(twin, cfg, params, alpha, tasks)
        as_tree = (
            {k: grad_alpha[f"grad/alpha/{k}"] for k in params} if isinstance(rho, dict) else grad_alpha["grad/alpha"]
        )
        to = twin.model.to_arrays
        got = twin.model.to_numpy(twin.train.variable_grad(to(as_tree, "float64"), to(rho, "float64"), cfg))
        if isinstance(rho, dict):
            assert_close(expected, got, f"{case} {framework}")
        else:
            assert_close({"grad/rho": expected}, {"grad/rho": np.asarray(got)}, f"{case} {framework}")


def test_first_order_oracle_differs_from_second_order_and_matches_its_closed_form():
    """The oracle's first-order mode: dL/dw0 = ∇L_query(w_T) (the adapted parameters' plain query
    gradient, from the oracle's own backpropagation), and it differs from the second-order one."""
    cfg = CASES["first-order"]
    params, alpha, tasks = inputs(cfg)
    first = ORACLE.meta_value_and_grad(params, alpha, tasks, cfg)
    second = ORACLE.meta_value_and_grad(params, alpha, tasks, cfg.replace(first_order=False))
    np.testing.assert_array_equal(first["inner_losses"], second["inner_losses"])
    assert float(first["outer_loss"]) == float(second["outer_loss"])
    assert np.abs(first["grads"]["w1"] - second["grads"]["w1"]).max() > 1e-6
    # ∇L_query(w_T) per task, averaged: adapt in plain float64, then one backpropagation.
    expected = {k: np.zeros_like(v) for k, v in params.items()}
    for t in range(cfg.meta_batch):
        p = {k: v[None] for k, v in params.items()}
        for _ in range(cfg.inner_steps):
            _, g = ORACLE.loss_and_grads(p, tasks[0][t], tasks[1][t], cfg)
            p = {k: v - alpha * g[k] for k, v in p.items()}
        _, g = ORACLE.loss_and_grads(p, tasks[2][t], tasks[3][t], cfg)
        for k in expected:
            expected[k] += g[k][0].real / cfg.meta_batch
    assert_close(expected, first["grads"], "first-order closed form")

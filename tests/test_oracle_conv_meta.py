"""The NumPy oracle's meta-gradient on the conv model and cross-entropy (parity.oracle with
parity.oracle_conv registered): its full complex-step gradient against central differences of
the meta-loss and against the directional complex step, with each inner-loop variant."""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import pytest

from parity import oracle_conv as oc
from parity.config import Config
from parity.oracle import NumpyOracle

BASE = Config().replace(
    family="classification",
    model="conv",
    image_size=8,
    width=2,
    depth=2,
    n_way=3,
    k_support=1,
    k_query=2,
    meta_batch=2,
    inner_steps=2,
    alpha_mode="scalar",
    alpha_init=0.4,
    dtype="float64",
)


def _problem(cfg: Config, seed: int = 0):
    """Parameters (γ, β and biases moved off their init so that every path carries gradient),
    α and a meta-batch of tasks of synthetic images with labels one-hot in a permuted order."""
    rng = np.random.default_rng(seed)
    shapes = cfg.model.param_shapes(cfg.family.input_shape, cfg.family.n_outputs)
    params = cfg.model.init_params(shapes, rng, "float64")
    params = {k: v + 0.3 * rng.standard_normal(v.shape) for k, v in params.items()}
    n, s = cfg.n_way, cfg.image_size

    def episode(per_class: int):
        labels = np.stack([rng.permutation(np.repeat(np.arange(n), per_class)) for _ in range(cfg.meta_batch)])
        return rng.standard_normal((cfg.meta_batch, n * per_class, 1, s, s)), np.eye(n)[labels]

    x_s, y_s = episode(cfg.k_support)
    x_q, y_q = episode(cfg.k_query)
    alpha = (
        {k: np.full(v.shape, cfg.alpha_init) for k, v in params.items()}
        if cfg.alpha_mode == "per_parameter"
        else np.asarray(cfg.alpha_init)
    )
    return params, alpha, (x_s, y_s, x_q, y_q), shapes


def _meta_loss(oracle, params, alpha, tasks, cfg, move=None, eps=0.0):
    p = {k: (v + eps * move[k] if move is not None else v)[None].astype(complex) for k, v in params.items()}
    a = (
        {k: v[None].astype(complex) for k, v in alpha.items()}
        if isinstance(alpha, dict)
        else alpha.reshape(1).astype(complex)
    )
    return oracle.meta_loss(p, a, tasks, cfg)[0][0].real


class _Frozen(NumpyOracle):
    """The first-order objective as a plain function for finite differences (one inner step):
    the inner gradient taken at the fixed parameters ``base``, whatever the parameters given."""

    def __init__(self, base):
        self.base = {k: v[None].astype(complex) for k, v in base.items()}

    def inner_gradient(self, params, x, y, cfg):
        return self.loss_and_grads(params, x, y, cfg)[0], self.loss_and_grads(self.base, x, y, cfg)[1]


CASES: dict[str, dict[str, Any]] = {
    "maml-max": {},
    "stride": {"pool": "stride"},
    "head-only": {"adapt": "head"},
    "bn-frozen": {"adapt": "no_bn", "bn_eps": 1e-5},
    "first-order": {"first_order": True, "inner_steps": 1},
    "per-parameter-alpha": {"alpha_mode": "per_parameter", "inner_steps": 1},
}


@pytest.mark.parametrize("case", list(CASES))
def test_meta_gradient_against_differences_and_directions(case):
    cfg = BASE.replace(**CASES[case])
    oracle = NumpyOracle()
    assert oracle.supports(cfg) is None
    params, alpha, tasks, shapes = _problem(cfg)
    result = oracle.meta_value_and_grad(params, alpha, tasks, cfg)
    assert result["inner_losses"].shape == (cfg.inner_steps,)
    np.testing.assert_allclose(result["outer_loss"], _meta_loss(oracle, params, alpha, tasks, cfg), rtol=1e-14)
    assert oc.outer_mode(shapes) == "full"
    directions = oc.random_directions(shapes, 3, seed=1)
    along = oc.directional_meta_grad(oracle, params, alpha, tasks, cfg, directions)
    projected = oc.project(result["grads"], directions)
    # full and directional complex step: the same derivative, to rounding
    np.testing.assert_allclose(projected, along, rtol=1e-11, atol=1e-14)
    # and central differences of the real meta-loss, independent of the complex step
    eps = 1e-6
    plain = _Frozen(params) if cfg.first_order else oracle
    for k in range(3):
        move = {n: v[k] for n, v in directions.items()}
        fd = _meta_loss(plain, params, alpha, tasks, cfg, move, eps) - _meta_loss(
            plain, params, alpha, tasks, cfg, move, -eps
        )
        np.testing.assert_allclose(along[k], fd / (2 * eps), rtol=1e-6, atol=1e-9)
    assert np.max(np.abs(along)) > 1e-4  # the directions see a real gradient


def test_inner_loop_moves_only_what_adapt_names():
    cfg = BASE.replace(adapt="no_bn")
    params, alpha, tasks, _ = _problem(cfg)
    trace = NumpyOracle().trace(params, alpha, tasks, cfg)
    for name, value in params.items():
        moved = trace[f"trace/adapted/{name}"][:, -1]
        if name.startswith(("gamma", "beta")):
            np.testing.assert_array_equal(moved, np.broadcast_to(value, moved.shape))
        elif not re.fullmatch(r"b\d+", name):  # a conv bias before batch norm has no gradient
            assert np.max(np.abs(moved - value)) > 1e-6, name


def test_alpha_gradient_against_differences():
    cfg = BASE
    oracle = NumpyOracle()
    params, alpha, tasks, _ = _problem(cfg, seed=2)
    got = oracle.meta_value_and_grad(params, alpha, tasks, cfg)["alpha_grad"]
    eps = 1e-6
    fd = (_meta_loss(oracle, params, alpha + eps, tasks, cfg) - _meta_loss(oracle, params, alpha - eps, tasks, cfg)) / (
        2 * eps
    )
    np.testing.assert_allclose(got, fd, rtol=1e-6)


def test_outer_loss_from_a_complex_step_inner_gradient():
    """The meta-loss (one inner step) rebuilt from the forward pass alone: the inner gradient by
    complex step of the support loss, entry by entry, instead of the hand-written backprop."""
    cfg = BASE.replace(inner_steps=1)
    oracle = NumpyOracle()
    params, alpha, tasks, _ = _problem(cfg, seed=4)
    x_s, y_s, x_q, y_q = tasks
    h = 1e-30
    query = []
    for b in range(cfg.meta_batch):
        adapted = {}
        for name, value in params.items():
            basis = np.eye(value.size).reshape(value.size, *value.shape)
            copies = {n: np.broadcast_to(v, (value.size, *v.shape)).astype(complex) for n, v in params.items()}
            copies[name] = copies[name] + 1j * h * basis
            support = oc.cross_entropy(oc.forward(copies, x_s[b], cfg.model), y_s[b])[0]
            adapted[name] = (value - alpha * (support.imag / h).reshape(value.shape))[None].astype(complex)
        query.append(oc.cross_entropy(oc.forward(adapted, x_q[b], cfg.model), y_q[b])[0][0].real)
    got = oracle.meta_value_and_grad(params, alpha, tasks, cfg)["outer_loss"]
    np.testing.assert_allclose(got, np.mean(query), rtol=1e-13)

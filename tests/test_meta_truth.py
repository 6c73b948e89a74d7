"""Truth beyond the twin: finite differences, closed forms, first order ≠ second order.

Both frameworks could agree on a wrong formula, so each twin is checked here on its own
against numbers that do not come from the other twin.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from jax.test_util import check_grads

from parity.config import get_preset
from parity.init import init_alpha, init_params
from parity.registry import TWINS
from parity.tasks import sample_batch
from parity.twins import load

FRAMEWORKS = TWINS
# Small and float64: finite differences are only meaningful there.
BASE = get_preset("seed-alpha").replace(dtype="float64", meta_batch=3, hidden=(16, 16), seed=11)


def setup(framework, cfg):
    twin = load(framework, "float64")
    m = twin.model
    params = m.to_arrays(init_params(cfg), cfg.dtype)
    alpha = m.to_arrays(init_alpha(cfg), cfg.dtype)
    tasks = m.to_arrays(tuple(sample_batch(cfg, 0)[:4]), cfg.dtype)
    return twin, params, alpha, tasks


def meta_grads(framework, cfg):
    twin, params, alpha, tasks = setup(framework, cfg)
    (loss, inner), (gp, ga) = twin.model.to_numpy(twin.meta.meta_value_and_grad(params, alpha, tasks, cfg))
    return loss, inner, gp, ga


def per_task_plain_grads(framework, cfg, x_key, params_np=None):
    """∇L(w) of each task on its support (x_key=0) or query (x_key=2) points, at ``params_np``."""
    batch = tuple(sample_batch(cfg, 0)[:4])
    params_np = init_params(cfg) if params_np is None else params_np
    twin = load(framework, "float64")
    out = []
    for b in range(cfg.meta_batch):
        x, y = batch[x_key][b], batch[x_key + 1][b]
        if framework == "jax":
            g = jax.grad(lambda p, x=x, y=y: twin.meta.inner_loss(p, jnp.asarray(x), jnp.asarray(y), cfg))(
                twin.model.to_arrays(params_np, "float64")
            )
            out.append(twin.model.to_numpy(g))
        else:
            p = {k: v.requires_grad_() for k, v in twin.model.to_arrays(params_np, "float64").items()}
            loss = twin.meta.inner_loss(p, torch.as_tensor(x), torch.as_tensor(y), cfg)
            out.append(dict(zip(p, (g.numpy() for g in torch.autograd.grad(loss, list(p.values()))))))
    return out


def dot(a, b):
    return sum(float(np.sum(a[k] * b[k])) for k in a)


# --- finite differences ------------------------------------------------------------------------


@pytest.mark.parametrize("loss", ["l1", "mse"])
@pytest.mark.parametrize("mode", ["scalar", "per_parameter"])
def test_jax_meta_gradient_matches_finite_differences(loss, mode):
    # Second order only: FOMAML's gradient is not the derivative of the meta-loss; it is checked
    # by its closed form below.
    cfg = BASE.replace(inner_steps=3, loss=loss, alpha_mode=mode, alpha_init=0.05)
    twin, params, alpha, tasks = setup("jax", cfg)
    check_grads(
        lambda p, a: twin.meta.meta_loss(p, a, tasks, cfg)[0], (params, alpha), order=1, modes=["rev"], eps=1e-6
    )


@pytest.mark.parametrize("loss", ["l1", "mse"])
@pytest.mark.parametrize("mode", ["scalar", "per_parameter"])
def test_torch_meta_gradient_matches_finite_differences(loss, mode):
    cfg = BASE.replace(inner_steps=3, loss=loss, alpha_mode=mode, alpha_init=0.05)
    twin, params, alpha, tasks = setup("torch", cfg)
    alpha_leaves = list(alpha.values()) if isinstance(alpha, dict) else [alpha]
    alpha_leaves = [a.requires_grad_() for a in alpha_leaves]

    def f_alpha(*leaves):
        a = dict(zip(alpha, leaves)) if isinstance(alpha, dict) else leaves[0]
        return twin.meta.meta_loss(params, a, tasks, cfg)[0]

    if isinstance(alpha, dict):  # one entry of a per-parameter α per leaf keeps gradcheck cheap
        leaves = [alpha["w2"].requires_grad_()]

        def f_alpha(w2):
            return twin.meta.meta_loss(params, {**alpha, "w2": w2}, tasks, cfg)[0]

        assert torch.autograd.gradcheck(f_alpha, tuple(leaves), eps=1e-6, atol=1e-7, rtol=1e-5)
    else:
        assert torch.autograd.gradcheck(f_alpha, tuple(alpha_leaves), eps=1e-6, atol=1e-7, rtol=1e-5)

    # random directions v in parameter space: d/dt L(w0 + t·v) at t = 0 against ⟨∇L, v⟩
    rng = np.random.default_rng(0)
    for _ in range(3):
        v = {k: torch.as_tensor(rng.standard_normal(p.shape)) for k, p in params.items()}

        def along(t):
            return twin.meta.meta_loss({k: params[k] + t * v[k] for k in params}, alpha, tasks, cfg)[0]

        assert torch.autograd.gradcheck(
            along, (torch.zeros((), dtype=torch.float64, requires_grad=True),), eps=1e-6, atol=1e-7, rtol=1e-5
        )


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_meta_gradient_against_central_differences_of_alpha(framework):
    """dL/dα from each twin against a float64 central difference, eps 1e-6."""
    cfg = BASE.replace(inner_steps=5, alpha_init=0.05)
    _, _, _, ga = meta_grads(framework, cfg)
    twin, params, _, tasks = setup(framework, cfg)
    eps = 1e-6

    def L(a):
        return float(
            twin.model.to_numpy(
                twin.meta.meta_loss(params, twin.model.to_arrays(np.asarray(a), "float64"), tasks, cfg)[0]
            )
        )

    fd = (L(0.05 + eps) - L(0.05 - eps)) / (2 * eps)
    assert abs(float(ga) - fd) <= 1e-6 * max(1.0, abs(fd)), (float(ga), fd)


def test_torch_double_backward_of_the_inner_loss():
    """The Hessian-vector products create_graph relies on, by gradgradcheck."""
    cfg = BASE.replace(loss="mse")
    twin, params, _, tasks = setup("torch", cfg)
    w1 = params["w1"].requires_grad_()

    def f(w):
        return twin.meta.inner_loss({**params, "w1": w}, tasks[0], tasks[1], cfg).sum()

    assert torch.autograd.gradgradcheck(f, (w1,), eps=1e-6, atol=1e-7, rtol=1e-5)


# --- closed forms --------------------------------------------------------------------------------


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_no_inner_steps_gives_the_plain_query_gradient_and_zero_alpha_gradient(framework):
    cfg = BASE.replace(inner_steps=0)
    _, inner, gp, ga = meta_grads(framework, cfg)
    assert inner.shape == (0,)
    assert float(ga) == 0.0
    plain = per_task_plain_grads(framework, cfg, x_key=2)
    for k in gp:
        expected = np.mean([g[k] for g in plain], axis=0)
        np.testing.assert_allclose(gp[k], expected, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("framework", FRAMEWORKS)
@pytest.mark.parametrize("T", [1, 3])
@pytest.mark.parametrize("first_order", [False, True], ids=["second", "first"])
def test_alpha_zero_gives_minus_T_times_the_gradient_inner_product(framework, T, first_order):
    """At α = 0, w_t = w0 for all t, so dL/dα = −T·⟨∇L_query(w0), ∇L_support(w0)⟩ (mean over tasks)."""
    cfg = BASE.replace(inner_steps=T, alpha_init=0.0, first_order=first_order)
    _, _, _, ga = meta_grads(framework, cfg)
    q = per_task_plain_grads(framework, cfg, x_key=2)
    s = per_task_plain_grads(framework, cfg, x_key=0)
    expected = -T * np.mean([dot(qb, sb) for qb, sb in zip(q, s)])
    assert abs(expected) > 1e-3  # the check below must be able to fail
    np.testing.assert_allclose(float(ga), expected, rtol=1e-12)


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_first_order_gradient_is_the_query_gradient_at_the_adapted_weights(framework):
    """FOMAML: dw_T/dw0 is taken as the identity, so dL/dw0 = mean_b ∇L_query,b(w_T,b)."""
    cfg = BASE.replace(inner_steps=3, alpha_init=0.05, first_order=True)
    _, _, gp, _ = meta_grads(framework, cfg)
    twin, params, alpha, tasks = setup(framework, cfg)
    expected = {k: np.zeros_like(v) for k, v in gp.items()}
    for b in range(cfg.meta_batch):
        if framework == "torch":
            p = {k: v.detach().requires_grad_() for k, v in params.items()}
            adapted, _ = twin.meta.adapt(p, alpha, tasks[0][b], tasks[1][b], cfg)
        else:
            adapted, _ = twin.meta.adapt(params, alpha, tasks[0][b], tasks[1][b], cfg)
        adapted_np = {k: np.asarray(twin.model.to_numpy(v)) for k, v in adapted.items()}
        g = per_task_plain_grads(framework, cfg, x_key=2, params_np=adapted_np)[b]
        for k in expected:
            expected[k] += g[k] / cfg.meta_batch
    for k in gp:
        np.testing.assert_allclose(gp[k], expected[k], rtol=1e-11, atol=1e-14)


@pytest.mark.parametrize("framework", FRAMEWORKS)
@pytest.mark.parametrize("loss", ["l1", "mse"])
def test_first_order_differs_from_second_order(framework, loss):
    second = meta_grads(framework, BASE.replace(inner_steps=3, alpha_init=0.1, loss=loss))
    first = meta_grads(framework, BASE.replace(inner_steps=3, alpha_init=0.1, loss=loss, first_order=True))
    assert second[0] == first[0]  # same forward pass
    for k in second[2]:
        rel = np.abs(second[2][k] - first[2][k]).max() / np.abs(second[2][k]).max()
        if loss == "l1" and k == "b2":
            # Under L1 the support gradient w.r.t. the output bias is mean(sign(r)), whose
            # derivative is zero: its Hessian row vanishes and both orders agree exactly.
            assert rel < 1e-12, k
        else:
            assert rel > 1e-3, k
    assert abs(float(second[3]) - float(first[3])) > 1e-4

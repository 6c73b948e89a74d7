"""The NumPy oracle's conv model and cross-entropy (parity/oracle_conv.py).

The forward pass is held to a loop-by-loop transcription of parity/models/conv.py's docstring;
the hand-written backprop to the complex-step derivative of that forward pass (exact to rounding)
and to central finite differences; the backprop's own derivative (what the outer complex step
differentiates through the inner loop) to finite differences of the gradient.
"""

from __future__ import annotations

import re

import numpy as np
import pytest

from parity import oracle_conv as oc
from parity.models.conv import Conv

H = 1e-30


def _setup(pool: str, side: int = 8, depth: int = 2, width: int = 3, n: int = 4, points: int = 6, seed: int = 0):
    model = Conv(depth=depth, width=width, pool=pool, bn_eps=1e-3)
    rng = np.random.default_rng(seed)
    shapes = model.param_shapes((1, side, side), n)
    params = {k: rng.normal(size=s) * 0.5 + (1.0 if k.startswith("gamma") else 0.0) for k, s in shapes.items()}
    x = rng.normal(size=(points, 1, side, side))
    y = np.eye(n)[rng.permutation(np.arange(points) % n)]
    return model, params, x, y, rng


def _one(params, shift=None, scale=0.0):
    """D = 1 complex copy of params, moved by scale·shift."""
    return {k: (v + (scale * shift[k] if shift is not None else 0))[None].astype(complex) for k, v in params.items()}


def _reference_logits(params, x, model):
    """The docstring's definition, image by image and pixel by pixel (real float64)."""
    h = x
    for i in range(model.depth):
        w, b = params[f"w{i}"], params[f"b{i}"]
        stride = 2 if model.pool == "stride" else 1
        side = h.shape[-1]
        out = -(-side // stride)
        pad = np.zeros((h.shape[0], h.shape[1], side + 2, side + 2))
        pad[:, :, 1:-1, 1:-1] = h
        z = np.zeros((h.shape[0], w.shape[0], out, out))
        for p in range(h.shape[0]):
            for o in range(w.shape[0]):
                for r in range(out):
                    for c in range(out):
                        window = pad[p, :, r * stride : r * stride + 3, c * stride : c * stride + 3]
                        z[p, o, r, c] = np.sum(window * w[o]) + b[o]
        for o in range(w.shape[0]):
            mean = z[:, o].mean()
            var = ((z[:, o] - mean) ** 2).mean()
            z[:, o] = (z[:, o] - mean) / np.sqrt(var + model.bn_eps) * params[f"gamma{i}"][o] + params[f"beta{i}"][o]
        z = np.maximum(z, 0.0)
        if model.pool == "max":
            half = z.shape[-1] // 2
            pooled = np.zeros((*z.shape[:2], half, half))
            for r in range(half):
                for c in range(half):
                    pooled[:, :, r, c] = z[:, :, 2 * r : 2 * r + 2, 2 * c : 2 * c + 2].max(axis=(2, 3))
            z = pooled
        h = z
    feats = h.reshape(h.shape[0], -1)
    return feats @ params["w_head"].T + params["b_head"]


@pytest.mark.parametrize("pool", ["max", "stride"])
@pytest.mark.parametrize("side", [8, 7])
def test_forward_is_the_docstring_definition(pool, side):
    model, params, x, _, _ = _setup(pool, side=side)
    got = oc.forward(_one(params), x, model)[0]
    want = _reference_logits(params, x, model)
    assert got.shape == want.shape == (6, 4)
    np.testing.assert_allclose(got.real, want, rtol=1e-12, atol=1e-12)
    assert np.all(got.imag == 0)


def test_bn_eps_is_honoured():
    model, params, x, _, _ = _setup("max")
    other = Conv(depth=2, width=3, pool="max", bn_eps=1e-5)
    a = oc.forward(_one(params), x, model)[0].real
    b = oc.forward(_one(params), x, other)[0].real
    np.testing.assert_allclose(b, _reference_logits(params, x, other), rtol=1e-12, atol=1e-12)
    # the two epsilons give different logits (a port that mixes them up is caught)
    assert np.max(np.abs(a - b)) > 1e-6


def test_cross_entropy_value_and_gradient():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(2, 5, 3)) * 3 + np.array([800.0, 0.0, -5.0])  # large: the shift matters
    y = np.eye(3)[rng.integers(0, 3, 5)]
    value, grad = oc.cross_entropy(logits.astype(complex), y)
    m = logits.max(axis=-1, keepdims=True)
    log_softmax = logits - m - np.log(np.exp(logits - m).sum(axis=-1, keepdims=True))
    np.testing.assert_allclose(value.real, -(y * log_softmax).sum(axis=(1, 2)) / 5, rtol=1e-14)
    assert np.all(np.isfinite(value))
    v = rng.normal(size=logits.shape)
    step = oc.cross_entropy(logits + 1j * H * v, y)[0].imag / H
    np.testing.assert_allclose(step, np.sum(grad.real * v, axis=(1, 2)), rtol=1e-13)
    np.testing.assert_array_equal(oc.accuracy(logits, y), np.mean(logits.argmax(-1) == y.argmax(-1), axis=-1))


@pytest.mark.parametrize("pool", ["max", "stride"])
def test_backprop_matches_complex_step_per_parameter(pool):
    model, params, x, y, rng = _setup(pool)
    _, grads = oc.loss_and_grads(_one(params), x, y, model)
    assert set(grads) == set(params)
    for k in params:
        v = {n: rng.normal(size=p.shape) if n == k else np.zeros(p.shape) for n, p in params.items()}
        step = oc.loss_and_grads(_one(params, v, 1j * H), x, y, model)[0].imag[0] / H
        backprop = np.sum(grads[k][0].real * v[k])
        if re.fullmatch(r"b\d+", k):
            # a bias before batch norm cancels in μ: its gradient is zero, to rounding
            assert abs(step) < 1e-15 and abs(backprop) < 1e-13, (k, step, backprop)
            continue
        assert abs(backprop - step) <= 1e-13 * abs(step), (k, backprop, step)
        assert abs(step) > 1e-6, k  # a real direction, not a vacuous zero


@pytest.mark.parametrize("pool", ["max", "stride"])
def test_backprop_matches_central_differences(pool):
    model, params, x, y, rng = _setup(pool, seed=3)
    _, grads = oc.loss_and_grads(_one(params), x, y, model)
    v = {k: rng.normal(size=p.shape) for k, p in params.items()}
    eps = 1e-6
    plus = oc.loss_and_grads(_one(params, v, eps), x, y, model)[0][0].real
    minus = oc.loss_and_grads(_one(params, v, -eps), x, y, model)[0][0].real
    backprop = sum(np.sum(grads[k][0].real * v[k]) for k in params)
    np.testing.assert_allclose((plus - minus) / (2 * eps), backprop, rtol=1e-7)


@pytest.mark.parametrize("pool", ["max", "stride"])
def test_backprop_is_complex_step_differentiable(pool):
    """The outer complex step runs through the inner gradient: Im grad(p + ihv)/h is its
    Hessian-vector product, held to central differences of the gradient."""
    model, params, x, y, rng = _setup(pool, seed=5)
    v = {k: rng.normal(size=p.shape) for k, p in params.items()}
    hvp = oc.loss_and_grads(_one(params, v, 1j * H), x, y, model)[1]
    eps = 1e-5
    plus = oc.loss_and_grads(_one(params, v, eps), x, y, model)[1]
    minus = oc.loss_and_grads(_one(params, v, -eps), x, y, model)[1]
    for k in params:
        fd = (plus[k][0].real - minus[k][0].real) / (2 * eps)
        np.testing.assert_allclose(hvp[k][0].imag / H, fd, rtol=1e-5, atol=1e-7, err_msg=k)


def test_copies_are_independent():
    """D copies in one call give what each gives alone (the complex step's batching)."""
    model, params, x, y, rng = _setup("max", seed=7)
    moved = {k: p + 0.1 * rng.normal(size=p.shape) for k, p in params.items()}
    both = {k: np.stack([params[k], moved[k]]).astype(complex) for k in params}
    value, grads = oc.loss_and_grads(both, x, y, model)
    for d, single in enumerate((params, moved)):
        v1, g1 = oc.loss_and_grads(_one(single), x, y, model)
        np.testing.assert_allclose(value[d], v1[0], rtol=1e-14)
        for k in params:
            np.testing.assert_allclose(grads[k][d], g1[k][0], rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize(
    ("side", "depth", "pool"), [(8, 2, "max"), (8, 3, "stride"), (28, 4, "max"), (28, 4, "stride")]
)
def test_shapes(side, depth, pool):
    model = Conv(depth=depth, width=2, pool=pool)
    shapes = model.param_shapes((1, side, side), 5)
    rng = np.random.default_rng(0)
    params = {k: rng.normal(size=(3, *s)).astype(complex) for k, s in shapes.items()}
    x = rng.normal(size=(5, 1, side, side))
    y = np.eye(5)
    logits = oc.forward(params, x, model)
    assert logits.shape == (3, 5, 5)
    value, grads = oc.loss_and_grads(params, x, y, model)
    assert value.shape == (3,)
    assert {k: g.shape[1:] for k, g in grads.items()} == shapes
    assert all(g.shape[0] == 3 for g in grads.values())


def test_outer_mode_and_directions():
    """Tiny check-matrix nets get the full complex-step gradient, the paper's Omniglot net the
    directional one; directions have unit norm and project a gradient entry by entry."""
    tiny = Conv(depth=2, width=2).param_shapes((1, 8, 8), 3)
    omniglot = Conv(depth=4, width=64, pool="stride").param_shapes((1, 28, 28), 20)
    assert oc.outer_mode(tiny) == "full"
    assert oc.outer_mode(omniglot) == "directional"
    directions = oc.random_directions(tiny, 3, seed=0)
    norms = np.sqrt(sum(np.sum(v.reshape(3, -1) ** 2, axis=1) for v in directions.values()))
    np.testing.assert_allclose(norms, 1.0, rtol=1e-14)
    rng = np.random.default_rng(1)
    grads = {k: rng.normal(size=s) for k, s in tiny.items()}
    want = [sum(np.sum(grads[k] * directions[k][i]) for k in tiny) for i in range(3)]
    np.testing.assert_allclose(oc.project(grads, directions), want, rtol=1e-13)

"""The conv model and cross-entropy in both twins (issue 18): each against a NumPy reference written
here with loops (the definition in parity/models/conv.py's docstring), and the twins' meta-gradients
against each other in float64 on tiny classification episodes (a generator of its own, so these
tests do not depend on the data sets)."""

from __future__ import annotations

import numpy as np
import pytest

from parity.config import Config

jax = pytest.importorskip("jax")
torch = pytest.importorskip("torch")
jax.config.update("jax_enable_x64", True)

from jax_impl import meta as jax_meta  # noqa: E402
from jax_impl import model as jax_model  # noqa: E402
from torch_impl import meta as torch_meta  # noqa: E402
from torch_impl import model as torch_model  # noqa: E402

TINY = dict(depth=2, width=3, n_way=3, k_support=2, k_query=2, image_size=8, meta_batch=2, alpha_init=0.1)


def tiny(**changes: object) -> Config:
    return Config(family="classification", model="conv").replace(dtype="float64", **{**TINY, **changes})


def episodes(cfg: Config, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """B episodes: one noisy prototype image per class, labels permuted, one-hot y (float64)."""
    B, N, S = cfg.meta_batch, cfg.n_way, cfg.image_size
    prototypes = rng.uniform(0.0, 1.0, (B, N, 1, S, S))

    def draw(per_class: int) -> tuple[np.ndarray, np.ndarray]:
        labels = np.stack([rng.permutation(np.repeat(np.arange(N), per_class)) for _ in range(B)])
        x = prototypes[np.arange(B)[:, None], labels] + 0.3 * rng.standard_normal((B, N * per_class, 1, S, S))
        return x, np.eye(N)[labels]

    return (*draw(cfg.k_support), *draw(cfg.k_query))


# --- the NumPy reference: loops, NCHW, one task at a time ------------------------------------------


def reference_conv(params: dict[str, np.ndarray], x: np.ndarray, model) -> np.ndarray:
    """Logits [P, N] of one task's images x [P, C, H, W], straight from the docstring's definition."""
    h = x
    stride = 2 if model.pool == "stride" else 1
    for i in range(model.depth):
        w, b = params[f"w{i}"], params[f"b{i}"]
        padded = np.pad(h, ((0, 0), (0, 0), (1, 1), (1, 1)))
        side_out = (h.shape[-1] + 2 - 3) // stride + 1
        z = np.zeros((h.shape[0], w.shape[0], side_out, side_out))
        for r in range(side_out):
            for c in range(side_out):
                patch = padded[:, :, r * stride : r * stride + 3, c * stride : c * stride + 3]
                z[:, :, r, c] = np.einsum("pihw,oihw->po", patch, w) + b
        mean = z.mean(axis=(0, 2, 3), keepdims=True)
        var = ((z - mean) ** 2).mean(axis=(0, 2, 3), keepdims=True)
        z = (z - mean) / np.sqrt(var + model.bn_eps) * params[f"gamma{i}"][:, None, None] + params[f"beta{i}"][
            :, None, None
        ]
        h = np.maximum(z, 0.0)
        if model.pool == "max":
            s = h.shape[-1] // 2
            h = h[:, :, : 2 * s, : 2 * s].reshape(h.shape[0], h.shape[1], s, 2, s, 2).max(axis=(3, 5))
    return h.reshape(h.shape[0], -1) @ params["w_head"].T + params["b_head"]


def reference_cross_entropy(logits: np.ndarray, y: np.ndarray) -> float:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    log_softmax = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    return float(np.mean(-(y * log_softmax).sum(axis=-1)))


def run_forward(framework: str, params: dict[str, np.ndarray], x: np.ndarray, cfg: Config) -> np.ndarray:
    if framework == "jax":
        return np.asarray(
            jax_model.predict(jax_model.to_arrays(params, "float64"), jax_model.to_arrays(x, "float64"), cfg)
        )
    return torch_model.predict(
        torch_model.to_arrays(params, "float64"), torch_model.to_arrays(x, "float64"), cfg
    ).numpy()


@pytest.mark.parametrize("framework", ["jax", "torch"])
@pytest.mark.parametrize(
    ("pool", "side", "eps"), [("max", 8, 1e-3), ("max", 7, 1e-5), ("stride", 7, 1e-3), ("stride", 8, 1e-3)]
)
def test_conv_forward_matches_the_definition(framework, pool, side, eps):
    """Per-task parameters [B, ...] and images [B, P, C, H, W] (odd sides: floor for the pool, ceil
    for stride 2), each task against the loop reference; batch norm with each task's own statistics."""
    cfg = tiny(pool=pool, image_size=side, bn_eps=eps)
    rng = np.random.default_rng(1)
    base = cfg.model.init_params(cfg.param_shapes, rng, "float64")
    params = {k: v + 0.1 * rng.standard_normal((2, *v.shape)) for k, v in base.items()}  # two different tasks
    x = rng.standard_normal((2, 5, 1, side, side)) + np.arange(2)[:, None, None, None, None]  # unlike statistics
    got = run_forward(framework, params, x, cfg)
    want = np.stack([reference_conv({k: v[b] for k, v in params.items()}, x[b], cfg.model) for b in range(2)])
    assert got.shape == (2, 5, cfg.n_way)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    shared = run_forward(framework, base, x, cfg)  # parameters without the task axis: broadcast
    want = np.stack([reference_conv(base, x[b], cfg.model) for b in range(2)])
    np.testing.assert_allclose(shared, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("framework", ["jax", "torch"])
def test_cross_entropy_is_the_mean_over_points_and_accuracy_the_argmax(framework):
    rng = np.random.default_rng(2)
    logits = 30.0 * rng.standard_normal((3, 4, 5))  # large logits: the max must be subtracted
    y = np.eye(5)[rng.integers(0, 5, (3, 4))]
    module = jax_model if framework == "jax" else torch_model
    to = module.to_arrays
    got = np.asarray(module.point_loss(to(logits, "float64"), to(y, "float64"), "cross_entropy"))
    want = [reference_cross_entropy(logits[b], y[b]) for b in range(3)]
    np.testing.assert_allclose(got, want, rtol=1e-13)
    accuracy = np.asarray(module.accuracy(to(logits, "float64"), to(y, "float64")))
    np.testing.assert_array_equal(accuracy, (logits.argmax(-1) == y.argmax(-1)).mean(-1))
    # the l1 / mse entries of the same table keep their per-task means
    l1 = np.asarray(module.point_loss(to(logits, "float64"), to(y, "float64"), "l1"))
    np.testing.assert_allclose(l1, np.abs(logits - y).mean(axis=(-2, -1)), rtol=1e-14)


def meta_gradients(framework: str, cfg: Config, seed: int = 0) -> tuple[float, dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    params = cfg.model.init_params(cfg.param_shapes, rng, "float64")
    alpha = (
        {k: np.full(v.shape, cfg.alpha_init) for k, v in params.items()}
        if cfg.alpha_mode == "per_parameter"
        else np.float64(cfg.alpha_init)
    )
    tasks = episodes(cfg, rng)
    model, meta = (jax_model, jax_meta) if framework == "jax" else (torch_model, torch_meta)
    to = model.to_arrays
    (loss, _), (grads, _) = meta.meta_value_and_grad(
        to(params, "float64"), to(alpha, "float64"), to(tasks, "float64"), cfg
    )
    return float(loss), {k: np.asarray(model.to_numpy(v)) for k, v in grads.items()}


def disagreement(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> dict[str, float]:
    """Each parameter's max |a − b| relative to the largest meta-gradient entry of any parameter (the
    conv biases' gradients are zero up to rounding: batch norm removes them)."""
    scale = max(float(np.abs(v).max()) for v in a.values())
    return {k: float(np.abs(a[k] - b[k]).max()) / scale for k in a}


TWIN_CASES = {
    "max-all-T1": dict(inner_steps=1),
    "stride-no_bn-eps1e-5-T2": dict(pool="stride", adapt="no_bn", bn_eps=1e-5, inner_steps=2),
    "max-head-T2-first-per_parameter": dict(adapt="head", inner_steps=2, first_order=True, alpha_mode="per_parameter"),
}


@pytest.mark.parametrize(
    "case",
    [pytest.param(name, marks=() if name == "max-all-T1" else pytest.mark.slow) for name in TWIN_CASES],
)
def test_the_twins_agree_on_conv_meta_gradients(case):
    """float64: ≤ 1e-10 relative (issue 18 §6); a parameter that disagrees is named."""
    cfg = tiny(**TWIN_CASES[case])
    loss_j, grads_j = meta_gradients("jax", cfg)
    loss_t, grads_t = meta_gradients("torch", cfg)
    assert abs(loss_j - loss_t) <= 1e-10 * abs(loss_j)
    bad = {k: v for k, v in disagreement(grads_j, grads_t).items() if v > 1e-10}
    assert not bad, f"meta-gradients differ at {sorted(bad)}: {bad}"


@pytest.mark.parametrize("framework", ["jax", "torch"])
def test_head_only_adaptation_keeps_the_body(framework):
    """adapt head (ANIL): the blocks keep their values through the inner loop, and the meta-gradient
    differs from adapt all (the body's parameters still get an outer gradient)."""
    cfg = tiny(adapt="head", inner_steps=1)
    rng = np.random.default_rng(3)
    params = cfg.model.init_params(cfg.param_shapes, rng, "float64")
    xs, ys, _, _ = episodes(cfg, rng)
    model, meta = (jax_model, jax_meta) if framework == "jax" else (torch_model, torch_meta)
    to = model.to_arrays
    adapted, _ = meta.adapt(
        to(params, "float64"), to(np.float64(0.1), "float64"), to(xs[0], "float64"), to(ys[0], "float64"), cfg
    )
    moved = {
        k
        for k, v in adapted.items()
        if not np.array_equal(np.asarray(model.to_numpy(v)).reshape(params[k].shape), params[k])
    }
    assert moved == {"w_head", "b_head"}

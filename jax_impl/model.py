"""The models (MLP, the MAML paper's conv net) as functions of explicit parameters, their losses,
and NumPy conversion (JAX)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from parity.config import Config, ConfigError, lookup
from parity.devices import check_precision, not_visible, parse_device
from parity.validate import ArrayTypeError, Spec, check_call

Params = dict[str, jax.Array]

# Option choices as tables (an unknown name is refused by parity.config.lookup, never an `else`).
ACTIVATIONS = {"tanh": jnp.tanh, "relu": jax.nn.relu}


def forward(params: Params, x: jax.Array, cfg: Config) -> jax.Array:
    """``cfg``'s model on points ``x`` [..., P, *input] → [..., P, n_outputs], after checking ``x``'s
    shape and dtype (:func:`predict` is the same without the checks, for the inner loop).
    """
    check_inputs("forward", None, params=params, x=x)
    return predict(params, x, cfg)


def predict(params: Params, x: jax.Array, cfg: Config) -> jax.Array:
    """The forward pass of the model ``cfg.model`` names (:data:`MODELS`), its part as settings."""
    return lookup(MODELS, "model", cfg.model.name)(params, x, cfg.model)  # type: ignore[no-any-return]


def mlp(params: Params, x: jax.Array, model: Any) -> jax.Array:
    """MLP 1 → hidden… → 1 on points ``x`` [..., P, 1] → [..., P, 1] (``model``: the MLP part).

    Weights are (out, in); parameters may carry the same leading task axes as ``x``.
    """
    n_layers = len(params) // 2
    act = lookup(ACTIVATIONS, "activation", model.activation)
    h = x  # [..., P, 1]
    for i in range(n_layers):
        w, b = params[f"w{i}"], params[f"b{i}"]  # [..., out, in], [..., out]
        h = h @ jnp.swapaxes(w, -1, -2) + b[..., None, :]  # [..., P, out]
        if i < n_layers - 1:
            h = act(h)
    return h


def conv(params: Params, x: jax.Array, model: Any) -> jax.Array:
    """The MAML paper's conv net (parity/models/conv.py's definition) on images ``x``
    [..., P, C, H, W] → logits [..., P, n_way] (``model``: the Conv part).

    Weights arrive OIHW (the exchange layout); a parameter may carry the leading task axes of ``x``
    or none. Each task is mapped on its own (``jax.vmap``): batch norm's statistics are per task.
    """
    return conv_layers(params, x, model)["logits"]


def conv_layers(params: Params, x: jax.Array, model: Any) -> dict[str, jax.Array]:
    """:func:`conv` with every block's output kept: ``block<i>`` [..., P, C, H', W'] (after its
    ReLU and pool, in the exchange layout) and ``logits`` [..., P, n_way]; the trace records them so
    that a divergence in the forward pass is named by its block. Under ``jit`` an unused block
    output costs nothing (XLA drops it)."""
    if x.ndim > 4:
        lead = x.ndim - 4  # task axes still to map; a parameter that has them is mapped along
        axes = {name: 0 if p.ndim - _conv_rank(name) == lead else None for name, p in params.items()}
        return jax.vmap(lambda q, images: conv_layers(q, images, model), in_axes=(axes, 0))(params, x)  # type: ignore[no-any-return]
    h = jnp.transpose(x, (0, 2, 3, 1))  # NHWC inside: XLA's CPU convolutions prefer it
    stride = 2 if model.pool == "stride" else 1
    out: dict[str, jax.Array] = {}
    for i in range(model.depth):
        h = conv3x3(h, params[f"w{i}"], stride) + params[f"b{i}"][None, None, None, :]
        h = batch_norm(h, params[f"gamma{i}"], params[f"beta{i}"], model.bn_eps)
        h = jax.nn.relu(h)
        if model.pool == "max":
            h = max_pool(h)
        out[f"block{i}"] = jnp.transpose(h, (0, 3, 1, 2))  # NCHW, the exchange layout
    features = out[f"block{model.depth - 1}"].reshape(h.shape[0], -1)  # flattened in (C, H, W) order
    out["logits"] = features @ params["w_head"].T + params["b_head"][None, :]
    return out


def conv3x3(h: jax.Array, w: jax.Array, stride: int) -> jax.Array:
    """3×3 convolution, padding 1, of NHWC images ``h`` with OIHW weights ``w``, as one matrix product
    of the nine shifted (strided) views of the padded images (im2col).

    Why not ``lax.conv_general_dilated``: mapped over tasks with per-task weights (the inner loop's
    adapted parameters), it becomes a grouped convolution that XLA's CPU backend runs far slower than
    this batched matrix product (measured, one core, meta-batch 32, 1 inner step, 4×64 filters on
    8×8 images: 4.2 s against 0.15 s per outer step).
    """
    _, H, W, C = h.shape
    Ho, Wo = (H - 1) // stride + 1, (W - 1) // stride + 1
    padded = jnp.pad(h, ((0, 0), (1, 1), (1, 1), (0, 0)))
    views = [
        padded[:, dy : dy + stride * (Ho - 1) + 1 : stride, dx : dx + stride * (Wo - 1) + 1 : stride, :]
        for dy in range(3)
        for dx in range(3)
    ]
    patches = jnp.concatenate(views, axis=-1)  # [P, Ho, Wo, 9·C], (dy, dx, c) order
    kernel = jnp.transpose(w, (2, 3, 1, 0)).reshape(9 * C, w.shape[0])  # OIHW -> (dy, dx, c) × O
    return patches @ kernel


def _conv_rank(name: str) -> int:
    """A conv parameter's own rank: w{i} (O, I, 3, 3), w_head (N, F), the rest (O,) or (N,)."""
    return 2 if name == "w_head" else 4 if name.startswith("w") else 1


def batch_norm(h: jax.Array, gamma: jax.Array, beta: jax.Array, eps: float) -> jax.Array:
    """Per channel, with the statistics of these images (over images, rows, columns; biased variance)."""
    mean = jnp.mean(h, axis=(0, 1, 2), keepdims=True)
    var = jnp.mean(jnp.square(h - mean), axis=(0, 1, 2), keepdims=True)
    return (h - mean) / jnp.sqrt(var + eps) * gamma[None, None, None, :] + beta[None, None, None, :]


def max_pool(h: jax.Array) -> jax.Array:
    """2×2 max-pool, stride 2, an odd last row/column dropped: [P, H, W, C] → [P, H//2, W//2, C].

    The larger of the even and odd rows, then of the even and odd columns (elementwise maxima of
    strided views), rather than ``lax.reduce_window``, whose derivatives (select-and-scatter, and
    theirs in the second-order meta-gradient) XLA's CPU backend runs slower: measured on one core
    (CPU time, meta-batch 32, 1 inner step, 3×64 blocks on 8×8 images) 312 against 352 ms per
    meta-gradient. Not a reshape to [P, H//2, 2, W//2, 2, C] and ``jnp.max`` over the window axes
    (275 ms): jitted on XLA's CPU backend (jax 0.10.2) its meta-gradient was wrong in float64 (0.84
    of the gradient's scale off the PyTorch twin, right without jit) with head-only, first-order
    adaptation. A tie shares the gradient where PyTorch's pool gives it to the first element; after
    batch norm and ReLU a tie is a window of zeros, whose gradient ReLU stops anyway.
    """
    H, W = h.shape[1] // 2 * 2, h.shape[2] // 2 * 2
    rows = jnp.maximum(h[:, 0:H:2, :W], h[:, 1:H:2, :W])
    return jnp.maximum(rows[:, :, 0::2], rows[:, :, 1::2])


def _pointwise(error: Callable[[jax.Array], jax.Array]) -> Callable[[jax.Array, jax.Array], jax.Array]:
    def loss(pred: jax.Array, y: jax.Array) -> jax.Array:
        per_point = error(pred - y)
        return jnp.mean(per_point, axis=(-2, -1))

    return loss


def cross_entropy(pred: jax.Array, y: jax.Array) -> jax.Array:
    """Softmax cross-entropy of logits [..., P, N] against one-hot ``y``: the mean over the P points
    of −Σ_n y·log_softmax (the max subtracted before the exponent) → [...]."""
    nll = -jnp.sum(y * jax.nn.log_softmax(pred, axis=-1), axis=-1)
    return jnp.mean(nll, axis=-1)


# (pred, y) -> the loss of each task [...], by the name the family's ``loss`` field gives.
POINT_LOSSES = {"l1": _pointwise(jnp.abs), "mse": _pointwise(jnp.square), "cross_entropy": cross_entropy}


def point_loss(pred: jax.Array, y: jax.Array, kind: str) -> jax.Array:
    """The loss of each task, a mean over its points: [..., P, n_outputs] → [...]."""
    return lookup(POINT_LOSSES, "loss", kind)(pred, y)  # type: ignore[no-any-return]


def accuracy(pred: jax.Array, y: jax.Array) -> jax.Array:
    """Fraction of points whose largest logit is the one-hot label's class: [..., P, N] → [...]."""
    hits = jnp.argmax(pred, axis=-1) == jnp.argmax(y, axis=-1)
    return jnp.mean(hits.astype(pred.dtype), axis=-1)


# The model axis (parity.models.MODELS): each entry's forward pass, by name.
MODELS = {"mlp": mlp, "conv": conv}
# The models whose layers the trace records (parity.models: a model part's ``layer_shapes``).
LAYERS = {"conv": conv_layers}


def check_dtype(dtype: str) -> None:
    """float64 needs x64 mode switched on before any array is made; never downcast silently."""
    if dtype == "float64" and not jax.config.read("jax_enable_x64"):
        raise ConfigError(
            "dtype",
            "float64 needs JAX's x64 mode, which is off (set JAX_ENABLE_X64=1 or "
            "jax.config.update('jax_enable_x64', True) before making arrays); allowed here: float32",
        )


def resolve_device(device: str | None) -> jax.Device | None:
    """``cpu``, ``gpu``, ``cuda:N``, ``tpu`` → a ``jax.Device``; None → None (JAX's default device).

    A device JAX cannot see is refused at once: ``ConfigError("device", ...)``, one line.
    """
    if device is None:
        return None
    kind, index = parse_device(device)
    try:
        found = jax.devices(kind)
    except RuntimeError:  # no backend for that platform
        found = []
    if not found:
        raise not_visible(device, "JAX", f"it sees {', '.join(sorted({d.platform for d in jax.devices()}))}")
    if index is not None and index >= len(found):
        raise ConfigError("device", f"{device!r}: JAX sees {len(found)} {kind} device(s), numbered from 0")
    return found[index or 0]


def to_arrays(tree: Any, dtype: str, device: str | None = None) -> Any:
    """NumPy leaves → JAX arrays of ``dtype`` on ``device`` (the one conversion on the way in).

    ``device`` None leaves placement to JAX (its default device, uncommitted).
    """
    check_dtype(dtype)
    target = resolve_device(device)
    if target is None:
        return jax.tree.map(lambda leaf: jnp.asarray(np.asarray(leaf), dtype=dtype), tree)
    # Cast on the host (NumPy rounds to nearest, as XLA does), then one copy onto the device.
    return jax.tree.map(lambda leaf: jax.device_put(np.asarray(leaf).astype(dtype, copy=False), target), tree)


@contextlib.contextmanager
def precision_scope(precision: str) -> Iterator[None]:
    """Inside the block, ``highest``: full float32 matmuls (no TF32 or bf16 passes on GPUs and TPUs);
    ``default``: JAX's own default. Only computations traced inside the block are affected (jit
    keys its cache on the setting); nothing global is left changed.
    """
    if check_precision(precision) == "default":
        yield
        return
    with jax.default_matmul_precision("highest"):
        yield


def device_description(device: str | None) -> str:
    """The device the twin computes on, e.g. ``cpu (JAX)`` or ``gpu (NVIDIA H100 80GB HBM3)``."""
    dev = resolve_device(device) or jax.devices()[0]
    return f"{dev.platform} ({dev.device_kind}, JAX)"


def to_numpy(tree: Any) -> Any:
    """JAX leaves → NumPy arrays (the one conversion on the way out)."""
    return jax.tree.map(lambda leaf: np.asarray(leaf), tree)


def check_inputs(function: str, cfg: Config | None, batched_params: bool = False, **arrays: Any) -> None:
    """Shape and dtype checks of a public function's arguments (``parity.validate.check_call``).

    Reads shapes and dtypes only; raises ``ArrayShapeError`` / ``ArrayTypeError`` naming the argument.
    """
    specs = {name: describe(function, name, value) for name, value in arrays.items()}
    check_call(function, cfg, batched_params=batched_params, **specs)


def describe(function: str, argument: str, value: Any) -> Any:
    """The :class:`parity.validate.Spec` tree of ``value`` (an array, or a dict / tuple of them)."""
    if isinstance(value, (jax.Array, np.ndarray)):
        return Spec(tuple(value.shape), str(value.dtype))
    if isinstance(value, dict):
        items = list(value.items())
    elif isinstance(value, (tuple, list)):
        items = list(enumerate(value))
    else:
        raise ArrayTypeError(
            f"{function}: {argument} must be a jax.Array (or numpy.ndarray); got {type(value).__name__}"
        )
    # Arrays directly; only what is not one pays for its argument's name (the checks are per call).
    specs = [
        Spec(tuple(v.shape), str(v.dtype))
        if isinstance(v, (jax.Array, np.ndarray))
        else describe(function, f"{argument}[{k!r}]", v)
        for k, v in items
    ]
    return dict(zip(value, specs, strict=True)) if isinstance(value, dict) else specs

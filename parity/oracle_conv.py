"""The NumPy oracle's conv model (``parity.models.conv``) and cross-entropy, by hand.

Shares no code with the twins. Every array carries a leading ``D`` axis of perturbed copies
(complex128) so that the oracle's complex step (``parity.oracle``) runs ``D`` directions at once.
The forward pass follows ``parity/models/conv.py``'s docstring exactly:

- convolution 3×3, padding 1, stride 1 (``pool: max``) or 2 (``pool: stride``), plus a bias;
- batch norm with the statistics of the ``P`` images given (per channel, over images, rows and
  columns; biased variance): ``(z − μ)/√(var + bn_eps)·γ + β``;
- ReLU as ``z·[Re z > 0]``; the 2×2 max-pool picks each window's entry of largest real part
  (``⌊s/2⌋``, an odd last row or column dropped). Both are complex-step safe: the choice is made
  on real parts, the chosen value carries its imaginary part through;
- flatten in (channel, row, column) order, linear head ``(n_way, features)``.

The loss is softmax cross-entropy, the mean over the task's points of ``−Σ_n y·log_softmax``;
the log-sum-exp subtracts the *real* maximum (a constant, so complex-step safe).

:func:`loss_and_grads` backpropagates by hand through head, flatten, pool or stride, ReLU, the
full batch norm (through μ and var too) and the convolution (im2col with slices). Its results are
analytic in the parameters, so the outer complex step can run through the inner loop.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

Params = dict[str, np.ndarray]


def _patches(h: np.ndarray, stride: int) -> np.ndarray:
    """im2col: h [D, P, C, S, S] → [D, P, C, 3, 3, S', S'] with padding 1 at ``stride``."""
    side = h.shape[-1]
    out = (side - 1) // stride + 1  # ⌈s/2⌉ at stride 2, s at stride 1
    pad = np.pad(h, [(0, 0)] * (h.ndim - 2) + [(1, 1), (1, 1)])
    rows = [
        [
            pad[..., di : di + stride * (out - 1) + 1 : stride, dj : dj + stride * (out - 1) + 1 : stride]
            for dj in range(3)
        ]
        for di in range(3)
    ]
    return np.stack([np.stack(r, axis=-3) for r in rows], axis=-4)


def _patches_back(g: np.ndarray, side: int, stride: int) -> np.ndarray:
    """The adjoint of :func:`_patches`: g [D, P, C, 3, 3, S', S'] → [D, P, C, S, S]."""
    out = g.shape[-1]
    pad = np.zeros((*g.shape[:3], side + 2, side + 2), dtype=g.dtype)
    for di in range(3):
        for dj in range(3):
            pad[..., di : di + stride * (out - 1) + 1 : stride, dj : dj + stride * (out - 1) + 1 : stride] += g[
                :, :, :, di, dj
            ]
    return pad[..., 1:-1, 1:-1]


def _pool(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """2×2 max-pool of a [D, P, C, S, S] by real part → (pooled, one-hot of the chosen entry)."""
    half = a.shape[-1] // 2
    win = a[..., : 2 * half, : 2 * half].reshape(*a.shape[:3], half, 2, half, 2)
    win = win.transpose(0, 1, 2, 3, 5, 4, 6).reshape(*a.shape[:3], half, half, 4)
    pick = np.argmax(win.real, axis=-1)  # first of equals; ties sit at ReLU zeros, gradient 0 there
    mask = np.eye(4, dtype=bool)[pick]
    return np.sum(win * mask, axis=-1), mask


def _pool_back(g: np.ndarray, mask: np.ndarray, side: int) -> np.ndarray:
    """The adjoint of :func:`_pool`: routes g [D, P, C, S/2, S/2] to the chosen entries."""
    half = g.shape[-1]
    win = (g[..., None] * mask).reshape(*g.shape, 2, 2).transpose(0, 1, 2, 3, 5, 4, 6)
    out = np.zeros((*g.shape[:3], side, side), dtype=g.dtype)
    out[..., : 2 * half, : 2 * half] = win.reshape(*g.shape[:3], 2 * half, 2 * half)
    return out


def _block(h: np.ndarray, params: Params, i: int, model: Any) -> tuple[np.ndarray, dict[str, Any]]:
    """One block's forward pass; returns its output and what its backward pass needs."""
    stride = 2 if model.pool == "stride" else 1
    cols = _patches(h, stride)
    z = np.einsum("docij,dpcijxy->dpoxy", params[f"w{i}"], cols) + params[f"b{i}"][:, None, :, None, None]
    mu = z.mean(axis=(1, 3, 4), keepdims=True)
    var = ((z - mu) ** 2).mean(axis=(1, 3, 4), keepdims=True)  # biased; (z−μ)², not |z−μ|²: analytic
    inv = 1.0 / np.sqrt(var + model.bn_eps)
    zhat = (z - mu) * inv
    bn = zhat * params[f"gamma{i}"][:, None, :, None, None] + params[f"beta{i}"][:, None, :, None, None]
    on = bn.real > 0
    a = bn * on
    saved = {"side": h.shape[-1], "cols": cols, "zhat": zhat, "inv": inv, "on": on, "stride": stride}
    if model.pool == "max":
        a, saved["mask"] = _pool(a)
        saved["pre_pool"] = on.shape[-1]
    return a, saved


def _block_back(g: np.ndarray, params: Params, i: int, saved: dict[str, Any], grads: Params, need_input: bool) -> Any:
    """One block's backward pass: fills ``grads`` for block i and returns the input's gradient."""
    if "mask" in saved:
        g = _pool_back(g, saved["mask"], saved["pre_pool"])
    g = g * saved["on"]
    zhat, inv = saved["zhat"], saved["inv"]
    grads[f"gamma{i}"] = np.sum(g * zhat, axis=(1, 3, 4))
    grads[f"beta{i}"] = np.sum(g, axis=(1, 3, 4))
    gh = g * params[f"gamma{i}"][:, None, :, None, None]
    # batch norm through μ and var: dz = inv·(gh − mean(gh) − ẑ·mean(gh·ẑ)), means over (P, rows, cols)
    gz = inv * (gh - gh.mean(axis=(1, 3, 4), keepdims=True) - zhat * (gh * zhat).mean(axis=(1, 3, 4), keepdims=True))
    grads[f"w{i}"] = np.einsum("dpoxy,dpcijxy->docij", gz, saved["cols"])
    grads[f"b{i}"] = np.sum(gz, axis=(1, 3, 4))
    if not need_input:
        return None
    gcols = np.einsum("docij,dpoxy->dpcijxy", params[f"w{i}"], gz)
    return _patches_back(gcols, saved["side"], saved["stride"])


def forward(params: Params, x: np.ndarray, model: Any, saved: list | None = None) -> np.ndarray:
    """params {name: [D, *shape]}, images x [P, C, H, W] (or [D, P, C, H, W]) → logits [D, P, N].

    ``saved``: a list that receives each block's intermediates and the features (for backprop).
    """
    D = params["w_head"].shape[0]
    h = np.broadcast_to(x, (D, *x.shape[-4:])) if x.ndim == 4 else x
    for i in range(model.depth):
        h, keep = _block(h, params, i, model)
        if saved is not None:
            saved.append(keep)
    feats = h.reshape(D, h.shape[1], -1)  # (channel, row, column) order
    if saved is not None:
        saved.append({"feats": feats, "shape": h.shape})
    return np.einsum("dpf,dnf->dpn", feats, params["w_head"]) + params["b_head"][:, None, :]


def layers(params: Params, x: np.ndarray, model: Any) -> dict[str, np.ndarray]:
    """Each block's output (after its ReLU and pool), ``block<i>`` [D, P, C, H', W']: what the trace
    records as ``trace/activation/block<i>`` (``Conv.layer_shapes``)."""
    D = params["w_head"].shape[0]
    h = np.broadcast_to(x, (D, *x.shape[-4:])) if x.ndim == 4 else x
    out = {}
    for i in range(model.depth):
        h, _ = _block(h, params, i, model)
        out[f"block{i}"] = h
    return out


def cross_entropy(logits: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean over the P points of −Σ_n y·log_softmax(logits): (value [D], d value / d logits [D, P, N])."""
    shift = logits - logits.real.max(axis=-1, keepdims=True)  # real max: a constant, complex-step safe
    e = np.exp(shift)
    total = e.sum(axis=-1, keepdims=True)
    log_softmax = shift - np.log(total)
    P = logits.shape[1]
    value = -np.sum(y * log_softmax, axis=(1, 2)) / P
    grad = (e / total * y.sum(axis=-1, keepdims=True) - y) / P
    return value, grad


def accuracy(logits: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Mean of argmax(logits) == argmax(y) over the points, per copy: [D] (real parts)."""
    return np.mean(np.argmax(logits.real, axis=-1) == np.argmax(y, axis=-1), axis=-1)


def loss_and_grads(
    params: Params, x: np.ndarray, y: np.ndarray, model: Any, loss: Callable[..., Any] = cross_entropy
) -> tuple[np.ndarray, Params]:
    """The loss [D] of one task and its gradient {name: [D, *shape]} by hand-written backprop.

    ``loss(logits, y) -> (value [D], d value / d logits)``: :func:`cross_entropy` by default.
    """
    saved: list[dict[str, Any]] = []
    logits = forward(params, x, model, saved)
    value, g = loss(logits, y)
    head = saved.pop()
    grads: Params = {
        "w_head": np.einsum("dpn,dpf->dnf", g, head["feats"]),
        "b_head": g.sum(axis=1),
    }
    gh = np.einsum("dpn,dnf->dpf", g, params["w_head"]).reshape(head["shape"])
    for i in reversed(range(model.depth)):
        gh = _block_back(gh, params, i, saved[i], grads, need_input=i > 0)
    return value, {k: grads[k] for k in params}


# --- the oracle's model table (parity.oracle.MODEL_GRADS["conv"]) ----------------------------------


def conv_forward(oracle: Any, params: Params, x: np.ndarray, cfg: Any) -> np.ndarray:
    """``MODEL_GRADS`` entry: the conv model (``cfg.model``) on images x → logits [D, P, N]."""
    return forward(params, x, cfg.model)


def conv_loss_and_grads(
    oracle: Any, params: Params, x: np.ndarray, y: np.ndarray, cfg: Any
) -> tuple[np.ndarray, Params]:
    """``MODEL_GRADS`` entry: the loss through ``oracle.loss_and_grad_out`` (so that a subclass that
    plants a bug there reaches the conv model too) and its hand-written gradient."""
    return loss_and_grads(params, x, y, cfg.model, lambda out, target: oracle.loss_and_grad_out(out, target, cfg.loss))


# --- the outer gradient: full or along directions ------------------------------------------------

H = 1e-30  # the complex step, as parity.oracle's
# Parameter entries up to which the oracle's full complex-step outer gradient (one perturbed copy per
# entry) is the reference; above it, the meta-gradient is checked along a few random directions.
FULL_LIMIT = 20_000


def outer_mode(shapes: dict[str, tuple[int, ...]]) -> str:
    """``full`` (every entry of the meta-gradient by complex step: the check matrix's tiny conv cases,
    a few hundred entries) or ``directional`` (above :data:`FULL_LIMIT` entries, e.g. the MAML paper's
    4×64 Omniglot net with ~110,000: the meta-gradient along K random directions, K copies)."""
    return "full" if sum(int(np.prod(s)) for s in shapes.values()) <= FULL_LIMIT else "directional"


def random_directions(shapes: dict[str, tuple[int, ...]], k: int, seed: int = 0) -> Params:
    """K random directions over every parameter, each of unit norm overall: {name: [K, *shape]}."""
    rng = np.random.default_rng(seed)
    raw = {name: rng.standard_normal((k, *shape)) for name, shape in shapes.items()}
    norm = np.sqrt(sum(np.sum(v.reshape(k, -1) ** 2, axis=1) for v in raw.values()))
    return {name: v / norm.reshape((k,) + (1,) * (v.ndim - 1)) for name, v in raw.items()}


def directional_meta_grad(
    oracle: Any, params: Params, alpha: Any, tasks: tuple, cfg: Any, directions: Params
) -> np.ndarray:
    """The meta-gradient along each direction [K]: ``Im L(θ + i·h·v_k) / h`` for the K directions
    at once (one evaluation of ``oracle.meta_loss`` with K copies; α held fixed)."""
    k = next(iter(directions.values())).shape[0]
    moved = {n: np.asarray(v, dtype=np.float64)[None] + 1j * H * directions[n] for n, v in params.items()}
    if isinstance(alpha, dict):
        a: Any = {
            n: np.broadcast_to(np.asarray(v, dtype=np.float64), (k, *np.shape(v))).astype(complex)
            for n, v in alpha.items()
        }
    else:
        a = np.broadcast_to(np.asarray(alpha, dtype=np.float64), (k,)).astype(complex)
    tasks = tuple(np.asarray(t, dtype=np.float64) for t in tasks)
    return oracle.meta_loss(moved, a, tasks, cfg)[0].imag / H


def project(grads: dict[str, Any], directions: Params) -> np.ndarray:
    """A full gradient (a twin's, say) along each direction: Σ_name ⟨grad, v_k⟩ → [K]."""
    k = next(iter(directions.values())).shape[0]
    return sum(
        (
            np.asarray(directions[n]).reshape(k, -1) @ np.asarray(g, dtype=np.float64).reshape(-1)
            for n, g in grads.items()
        ),
        np.zeros(k),
    )

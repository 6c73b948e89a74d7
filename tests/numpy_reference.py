"""An independent third implementation, for checking golden files: NumPy only.

The inner gradient is written out by hand (backpropagation through the MLP), and the outer
gradient comes from complex-step differentiation, ``f'(x)·v = Im f(x + i·h·v) / h`` with
``h = 1e-30``: no subtraction, so it is exact to rounding, one direction per basis vector.
Every non-analytic piece is written so that it stays complex-step-safe: ``|z|`` is
``z·sign(Re z)`` and ``relu(z)`` is ``z·[Re z > 0]``.

It reads nothing but a golden file's arrays and config, and shares no code with the twins.
"""

from __future__ import annotations

from typing import Any

import numpy as np

H = 1e-30  # complex step


def _act(z: np.ndarray, kind: str) -> np.ndarray:
    return np.tanh(z) if kind == "tanh" else z * (z.real > 0)


def _act_grad(z: np.ndarray, kind: str) -> np.ndarray:
    return 1.0 - np.tanh(z) ** 2 if kind == "tanh" else (z.real > 0).astype(float)


def _forward(W: list[np.ndarray], b: list[np.ndarray], x: np.ndarray, act: str) -> tuple[np.ndarray, list, list]:
    """W[i] [D, out, in], b[i] [D, out], x [K, 1] → (out [D, K, 1], layer inputs, pre-activations)."""
    h = np.broadcast_to(x, (W[0].shape[0], *x.shape)).astype(complex)
    inputs, pre = [], []
    for i in range(len(W)):
        inputs.append(h)
        z = np.einsum("dki,doi->dko", h, W[i]) + b[i][:, None, :]
        pre.append(z)
        h = _act(z, act) if i < len(W) - 1 else z
    return h, inputs, pre


def _loss_and_grad_out(out: np.ndarray, y: np.ndarray, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """Mean loss over K points [D] and its gradient with respect to ``out`` [D, K, 1]."""
    r = out - y
    K = r.shape[1]
    if kind == "l1":
        s = np.sign(r.real)
        return np.sum(r * s, axis=(1, 2)) / K, s / K
    return np.sum(r * r, axis=(1, 2)) / K, 2.0 * r / K


def _grads(W: list, b: list, x: np.ndarray, y: np.ndarray, act: str, loss: str) -> tuple[np.ndarray, list, list]:
    out, inputs, pre = _forward(W, b, x, act)
    value, g = _loss_and_grad_out(out, y, loss)
    gW, gb = [None] * len(W), [None] * len(W)
    for i in reversed(range(len(W))):
        gW[i] = np.einsum("dko,dki->doi", g, inputs[i])
        gb[i] = g.sum(axis=1)
        if i > 0:
            g = np.einsum("dko,doi->dki", g, W[i]) * _act_grad(pre[i - 1], act)
    return value, gW, gb


def meta_loss(params: dict[str, np.ndarray], alpha: Any, tasks: tuple, cfg: Any) -> tuple[np.ndarray, np.ndarray]:
    """Mean outer loss [D] and mean support losses [D, T]; every leaf has a leading D axis."""
    n = len(params) // 2
    x_s, y_s, x_q, y_q = tasks
    outer, inner = [], []
    for task in range(x_s.shape[0]):
        W = [params[f"w{i}"] for i in range(n)]
        b = [params[f"b{i}"] for i in range(n)]
        losses = []
        for _ in range(cfg.inner_steps):
            value, gW, gb = _grads(W, b, x_s[task], y_s[task], cfg.activation, cfg.loss)
            if cfg.first_order:  # FOMAML: the inner gradient is a constant, from the real parts alone
                _, gW, gb = _grads(
                    [w.real for w in W], [c.real for c in b], x_s[task], y_s[task], cfg.activation, cfg.loss
                )
            losses.append(value)
            if isinstance(alpha, dict):
                W = [W[i] - alpha[f"w{i}"] * gW[i] for i in range(n)]
                b = [b[i] - alpha[f"b{i}"] * gb[i] for i in range(n)]
            else:
                a = alpha.reshape(-1, 1, 1)
                W = [W[i] - a * gW[i] for i in range(n)]
                b = [b[i] - a[:, :, 0] * gb[i] for i in range(n)]
        out, _, _ = _forward(W, b, x_q[task], cfg.activation)
        outer.append(_loss_and_grad_out(out, y_q[task], cfg.loss)[0])
        inner.append(np.stack(losses, axis=-1) if losses else np.zeros((W[0].shape[0], 0)))
    return np.mean(outer, axis=0), np.mean(inner, axis=0)


def value_and_grad(golden: dict[str, Any]) -> dict[str, np.ndarray]:
    """Recompute ``outer_loss``, ``inner_losses`` and every ``grad/...`` entry of a golden file."""
    cfg = golden["config"]
    names = [k.split("/", 1)[1] for k in golden if k.startswith("init/") and not k.startswith("init/alpha")]
    params = {k: np.asarray(golden[f"init/{k}"], dtype=np.float64) for k in names}
    per_parameter = "init/alpha" not in golden
    alpha: Any
    if per_parameter:
        alpha = {k: np.asarray(golden[f"init/alpha/{k}"], dtype=np.float64) for k in names}
    else:
        alpha = np.asarray(golden["init/alpha"], dtype=np.float64)
    tasks = tuple(
        np.asarray(golden[f"tasks/{k}"], dtype=np.float64) for k in ("x_support", "y_support", "x_query", "y_query")
    )

    results: dict[str, np.ndarray] = {}
    p1 = {n: v[None].astype(complex) for n, v in params.items()}
    a1 = {n: v[None].astype(complex) for n, v in alpha.items()} if per_parameter else alpha.reshape(1).astype(complex)
    outer, inner = meta_loss(p1, a1, tasks, cfg)
    results["outer_loss"] = outer[0].real
    results["inner_losses"] = inner[0].real

    def basis_for(shape: tuple[int, ...]) -> np.ndarray:
        size = int(np.prod(shape))
        return np.eye(size).reshape((size, *shape))

    for k in names:
        basis = basis_for(params[k].shape)
        p = {
            n: (np.broadcast_to(v, (basis.shape[0], *v.shape)) + (1j * H * basis if n == k else 0)).astype(complex)
            for n, v in params.items()
        }
        a = (
            {n: np.broadcast_to(v, (basis.shape[0], *v.shape)).astype(complex) for n, v in alpha.items()}
            if per_parameter
            else np.broadcast_to(alpha, (basis.shape[0],)).astype(complex)
        )
        results[f"grad/{k}"] = (meta_loss(p, a, tasks, cfg)[0].imag / H).reshape(params[k].shape)
    if per_parameter:
        for k in names:
            basis = basis_for(alpha[k].shape)
            D = basis.shape[0]
            p = {n: np.broadcast_to(v, (D, *v.shape)).astype(complex) for n, v in params.items()}
            a = {
                n: (np.broadcast_to(v, (D, *v.shape)) + (1j * H * basis if n == k else 0)).astype(complex)
                for n, v in alpha.items()
            }
            results[f"grad/alpha/{k}"] = (meta_loss(p, a, tasks, cfg)[0].imag / H).reshape(alpha[k].shape)
    else:
        results["grad/alpha"] = np.asarray(meta_loss(p1, a1 + 1j * H, tasks, cfg)[0].imag[0] / H)
    return results

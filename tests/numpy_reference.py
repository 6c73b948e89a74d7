"""An independent third implementation, for checking golden files: NumPy only.

The inner gradient is written out by hand (backpropagation through the MLP), and the outer
gradient comes from complex-step differentiation, ``f'(x)·v = Im f(x + i·h·v) / h`` with
``h = 1e-30``: no subtraction, so it is exact to rounding, one direction per basis vector.
Every non-analytic piece is written so that it stays complex-step-safe: ``|z|`` is
``z·sign(Re z)`` and ``relu(z)`` is ``z·[Re z > 0]``.

First order (``cfg.first_order``): each inner gradient is computed from the real parts of the
parameters only, so the complex perturbation does not reach it: the inner gradient is a constant
of the outer derivative (FOMAML), while α and the update ``w − α·g`` still carry it.
Softplus (``alpha_parametrisation``): :func:`softplus_variable_grad` differentiates through
``α = log(1 + e^ρ)`` by the same complex step, giving dL/dρ.

It reads nothing but NumPy arrays and a config (or a golden file), and shares no code with the twins.
``meta_value_and_grad`` has the contract's NumPy-in/NumPy-out shape.
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
            if cfg.first_order:  # the inner gradient at the real parts: constant under the complex step
                value, gW, gb = _grads(
                    [w.real for w in W], [v.real for v in b], x_s[task], y_s[task], cfg.activation, cfg.loss
                )
            else:
                value, gW, gb = _grads(W, b, x_s[task], y_s[task], cfg.activation, cfg.loss)
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
    params = {k: golden[f"init/{k}"] for k in names}
    alpha: Any = {k: golden[f"init/alpha/{k}"] for k in names} if "init/alpha" not in golden else golden["init/alpha"]
    tasks = tuple(golden[f"tasks/{k}"] for k in ("x_support", "y_support", "x_query", "y_query"))
    return flat(meta_value_and_grad(params, alpha, tasks, cfg))


def flat(result: dict[str, Any]) -> dict[str, np.ndarray]:
    """The contract's result under a golden file's names: outer_loss, inner_losses, grad/<name>,
    grad/alpha (or grad/alpha/<name>)."""
    out = {"outer_loss": result["outer_loss"], "inner_losses": result["inner_losses"]}
    out.update({f"grad/{k}": v for k, v in result["grads"].items()})
    if isinstance(result["alpha_grad"], dict):
        out.update({f"grad/alpha/{k}": v for k, v in result["alpha_grad"].items()})
    else:
        out["grad/alpha"] = result["alpha_grad"]
    return out


def _basis(shape: tuple[int, ...]) -> np.ndarray:
    size = int(np.prod(shape))
    return np.eye(size).reshape((size, *shape))


def _complex_step(f: Any, point: dict[str, np.ndarray], others: Any, which: str) -> dict[str, np.ndarray]:
    """d f / d point[name] for every name, one complex step per entry; ``others`` ride along
    broadcast (a dict of arrays, or a 0-d array). ``which``: "first" or "second" argument of f."""
    grads = {}
    for k, v in point.items():
        basis = _basis(v.shape)
        D = basis.shape[0]
        moved = {
            n: (np.broadcast_to(u, (D, *u.shape)) + (1j * H * basis if n == k else 0)).astype(complex)
            for n, u in point.items()
        }
        still = (
            {n: np.broadcast_to(u, (D, *u.shape)).astype(complex) for n, u in others.items()}
            if isinstance(others, dict)
            else np.broadcast_to(others, (D,)).astype(complex)
        )
        args = (moved, still) if which == "first" else (still, moved)
        grads[k] = (f(*args).imag / H).reshape(v.shape)
    return grads


def meta_value_and_grad(params: dict[str, np.ndarray], alpha: Any, tasks: tuple, cfg: Any) -> dict[str, Any]:
    """The contract's meta-gradient in NumPy (float64): ``{"outer_loss": 0-d, "inner_losses": [T],
    "grads": {name: arr}, "alpha_grad": 0-d or {name: arr}}`` at ``params``, α ``alpha`` (0-d, or one
    array per parameter), ``tasks`` = (x_support, y_support, x_query, y_query)."""
    params = {k: np.asarray(v, dtype=np.float64) for k, v in params.items()}
    per_parameter = isinstance(alpha, dict)
    alpha = (
        {k: np.asarray(v, dtype=np.float64) for k, v in alpha.items()}
        if per_parameter
        else np.asarray(alpha, dtype=np.float64)
    )
    tasks = tuple(np.asarray(t, dtype=np.float64) for t in tasks)

    def f(p: dict[str, np.ndarray], a: Any) -> np.ndarray:
        return meta_loss(p, a, tasks, cfg)[0]

    p1 = {n: v[None].astype(complex) for n, v in params.items()}
    a1 = {n: v[None].astype(complex) for n, v in alpha.items()} if per_parameter else alpha.reshape(1).astype(complex)
    outer, inner = meta_loss(p1, a1, tasks, cfg)
    result: dict[str, Any] = {"outer_loss": np.asarray(outer[0].real), "inner_losses": inner[0].real}
    result["grads"] = _complex_step(f, params, alpha, "first")
    if per_parameter:
        result["alpha_grad"] = _complex_step(f, alpha, params, "second")
    else:
        result["alpha_grad"] = np.asarray(f(p1, a1 + 1j * H).imag[0] / H)
    return result


def softplus(rho: Any) -> Any:
    """log(1 + e^ρ), complex-step-safe (analytic); ρ of moderate size."""
    return np.log1p(np.exp(rho))


def softplus_variable_grad(params: dict[str, np.ndarray], rho: Any, tasks: tuple, cfg: Any) -> Any:
    """dL/dρ where α = softplus(ρ) (``alpha_parametrisation`` softplus): 0-d, or one array per
    parameter; the complex step goes through the softplus."""
    params = {k: np.asarray(v, dtype=np.float64) for k, v in params.items()}
    tasks = tuple(np.asarray(t, dtype=np.float64) for t in tasks)
    if isinstance(rho, dict):
        rho = {k: np.asarray(v, dtype=np.float64) for k, v in rho.items()}
        return _complex_step(
            lambda p, r: meta_loss(p, {n: softplus(v) for n, v in r.items()}, tasks, cfg)[0], rho, params, "second"
        )
    p1 = {n: v[None].astype(complex) for n, v in params.items()}
    r1 = np.asarray(rho, dtype=np.float64).reshape(1) + 1j * H
    return np.asarray(meta_loss(p1, softplus(r1), tasks, cfg)[0].imag[0] / H)

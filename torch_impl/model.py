"""The MLP as a function of explicit parameters, its losses, and NumPy conversion (PyTorch)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from parity.config import Config, lookup
from parity.validate import ArrayTypeError, Spec, check_call

Params = dict[str, torch.Tensor]

# Option choices as tables (an unknown name is refused by parity.config.lookup, never an `else`).
ACTIVATIONS = {"tanh": torch.tanh, "relu": torch.relu}
POINT_LOSSES = {"l1": torch.abs, "mse": torch.square}


def forward(params: Params, x: torch.Tensor, activation: str) -> torch.Tensor:
    """MLP 1 → hidden… → 1 on points ``x`` [..., P, 1] → [..., P, 1], after checking ``x``'s shape
    and dtype (:func:`mlp` is the same without the checks, for the inner loop).
    """
    check_inputs("forward", None, params=params, x=x)
    return mlp(params, x, activation)


def mlp(params: Params, x: torch.Tensor, activation: str) -> torch.Tensor:
    """MLP 1 → hidden… → 1 on points ``x`` [..., P, 1] → [..., P, 1].

    Weights are (out, in); parameters may carry the same leading task axes as ``x``.
    """
    n_layers = len(params) // 2
    act = lookup(ACTIVATIONS, "activation", activation)
    h = x  # [..., P, 1]
    for i in range(n_layers):
        w, b = params[f"w{i}"], params[f"b{i}"]  # [..., out, in], [..., out]
        h = h @ torch.swapaxes(w, -1, -2) + b[..., None, :]  # [..., P, out]
        if i < n_layers - 1:
            h = act(h)
    return h


def point_loss(pred: torch.Tensor, y: torch.Tensor, kind: str) -> torch.Tensor:
    """Mean over the points of one task: [..., P, 1] → [...]."""
    err = pred - y
    per_point = lookup(POINT_LOSSES, "loss", kind)(err)
    return torch.mean(per_point, dim=(-2, -1))


def check_dtype(dtype: str) -> None:
    """PyTorch makes float64 tensors whenever asked; nothing to switch on."""


def to_arrays(tree: Any, dtype: str, device: str | torch.device = "cpu") -> Any:
    """NumPy leaves → tensors of ``dtype`` (the one conversion on the way in)."""
    check_dtype(dtype)
    if isinstance(tree, dict):
        return {k: to_arrays(v, dtype, device) for k, v in tree.items()}
    if isinstance(tree, (tuple, list)):
        items = [to_arrays(v, dtype, device) for v in tree]
        return type(tree)(*items) if hasattr(tree, "_fields") else type(tree)(items)
    return torch.as_tensor(np.asarray(tree), dtype=getattr(torch, dtype), device=device).clone()


def to_numpy(tree: Any) -> Any:
    """Tensors → NumPy arrays (the one conversion on the way out)."""
    if isinstance(tree, dict):
        return {k: to_numpy(v) for k, v in tree.items()}
    if isinstance(tree, (tuple, list)):
        items = [to_numpy(v) for v in tree]
        return type(tree)(*items) if hasattr(tree, "_fields") else type(tree)(items)
    return tree.detach().cpu().numpy()


def check_inputs(function: str, cfg: Config | None, batched_params: bool = False, **arrays: Any) -> None:
    """Shape and dtype checks of a public function's arguments (``parity.validate.check_call``).

    Reads shapes and dtypes only; raises ``ArrayShapeError`` / ``ArrayTypeError`` naming the argument.
    """
    specs = {name: describe(function, name, value) for name, value in arrays.items()}
    check_call(function, cfg, batched_params=batched_params, **specs)


def describe(function: str, argument: str, value: Any) -> Any:
    """The :class:`parity.validate.Spec` tree of ``value`` (an array, or a dict / tuple of them)."""
    if isinstance(value, torch.Tensor):
        return Spec(tuple(value.shape), str(value.dtype).removeprefix("torch."))
    if isinstance(value, dict):
        items = list(value.items())
    elif isinstance(value, (tuple, list)):
        items = list(enumerate(value))
    else:
        raise ArrayTypeError(f"{function}: {argument} must be a torch.Tensor; got {type(value).__name__}")
    # Arrays directly; only what is not one pays for its argument's name (the checks are per call).
    specs = [
        Spec(tuple(v.shape), str(v.dtype).removeprefix("torch."))
        if isinstance(v, torch.Tensor)
        else describe(function, f"{argument}[{k!r}]", v)
        for k, v in items
    ]
    return dict(zip(value, specs, strict=True)) if isinstance(value, dict) else specs

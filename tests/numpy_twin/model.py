"""The MLP in NumPy for the oracle twin (mirrors jax_impl/model.py's roles): forward pass, dtype and
device checks, and the NumPy boundary, which here is a float64 copy.

The arithmetic is the oracle's (``parity.oracle.NumpyOracle``): its activation, losses and
hand-written backpropagation; only the forward pass is taught to take one input set per copy
(``x`` [D, P, 1]), so that every task of a meta-batch adapts on its own points.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import numpy as np

from parity.config import ConfigError
from parity.devices import check_precision, not_visible, parse_device
from parity.oracle import NumpyOracle

Params = dict[str, np.ndarray]
DTYPE = "float64"  # complex-step differentiation needs complex128: float32 is refused, never downcast


class BatchedOracle(NumpyOracle):
    """The oracle, with inputs ``x`` either shared by every copy ([P, 1]) or one per copy ([D, P, 1])."""

    def forward(
        self, W: list[np.ndarray], b: list[np.ndarray], x: np.ndarray, act: str
    ) -> tuple[np.ndarray, list, list]:
        h = np.broadcast_to(x, (W[0].shape[0], *x.shape[-2:])).astype(complex)
        inputs, pre = [], []
        for i in range(len(W)):
            inputs.append(h)
            z = np.einsum("dpi,doi->dpo", h, W[i]) + b[i][:, None, :]
            pre.append(z)
            h = self.act(z, act) if i < len(W) - 1 else z
        return h, inputs, pre


ORACLE = BatchedOracle()


def layers(params: Params) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """``{w0, b0, …}`` with a leading copy axis -> the oracle's lists of weights and biases."""
    n = len(params) // 2
    return [params[f"w{i}"] for i in range(n)], [params[f"b{i}"] for i in range(n)]


def forward(params: Params, x: np.ndarray, activation: str) -> np.ndarray:
    """MLP on points ``x`` [N, P, 1] with per-task parameters (leading [N]) -> [N, P, 1], real."""
    W, b = layers(params)
    return ORACLE.forward(W, b, x, activation)[0].real


def check_dtype(dtype: str) -> None:
    if dtype != DTYPE:
        raise ConfigError(
            "dtype",
            f"the oracle twin computes in float64 only (complex-step gradients); allowed here: float64, got {dtype!r}",
        )


def resolve_device(device: str | None) -> str | None:
    """NumPy computes on the host CPU only: ``cpu`` or None; any other device is refused in one line."""
    if device is None:
        return None
    if parse_device(device).kind != "cpu":
        raise not_visible(device, "NumPy", "it computes on the host CPU only")
    return "cpu"


def device_description(device: str | None) -> str:
    resolve_device(device)
    return "cpu (NumPy)"


@contextlib.contextmanager
def precision_scope(precision: str) -> Iterator[None]:
    """NumPy has no reduced-precision matmul mode: every precision is full float64."""
    check_precision(precision)
    yield


def to_arrays(tree: Any, dtype: str, device: str | None = None) -> Any:
    """NumPy leaves -> float64 copies (a copy: the training state is updated in place nowhere, but a
    caller's arrays must never be aliased by a state)."""
    check_dtype(dtype)
    resolve_device(device)
    return _map(lambda leaf: np.array(leaf, dtype=DTYPE), tree)


def to_numpy(tree: Any) -> Any:
    return _map(lambda leaf: np.array(leaf), tree)


def _map(fn: Any, tree: Any) -> Any:
    if isinstance(tree, dict):
        return {k: _map(fn, v) for k, v in tree.items()}
    if isinstance(tree, tuple) and hasattr(tree, "_fields"):  # a NamedTuple
        return type(tree)(*(_map(fn, v) for v in tree))
    if isinstance(tree, (tuple, list)):
        return type(tree)(_map(fn, v) for v in tree)
    return fn(tree)

"""The MLP in NumPy for the oracle twin (mirrors jax_impl/model.py's roles): forward pass, dtype and
device checks, and the NumPy boundary, which here is a float64 copy.

The arithmetic is the oracle's (``parity.oracle.NumpyOracle``): its activation, losses and
hand-written backpropagation, on parameter dicts with a leading copy axis.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import numpy as np

from parity.config import Config, ConfigError
from parity.devices import check_precision, not_visible, parse_device
from parity.oracle import NumpyOracle

Params = dict[str, np.ndarray]
DTYPE = "float64"  # complex-step differentiation needs complex128: float32 is refused, never downcast


# The oracle's forward pass takes inputs shared by every copy ([P, 1]) or one set per copy
# ([D, P, 1]), so every task of a meta-batch adapts on its own points.
ORACLE = NumpyOracle()


def forward(params: Params, x: np.ndarray, cfg: Config) -> np.ndarray:
    """The model on points ``x`` [N, P, 1] with per-task parameters (leading [N]) -> [N, P, 1], real."""
    return ORACLE.forward(params, x, cfg).real


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

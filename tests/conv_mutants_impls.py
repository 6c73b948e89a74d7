"""User implementations of the conv-classification objective with one port bug each (issue 18 §7),
loadable as ``tests/conv_mutants_impls.py:NAME``; ``tests/test_conv_mutants.py`` asserts that
``check`` catches them and names where they first part from the reference. ``CONTROL`` is the
PyTorch twin itself, loaded the same way.

Each port is the PyTorch twin with one function of ``torch_impl.model`` swapped for the ported
version while it computes (``meta_value_and_grad`` and ``trace``): the bug is in the computation,
as in a user's port, not in the results handed back."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from torch_impl import model
from torch_impl.adapter import TorchTwin


class Control(TorchTwin):
    def __init__(self, device: str | None = None, precision: str = "highest"):
        super().__init__(device, precision)
        self.name = "control"


class LabelsRepermuted(Control):
    """The query set's labels permuted again after the support set's were drawn (a port that shuffles
    ``y`` per split): class n of the support set is class n+1 (mod N) of the query set."""

    def __init__(self, device: str | None = None, precision: str = "highest"):
        super().__init__(device, precision)
        self.name = "labels-repermuted"

    def meta_value_and_grad(self, params: Any, alpha: Any, tasks: tuple[np.ndarray, ...], cfg: Any) -> Any:
        return super().meta_value_and_grad(params, alpha, _roll_query(tasks), cfg)

    def trace(self, params: Any, alpha: Any, tasks: tuple[np.ndarray, ...], cfg: Any) -> Any:
        return super().trace(params, alpha, _roll_query(tasks), cfg)


def _roll_query(tasks: tuple[np.ndarray, ...]) -> tuple[np.ndarray, ...]:
    x_support, y_support, x_query, y_query = tasks
    return (x_support, y_support, x_query, np.roll(y_query, 1, axis=-1))


class _Port(Control):
    """The twin with ``patches`` (attribute of ``torch_impl.model`` → replacement) in force while it
    computes; ``adapt``, when set, replaces the config's ``adapt`` (what the inner loop updates)."""

    port_name = "port"
    adapt: str | None = None

    def __init__(self, device: str | None = None, precision: str = "highest"):
        super().__init__(device, precision)
        self.name = self.port_name

    def patches(self) -> dict[str, Any]:
        return {}

    @contextlib.contextmanager
    def ported(self) -> Iterator[None]:
        saved = {name: getattr(model, name) for name in self.patches()}
        tables = {name: dict(getattr(model, name)) for name in ("MODELS", "LAYERS", "POINT_LOSSES")}
        try:
            for name, value in self.patches().items():
                setattr(model, name, value)
            model.MODELS["conv"], model.LAYERS["conv"] = model.conv, model.conv_layers
            if "cross_entropy" in self.patches():
                model.POINT_LOSSES["cross_entropy"] = model.cross_entropy
            yield
        finally:
            for name, value in saved.items():
                setattr(model, name, value)
            for name, table in tables.items():
                getattr(model, name).clear()
                getattr(model, name).update(table)

    def _cfg(self, cfg: Any) -> Any:
        return cfg if self.adapt is None else cfg.replace(adapt=self.adapt)

    def meta_value_and_grad(self, params: Any, alpha: Any, tasks: tuple[np.ndarray, ...], cfg: Any) -> Any:
        with self.ported():
            return super().meta_value_and_grad(params, alpha, tasks, self._cfg(cfg))

    def trace(self, params: Any, alpha: Any, tasks: tuple[np.ndarray, ...], cfg: Any) -> Any:
        with self.ported():
            return super().trace(params, alpha, tasks, self._cfg(cfg))


_conv = model.conv
_batch_norm = model.batch_norm
_cross_entropy = model.cross_entropy


class HwioReadAsOihw(_Port):
    """Each conv weight's buffer read as HWIO (a TensorFlow checkpoint reshaped, not transposed)."""

    port_name = "hwio-read-as-oihw"

    def patches(self) -> dict[str, Any]:
        def conv(params: Any, x: torch.Tensor, part: Any, record: Any = None) -> torch.Tensor:
            def as_hwio(w: torch.Tensor) -> torch.Tensor:  # [..., O, I, 3, 3] read as [..., 3, 3, I, O]
                lead, (o, i) = w.shape[:-4], w.shape[-4:-2]
                return torch.movedim(w.reshape(*lead, 3, 3, i, o), (-1, -2), (-4, -3))

            moved = {n: as_hwio(p) if n.startswith("w") and n != "w_head" else p for n, p in params.items()}
            return _conv(moved, x, part, record)

        return {"conv": conv}


class SamePaddingForExplicit(_Port):
    """TensorFlow's 'SAME' padding (0 before, 1 after for a stride-2 conv of an even side) for the
    explicit padding of 1 on every side."""

    port_name = "same-padding"

    def patches(self) -> dict[str, Any]:
        def conv2d(x: torch.Tensor, w: torch.Tensor, b: Any = None, stride: int = 1, padding: int = 0, groups: int = 1):
            if stride == 2:
                return F.conv2d(F.pad(x, (0, 1, 0, 1)), w, b, stride=2, padding=0, groups=groups)
            return F.conv2d(x, w, b, stride=stride, padding=padding, groups=groups)

        shim = SimpleNamespace(**{n: getattr(F, n) for n in dir(F) if not n.startswith("__")})
        shim.conv2d = conv2d
        return {"F": shim}


class BnEps1e5(_Port):
    """Batch norm with nn.BatchNorm2d's ε, 1e-5, whatever ``bn_eps`` says."""

    port_name = "bn-eps-1e-5"

    def patches(self) -> dict[str, Any]:
        return {"batch_norm": lambda h, gamma, beta, eps: _batch_norm(h, gamma, beta, 1e-5)}


class BnRunningStatistics(_Port):
    """Batch norm with running statistics (at their start: mean 0, variance 1), not the batch's."""

    port_name = "bn-running-stats"

    def patches(self) -> dict[str, Any]:
        def batch_norm(h: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor, eps: float) -> torch.Tensor:
            return h / (1.0 + eps) ** 0.5 * gamma[..., None, None] + beta[..., None, None]

        return {"batch_norm": batch_norm}


class CrossEntropySum(_Port):
    """Cross-entropy summed over a task's points (reduction='sum') instead of averaged."""

    port_name = "cross-entropy-sum"

    def patches(self) -> dict[str, Any]:
        return {"cross_entropy": lambda pred, y: _cross_entropy(pred, y) * pred.shape[-2]}


class HeadOnly(_Port):
    """The inner loop adapts the head only (ANIL) although all parameters were asked."""

    port_name = "head-only"
    adapt = "head"


CONTROL = Control
LABELS_REPERMUTED = LabelsRepermuted
HWIO_READ_AS_OIHW = HwioReadAsOihw
SAME_PADDING = SamePaddingForExplicit
BN_EPS_1E5 = BnEps1e5
BN_RUNNING_STATS = BnRunningStatistics
CROSS_ENTROPY_SUM = CrossEntropySum
HEAD_ONLY = HeadOnly

"""User implementations of the conv-classification objective with one port bug each (issue 18 §7),
loadable as ``tests/conv_mutants_impls.py:NAME``; ``tests/test_conv_mutants.py`` asserts that
``check`` catches them. ``CONTROL`` is the PyTorch twin itself, loaded the same way."""

from __future__ import annotations

from typing import Any

import numpy as np

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


CONTROL = Control
LABELS_REPERMUTED = LabelsRepermuted

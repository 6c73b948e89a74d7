"""The MLP: ``in → hidden… → out`` with an activation between layers (neutral part: shapes, init).

Parameters are ``{"w0", "b0", "w1", "b1", …}``, weights ``(out, in)`` as in ``torch.nn.Linear``.
The forward passes live in each framework's package (``jax_impl/model.py``, ``torch_impl/model.py``,
``parity/oracle.py``), chosen by this part's ``name``.

Initialisation: ``seed`` (the seed lab's): the first weight ``U(-1, 1)``, every later weight
``U(±1/√fan_in)``, biases zero. ``maml`` (Finn et al.'s reference code): every weight
``N(0, 0.01²)`` truncated at two standard deviations, biases zero.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any

from parity.parts import ConfigError, Part, check_choice, check_declared, check_int, field

ACTIVATIONS = ("tanh", "relu")
INIT_SCHEMES = ("seed", "maml")


@check_declared
@dataclasses.dataclass(frozen=True)
class MLP(Part):
    """A multi-layer perceptron on each point's inputs."""

    axis = "model"
    name: str = field("mlp", "meta_gradient")
    hidden: tuple[int, ...] = field((32, 32), "meta_gradient", "hidden layer widths")
    activation: str = field("tanh", "meta_gradient", "between layers, none after the last: tanh | relu")
    init_scheme: str = field("seed", "data", "seed (the seed lab's) | maml (N(0, 0.01²) truncated)")

    def check(self) -> None:
        hidden = self.hidden
        if not isinstance(hidden, tuple) or len(hidden) < 1:
            raise ConfigError("hidden", f"must be a non-empty list of layer widths, got {hidden!r}")
        for width in hidden:
            check_int("hidden", width, minimum=1)
        check_choice("activation", self.activation, ACTIVATIONS)
        check_choice("init_scheme", self.init_scheme, INIT_SCHEMES)

    def layer_sizes(self, input_shape: tuple[int, ...], n_outputs: int) -> tuple[int, ...]:
        """Widths from input to output, e.g. (1, 32, 32, 1)."""
        (n_in,) = input_shape
        return (n_in, *self.hidden, n_outputs)

    def param_shapes(self, input_shape: tuple[int, ...], n_outputs: int) -> dict[str, tuple[int, ...]]:
        """Every parameter's shape in the canonical order w0, b0, w1, b1, …; weights (out, in)."""
        shapes: dict[str, tuple[int, ...]] = {}
        for i, (n_in, n_out) in enumerate(itertools.pairwise(self.layer_sizes(input_shape, n_outputs))):
            shapes[f"w{i}"] = (n_out, n_in)
            shapes[f"b{i}"] = (n_out,)
        return shapes

    def activations_per_point(self, input_shape: tuple[int, ...]) -> int:
        """Numbers a forward pass keeps per input point for the backward pass (every layer's output)."""
        return sum(self.hidden) + 2

    def adapted(self, names: tuple[str, ...]) -> tuple[str, ...]:
        """The parameters the inner loop updates: all of them."""
        return names

    def init_params(self, shapes: dict[str, tuple[int, ...]], rng: Any, dtype: str) -> dict[str, Any]:
        """Fresh parameters of ``shapes`` from ``rng`` (a NumPy Generator)."""
        import numpy as np

        from parity.init import truncated_normal

        params: dict[str, Any] = {}
        for name, shape in shapes.items():
            if name.startswith("b"):
                params[name] = np.zeros(shape, dtype=dtype)
            elif self.init_scheme == "maml":
                params[name] = (0.01 * truncated_normal(rng, shape)).astype(dtype)
            else:
                bound = 1.0 if name == "w0" else 1.0 / np.sqrt(shape[1])  # shape is (out, in)
                params[name] = rng.uniform(-bound, bound, size=shape).astype(dtype)
        return params

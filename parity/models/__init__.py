"""The model axis: ``model`` names an entry of :data:`MODELS`, or a user's class.

A model is a :class:`parity.parts.Part` with ``param_shapes(input_shape, n_outputs)``,
``adapted(names)`` (the parameters the inner loop updates) and ``init_params(shapes, rng, dtype)``
(NumPy); its forward pass is an entry of the same name in each implementation's model table
(``jax_impl.model.MODELS``, ``torch_impl.model.MODELS``, ``parity.oracle``). Adding one:
docs/design.md, "How to add …".
"""

from __future__ import annotations

from parity.models.conv import Conv
from parity.models.mlp import MLP
from parity.parts import Part

MODELS: dict[str, type[Part]] = {
    "mlp": MLP,
    "conv": Conv,
}

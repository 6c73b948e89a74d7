"""The task-family axis: ``family`` names an entry of :data:`FAMILIES`, or a user's class.

A family is a :class:`parity.parts.Part` (its config fields, validated) with ``input_shape``,
``n_outputs``, ``check_config(cfg)`` and ``sample(rng, batch_size)`` (NumPy, float64). Adding one
is a module here and a line in :data:`FAMILIES` (docs/design.md, "How to add …").
"""

from __future__ import annotations

from parity.families.sinusoid import Sinusoid
from parity.parts import Part

FAMILIES: dict[str, type[Part]] = {
    "sinusoid": Sinusoid,
}

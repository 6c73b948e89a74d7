"""The task-family axis: ``family`` names an entry of :data:`FAMILIES`, or a user's class.

A family is a :class:`parity.parts.Part` (its config fields, validated) with ``input_shape``,
``n_outputs``, optionally ``check_config(cfg)``, and ``sample(rng, batch_size, stream)`` (NumPy, float64;
``stream``: ``parity.tasks``'s TRAIN_STREAM, EVAL_STREAM, …, which a family may map to its data splits). Adding one
is a module here and a line in :data:`FAMILIES` (docs/design.md, "How to add …").
"""

from __future__ import annotations

from parity.families.classification import Classification
from parity.families.sinusoid import Sinusoid
from parity.parts import Part

FAMILIES: dict[str, type[Part]] = {
    "sinusoid": Sinusoid,
    "classification": Classification,
}

"""N-way K-shot image classification (NumPy): episodes drawn from a data set's classes.

Task arrays (the contract's ``tasks``, in ``cfg.dtype``): ``x_support [B, N·K, C, H, W]``,
``y_support [B, N·K, N]`` (one-hot), ``x_query [B, N·Q, C, H, W]``, ``y_query [B, N·Q, N]``. Each episode
draws N classes without replacement from the split its stream reads (training: meta-train classes;
evaluation: meta-test classes; the splits never overlap), permutes the labels, and takes K support and
Q query images per class, all different.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

from parity.parts import Part, check_bool, check_choice, check_declared, check_int, field

DATASETS = ("digits", "omniglot", "synthetic")


class EpisodeBatch(NamedTuple):
    """A meta-batch of episodes; leading axes ``[B]`` (or ``[N, B]`` for a stack of steps)."""

    x_support: Any  # [B, N·K, C, H, W]
    y_support: Any  # [B, N·K, N] one-hot
    x_query: Any  # [B, N·Q, C, H, W]
    y_query: Any  # [B, N·Q, N] one-hot
    classes: Any  # [B, N] the data set's class ids behind labels 0 … N−1


@check_declared
@dataclasses.dataclass(frozen=True)
class Classification(Part):
    """N-way K-shot classification episodes of a data set (``dataset``)."""

    axis = "family"
    name: str = field("classification", "meta_gradient")
    dataset: str = field("digits", "data", "digits (scikit-learn's 8x8 digits) | omniglot (needs data_dir) | synthetic")
    data_dir: str = field("", "data", "the Omniglot folder (images_background/, images_evaluation/)")
    n_way: int = field(5, "meta_gradient", "N: classes per episode")
    k_support: int = field(1, "meta_gradient", "K: support images per class")
    k_query: int = field(5, "meta_gradient", "Q: query images per class")
    image_size: int = field(8, "meta_gradient", "side of the square images the model sees")
    rotations: bool = field(True, "data", "rotations by 90, 180, 270 degrees as new classes (MAML's Omniglot)")
    loss: str = field("cross_entropy", "meta_gradient", "softmax cross-entropy, mean over query images and tasks")

    def check(self) -> None:
        check_choice("dataset", self.dataset, DATASETS)
        if not isinstance(self.data_dir, str):
            raise_type("data_dir", self.data_dir)
        check_int("n_way", self.n_way, minimum=2)
        check_int("k_support", self.k_support, minimum=1)
        check_int("k_query", self.k_query, minimum=1)
        check_int("image_size", self.image_size, minimum=2)
        check_bool("rotations", self.rotations)
        check_choice("loss", self.loss, ("cross_entropy",))

    @property
    def input_shape(self) -> tuple[int, ...]:
        """(channels, height, width) of one image."""
        return (1, self.image_size, self.image_size)

    @property
    def n_outputs(self) -> int:
        """One logit per class of an episode."""
        return self.n_way

    def sample(self, rng: Any, batch_size: int, stream: int = 0) -> EpisodeBatch:
        """One meta-batch of episodes from ``rng``; ``stream`` picks the class split (parity.tasks)."""
        raise NotImplementedError("the classification sampler is being written (issue 18)")


def raise_type(name: str, value: Any) -> None:
    from parity.parts import ConfigError

    raise ConfigError(name, f"must be a string, got {value!r}")

"""N-way K-shot image classification (NumPy): episodes drawn from a data set's classes.

Task arrays (the contract's ``tasks``, in ``cfg.dtype``): ``x_support [B, N·K, C, H, W]``,
``y_support [B, N·K, N]`` (one-hot), ``x_query [B, N·Q, C, H, W]``, ``y_query [B, N·Q, N]``. Each episode
draws N classes without replacement from the split its stream reads (training: meta-train classes;
evaluation: meta-test classes; the splits never overlap), permutes the labels, and takes K support and
Q query images per class, all different.

Streams (``parity.tasks``) map to class splits: TRAIN_STREAM → meta-train, VAL_STREAM →
meta-validation, EVAL_STREAM → meta-test (``parity.data`` says which classes each holds). The draw
order, per episode ``b`` in turn (it fixes the numbers, so golden files depend on it): ``N`` of the
split's classes without replacement, in random order — label ``n`` is the ``n``-th drawn class, so the
labels are a fresh permutation each episode; then per label ``n`` in turn, ``K + Q`` distinct images of
that class, the first ``K`` for the support set and the rest for the query set. Both sets are
label-major (``x_support[b, n·K + j]`` is label ``n``'s ``j``-th image). Images are float64 in [0, 1].
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

from parity.parts import ConfigError, Part, check_bool, check_choice, check_declared, check_int, field

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

    def task_points(self) -> tuple[int, int]:
        """(support images, query images) of one episode: K and Q per class."""
        return self.n_way * self.k_support, self.n_way * self.k_query

    @property
    def n_outputs(self) -> int:
        """One logit per class of an episode."""
        return self.n_way

    def check_config(self, cfg: Any) -> None:
        """Enough classes in every split for ``n_way`` and images in every class for K + Q.

        Omniglot without ``data_dir`` passes here (the presets carry none); :meth:`check_ready`
        refuses it before a run starts.
        """
        if self.dataset == "omniglot" and not self.data_dir:
            return
        from parity.data import ROTATIONS, sizes

        bases, fewest = sizes(self.dataset, self.data_dir, self.image_size)
        for split, count in bases.items():
            classes = count * (ROTATIONS if self.rotations else 1)
            if classes < self.n_way:
                turned = " with rotations" if self.rotations else " without rotations (set rotations=true for 4x)"
                raise ConfigError(
                    "n_way", f"{self.n_way} is more than the {classes} {split} classes of {self.dataset}{turned}"
                )
        if self.k_support + self.k_query > fewest:
            raise ConfigError(
                "k_query",
                f"k_support + k_query = {self.k_support + self.k_query} images per class, but a class of "
                f"{self.dataset} has only {fewest}",
            )

    def check_ready(self) -> None:
        """What a run needs beyond a valid config: the Omniglot folder (one line saying how to pass it)."""
        if self.dataset == "omniglot" and not self.data_dir:
            from parity.data import OMNIGLOT_NEEDS_FOLDER

            raise ConfigError("data_dir", OMNIGLOT_NEEDS_FOLDER)

    def sample(self, rng: Any, batch_size: int, stream: int = 0) -> EpisodeBatch:
        """One meta-batch of episodes from ``rng``; ``stream`` picks the class split (module docstring)."""
        import numpy as np

        from parity.data import class_id, load, split_classes

        self.check_ready()
        data = load(self.dataset, self.data_dir, self.image_size)
        classes = split_classes(data, split_of_stream(stream), self.rotations)
        N, K, Q, S = self.n_way, self.k_support, self.k_query, self.image_size
        x = np.empty((batch_size, N, K + Q, 1, S, S))
        ids = np.empty((batch_size, N), dtype=np.int64)
        for b in range(batch_size):
            for n, pick in enumerate(rng.choice(len(classes), size=N, replace=False)):
                base, turns = classes[pick]
                images = data.images[base]
                chosen = images[rng.choice(len(images), size=K + Q, replace=False)]  # [K+Q, S, S]
                x[b, n, :, 0] = np.rot90(chosen, turns, axes=(1, 2))
                ids[b, n] = class_id(base, turns, self.rotations)
        labels = np.eye(N)[:, None, :]  # [N, 1, N]
        y_support = np.broadcast_to(labels, (batch_size, N, K, N)).reshape(batch_size, N * K, N)
        y_query = np.broadcast_to(labels, (batch_size, N, Q, N)).reshape(batch_size, N * Q, N)
        return EpisodeBatch(
            x_support=x[:, :, :K].reshape(batch_size, N * K, 1, S, S),
            y_support=y_support.copy(),
            x_query=x[:, :, K:].reshape(batch_size, N * Q, 1, S, S),
            y_query=y_query.copy(),
            classes=ids,
        )


def split_of_stream(stream: int) -> str:
    """The class split a task stream reads: training → meta-train, validation, evaluation → meta-test."""
    from parity.tasks import EVAL_STREAM, TRAIN_STREAM, VAL_STREAM

    splits = {TRAIN_STREAM: "train", VAL_STREAM: "val", EVAL_STREAM: "test"}
    if stream not in splits:
        raise ValueError(f"stream {stream} has no class split (allowed: {sorted(splits)})")
    return splits[stream]


def raise_type(name: str, value: Any) -> None:
    raise ConfigError(name, f"must be a string, got {value!r}")

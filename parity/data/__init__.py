"""Image data sets for the classification family (NumPy only, framework-neutral).

A data set is a tuple of *base classes*, each an array ``[n_images, S, S]`` (float32 in [0, 1],
read-only, ``S`` = the config's ``image_size``), and a split of the base-class ids into meta-train,
meta-validation and meta-test that never overlap. With ``rotations`` every base class ``c`` gives
four classes, its images turned by 0°, 90°, 180°, 270° (``numpy.rot90``): class id ``4·c + k`` is base
class ``c`` turned by ``k·90°``; a base class's rotations stay in its base class's split, so no held-out
class is a turned copy of a training class. Without rotations the class id is the base class id.

- ``digits``: scikit-learn's ``load_digits`` (1,797 real 8×8 handwritten digits shipped inside the
  package; values 0…16 divided by 16). Split by digit: meta-train 0 1 5 6 8 9, meta-validation 2 7,
  meta-test 3 4 — with rotations 24 / 8 / 8 classes. The digits that look alike when turned
  (6 and 9; 0, 1 and 8 under 180°) are in meta-train, so the held-out classes are not confusable
  with each other by construction.
- ``omniglot``: the standard folder layout (``parity.data.omniglot``); ``images_background`` =
  meta-train (its last sixth of alphabets: meta-validation), ``images_evaluation`` = meta-test.
- ``synthetic``: random class prototypes plus noise, any image size (``parity.data.synthetic``).

Every loader is cached in memory (one load per process per data set and image size).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple

from parity.parts import ConfigError

if TYPE_CHECKING:  # NumPy is imported where data is made: checking a config's sizes needs none
    import numpy as np

SPLITS = ("train", "val", "test")
OMNIGLOT_NEEDS_FOLDER = (
    "omniglot needs its folder: pass --data DIR, the folder holding images_background/ and images_evaluation/"
)
ROTATIONS = 4  # 0°, 90°, 180°, 270°


class ClassData(NamedTuple):
    """Base classes and their split."""

    images: tuple[np.ndarray, ...]  # per base class [n_images, S, S] float32 in [0, 1]
    splits: dict[str, tuple[int, ...]]  # "train" | "val" | "test" -> base class ids


def load(dataset: str, data_dir: str, image_size: int) -> ClassData:
    """The data set ``dataset`` at ``image_size`` (cached); ConfigError naming the field on bad input."""
    from parity.data import digits, omniglot, synthetic

    loaders: dict[str, Callable[[str, int], ClassData]] = {
        "digits": lambda _dir, size: digits.load(size),
        "omniglot": omniglot.load,
        "synthetic": lambda _dir, size: synthetic.load(size),
    }
    if dataset not in loaders:
        raise ConfigError("dataset", f"must be one of {', '.join(loaders)}; got {dataset!r}")
    return loaders[dataset](data_dir, image_size)


def sizes(dataset: str, data_dir: str, image_size: int) -> tuple[dict[str, int], int]:
    """(base classes per split, fewest images in a class), without loading a built-in data set: a
    config is checked whenever it is made (presets at import), and that must not import scikit-learn."""
    from parity.data import digits, synthetic

    known = {"digits": (digits.SPLITS, digits.FEWEST), "synthetic": (synthetic.SPLITS, synthetic.PER_CLASS)}
    if dataset in known:
        splits, fewest = known[dataset]
        return {split: len(splits[split]) for split in SPLITS}, fewest
    data = load(dataset, data_dir, image_size)
    return {split: len(data.splits[split]) for split in SPLITS}, min(len(a) for a in data.images)


def split_classes(data: ClassData, split: str, rotations: bool) -> tuple[tuple[int, int], ...]:
    """The (base class, quarter turns) pairs of ``split``, in class-id order."""
    turns = range(ROTATIONS) if rotations else range(1)
    return tuple((base, k) for base in data.splits[split] for k in turns)


def class_id(base: int, turns: int, rotations: bool) -> int:
    return ROTATIONS * base + turns if rotations else base


def resize(images: np.ndarray, size: int) -> np.ndarray:
    """Area-averaging resize of ``[..., H, W]`` to ``[..., size, size]`` (NumPy only, no Pillow).

    Output pixel ``i`` averages the input pixels under its footprint, each weighted by the length it
    covers (exact integer overlaps), so a resize is the same on every machine and library version.
    """
    import numpy as np

    rows = area_weights(images.shape[-2], size)  # [size, H]
    cols = area_weights(images.shape[-1], size)  # [size, W]
    return np.einsum("ih,...hw,jw->...ij", rows, images, cols)


def area_weights(n_in: int, n_out: int) -> np.ndarray:
    """``[n_out, n_in]``: in units of 1/(n_in·n_out), output i spans [i·n_in, (i+1)·n_in) and input
    j spans [j·n_out, (j+1)·n_out); the weight is their overlap over n_in (rows sum to 1)."""
    import numpy as np

    i = np.arange(n_out)[:, None]
    j = np.arange(n_in)[None, :]
    overlap = np.minimum((i + 1) * n_in, (j + 1) * n_out) - np.maximum(i * n_in, j * n_out)
    return np.clip(overlap, 0, None) / n_in


def frozen(arrays: Any) -> tuple[np.ndarray, ...]:
    """Each array as float32, read-only (a cached data set must not be changed by a caller)."""
    import numpy as np

    out = []
    for array in arrays:
        array = np.ascontiguousarray(array, dtype=np.float32)
        array.setflags(write=False)
        out.append(array)
    return tuple(out)

"""scikit-learn's 8×8 handwritten digits as ten base classes (``parity.data`` describes the split)."""

from __future__ import annotations

import functools

from parity.data import ClassData, frozen, resize

# By digit; see parity.data's docstring for why these.
SPLITS = {"train": (0, 1, 5, 6, 8, 9), "val": (2, 7), "test": (3, 4)}
# The fewest images of a digit (174 eights; the others 177-183): a test holds it to the data.
FEWEST = 174


@functools.lru_cache(maxsize=4)
def load(image_size: int) -> ClassData:
    """The 1,797 digits, values 0…16 divided by 16, one base class per digit (scikit-learn imported
    here: only classification runs on digits need it)."""
    import numpy as np

    try:
        from sklearn.datasets import load_digits
    except ImportError:  # pragma: no cover - depends on the environment
        from parity.parts import ConfigError

        raise ConfigError("dataset", "digits needs scikit-learn (pip install scikit-learn)") from None
    bunch = load_digits()
    images = np.asarray(bunch.images, dtype=np.float64) / 16.0  # [1797, 8, 8]
    if image_size != images.shape[-1]:
        images = resize(images, image_size)
    target = np.asarray(bunch.target)
    return ClassData(images=frozen(images[target == d] for d in range(10)), splits=dict(SPLITS))

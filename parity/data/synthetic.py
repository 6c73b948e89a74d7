"""Synthetic classes for tests and timings: a random prototype image per class plus noise, any size.

100 base classes of 20 images (Omniglot's count per character): meta-train 0…59, meta-validation
60…79, meta-test 80…99. A fixed seed per image size: the same images on every machine.
"""

from __future__ import annotations

import functools

from parity.data import ClassData, frozen

N_CLASSES = 100
PER_CLASS = 20
NOISE = 0.15  # standard deviation of the per-image noise around the prototype
SEED = 18  # fixed: the data set is part of the code, not of the run's seed
SPLITS = {"train": tuple(range(60)), "val": tuple(range(60, 80)), "test": tuple(range(80, 100))}


@functools.lru_cache(maxsize=4)
def load(image_size: int) -> ClassData:
    import numpy as np

    rng = np.random.default_rng(np.random.SeedSequence([SEED, image_size]))
    shape = (image_size, image_size)
    prototypes = rng.uniform(size=(N_CLASSES, 1, *shape))
    images = np.clip(prototypes + NOISE * rng.standard_normal((N_CLASSES, PER_CLASS, *shape)), 0.0, 1.0)
    return ClassData(images=frozen(images), splits=dict(SPLITS))

"""Omniglot from its standard folder layout, resized to ``image_size`` (28 in the MAML paper).

``DIR/images_background/<alphabet>/<character>/*.png`` (30 alphabets, 964 characters) and
``DIR/images_evaluation/<alphabet>/<character>/*.png`` (20 alphabets, 659 characters), as the
official archives unpack. Each character is a base class. ``images_background`` is meta-train, except
its last sixth of alphabets in name order (at least one when there are two or more: 5 of the 30),
which is meta-validation; ``images_evaluation`` is meta-test. Images are read as grey levels in
[0, 1], inverted so that the strokes are 1 on a 0 background (as the MAML reference code does), and
resized by area averaging (``parity.data.resize``, NumPy only).

A missing or malformed folder is one ConfigError naming ``data_dir``.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from parity.data import OMNIGLOT_NEEDS_FOLDER, ClassData, frozen, resize
from parity.parts import ConfigError

PARTS = ("images_background", "images_evaluation")
LAYOUT = "DIR/images_background/<alphabet>/<character>/*.png and DIR/images_evaluation/..."


def load(data_dir: str, image_size: int) -> ClassData:
    if not data_dir:
        raise ConfigError("data_dir", OMNIGLOT_NEEDS_FOLDER)
    return _load(str(Path(data_dir).expanduser().resolve()), image_size)


@functools.lru_cache(maxsize=2)
def _load(root: str, image_size: int) -> ClassData:
    if not Path(root).is_dir():
        raise ConfigError("data_dir", f"{root} is not a folder (expected {LAYOUT})")
    background = _alphabets(Path(root), PARTS[0])
    evaluation = _alphabets(Path(root), PARTS[1])
    n_val = max(1, len(background) // 6) if len(background) >= 2 else 0
    groups = {"train": background[: len(background) - n_val], "val": background[len(background) - n_val :]}
    groups["test"] = evaluation
    images: list[np.ndarray] = []
    splits: dict[str, tuple[int, ...]] = {}
    for split, alphabets in groups.items():
        start = len(images)
        for alphabet in alphabets:
            images.extend(_character(c, image_size) for c in _subfolders(alphabet))
        splits[split] = tuple(range(start, len(images)))
    return ClassData(images=frozen(images), splits=splits)


def _alphabets(root: Path, part: str) -> list[Path]:
    folder = root / part
    if not folder.is_dir():
        raise ConfigError("data_dir", f"{root} has no {part}/ folder (expected {LAYOUT})")
    alphabets = _subfolders(folder)
    if not alphabets:
        raise ConfigError("data_dir", f"{folder} holds no alphabet folders (expected {LAYOUT})")
    for alphabet in alphabets:
        if not _subfolders(alphabet):
            raise ConfigError("data_dir", f"{alphabet} holds no character folders (expected {LAYOUT})")
    return alphabets


def _subfolders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _character(folder: Path, image_size: int) -> np.ndarray:
    """One character's images ``[n, S, S]``, in file-name order."""
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() == ".png" and p.is_file())
    if not files:
        raise ConfigError("data_dir", f"{folder} holds no .png images (expected {LAYOUT})")
    return np.stack([resize(1.0 - _grey(f), image_size) for f in files])


def _grey(path: Path) -> np.ndarray:
    """A PNG as grey levels in [0, 1] (Pillow ships with matplotlib, a dependency)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            grey = np.asarray(image.convert("L"), dtype=np.float64) / 255.0
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise ConfigError("data_dir", f"{path} is not a readable PNG image ({type(err).__name__})") from None
    if grey.ndim != 2 or min(grey.shape) < 1:
        raise ConfigError("data_dir", f"{path} is not a 2-D image")
    return grey

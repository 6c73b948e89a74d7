"""Golden files (``.npz``) that any implementation can check itself against.

Golden file layout (``maml-parity dump``; load with ``numpy.load(path, allow_pickle=False)``):

- ``config``: the config as JSON text; ``framework``: which twin computed it; ``dtype``
- ``init/<name>``, ``init/alpha`` (per-parameter α: ``init/alpha/<name>``)
- ``tasks/x_support``, ``tasks/y_support`` [B, K, 1]; ``tasks/x_query``, ``tasks/y_query`` [B, Q, 1]
- ``inner_losses`` [T]: meta-batch mean support loss before each inner step
- ``outer_loss`` []: meta-batch mean query loss after T steps
- ``grad/<name>``, ``grad/alpha`` (or ``grad/alpha/<name>``): the meta-gradient

Any file that is not such a golden file (missing, empty, truncated, corrupt, foreign, pickled)
raises :class:`GoldenFileError`; nothing is ever unpickled.
"""

from __future__ import annotations

import lzma
import os
import struct
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from parity.checkpoint import atomic_write
from parity.config import Config, ConfigError
from parity.twins import meta_results, step0_inputs

TASK_KEYS = ("x_support", "y_support", "x_query", "y_query")


class GoldenFileError(ConfigError):
    """A golden file that is missing, unreadable or not in the format above (field ``golden``)."""

    def __init__(self, message: str, field: str = "golden"):
        super().__init__(field, message)


# What NumPy's and zipfile's readers raise on a damaged .npz: caught and turned into one error.
_NPZ_ERRORS = (
    OSError,
    ValueError,
    EOFError,
    KeyError,
    IndexError,
    TypeError,
    NotImplementedError,
    OverflowError,
    MemoryError,
    RuntimeError,
    struct.error,
    zlib.error,
    lzma.LZMAError,
    zipfile.BadZipFile,
    zipfile.LargeZipFile,
)


def golden_arrays(impl: Any, cfg: Config) -> dict[str, np.ndarray]:
    """Everything a golden file holds, computed by ``impl`` (any implementation of the contract)
    at the shared initial parameters on the sampler's step-0 meta-batch."""
    params, alpha, tasks = step0_inputs(cfg)
    arrays: dict[str, np.ndarray] = {
        "config": np.asarray(cfg.to_json()),
        "framework": np.asarray(impl.name),
        "dtype": np.asarray(cfg.dtype),
    }
    arrays.update({f"init/{k}": v for k, v in params.items()})
    arrays.update(flat("init/alpha", alpha))
    arrays.update({f"tasks/{k}": v for k, v in zip(TASK_KEYS, tasks, strict=True)})
    arrays.update(meta_results(impl, cfg, params, alpha, tasks))
    return arrays


def flat(prefix: str, tree: Any) -> dict[str, np.ndarray]:
    """``{prefix/name: leaf}`` for a dict, ``{prefix: leaf}`` for one array."""
    if isinstance(tree, dict):
        return {f"{prefix}/{k}": np.asarray(v) for k, v in tree.items()}
    return {prefix: np.asarray(tree)}


def write_golden(path: str | os.PathLike[str], arrays: dict[str, np.ndarray]) -> Path:
    """Write atomically: a temporary file in the same folder, flushed, then renamed over ``path``."""
    path = Path(path)
    if path.suffix != ".npz":
        raise ConfigError("out", f"a golden file must end in .npz, got {str(path)!r}")
    atomic_write(path, lambda f: np.savez(f, **arrays))  # type: ignore[arg-type]  # numpy stubs: a key could be "allow_pickle"
    return path


def read_golden(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load a golden file without unpickling anything; ``config`` comes back as a :class:`Config`.

    Every entry the config implies must be there with its shape and dtype; anything else about the
    file (missing, empty, truncated, corrupt zip entries, a foreign .npz) is a :class:`GoldenFileError`.
    """
    try:
        # Opened here, not by np.load, so that the file is closed whatever the reader raises.
        with open(path, "rb") as file:
            data = np.load(file, allow_pickle=False)
            if not isinstance(data, np.lib.npyio.NpzFile):
                raise GoldenFileError(f"{path}: a single .npy array, not a golden .npz file")
            with data:
                arrays = {key: data[key] for key in data.files}
    except FileNotFoundError:
        raise GoldenFileError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise GoldenFileError(f"{path}: is a directory, not a golden file") from None
    except GoldenFileError:
        raise
    except _NPZ_ERRORS as err:
        raise GoldenFileError(f"{path}: not a readable golden file ({type(err).__name__}: {err})") from None
    if "config" not in arrays:
        raise GoldenFileError(f"{path}: no 'config' entry; not a maml-parity golden file")
    try:
        cfg = Config.from_json(str(arrays["config"]))
    except ConfigError as err:
        raise GoldenFileError(f"{path}: the 'config' entry is not a valid config ({err})") from None
    check_golden_layout(path, arrays, cfg)
    out: dict[str, Any] = dict(arrays)
    out["config"] = cfg
    return out


def golden_layout(cfg: Config) -> dict[str, tuple[tuple[int, ...], str | None]]:
    """Every array a golden file of ``cfg`` holds: name → (shape, dtype; None for text entries)."""
    B, K, Q, T = cfg.meta_batch, cfg.k_support, cfg.k_query, cfg.inner_steps
    layout: dict[str, tuple[tuple[int, ...], str | None]] = {"config": ((), None), "framework": ((), None)}
    layout["dtype"] = ((), None)
    alpha_shapes = cfg.param_shapes if cfg.alpha_mode == "per_parameter" else None
    for group in ("init", "grad"):
        layout.update({f"{group}/{k}": (s, cfg.dtype) for k, s in cfg.param_shapes.items()})
        if alpha_shapes is None:
            layout[f"{group}/alpha"] = ((), cfg.dtype)
        else:
            layout.update({f"{group}/alpha/{k}": (s, cfg.dtype) for k, s in alpha_shapes.items()})
    for key, P in zip(TASK_KEYS, (K, K, Q, Q), strict=True):
        layout[f"tasks/{key}"] = ((B, P, 1), cfg.dtype)
    layout["inner_losses"] = ((T,), cfg.dtype)
    layout["outer_loss"] = ((), cfg.dtype)
    return layout


def check_golden_layout(path: Any, arrays: dict[str, np.ndarray], cfg: Config) -> None:
    layout = golden_layout(cfg)
    missing = sorted(set(layout) - set(arrays))
    if missing:
        raise GoldenFileError(f"{path}: entries missing for its config: {missing}")
    for name, (shape, dtype) in layout.items():
        got = arrays[name]
        if dtype is None:
            if got.shape != () or got.dtype.kind != "U":
                raise GoldenFileError(f"{path}: entry {name!r} must be text; got {got.dtype}{list(got.shape)}")
        elif got.shape != shape or got.dtype != np.dtype(dtype):
            raise GoldenFileError(
                f"{path}: entry {name!r} is {got.dtype}{list(got.shape)}, its config needs {dtype}{list(shape)}"
            )

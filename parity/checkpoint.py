"""Framework-neutral files: golden files (``.npz``) that any implementation can check itself against.

Golden file layout (``maml-parity dump``; load with ``numpy.load(path, allow_pickle=False)``):

- ``config``: the config as JSON text; ``framework``: which twin computed it; ``dtype``
- ``init/<name>``, ``init/alpha`` (per-parameter α: ``init/alpha/<name>``)
- ``tasks/x_support``, ``tasks/y_support`` [B, K, 1]; ``tasks/x_query``, ``tasks/y_query`` [B, Q, 1]
- ``inner_losses`` [T]: meta-batch mean support loss before each inner step
- ``outer_loss`` []: meta-batch mean query loss after T steps
- ``grad/<name>``, ``grad/alpha`` (or ``grad/alpha/<name>``): the meta-gradient
"""

from __future__ import annotations

import os
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from parity.config import Config, ConfigError
from parity.init import init_alpha, init_params
from parity.tasks import sample_batch
from parity.twins import Twin

TASK_KEYS = ("x_support", "y_support", "x_query", "y_query")


class GoldenFileError(ValueError):
    """A golden file that is missing, unreadable or not in the format above."""


def golden_arrays(twin: Twin, cfg: Config) -> dict[str, np.ndarray]:
    """Everything a golden file holds, computed by ``twin`` at the initial parameters, step 0."""
    params = init_params(cfg)
    alpha = init_alpha(cfg)
    batch = sample_batch(cfg, 0)
    tasks = tuple(batch[:4])
    model = twin.model
    out = twin.meta.meta_value_and_grad(
        model.to_arrays(params, cfg.dtype), model.to_arrays(alpha, cfg.dtype), model.to_arrays(tasks, cfg.dtype), cfg
    )
    (loss, inner), (grad_params, grad_alpha) = model.to_numpy(out)
    arrays: dict[str, np.ndarray] = {
        "config": np.asarray(cfg.to_json()),
        "framework": np.asarray(twin.name),
        "dtype": np.asarray(cfg.dtype),
    }
    arrays.update({f"init/{k}": v for k, v in params.items()})
    arrays.update(_flat("init/alpha", alpha))
    arrays.update({f"tasks/{k}": v for k, v in zip(TASK_KEYS, tasks)})
    arrays["inner_losses"] = np.asarray(inner)
    arrays["outer_loss"] = np.asarray(loss)
    arrays.update({f"grad/{k}": v for k, v in grad_params.items()})
    arrays.update(_flat("grad/alpha", grad_alpha))
    return arrays


def write_golden(path: str | os.PathLike[str], arrays: dict[str, np.ndarray]) -> Path:
    """Write atomically: a temporary file in the same folder, flushed, then renamed over ``path``."""
    path = Path(path)
    if path.suffix != ".npz":
        raise ConfigError("out", f"a golden file must end in .npz, got {str(path)!r}")
    atomic_write(path, lambda f: np.savez(f, **arrays))
    return path


def read_golden(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load a golden file without unpickling anything; ``config`` comes back as a :class:`Config`."""
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
    except FileNotFoundError:
        raise GoldenFileError(f"{path}: no such file") from None
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as err:
        raise GoldenFileError(f"{path}: not a readable golden file ({err})") from None
    if "config" not in arrays:
        raise GoldenFileError(f"{path}: no 'config' entry; not a maml-parity golden file")
    out: dict[str, Any] = dict(arrays)
    out["config"] = Config.from_json(str(arrays["config"]))
    return out


def atomic_write(path: Path, write: Any) -> None:
    """Call ``write(file)`` on a temporary file beside ``path``, fsync it, then ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _flat(prefix: str, tree: Any) -> dict[str, np.ndarray]:
    if isinstance(tree, dict):
        return {f"{prefix}/{k}": np.asarray(v) for k, v in tree.items()}
    return {prefix: np.asarray(tree)}

"""Framework-neutral training checkpoints (the golden-file format is in ``parity.golden``).

Training checkpoint (``maml-parity train --out DIR``): ``DIR/checkpoint.safetensors`` plus the
manifest ``DIR/checkpoint.json``. The safetensors file holds, framework-neutrally:

- ``step`` [] int64: outer steps taken (the next step to run; the sampler regenerates it)
- ``params/<name>``; ``alpha`` [] (per-parameter α: ``alpha/<name>``): what the outer loop learns
  for α, which is α itself, or ρ with α = softplus(ρ) when the config's ``alpha_parametrisation``
  is ``softplus`` (``parity.init.alpha_from_variable`` turns it into α)
- Adam state of each optimised group, ``<group>`` = ``params`` or ``alpha`` (no entries for SGD,
  which keeps none; no ``opt/alpha/...`` when α is fixed): ``opt/<group>/count`` [] int64, the
  updates taken (optax's ``count``, torch's ``step``); ``opt/<group>/mu/<name>`` and
  ``opt/<group>/nu/<name>``, the first and second moment estimates (optax ``mu``/``nu``, torch
  ``exp_avg``/``exp_avg_sq``; scalar α: ``opt/alpha/mu``, ``opt/alpha/nu``).

The manifest (config, step, sampler seed, the framework that wrote it, library versions) is also
embedded in the safetensors header under ``manifest``, so arrays and manifest are replaced by one
atomic rename; ``checkpoint.json`` is a copy for people and tools, plus the file's sha256. The
header also holds ``checksum``, ``sha256:<hex>`` of the manifest text and every array (name,
dtype, shape, bytes; names sorted), so a flipped bit anywhere is an error, not a silently
different state (format ``maml-parity-checkpoint/2``; ``/1`` files, written before the checksum,
are still read). Loading reads the embedded copy and never unpickles anything; any file that is
not such a checkpoint (missing, empty, truncated, corrupt, foreign, another config's) raises
:class:`CheckpointError`.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from parity.config import Config, ConfigError
from parity.inner import alpha_shapes as inner_alpha_shapes
from parity.registry import versioned_packages

# The file names are parity.rundir's; importers of parity.checkpoint still find them here.
from parity.rundir import CHECKPOINT_FILE, MANIFEST_FILE, RunDir
from parity.safeio import check_not_link, file_mode
from parity.tasks import TRAIN_STREAM

CHECKPOINT_FORMAT = "maml-parity-checkpoint/2"
READABLE_FORMATS = ("maml-parity-checkpoint/1", CHECKPOINT_FORMAT)  # /1: no checksum
# Config fields a resumed run may change: the number of steps does not alter any step's arithmetic.
RESUMABLE_CHANGES = ("iterations",)
MAX_ADAM_COUNT = 2**31 - 1  # optax's count is an int32; torch's step a float: one bound for both twins


def atomic_write(path: Path, write: Any, field: str = "out") -> None:
    """Call ``write(file)`` on a temporary file beside ``path``, fsync it, then ``os.replace``.

    A ``path`` that is a symbolic link, a FIFO or another non-regular file is refused first (a
    :class:`ConfigError` naming ``field`` and the file): the rename would replace a link rather
    than write through it, but a link where a run file belongs was planted, not made by us.
    """
    check_not_link(path, field)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, file_mode())  # mkstemp makes 0600; a new file honours the umask (0666 & ~umask)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        # Name the file asked for: never the temporary, and never no file at all (a write to a full disk).
        if isinstance(err, OSError) and err.errno is not None and (err.filename is None or err.filename in (tmp, fd)):
            raise OSError(err.errno, err.strerror, str(path)) from None
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


# --- training checkpoints ----------------------------------------------------------------------


class CheckpointError(ConfigError):
    """A checkpoint that is missing, unreadable, not in the layout above, or from another config."""

    def __init__(self, message: str, field: str = "checkpoint"):
        super().__init__(field, message)


class Checkpoint(NamedTuple):
    """A checkpoint as read back: the manifest, its config, and the neutral training state.

    ``state`` is the tree the twins' ``state_from_numpy`` take: ``{"step": int, "params": {name:
    array}, "alpha": array | {name: array}, "opt": {"params": group, "alpha": group}}`` with
    ``group`` = ``{"count": int, "mu": tree, "nu": tree}`` for Adam and ``{}`` for SGD or fixed α.
    """

    manifest: dict[str, Any]
    config: Config
    step: int
    state: dict[str, Any]


def library_versions() -> dict[str, str]:
    """Versions of the numerical libraries, read from package metadata (imports none of them)."""
    import platform

    out = {"python": platform.python_version()}
    for name in versioned_packages():
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def flatten_state(state: dict[str, Any]) -> dict[str, np.ndarray]:
    """The neutral state tree → the flat ``name → array`` layout of the module docstring."""
    arrays: dict[str, np.ndarray] = {"step": np.asarray(state["step"], dtype=np.int64)}
    arrays.update(_flat("params", state["params"]))
    arrays.update(_flat("alpha", state["alpha"]))
    for group, opt in state["opt"].items():
        if not opt:
            continue
        arrays[f"opt/{group}/count"] = np.asarray(opt["count"], dtype=np.int64)
        arrays.update(_flat(f"opt/{group}/mu", opt["mu"]))
        arrays.update(_flat(f"opt/{group}/nu", opt["nu"]))
    # safetensors wants C-contiguous buffers (np.ascontiguousarray would turn [] into [1]).
    return {k: np.array(v, order="C") for k, v in arrays.items()}


def expected_layout(cfg: Config) -> dict[str, tuple[tuple[int, ...], str]]:
    """Every array a checkpoint of ``cfg`` holds: name → (shape, dtype)."""
    shapes = cfg.param_shapes
    per_name = inner_alpha_shapes(cfg)
    alpha_shapes: dict[str, tuple[int, ...]] = (
        {f"alpha/{k}": s for k, s in per_name.items()} if per_name is not None else {"alpha": ()}
    )
    layout: dict[str, tuple[tuple[int, ...], str]] = {"step": ((), "int64")}
    layout.update({f"params/{k}": (s, cfg.dtype) for k, s in shapes.items()})
    layout.update({k: (s, cfg.dtype) for k, s in alpha_shapes.items()})
    groups = [("params", cfg.outer_optimizer, {f"params/{k}": s for k, s in shapes.items()})]
    if cfg.alpha_learned:
        groups.append(("alpha", cfg.alpha_optimizer, alpha_shapes))
    for group, optimizer, leaves in groups:
        if optimizer != "adam":
            continue
        layout[f"opt/{group}/count"] = ((), "int64")
        for name, shape in leaves.items():
            suffix = name[len(group) :]  # "" for a scalar α, "/<name>" otherwise
            layout[f"opt/{group}/mu{suffix}"] = (shape, cfg.dtype)
            layout[f"opt/{group}/nu{suffix}"] = (shape, cfg.dtype)
    return layout


def unflatten_state(arrays: dict[str, np.ndarray], cfg: Config) -> dict[str, Any]:
    """The flat layout → the neutral state tree, after checking every name, shape and dtype."""
    layout = expected_layout(cfg)
    missing = sorted(set(layout) - set(arrays))
    extra = sorted(set(arrays) - set(layout))
    if missing or extra:
        raise CheckpointError(
            f"arrays do not match the config's layout: missing {missing or 'none'}, unexpected {extra or 'none'}"
        )
    for name, (shape, dtype) in layout.items():
        got = arrays[name]
        if got.shape != shape or got.dtype != np.dtype(dtype):
            raise CheckpointError(
                f"array {name!r} is {got.dtype}{list(got.shape)}, the config needs {dtype}{list(shape)}"
            )

    def tree(prefix: str) -> Any:
        if prefix in arrays:
            return arrays[prefix]
        return {name: arrays[f"{prefix}/{name}"] for name in cfg.param_names}

    step = int(arrays["step"])
    opt: dict[str, Any] = {"params": {}, "alpha": {}}
    for group in opt:
        if f"opt/{group}/count" in arrays:
            count = int(arrays[f"opt/{group}/count"])
            # Adam takes one update per outer step; optax keeps the count as an int32.
            if not 0 <= count <= min(max(step, 0), MAX_ADAM_COUNT):
                raise CheckpointError(
                    f"array 'opt/{group}/count' is {count}; Adam's update count must be 0..step ({step}) "
                    f"and at most {MAX_ADAM_COUNT}"
                )
            opt[group] = {"count": count, "mu": tree(f"opt/{group}/mu"), "nu": tree(f"opt/{group}/nu")}
    return {
        "step": step,
        "params": tree("params"),
        "alpha": tree("alpha"),
        "opt": opt,
    }


def checkpoint_path(path: str | os.PathLike[str]) -> Path:
    """``DIR`` → ``DIR/checkpoint.safetensors``; a path to the file itself is kept."""
    path = Path(path)
    return path / CHECKPOINT_FILE if path.is_dir() or path.suffix != ".safetensors" else path


def write_checkpoint(
    directory: str | os.PathLike[str],
    state: dict[str, Any],
    cfg: Config,
    framework: str,
    device: str | None = None,
    precision: str | None = None,
) -> Path:
    """Write ``state`` (the neutral tree) as ``directory/checkpoint.safetensors`` + ``checkpoint.json``.

    ``device`` and ``precision``: what the run trained on and with, recorded for the reader only
    (the state is NumPy, and loads onto any device).

    Each file goes to a temporary file in the same folder, is fsynced, renamed over the old one,
    and the folder is fsynced: a crash leaves either the previous checkpoint or this one.
    """
    from safetensors.numpy import save

    directory = Path(directory)
    arrays = flatten_state(state)
    unflatten_state(arrays, cfg)  # refuse to write a checkpoint that could not be read back
    manifest = {
        "format": CHECKPOINT_FORMAT,
        "step": int(state["step"]),
        "framework": framework,
        **({"device": device} if device is not None else {}),
        **({"precision": precision} if precision is not None else {}),
        "dtype": cfg.dtype,
        "config": cfg.to_dict(),
        # The sampler regenerates step i's tasks from (seed, stream, i): nothing else to save.
        "sampler": {"seed": cfg.seed, "stream": TRAIN_STREAM, "next_step": int(state["step"])},
        "versions": library_versions(),
        "written_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    manifest_text = json.dumps(manifest, sort_keys=True)
    blob = save(arrays, metadata={"manifest": manifest_text, "checksum": checksum(manifest_text, arrays)})
    path = directory / CHECKPOINT_FILE
    atomic_write(path, lambda f: f.write(blob))
    copy = {**manifest, "file": CHECKPOINT_FILE, "sha256": hashlib.sha256(blob).hexdigest()}
    atomic_write(
        directory / MANIFEST_FILE, lambda f: f.write((json.dumps(copy, indent=2, sort_keys=True) + "\n").encode())
    )
    return path


def read_checkpoint(path: str | os.PathLike[str]) -> Checkpoint:
    """Read ``DIR`` or ``DIR/checkpoint.safetensors``: manifest, config and neutral state.

    Anything but an intact checkpoint raises :class:`CheckpointError` naming the file and what is
    wrong with it; nothing is unpickled.
    """
    from safetensors import SafetensorError, safe_open

    file = checkpoint_path(path)
    where = repr(str(file))
    if not file.exists():
        raise CheckpointError(f"no checkpoint at {where} (train with --out DIR to make one)")
    if not file.is_file():
        raise CheckpointError(f"{where} is not a file")
    try:
        with safe_open(str(file), framework="numpy") as f:
            header = f.metadata() or {}
            _check_names_before_reading(header, list(f.keys()))
            arrays = {key: f.get_tensor(key) for key in f.keys()}
    except CheckpointError as err:
        raise CheckpointError(f"{where}: {err.args[0].split(': ', 1)[1]}") from None
    except (OSError, SafetensorError, ValueError, TypeError, OverflowError, MemoryError) as err:
        reason = str(err) or type(err).__name__
        raise CheckpointError(f"{where} is not a readable safetensors file ({reason})") from None
    if "manifest" not in header:
        raise CheckpointError(f"{where} has no embedded manifest; not a maml-parity checkpoint")
    if "checksum" in header and header["checksum"] != checksum(header["manifest"], arrays):
        raise CheckpointError(f"{where} is corrupt: its contents do not match the checksum written with them")
    try:
        manifest = json.loads(header["manifest"])
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{where}: embedded manifest is not JSON ({err.msg})") from None
    if not isinstance(manifest, dict) or manifest.get("format") not in READABLE_FORMATS:
        got = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise CheckpointError(f"{where}: format {got!r}, expected {CHECKPOINT_FORMAT!r}")
    if "checksum" not in header and manifest["format"] != READABLE_FORMATS[0]:
        raise CheckpointError(f"{where} is corrupt: no checksum in its header")
    from parity.readers import manifest_problem

    problem = manifest_problem(manifest)
    if problem is not None:
        raise CheckpointError(f"{where}: the embedded manifest is not valid: {problem}")
    try:
        cfg = Config.from_dict(manifest.get("config"))
    except ConfigError as err:
        raise CheckpointError(f"{where}: the embedded config is not valid ({err})") from None
    state = unflatten_state(arrays, cfg)
    if state["step"] != manifest.get("step"):
        raise CheckpointError(f"{where}: arrays are at step {state['step']}, the manifest says {manifest.get('step')}")
    if state["step"] < 0:
        raise CheckpointError(f"{where}: step {state['step']} is negative")
    return Checkpoint(manifest=manifest, config=cfg, step=state["step"], state=state)


def _check_names_before_reading(header: dict[str, str], names: list[str]) -> None:
    """Refuse arrays the embedded config does not call for before any of them is read. A header
    whose manifest or config cannot be parsed is left to the checks after reading, which name it."""
    try:
        manifest = json.loads(header.get("manifest", ""))
        cfg = Config.from_dict(manifest.get("config"))
    except (ValueError, AttributeError, TypeError, RecursionError):
        return
    layout = expected_layout(cfg)
    extra = sorted(set(names) - set(layout))
    if extra:
        missing = sorted(set(layout) - set(names))
        raise CheckpointError(
            f"arrays do not match the config's layout: missing {missing or 'none'}, unexpected {extra}; "
            "refused before reading them"
        )


def checksum(manifest_text: str, arrays: dict[str, np.ndarray]) -> str:
    """``sha256:<hex>`` of the manifest text and every array's name, dtype, shape and bytes."""
    digest = hashlib.sha256(manifest_text.encode())
    for name in sorted(arrays):
        array = np.asarray(arrays[name])
        little = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))
        digest.update(f"\0{name}\0{array.dtype.name}\0{list(array.shape)}\0".encode())
        digest.update(little.tobytes())
    return f"sha256:{digest.hexdigest()}"


def remove_stale_temporaries(directory: str | os.PathLike[str]) -> list[Path]:
    """Delete the temporary files an :func:`atomic_write` killed mid-write leaves in a run
    directory (:meth:`parity.rundir.RunDir.remove_stale_temporaries`). Returns what it deleted."""
    return RunDir(directory).remove_stale_temporaries()


def check_resumable(saved: Config, cfg: Config, what: str = "the checkpoint", whose: str = "the checkpoint's") -> None:
    """Raise a :class:`ConfigError` naming the first field where ``cfg`` differs from the checkpoint's.

    Only ``iterations`` may change: resuming must continue the very same trajectory.
    """
    ours, theirs = cfg.flat(), saved.flat()
    for field in ours:
        if field not in RESUMABLE_CHANGES and ours[field] != theirs.get(field):
            raise ConfigError(
                field,
                f"{what} was trained with {field} = {_shown(theirs.get(field))} but this run asks for "
                f"{_shown(ours[field])}; "
                f"resume with {whose} config (only {', '.join(RESUMABLE_CHANGES)} may change)",
            )


def _shown(value: Any) -> str:
    """A config value as its JSON reads (a tuple as [8, 8])."""
    return repr(list(value)) if isinstance(value, tuple) else repr(value)

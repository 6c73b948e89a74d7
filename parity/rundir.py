"""One owner for a training run's directory: the names of its files, where a run starts (fresh,
resumed from its checkpoint, or refused), and reading and writing its state.

A run directory (``maml-parity train --out DIR``) holds ``config.json``, ``metrics.jsonl`` (one
JSON row per step, ``parity.run``), ``checkpoint.safetensors`` with its manifest copy
``checkpoint.json`` (format: ``parity.checkpoint``) and ``final.npz``; ``eval`` adds ``eval.json``,
``report`` adds ``report.md`` and figures; while a command writes, ``.lock`` (``parity.runlock``).
Every other module names these files through :class:`RunDir`, never by spelling them.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from parity.config import Config, ConfigError
from parity.runlock import LOCK_FILE

if TYPE_CHECKING:  # NumPy is imported where a file is written: the command line starts without it
    import numpy as np

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
CHECKPOINT_FILE = "checkpoint.safetensors"
MANIFEST_FILE = "checkpoint.json"
FINAL_FILE = "final.npz"
EVAL_FILE = "eval.json"
REPORT_FILE = "report.md"
# The files `train` writes, each through an atomic write whose temporary a killed process may leave.
TRAIN_FILES = (CHECKPOINT_FILE, MANIFEST_FILE, METRICS_FILE, CONFIG_FILE, FINAL_FILE)


@dataclass(frozen=True)
class Start:
    """Where a training run starts: ``step`` 0 and no checkpoint (fresh), or a checkpoint's step
    with the metric rows logged before it (resume). ``note``: the line that says which, or None."""

    step: int = 0
    checkpoint: Any = None  # parity.checkpoint.Checkpoint
    state: Any = None  # the checkpoint's state as the caller's load_state made it
    rows: list[dict[str, Any]] = field(default_factory=list)
    note: str | None = None

    @property
    def kind(self) -> str:
        return "fresh" if self.checkpoint is None else "resume"


class RunDir:
    """A training run's directory (which need not exist yet)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    config = property(lambda self: self.path / CONFIG_FILE, doc="``config.json``: the run's config")
    metrics = property(lambda self: self.path / METRICS_FILE, doc="``metrics.jsonl``: a row per step")
    checkpoint = property(lambda self: self.path / CHECKPOINT_FILE, doc="``checkpoint.safetensors``")
    manifest = property(lambda self: self.path / MANIFEST_FILE, doc="``checkpoint.json``, the manifest copy")
    final = property(lambda self: self.path / FINAL_FILE, doc="``final.npz``: parameters and alpha at the end")
    eval_file = property(lambda self: self.path / EVAL_FILE, doc="``eval.json``, written by ``eval``")
    report = property(lambda self: self.path / REPORT_FILE, doc="``report.md``, written by ``report``")
    lock = property(lambda self: self.path / LOCK_FILE, doc="``.lock``, held while a command writes")

    # --- what the directory holds ---------------------------------------------------------------

    def holds_run(self) -> bool:
        """A run was started here: a checkpoint or logged steps (a fresh ``train`` would replace them)."""
        return self.checkpoint.exists() or self.metrics.exists()

    def refuse_existing(self, shown: str, hint: str) -> None:
        """A ConfigError (field ``out``) if a run was started here; ``shown``: the path as the user gave it."""
        if self.holds_run():
            raise ConfigError("out", f"{shown!r} already holds a training run; {hint} (nothing was overwritten)")

    def require_run(self, shown: str) -> RunDir:
        """This directory, if it holds a training run to read (``eval``, ``report``); else a ConfigError."""
        if not self.path.exists():
            raise ConfigError("dir", f"no such directory {shown!r}")
        if not self.path.is_dir():
            raise ConfigError("dir", f"{shown!r} is not a directory (give the run's --out DIR)")
        if not self.checkpoint.exists() and not self.config.exists():
            raise ConfigError(
                "dir", f"{shown!r} holds no training run (no {CHECKPOINT_FILE}); make one with train --out DIR"
            )
        return self

    def kept_checkpoint_note(self) -> str:
        """What a stopped run leaves: the checkpoint's step, or that there is none."""
        from parity.checkpoint import CheckpointError

        if not self.checkpoint.exists():
            return "no checkpoint was written (use --checkpoint-every N to keep one)"
        try:
            return f"the checkpoint of step {self.read_checkpoint().step} in {str(self.path)!r} is kept"
        except CheckpointError:
            return f"{str(self.checkpoint)!r} was left as it was"

    # --- reading --------------------------------------------------------------------------------

    def read_checkpoint(self) -> Any:
        """The checkpoint (``parity.checkpoint.Checkpoint``); CheckpointError if it is not intact."""
        from parity.checkpoint import read_checkpoint

        return read_checkpoint(self.checkpoint)

    def read_config(self, field_name: str = "dir") -> Config:
        """``config.json`` as a Config; a ConfigError naming ``field_name`` if it is not valid."""
        from parity.readers import load_json

        try:
            return Config.from_dict(load_json(self.config, field_name))
        except ConfigError as err:
            if err.field == field_name:
                raise
            raise ConfigError(field_name, f"{str(self.config)!r} is not a valid config ({err})") from None

    def read_manifest(self, field_name: str = "dir") -> dict[str, Any]:
        """``checkpoint.json`` checked for shape and type; {} where there is none."""
        from parity.readers import read_manifest

        return read_manifest(self.manifest, field_name) if self.manifest.exists() else {}

    # --- where a run starts ---------------------------------------------------------------------

    def start(self, cfg: Config, resume: bool, load_state: Any = None) -> Start:
        """Fresh, resumed or refused (a ConfigError). Without ``resume``: fresh (refusing a
        directory that holds a run is the caller's, before it takes the lock). With ``resume``:
        the checkpoint's step, metrics cut back to it; no checkpoint: fresh, if what the directory
        holds is this run's (see :meth:`check_history`). ``load_state(checkpoint)``: the twin's
        state from it, made before the metrics are cut back, so a failure there changes nothing."""
        if not resume:
            return Start()
        self.remove_stale_temporaries()  # left by a process killed while writing
        ckpt = self.resume_checkpoint(cfg)
        if ckpt is None:
            self.check_history(cfg)
            return Start(note=f"no checkpoint in {self.path}; starting at step 0")
        from parity.safeio import printable

        state = load_state(ckpt) if load_state is not None else None
        rows = self.truncate_metrics(ckpt.step)
        writer = printable(ckpt.manifest["framework"])
        note = f"resuming {self.path} at step {ckpt.step} (checkpoint written by {writer})"
        return Start(step=ckpt.step, checkpoint=ckpt, state=state, rows=rows, note=note)

    def resume_checkpoint(self, cfg: Config) -> Any:
        """The checkpoint ``cfg`` may continue from, or None where there is none; a ConfigError
        naming the first field that differs, or a step past ``cfg.iterations``."""
        from parity.checkpoint import check_resumable

        if not self.checkpoint.exists():
            return None
        ckpt = self.read_checkpoint()
        check_resumable(ckpt.config, cfg)
        if ckpt.step > cfg.iterations:
            raise ConfigError("iterations", f"the checkpoint is at step {ckpt.step}, past this run's {cfg.iterations}")
        return ckpt

    def check_history(self, cfg: Config) -> None:
        """``--resume`` without a checkpoint: ``config.json`` (if any) must be this run's config
        (all fields but ``iterations``), and logged steps without a config are another run's
        history; both are refused rather than replaced."""
        from parity.checkpoint import check_resumable

        if self.config.exists():
            saved = self.read_config("resume")
            check_resumable(saved, cfg, what=f"the run in {str(self.path)!r} (no checkpoint)", whose="that run's")
        elif self.metrics.exists() and self.metrics.stat().st_size > 0:
            raise ConfigError(
                "resume",
                f"{str(self.path)!r} holds logged steps ({METRICS_FILE}) but no {CONFIG_FILE} and no checkpoint: "
                "another run's history; choose another --out (nothing was overwritten)",
            )

    def truncate_metrics(self, step: int) -> list[dict[str, Any]]:
        """Keep the rows of steps ``0 .. step-1`` (rewritten atomically) and return them.

        A last line cut short by a killed process is dropped; a gap before ``step`` is an error.
        """
        from parity.checkpoint import atomic_write
        from parity.readers import metrics_lines

        path, rows = self.metrics, []
        # One reader of metrics files (a regular file, a line at a time, under one cap: never whole).
        if os.path.lexists(path):
            for number, raw in metrics_lines(path, "resume"):
                try:
                    row = json.loads(raw.decode("utf-8"))
                except (UnicodeDecodeError, ValueError, RecursionError):
                    break  # a write interrupted mid-line: nothing after it was written either
                step_of_row = row.get("step") if isinstance(row, dict) else None
                if isinstance(step_of_row, bool) or not isinstance(step_of_row, int):
                    raise ConfigError("resume", f"{str(path)!r} line {number} is not a metrics row (no integer 'step')")
                if step_of_row >= step:
                    break
                rows.append(row)
        if [row["step"] for row in rows] != list(range(step)):
            raise ConfigError("resume", f"{path} does not hold steps 0..{step - 1} before the checkpoint's step {step}")

        def write(f: Any) -> None:  # a row at a time, not one string of the whole file
            for row in rows:
                f.write((json.dumps(row) + "\n").encode())

        atomic_write(path, write)
        return rows

    # --- writing --------------------------------------------------------------------------------

    def write_config(self, cfg: Config) -> None:
        from parity.checkpoint import atomic_write

        atomic_write(self.config, lambda f: f.write((cfg.to_json() + "\n").encode()))

    def open_metrics(self, append: bool) -> IO[str]:
        """``metrics.jsonl`` for writing rows: appended to after a resume, else started anew; never
        through a link or into a FIFO planted where the log belongs (``parity.safeio.open_regular``)."""
        from parity.safeio import open_regular

        return os.fdopen(open_regular(self.metrics, "out", write=True, append=append), "a" if append else "w")

    def write_checkpoint(self, state: dict[str, Any], cfg: Config, framework: str, device: Any, precision: Any) -> None:
        from parity.checkpoint import write_checkpoint

        write_checkpoint(self.path, state, cfg, framework, device, precision)

    def write_final(self, final: dict[str, np.ndarray]) -> None:
        import numpy as np

        from parity.checkpoint import atomic_write

        atomic_write(self.final, lambda f: np.savez(f, **final))  # type: ignore[arg-type]

    def remove_stale_temporaries(self) -> list[Path]:
        """Delete the temporaries an atomic write killed mid-write leaves (``.<name>.<random>.tmp``);
        the files they were to replace are intact. Returns what it deleted."""
        removed = []
        for name in TRAIN_FILES:
            for tmp in self.path.glob(f".{name}.*.tmp"):
                tmp.unlink(missing_ok=True)
                removed.append(tmp)
        return removed

"""A training run on disk: ``config.json``, ``metrics.jsonl``, checkpoints and the final parameters.

``metrics.jsonl`` holds one JSON object per logged step: ``step``, ``outer_loss``,
``inner_losses`` (the meta-batch mean support loss before each inner step), ``alpha`` (a number;
in per-parameter mode ``{"mean", "min", "max"}`` over every entry), ``alpha_grad`` (a number; in
per-parameter mode ``{"norm"}``) and ``wall_s`` (seconds since the run started, read when the
step's compiled chunk finished: steps inside one chunk share it).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from parity import training
from parity.checkpoint import (
    atomic_write,
    check_resumable,
    checkpoint_path,
    read_checkpoint,
    remove_stale_temporaries,
    write_checkpoint,
)
from parity.config import Config, ConfigError
from parity.safeio import open_regular, printable
from parity.text import alpha_grad_summary, alpha_summary
from parity.twins import Twin


def metric_rows(first_step: int, metrics: dict[str, Any], wall_s: float) -> list[dict[str, Any]]:
    """One JSON-ready dict per step of a chunk's metrics (leading [N] axis)."""
    n = len(metrics["outer_loss"])
    rows = []
    for i in range(n):

        def at(tree: Any, i: int = i) -> Any:
            return {k: v[i] for k, v in tree.items()} if isinstance(tree, dict) else tree[i]

        rows.append(
            {
                "step": first_step + i,
                "outer_loss": float(metrics["outer_loss"][i]),
                "inner_losses": [float(v) for v in metrics["inner_losses"][i]],
                "alpha": alpha_summary(at(metrics["alpha"])),
                "alpha_grad": alpha_grad_summary(at(metrics["alpha_grad"])),
                "wall_s": round(wall_s, 4),
            }
        )
    return rows


def train_run(
    twin: Twin,
    cfg: Config,
    out: Path,
    chunk: int = 250,
    print_every: int = 0,
    progress: bool = True,
    stream: TextIO = sys.stderr,
    resume: bool = False,
    checkpoint_every: int = 0,
    placement: Any = None,
    precision: str | None = None,
    announce: str | None = None,
) -> tuple[Any, list[dict[str, Any]]]:
    """Train ``cfg`` in ``twin``, writing ``out/config.json``, ``out/metrics.jsonl``, ``out/final.npz``
    and a checkpoint (``out/checkpoint.safetensors`` + ``out/checkpoint.json``) every
    ``checkpoint_every`` steps (0: only at the end) and at the end.

    ``resume``: continue from ``out``'s checkpoint as if the run had never stopped (the sampler
    regenerates every later step), whichever twin wrote it; ``metrics.jsonl`` is cut back to the
    checkpoint's step first so no step is logged twice. Without a checkpoint the run starts at 0.
    ``print_every`` > 0 also prints the seed lab's own lines every that many steps.
    ``precision``: the matmul precision the caller runs under (``twin.precision_scope``), recorded
    in the checkpoint's manifest with the twin's device (informational only).
    ``announce``: a line printed on standard output once the run's directory has been checked
    (a refused resume prints nothing but its error).
    Returns the final state and the metric rows (those kept from before a resume included).

    At a step whose loss, gradient or new state is not finite, :class:`parity.training.TrainingDiverged` is
    raised: ``metrics.jsonl`` holds the steps before it, the last checkpoint written (if any) is
    left as it was, and no final checkpoint or ``final.npz`` is written.
    """
    if checkpoint_every < 0:
        raise ConfigError("checkpoint_every", f"must be an integer >= 0, got {checkpoint_every}")
    if placement is not None and not placement.is_main:
        return _train_share(twin, cfg, out, chunk, resume, checkpoint_every, placement), []
    out.mkdir(parents=True, exist_ok=True)
    state, start, rows = None, 0, []
    if resume:
        remove_stale_temporaries(out)  # left by a process killed while writing
    ckpt = read_checkpoint(out) if resume and checkpoint_path(out).exists() else None
    if ckpt is not None:
        state, start = resumed_state(twin, cfg, ckpt)
        rows = truncate_metrics(out / "metrics.jsonl", start)
        writer = printable(ckpt.manifest["framework"])
        print(f"resuming {out} at step {start} (checkpoint written by {writer})", file=stream)
    elif resume:
        check_history(out, cfg)
        print(f"no checkpoint in {out}; starting at step 0", file=stream)
    if announce is not None:
        print(announce, flush=True)
    atomic_write(out / "config.json", lambda f: f.write((cfg.to_json() + "\n").encode()))
    bar = _progress_bar(cfg.iterations, f"train {twin.name}", progress, stream, initial=start)
    # wall_s continues from the last kept row, so it stays the run's time spent training.
    start_time = time.perf_counter() - (rows[-1]["wall_s"] if rows else 0.0)
    # Never through a link or into a FIFO planted where the log belongs (parity.safeio.open_regular).
    log_fd = open_regular(out / "metrics.jsonl", "out", write=True, append=bool(start))
    with os.fdopen(log_fd, "a" if start else "w") as log:

        def on_chunk(first_step: int, metrics: dict[str, Any]) -> None:
            chunk_rows = metric_rows(first_step, metrics, time.perf_counter() - start_time)
            for row in chunk_rows:
                log.write(json.dumps(row) + "\n")
                if print_every and row["step"] % print_every == 0:
                    print(seed_printout(row), file=stream)
            log.flush()
            rows.extend(chunk_rows)
            if bar is not None:
                last = chunk_rows[-1]
                bar.set_postfix(
                    loss=f"{last['outer_loss']:.4f}", alpha=_short(last["alpha"]), dL_dalpha=_short(last["alpha_grad"])
                )
                bar.update(len(chunk_rows))

        def on_checkpoint(step: int, state: Any) -> None:
            # The metrics of every step before the checkpoint reach the disk first: a resume cuts
            # metrics.jsonl back to the checkpoint's step and must find them all there.
            os.fsync(log.fileno())
            write_checkpoint(
                out, twin.train.state_to_numpy(state, cfg), cfg, twin.framework, twin.device_description(), precision
            )

        try:
            state = training.run(
                twin,
                cfg,
                state=state,
                start=start,
                iterations=cfg.iterations - start,
                chunk=chunk,
                on_chunk=on_chunk,
                checkpoint_every=checkpoint_every,
                on_checkpoint=on_checkpoint,
                placement=placement,
            )
        except training.TrainingDiverged:
            os.fsync(log.fileno())  # the finite steps' metrics stay; nothing else is written
            if bar is not None:
                bar.close()
            raise
        if checkpoint_every == 0 or cfg.iterations % checkpoint_every != 0 or cfg.iterations == start:
            on_checkpoint(cfg.iterations, state)
    if bar is not None:
        bar.close()
    final = training.final_values(twin, state, cfg)
    atomic_write(out / "final.npz", lambda f: np.savez(f, **final))  # type: ignore[arg-type]
    return state, rows


def check_history(out: Path, cfg: Config) -> None:
    """``--resume`` in a directory without a checkpoint: its ``config.json`` (if any) must be this
    run's config (all fields but ``iterations``), and logged steps without a config are another
    run's history; both are refused rather than replaced."""
    config_file = out / "config.json"
    if config_file.exists():
        from parity.readers import load_json

        try:
            saved = Config.from_dict(load_json(config_file, "resume"))
        except ConfigError as err:
            if err.field == "resume":
                raise
            raise ConfigError("resume", f"{str(config_file)!r} is not a valid config ({err})") from None
        check_resumable(saved, cfg, what=f"the run in {str(out)!r} (no checkpoint)", whose="that run's")
    elif (out / "metrics.jsonl").exists() and (out / "metrics.jsonl").stat().st_size > 0:
        raise ConfigError(
            "resume",
            f"{str(out)!r} holds logged steps (metrics.jsonl) but no config.json and no checkpoint: another run's "
            "history; choose another --out (nothing was overwritten)",
        )


def resumed_state(twin: Twin, cfg: Config, ckpt: Any) -> tuple[Any, int]:
    """The twin's training state from a checkpoint this run may continue, and its step."""
    check_resumable(ckpt.config, cfg)
    if ckpt.step > cfg.iterations:
        raise ConfigError("iterations", f"the checkpoint is at step {ckpt.step}, past this run's {cfg.iterations}")
    return twin.state_from_numpy(ckpt.state, cfg), ckpt.step


def _train_share(
    twin: Twin, cfg: Config, out: Path, chunk: int, resume: bool, checkpoint_every: int, placement: Any
) -> Any:
    """A process other than the first in a distributed run: its share of every step, no files.

    It starts from the same checkpoint as the first process and cuts the same chunks, so the
    collectives of every step line up.
    """
    state, start = None, 0
    if resume and checkpoint_path(out).exists():
        state, start = resumed_state(twin, cfg, read_checkpoint(out))
    return training.run(
        twin,
        cfg,
        state=state,
        start=start,
        iterations=cfg.iterations - start,
        chunk=chunk,
        checkpoint_every=checkpoint_every,
        placement=placement,
    )


def truncate_metrics(path: Path, step: int) -> list[dict[str, Any]]:
    """Keep the rows of steps ``0 .. step-1`` in ``path`` (rewritten atomically) and return them.

    A last line cut short by a killed process is dropped; a gap before ``step`` is an error. The
    file is read a line at a time through the metrics reader (``parity.readers.metrics_lines``:
    a regular file, at most ``JSON_MAX_BYTES``, as ``report`` reads it), and written back a row at a
    time.
    """
    from parity.readers import metrics_lines

    rows: list[dict[str, Any]] = []
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

    def write(f: Any) -> None:
        for row in rows:
            f.write((json.dumps(row) + "\n").encode())

    atomic_write(path, write)
    return rows


def seed_printout(row: dict[str, Any]) -> str:
    """The seed lab's lines for one step (its part 4 format)."""
    lines = [f"Iteration {row['step']} -- Inner loop {k} -- Loss: {v:.4f}" for k, v in enumerate(row["inner_losses"])]
    lines.append(
        f"Iteration {row['step']} -- Outer Loss: {row['outer_loss']:.4f}, learning rate: {_short(row['alpha'], 5)}"
    )
    lines.append(f"alpha grad= {_short(row['alpha_grad'])}")
    return "\n".join(lines)


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """Every row of ``path``, each checked for shape and type (``parity.readers.read_metrics``)."""
    from parity.readers import read_metrics as read_checked

    return read_checked(path)


def _short(value: Any, digits: int = 4) -> str:
    if isinstance(value, dict):
        return "/".join(f"{k}={v:.{digits}g}" for k, v in value.items())
    return f"{value:.{digits}f}"


def _progress_bar(total: int, desc: str, enabled: bool, stream: TextIO, initial: int = 0) -> Any:
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit="step", file=stream, dynamic_ncols=True, mininterval=0.5)

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
from typing import IO, Any, TextIO

from parity import training
from parity.config import Config, ConfigError
from parity.rundir import RunDir
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
    run_dir = RunDir(out)
    if placement is not None and not placement.is_main:
        return _train_share(twin, cfg, run_dir, chunk, resume, checkpoint_every, placement), []
    out.mkdir(parents=True, exist_ok=True)
    begin = run_dir.start(cfg, resume, lambda ckpt: twin.state_from_numpy(ckpt.state, cfg))
    state, start, rows = begin.state, begin.step, begin.rows
    if begin.note is not None:
        print(begin.note, file=stream)
    if announce is not None:
        print(announce, flush=True)
    run_dir.write_config(cfg)
    bar = _progress_bar(cfg.iterations, f"train {twin.name}", progress, stream, initial=start)
    # wall_s continues from the last kept row, so it stays the run's time spent training.
    start_time = time.perf_counter() - (rows[-1]["wall_s"] if rows else 0.0)
    with run_dir.open_metrics(append=start > 0) as log:
        sink = _Metrics(log, rows, start_time, print_every, stream, bar)

        def on_checkpoint(step: int, state: Any) -> None:
            # The metrics of every step before the checkpoint reach the disk first: a resume cuts
            # metrics.jsonl back to the checkpoint's step and must find them all there.
            os.fsync(log.fileno())
            run_dir.write_checkpoint(
                twin.train.state_to_numpy(state, cfg), cfg, twin.framework, twin.device_description(), precision
            )

        try:
            state = training.run(
                twin,
                cfg,
                state=state,
                start=start,
                iterations=cfg.iterations - start,
                chunk=chunk,
                on_chunk=sink.on_chunk,
                checkpoint_every=checkpoint_every,
                on_checkpoint=on_checkpoint,
                placement=placement,
            )
        except training.TrainingDiverged:
            os.fsync(log.fileno())  # the finite steps' metrics stay; nothing else is written
            sink.close()
            raise
        if checkpoint_every == 0 or cfg.iterations % checkpoint_every != 0 or cfg.iterations == start:
            on_checkpoint(cfg.iterations, state)
    sink.close()
    run_dir.write_final(training.final_values(twin, state, cfg))
    return state, rows


class _Metrics:
    """Where a chunk of metric rows goes: ``metrics.jsonl``, the seed's printout, the progress bar."""

    def __init__(
        self, log: IO[str], rows: list[dict[str, Any]], start_time: float, print_every: int, stream: TextIO, bar: Any
    ):
        self.log, self.rows, self.start_time = log, rows, start_time
        self.print_every, self.stream, self.bar = print_every, stream, bar

    def on_chunk(self, first_step: int, metrics: dict[str, Any]) -> None:
        chunk_rows = metric_rows(first_step, metrics, time.perf_counter() - self.start_time)
        for row in chunk_rows:
            self.log.write(json.dumps(row) + "\n")
            if self.print_every and row["step"] % self.print_every == 0:
                print(seed_printout(row), file=self.stream)
        self.log.flush()
        self.rows.extend(chunk_rows)
        if self.bar is not None:
            last = chunk_rows[-1]
            self.bar.set_postfix(
                loss=f"{last['outer_loss']:.4f}", alpha=_short(last["alpha"]), dL_dalpha=_short(last["alpha_grad"])
            )
            self.bar.update(len(chunk_rows))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _train_share(
    twin: Twin, cfg: Config, run_dir: RunDir, chunk: int, resume: bool, checkpoint_every: int, placement: Any
) -> Any:
    """A process other than the first in a distributed run: its share of every step, no files.

    It starts from the same checkpoint as the first process and cuts the same chunks, so the
    collectives of every step line up.
    """
    ckpt = run_dir.resume_checkpoint(cfg) if resume else None
    state = None if ckpt is None else twin.state_from_numpy(ckpt.state, cfg)
    start = 0 if ckpt is None else ckpt.step
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

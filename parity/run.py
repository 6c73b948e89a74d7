"""A training run on disk: ``config.json``, ``metrics.jsonl`` and the final parameters.

``metrics.jsonl`` holds one JSON object per logged step: ``step``, ``outer_loss``,
``inner_losses`` (the meta-batch mean support loss before each inner step), ``alpha`` (a number;
in per-parameter mode ``{"mean", "min", "max"}`` over every entry), ``alpha_grad`` (a number; in
per-parameter mode ``{"norm"}``) and ``wall_s`` (seconds since the run started, read when the
step's compiled chunk finished: steps inside one chunk share it).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from parity import training
from parity.checkpoint import atomic_write
from parity.config import Config
from parity.twins import Twin


def alpha_summary(alpha: Any) -> Any:
    if isinstance(alpha, dict):
        flat = np.concatenate([np.ravel(v) for v in alpha.values()])
        return {"mean": float(flat.mean()), "min": float(flat.min()), "max": float(flat.max())}
    return float(alpha)


def alpha_grad_summary(grad: Any) -> Any:
    if isinstance(grad, dict):
        return {"norm": float(np.sqrt(sum(float(np.sum(np.square(v))) for v in grad.values())))}
    return float(grad)


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
) -> tuple[Any, list[dict[str, Any]]]:
    """Train ``cfg`` in ``twin``, writing ``out/config.json``, ``out/metrics.jsonl``, ``out/final.npz``.

    ``print_every`` > 0 also prints the seed lab's own lines every that many steps.
    Returns the final state and the metric rows.
    """
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(cfg.to_json() + "\n")
    rows: list[dict[str, Any]] = []
    bar = _progress_bar(cfg.iterations, f"train {twin.name}", progress, stream)
    start = time.perf_counter()
    with open(out / "metrics.jsonl", "w") as log:

        def on_chunk(first_step: int, metrics: dict[str, Any]) -> None:
            chunk_rows = metric_rows(first_step, metrics, time.perf_counter() - start)
            for row in chunk_rows:
                log.write(json.dumps(row) + "\n")
                if print_every and row["step"] % print_every == 0:
                    print(seed_printout(row), file=stream)
            log.flush()
            rows.extend(chunk_rows)
            if bar is not None:
                last = chunk_rows[-1]
                bar.set_postfix(loss=f"{last['outer_loss']:.4f}", alpha=_short(last["alpha"]), dL_dalpha=_short(last["alpha_grad"]))
                bar.update(len(chunk_rows))

        state = training.run(twin, cfg, chunk=chunk, on_chunk=on_chunk)
    if bar is not None:
        bar.close()
    final = training.final_values(twin, state)
    atomic_write(out / "final.npz", lambda f: np.savez(f, **final))
    return state, rows


def seed_printout(row: dict[str, Any]) -> str:
    """The seed lab's lines for one step (its part 4 format)."""
    lines = [f"Iteration {row['step']} -- Inner loop {k} -- Loss: {v:.4f}" for k, v in enumerate(row["inner_losses"])]
    lines.append(f"Iteration {row['step']} -- Outer Loss: {row['outer_loss']:.4f}, learning rate: {_short(row['alpha'], 5)}")
    lines.append(f"alpha grad= {_short(row['alpha_grad'])}")
    return "\n".join(lines)


def read_metrics(path: Path) -> list[dict[str, Any]]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def _short(value: Any, digits: int = 4) -> str:
    if isinstance(value, dict):
        return "/".join(f"{k}={v:.{digits}g}" for k, v in value.items())
    return f"{value:.{digits}f}"


def _progress_bar(total: int, desc: str, enabled: bool, stream: TextIO) -> Any:
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="step", file=stream, dynamic_ncols=True, mininterval=0.5)

"""docs/lab.md's figures come from the commands printed beside them.

A slow test runs a documented command as written (`maml-parity` as `python -m parity` in a fresh
process, so the suite's x64 mode and threads do not leak in; only `--no-progress` and the output
folder change) and holds every figure of its row in docs/lab.md within the row's own 95% CI. The
figures are read from the document itself, so a re-measured table and this test cannot drift apart,
and a change that moves a trained net (a rounding change in an optimiser is enough over 70,000
steps) fails here instead of leaving a stale figure for a reader to find.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAB = ROOT / "docs" / "lab.md"
STEPS = (1, 5, 10)  # the paper table's columns: MSE after 1, 5 and 10 steps


def table_row(text: str, label: str) -> list[tuple[float, float]]:
    """The ``mean ± ci`` cells of the one table row whose first cell is ``label``."""
    rows = [line for line in text.splitlines() if line.startswith(f"| {label} |")]
    assert len(rows) == 1, f"docs/lab.md has {len(rows)} rows labelled {label!r}"
    cells = re.findall(r"([0-9.]+) ± ([0-9.]+)", rows[0])
    return [(float(mean), float(ci)) for mean, ci in cells]


def documented_commands(text: str, run: str) -> list[list[str]]:
    """The lines of docs/lab.md's bash blocks that act on ``runs/<run>``, as argument lists."""
    commands = []
    for block in re.findall(r"^```bash\n(.*?)^```", text, flags=re.DOTALL | re.MULTILINE):
        for line in block.splitlines():
            words = shlex.split(line.split(" #", 1)[0])
            if f"runs/{run}" in words:
                commands.append(words)
    return commands


def run_documented(commands: list[list[str]], run: str, where: Path) -> list[dict]:
    """Runs the commands in order; returns the ``eval.json`` each ``eval`` left (a later one
    replaces the file, so each is read at once)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MPLBACKEND": "Agg"}
    evals = []
    for words in commands:
        assert words[0] == "maml-parity", words
        argv = [str(where / run) if w == f"runs/{run}" else w for w in words[1:]]
        if argv[0] == "train":
            argv.append("--no-progress")
        done = subprocess.run([sys.executable, "-m", "parity", *argv], env=env, capture_output=True, text=True)
        assert done.returncode == 0, (argv, done.stderr[-2000:])
        if argv[0] == "eval":
            evals.append(json.loads((where / run / "eval.json").read_text()))
    return evals


# docs/lab.md's `runs/<name>` -> the table's columns (adaptation steps) and its rows: which eval
# command of the block (0: the first), which starting point, the row's label.
FIGURES: dict[str, tuple[tuple[int, ...], tuple[tuple[int, str, str], ...]]] = {
    "maml-paper-code": (
        (1, 5, 10),
        (
            (0, "meta", "MAML, ours, `maml-paper-code` (α = 0.001)"),
            (0, "pretrained", "pretrained, ours, `maml-paper-code`"),
        ),
    ),
    "maml-paper": (
        (1, 5, 10),
        ((0, "meta", "MAML, ours, `maml-paper` (α = 0.01)"), (0, "pretrained", "pretrained, ours, `maml-paper`")),
    ),
    # Meta-SGD's learned α is meant for one step: its row stops there.
    "meta-sgd": ((1,), ((0, "meta", "Meta-SGD, ours, `meta-sgd` (learned α per entry)"),)),
    "sa": (
        (0, 1, 5, 10),
        (
            (0, "meta", "meta-learned, α = 0.0147 (the run's)"),
            (0, "random", "random, α = 0.0147"),
            (0, "pretrained", "pretrained, α = 0.0147"),
            (1, "random", "random, tuned α = 0.003"),
            (1, "pretrained", "pretrained, tuned α = 0.003"),
        ),
    ),
}


@pytest.mark.parametrize("run", FIGURES)
def test_the_figures_and_commands_are_where_the_slow_test_reads_them(run: str) -> None:
    text = LAB.read_text()
    steps, rows = FIGURES[run]
    for _, _, label in rows:
        cells = table_row(text, label)
        assert len(cells) == len(steps) and all(0 < ci < mean for mean, ci in cells), (label, cells)
    commands = documented_commands(text, run)
    assert commands[0][1] == "train" and {words[1] for words in commands[1:]} == {"eval"}, commands
    assert len(commands) - 1 == 1 + max(i for i, _, _ in rows), commands


def figures_off(text: str, run: str, evals: list[dict]) -> list[str]:
    """Every figure of ``run``'s rows in ``text`` that ``evals`` (eval.json bodies) puts outside
    the row's CI, as a line naming it; empty when all hold."""
    steps, rows = FIGURES[run]
    off = []
    for index, start, label in rows:
        curve = evals[index][start][0]
        assert curve["phase_shift"] == 0.0, curve["phase_shift"]  # the tables are unshifted
        for k, (mean, ci) in zip(steps, table_row(text, label), strict=True):
            got = curve["mse_mean"][k]
            if not abs(got - mean) <= ci:
                off.append(f"{run} {start} after {k} steps: {got:.4f}, docs/lab.md says {mean} ± {ci}")
    return off


def made_up_evals(text: str, run: str, nudge: float = 0.0) -> list[dict]:
    """eval.json bodies whose every figure is the table's mean moved by ``nudge`` times its CI."""
    steps, rows = FIGURES[run]
    evals: list[dict] = [{} for _ in range(1 + max(i for i, _, _ in rows))]
    for index, start, label in rows:
        mse = [float("nan")] * (1 + max(steps))
        for k, (mean, ci) in zip(steps, table_row(text, label), strict=True):
            mse[k] = mean + nudge * ci
        evals[index][start] = [{"phase_shift": 0.0, "mse_mean": mse}]
    return evals


@pytest.mark.parametrize("run", FIGURES)
def test_a_figure_outside_its_ci_is_named_and_one_inside_passes(run: str) -> None:
    text = LAB.read_text()
    assert figures_off(text, run, made_up_evals(text, run, 0.99)) == []
    assert figures_off(text, run, made_up_evals(text, run, -0.99)) == []
    rows = FIGURES[run][1]
    off = figures_off(text, run, made_up_evals(text, run, 1.01))
    assert len(off) == len(rows) * len(FIGURES[run][0]) and off[0].startswith(f"{run} {rows[0][1]} after"), off
    # The stale figures an outside user could not reproduce (the old run, 2026-11-26) are caught.
    if run == "maml-paper-code":
        stale = text.replace(
            "0.629 ± 0.063 | 0.313 ± 0.038 | 0.280 ± 0.033", "0.730 ± 0.067 | 0.394 ± 0.042 | 0.357 ± 0.037"
        )
        assert len(figures_off(stale, run, made_up_evals(text, run))) == 3


@pytest.mark.slow
@pytest.mark.parametrize("run", FIGURES)
def test_lab_figures_come_from_the_documented_commands(tmp_path, run: str) -> None:
    """The block's commands as written: 70,000 steps (46-60 s alone on 2 cores) and a 5-shot
    evaluation for the paper presets; 5000 steps and two 600-task evaluations for `sa`."""
    text = LAB.read_text()
    evals = run_documented(documented_commands(text, run), run, tmp_path)
    assert figures_off(text, run, evals) == []

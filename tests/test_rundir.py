"""parity.rundir: one owner for a run directory's file names, the resume decision and its state."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from parity import rundir
from parity.checkpoint import expected_layout, unflatten_state, write_checkpoint
from parity.config import SEED_ALPHA, Config, ConfigError
from parity.rundir import RunDir

SMALL = SEED_ALPHA.replace(hidden=(8,), inner_steps=2, meta_batch=3, dtype="float64", iterations=6)


def small_state(cfg: Config, step: int) -> dict:
    rng = np.random.default_rng(step)
    arrays = {
        name: np.asarray(step, dtype=np.int64) if dtype == "int64" else rng.standard_normal(shape).astype(dtype)
        for name, (shape, dtype) in expected_layout(cfg).items()
    }
    return unflatten_state(arrays, cfg)


def write_rows(run: RunDir, steps: range) -> None:
    run.metrics.write_text("".join(json.dumps({"step": s, "outer_loss": 1.0 / (s + 1)}) + "\n" for s in steps))


def stopped_run(path: Path, step: int = 4, logged: int = 5) -> RunDir:
    """A run stopped after ``logged`` steps whose last checkpoint is at ``step``."""
    run = RunDir(path)
    path.mkdir(parents=True, exist_ok=True)
    run.write_config(SMALL)
    write_checkpoint(path, small_state(SMALL, step), SMALL, "jax")
    write_rows(run, range(logged))
    return run


def test_every_file_name_is_an_attribute(tmp_path) -> None:
    run = RunDir(tmp_path)
    names = {
        run.config: "config.json",
        run.metrics: "metrics.jsonl",
        run.checkpoint: "checkpoint.safetensors",
        run.manifest: "checkpoint.json",
        run.final: "final.npz",
        run.eval_file: "eval.json",
        run.report: "report.md",
        run.lock: ".lock",
    }
    assert {path: path.name for path in names} == names
    assert all(path.parent == tmp_path for path in names)
    assert set(rundir.TRAIN_FILES) == {
        "config.json",
        "metrics.jsonl",
        "checkpoint.safetensors",
        "checkpoint.json",
        "final.npz",
    }


def test_start_fresh_without_resume_even_over_a_run(tmp_path) -> None:
    run = stopped_run(tmp_path)
    before = run.metrics.read_bytes()
    begin = run.start(SMALL, resume=False)
    assert (begin.kind, begin.step, begin.checkpoint, begin.rows, begin.note) == ("fresh", 0, None, [], None)
    assert run.metrics.read_bytes() == before  # deciding wrote nothing
    with pytest.raises(ConfigError, match=r"^out: 'shown' already holds a training run; hint \(nothing was"):
        run.refuse_existing("shown", "hint")


def test_start_resumes_at_the_checkpoint_and_cuts_the_metrics_back(tmp_path) -> None:
    run = stopped_run(tmp_path, step=4, logged=5)
    (tmp_path / ".metrics.jsonl.abc.tmp").write_text("half")  # left by a killed write
    begin = run.start(SMALL, resume=True, load_state=lambda ckpt: ("loaded", ckpt.step))
    assert (begin.kind, begin.step, begin.state) == ("resume", 4, ("loaded", 4))
    assert [row["step"] for row in begin.rows] == [0, 1, 2, 3]
    assert [json.loads(line)["step"] for line in run.metrics.read_text().splitlines()] == [0, 1, 2, 3]
    assert begin.note == f"resuming {tmp_path} at step 4 (checkpoint written by jax)"
    assert not (tmp_path / ".metrics.jsonl.abc.tmp").exists()


def test_a_failing_state_load_changes_nothing(tmp_path) -> None:
    run = stopped_run(tmp_path, step=4, logged=5)
    before = run.metrics.read_bytes()

    def fail(ckpt):
        raise MemoryError("no room on the device")

    with pytest.raises(MemoryError):
        run.start(SMALL, resume=True, load_state=fail)
    assert run.metrics.read_bytes() == before


def test_start_refuses_another_config_a_step_past_the_end_and_a_gap(tmp_path) -> None:
    run = stopped_run(tmp_path / "a", step=4)
    with pytest.raises(ConfigError, match=r"^outer_lr: the checkpoint was trained with outer_lr = 0\.01 but .* 0\.5;"):
        run.start(SMALL.replace(outer_lr=0.5), resume=True)
    with pytest.raises(ConfigError, match=r"^iterations: the checkpoint is at step 4, past this run's 3"):
        run.start(SMALL.replace(iterations=3), resume=True)
    gap = stopped_run(tmp_path / "b", step=4, logged=5)
    write_rows(gap, range(2))
    with pytest.raises(ConfigError, match=r"^resume: .* does not hold steps 0\.\.3"):
        gap.start(SMALL, resume=True)


def test_resume_without_a_checkpoint_checks_the_history(tmp_path) -> None:
    empty = RunDir(tmp_path / "empty")
    assert empty.start(SMALL, resume=True).note == f"no checkpoint in {empty.path}; starting at step 0"
    same = RunDir(tmp_path / "same")
    same.path.mkdir()
    same.write_config(SMALL.replace(iterations=99))  # only iterations may differ
    assert same.start(SMALL, resume=True).kind == "fresh"
    other = RunDir(tmp_path / "other")
    other.path.mkdir()
    other.write_config(SMALL.replace(seed=7))
    with pytest.raises(ConfigError, match=r"^seed: the run in .* \(no checkpoint\) was trained with seed = 7"):
        other.start(SMALL, resume=True)
    orphan = RunDir(tmp_path / "orphan")
    orphan.path.mkdir()
    write_rows(orphan, range(3))
    with pytest.raises(ConfigError, match=r"^resume: .* holds logged steps \(metrics\.jsonl\) but no config\.json"):
        orphan.start(SMALL, resume=True)


def test_require_run_and_the_kept_checkpoint_note(tmp_path) -> None:
    with pytest.raises(ConfigError, match=r"^dir: no such directory 'x'$"):
        RunDir(tmp_path / "nope").require_run("x")
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match=r"^dir: 'f' is not a directory"):
        RunDir(tmp_path / "file").require_run("f")
    with pytest.raises(ConfigError, match=r"^dir: 'e' holds no training run \(no checkpoint\.safetensors\)"):
        RunDir(tmp_path).require_run("e")
    run = stopped_run(tmp_path / "run", step=4)
    assert run.require_run("r") is run
    assert run.kept_checkpoint_note() == f"the checkpoint of step 4 in {str(run.path)!r} is kept"
    run.checkpoint.write_bytes(b"\0" * 16)
    assert run.kept_checkpoint_note() == f"{str(run.checkpoint)!r} was left as it was"
    run.checkpoint.unlink()
    assert run.kept_checkpoint_note().startswith("no checkpoint was written")


def test_eval_reads_the_checkpoint_and_loads_the_twin_once(tmp_path, monkeypatch, capsys) -> None:
    from parity import checkpoint, twins
    from parity.cli import main

    run = stopped_run(tmp_path, step=SMALL.iterations, logged=SMALL.iterations)
    counts = {"read": 0, "load": 0}
    real_read, real_load = checkpoint.read_checkpoint, twins.load

    def counted_read(*args, **kwargs):
        counts["read"] += 1
        return real_read(*args, **kwargs)

    def counted_load(*args, **kwargs):
        counts["load"] += 1
        return real_load(*args, **kwargs)

    monkeypatch.setattr(checkpoint, "read_checkpoint", counted_read)
    monkeypatch.setattr(twins, "load", counted_load)
    args = ["eval", str(tmp_path), "--framework", "torch", "--tasks", "4", "--max-steps", "2", "--pretrain-steps", "2"]
    assert main(args) == 0, capsys.readouterr().err
    assert counts == {"read": 1, "load": 1}
    result = json.loads(run.eval_file.read_text())
    assert result["checkpoint_step"] == SMALL.iterations and result["tasks"] == 4

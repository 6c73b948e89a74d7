"""Runs that cannot be lost or mixed (issue 12): one writer per run directory, nothing overwritten
unasked, sizes refused before allocating, output paths checked before the work, clean interrupts,
readers that validate what they read, odd values and environments refused with one line.

docs/robustness.md has a row for each class, naming the test here.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from parity import limits, readers, runlock, safeio, startup
from parity.checkpoint import CHECKPOINT_FILE, MANIFEST_FILE, CheckpointError, atomic_write, checksum, read_checkpoint
from parity.checkpoint import write_checkpoint as write_ckpt
from parity.cli import EXIT_USAGE, main
from parity.config import SEED_ALPHA, Config, ConfigError

ROOT = Path(__file__).resolve().parents[1]
SMALL = SEED_ALPHA.replace(hidden=(8,), inner_steps=2, meta_batch=3, dtype="float64", iterations=4)
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def small_state(cfg: Config, step: int) -> dict:
    from parity.checkpoint import expected_layout, unflatten_state

    rng = np.random.default_rng(0)
    arrays = {
        name: np.asarray(step, dtype=np.int64) if dtype == "int64" else rng.standard_normal(shape).astype(dtype)
        for name, (shape, dtype) in expected_layout(cfg).items()
    }
    return unflatten_state(arrays, cfg)


def one_error_line(capsys) -> str:
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and "Traceback" not in err, (out, err)
    assert err.startswith("maml-parity: error: "), err
    return err[len("maml-parity: error: ") : -1]


def config_file(tmp_path: Path, cfg: Config | dict, name: str = "cfg.json") -> str:
    path = tmp_path / name
    path.write_text(cfg.to_json() if isinstance(cfg, Config) else json.dumps(cfg))
    return str(path)


# A child process that takes a run directory's lock, says so, and sleeps until killed.
HOLDER = r"""
import sys, time
from pathlib import Path
from parity import runlock
runlock.acquire(Path(sys.argv[1]), command="maml-parity train --out held")
print("locked", flush=True)
time.sleep(600)
"""


def start_holder(directory: Path) -> subprocess.Popen:
    directory.mkdir(parents=True, exist_ok=True)
    child = subprocess.Popen([sys.executable, "-c", HOLDER, str(directory)], stdout=subprocess.PIPE, text=True, env=ENV)
    assert child.stdout is not None and child.stdout.readline() == "locked\n"
    return child


def stop(child: subprocess.Popen) -> None:
    child.send_signal(signal.SIGKILL)
    child.wait()
    if child.stdout is not None:
        child.stdout.close()


# --- 1. one writer per run directory ------------------------------------------------------------


@pytest.mark.slow
def test_a_held_run_directory_refuses_train_eval_and_report_naming_the_holder(tmp_path, capsys) -> None:
    run = tmp_path / "run"
    write_ckpt(run, small_state(SMALL, 4), SMALL, "torch")
    (run / "config.json").write_text(SMALL.to_json())
    child = start_holder(run)
    try:
        before = snapshot(run)
        cfg = config_file(tmp_path, SMALL)
        for args in (
            ["train", "--config", cfg, "--framework", "torch", "--out", str(run), "--resume", "--no-progress"],
            ["eval", str(run), "--framework", "torch", "--tasks", "2", "--max-steps", "1", "--pretrain-steps", "1"],
            ["report", str(run)],
        ):
            assert main(args) == EXIT_USAGE
            line = one_error_line(capsys)
            field = "out" if args[0] == "train" else "dir"
            assert line.startswith(
                f"{field}: {str(run)!r} is in use by PID {child.pid} ('maml-parity train --out held'"
            )
            assert "since 20" in line
            assert snapshot(run) == before  # the holder's lock record included: nothing touched
    finally:
        stop(child)


def test_a_lock_left_by_a_killed_process_never_blocks(tmp_path) -> None:
    child = start_holder(tmp_path)
    with pytest.raises(runlock.RunLocked, match=f"in use by PID {child.pid} "):
        runlock.acquire(tmp_path)
    stop(child)  # SIGKILL: no chance to unlink or unlock
    assert (tmp_path / runlock.LOCK_FILE).exists()  # the file stays; the kernel dropped the flock
    fd = runlock.acquire(tmp_path, command="second")
    assert json.loads((tmp_path / runlock.LOCK_FILE).read_text())["pid"] == os.getpid()
    runlock.release(tmp_path, fd)
    assert not (tmp_path / runlock.LOCK_FILE).exists()


def test_a_lock_that_fails_removes_the_directories_it_made(tmp_path) -> None:
    target = tmp_path / "a" / "b"
    with pytest.raises(RuntimeError), runlock.run_lock(target):
        assert (target / runlock.LOCK_FILE).exists()
        raise RuntimeError("refused inside")
    assert listing(tmp_path) == []
    with runlock.run_lock(target):
        (target / "kept").write_text("x")
    assert listing(tmp_path) == ["a", "a/b", "a/b/kept"]  # a finished run keeps its files, not the lock


@pytest.mark.slow
def test_a_finished_train_leaves_no_lock_and_a_refused_one_leaves_nothing(tmp_path, capsys) -> None:
    cfg = config_file(tmp_path, SMALL)
    run = tmp_path / "run"
    assert main(["train", "--config", cfg, "--framework", "torch", "--out", str(run), "--no-progress"]) == 0
    capsys.readouterr()
    assert runlock.LOCK_FILE not in os.listdir(run)
    before = snapshot(tmp_path)
    assert main(["train", "--config", cfg, "--framework", "torch", "--out", str(run), "--no-progress"]) == 2
    assert "already holds a training run" in one_error_line(capsys)
    assert snapshot(tmp_path) == before


CONCURRENT_CFG = SMALL.replace(iterations=3000, meta_batch=1)


@pytest.mark.slow
def test_two_concurrent_trains_on_one_directory_the_second_is_refused_the_first_whole(tmp_path) -> None:
    cfg = config_file(tmp_path, CONCURRENT_CFG)
    run = tmp_path / "run"
    args = [sys.executable, "-m", "parity", "train", "--config", cfg, "--framework", "torch", "--no-progress"]
    args += ["--checkpoint-every", "100", "--out", str(run)]
    first = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    deadline = time.monotonic() + 120
    while not (run / runlock.LOCK_FILE).exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    seconds = [subprocess.run([*args, "--resume"], capture_output=True, text=True, env=ENV, timeout=300)]
    seconds.append(subprocess.run(args, capture_output=True, text=True, env=ENV, timeout=300))
    _, err = first.communicate(timeout=600)
    assert first.returncode == 0, err
    in_use = f"maml-parity: error: out: {str(run)!r} is in use by PID {first.pid} "
    for second in seconds:
        assert second.returncode == 2 and second.stdout == "", second.stderr
        assert second.stderr.count("\n") == 1
    assert seconds[0].stderr.startswith(in_use)  # --resume: the lock refuses it
    # A fresh run: refused by the lock, or (once the first has logged a step) as an existing run.
    assert seconds[1].stderr.startswith(in_use) or "already holds a training run" in seconds[1].stderr
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(CONCURRENT_CFG.iterations))  # every step exactly once
    assert read_checkpoint(run).step == CONCURRENT_CFG.iterations
    assert Config.from_json((run / "config.json").read_text()) == CONCURRENT_CFG


# --- 2. nothing overwritten unasked -----------------------------------------------------------------


def test_demo_refuses_an_existing_run_and_leaves_it_untouched(tmp_path, capsys) -> None:
    write_ckpt(tmp_path / "d" / "jax", small_state(SMALL, 4), SMALL, "jax")
    (tmp_path / "d" / "jax" / "metrics.jsonl").write_text("")
    before = snapshot(tmp_path)
    assert main(["demo", "--out", str(tmp_path / "d"), "--iterations", "2", "--no-progress"]) == EXIT_USAGE
    line = one_error_line(capsys)
    assert line.startswith(f"out: {str(tmp_path / 'd' / 'jax')!r} already holds a training run; choose another --out")
    assert snapshot(tmp_path) == before and listing(tmp_path) == [
        "d",
        "d/jax",
        *[f"d/jax/{n}" for n in sorted([CHECKPOINT_FILE, MANIFEST_FILE, "metrics.jsonl"])],
    ]


def test_demo_with_jax_x64_off_is_refused_before_training(tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("JAX_ENABLE_X64", "0")
    assert main(["demo", "--out", str(tmp_path / "d"), "--iterations", "2", "--no-progress"]) == EXIT_USAGE
    line = one_error_line(capsys)
    assert line.startswith("dtype: the demo checks the twins' parity in float64 as well, and jax cannot")
    assert "JAX_ENABLE_X64" in line
    assert listing(tmp_path) == []


@pytest.mark.slow
def test_resume_without_a_checkpoint_checks_config_json_and_refuses_another_runs_history(tmp_path, capsys) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(SEED_ALPHA.replace(hidden=(8, 8)).to_json())
    (run / "metrics.jsonl").write_text('{"step": 0}\n')
    before = snapshot(tmp_path)
    cfg = config_file(tmp_path, SMALL, "small.json")
    base = ["train", "--config", cfg, "--framework", "torch", "--out", str(run), "--resume", "--no-progress"]
    assert main(base) == EXIT_USAGE
    assert one_error_line(capsys) == (
        f"hidden: the run in {str(run)!r} (no checkpoint) was trained with hidden = [8, 8] but this run asks for "
        "[8]; resume with that run's config (only iterations may change)"
    )
    (run / "config.json").unlink()
    before = snapshot(tmp_path)
    assert main(base) == EXIT_USAGE
    assert "holds logged steps (metrics.jsonl) but no config.json and no checkpoint" in one_error_line(capsys)
    assert snapshot(tmp_path) == before
    # The same config without a checkpoint (killed before its first one): starts again at step 0.
    (run / "config.json").write_text(SMALL.to_json())
    assert main(base) == 0
    assert read_checkpoint(run).step == SMALL.iterations
    assert [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [0, 1, 2, 3]


# --- 3. sizes checked before anything is allocated or written ---------------------------------------

SIZE_CASES = {
    "hidden-width-1e5": (["train"], {"hidden": [100000, 100000]}, "hidden: a width of 100000, past the limit of 65536"),
    "3000-hidden-layers": (["train"], {"hidden": [1] * 3000}, "hidden: 3000 layers, past the limit of 64"),
    "meta-batch-1e8": (["train"], {"meta_batch": 10**8}, "meta_batch: 100000000, past the limit of 10000000"),
    "k-query-1e9": (["train"], {"k_query": 10**9}, "k_query: 1000000000, past the limit"),
    "inner-steps-1e7": (["train"], {"inner_steps": 10**7}, "inner_steps: 10000000, past the limit"),
    "meta-batch-2e5-memory": (
        ["train", "--max-memory", "8G"],
        {"meta_batch": 200000},
        "meta_batch: this run would need about",
    ),
    "dump-meta-batch-1e8": (["dump"], {"meta_batch": 10**8}, "meta_batch: 100000000, past the limit"),
    "dump-width-memory": (
        ["dump", "--max-memory", "1G"],
        {"hidden": [30000, 30000]},
        "hidden: this run would need about",
    ),
}


@pytest.mark.parametrize("case", sorted(SIZE_CASES))
def test_memory_bombs_end_in_one_line_with_nothing_left(tmp_path, capsys, case) -> None:
    command, fields, expected = SIZE_CASES[case]
    cfg = config_file(tmp_path, fields)
    out = str(tmp_path / ("g.npz" if command[0] == "dump" else "run"))
    before = listing(tmp_path)
    t0 = time.perf_counter()
    assert main([command[0], "--config", cfg, "--out", out, *command[1:]]) == EXIT_USAGE
    assert time.perf_counter() - t0 < 5
    assert one_error_line(capsys).startswith(expected)
    assert listing(tmp_path) == before  # no run directory, no config.json, no empty metrics.jsonl


EVAL_SIZE_CASES = {
    "tasks-1e8": (["--tasks", "100000000"], "tasks: 100000000, past the limit of 1000000"),
    "shots-1e9": (["--shots", "1000000000"], "shots: 1000000000, past the limit"),
    "max-steps-1e6": (["--max-steps", "1000000"], "max_steps: 1000000, past the limit of 1000"),
    "tasks-memory": (["--tasks", "900000", "--max-steps", "1000"], "tasks: this run would need about"),
}


@pytest.mark.parametrize("case", sorted(EVAL_SIZE_CASES))
def test_eval_sizes_are_refused_before_the_work(tmp_path, capsys, case) -> None:
    write_ckpt(tmp_path, small_state(SMALL, 4), SMALL, "jax")
    before = snapshot(tmp_path)
    flags, expected = EVAL_SIZE_CASES[case]
    assert main(["eval", str(tmp_path), "--max-memory", "4G", *flags]) == EXIT_USAGE
    assert one_error_line(capsys).startswith(expected)
    assert snapshot(tmp_path) == before


def test_the_estimate_names_the_field_that_drives_it() -> None:
    base = limits.estimate_train(SEED_ALPHA)
    assert limits.BASE < base < limits.BASE + (10 << 20)  # the seed's run: a few MB of arrays
    for field, value in (
        ("meta_batch", 50_000),
        ("inner_steps", 20_000),
        ("hidden", (4096, 4096)),
        ("k_support", 10**6),
    ):
        cfg = SEED_ALPHA.replace(**{field: value})
        with pytest.raises(ConfigError) as info:
            limits.check_train(cfg, max_memory=limits.estimate_train(cfg) - 1)
        assert info.value.field == field, str(info.value)
    # Linear in B and in T + 1 beyond the base and the sampler: the residuals of the backward pass.
    one, two = (limits.estimate_train(SEED_ALPHA.replace(meta_batch=b, iterations=1)) for b in (1000, 2000))
    assert two - limits.BASE == pytest.approx(2 * (one - limits.BASE), rel=1e-3)
    assert limits.parse_size("1.5G") == 3 << 29 and limits.parse_size("512M") == 512 << 20
    with pytest.raises(ConfigError, match="max_memory: must be a size"):
        limits.parse_size("lots")


# --- 4. output paths checked before any work --------------------------------------------------------

OUTPUT_CASES = {
    "train-out-empty": (["train", "--out", ""], "out: must be a directory name, got ''"),
    "demo-out-empty": (["demo", "--out", ""], "out: must be a directory name, got ''"),
    "dump-out-empty": (["dump", "--out", ""], "out: must be a file name, got ''"),
    "check-json-unwritable": (
        ["check", "--json", "/proc/maml-parity/c.json"],
        "json: cannot write '/proc/maml-parity/c.json'",
    ),
    "bench-json-unwritable": (["bench", "--quick", "--json", "/proc/b.json"], "json: cannot write '/proc/b.json'"),
    "bench-plot-txt": (["bench", "--plot", "out.txt"], "plot: must be a file name ending in .png or .pdf or .svg"),
    "bench-plot-no-suffix": (["bench", "--plot", "out"], "plot: must be a file name ending in .png or .pdf or .svg"),
    "check-json-under-a-file": (
        ["check", "--json", "A_FILE/c.json"],
        "json: cannot write 'A_FILE/c.json': 'A_FILE' is not",
    ),
}


@pytest.mark.parametrize("case", sorted(OUTPUT_CASES))
def test_output_paths_are_refused_before_the_work(tmp_path, capsys, monkeypatch, case) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "A_FILE").write_text("x")
    before = snapshot(tmp_path)
    args, expected = OUTPUT_CASES[case]
    t0 = time.perf_counter()
    assert main(args) == EXIT_USAGE
    assert time.perf_counter() - t0 < 5  # nothing ran
    line = one_error_line(capsys)
    assert line.startswith(expected) and ".maml-parity-probe" not in line
    assert snapshot(tmp_path) == before


def test_eval_on_a_read_only_run_is_refused_before_the_work(tmp_path, capsys, monkeypatch) -> None:
    """As root every folder is writable, so the refusal of the probe file is planted."""
    write_ckpt(tmp_path, small_state(SMALL, 4), SMALL, "jax")
    before = snapshot(tmp_path)

    def read_only(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(tmp_path / ".maml-parity-probe.x"))

    def never(*args, **kwargs):
        raise AssertionError("the evaluation ran")

    monkeypatch.setattr(safeio.tempfile, "mkstemp", read_only)
    monkeypatch.setattr("parity.eval.evaluate_run", never)
    assert main(["eval", str(tmp_path), "--tasks", "2"]) == EXIT_USAGE
    assert one_error_line(capsys) == f"dir: cannot write {str(tmp_path / 'eval.json')!r} (Permission denied)"
    assert snapshot(tmp_path) == before


# --- 5. interrupts and the distributed start-up ----------------------------------------------------


def interrupt(args: list[str], ready: Path, after: float) -> subprocess.CompletedProcess:
    """Start ``python -m parity ARGS``, wait until ``ready`` exists, wait ``after`` s, send SIGINT."""
    child = subprocess.Popen(
        [sys.executable, "-m", "parity", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV
    )
    deadline = time.monotonic() + 120
    while not ready.exists() and time.monotonic() < deadline and child.poll() is None:
        time.sleep(0.02)
    time.sleep(after)
    child.send_signal(signal.SIGINT)
    out, err = child.communicate(timeout=120)
    return subprocess.CompletedProcess(args, child.returncode, out, err)


@pytest.mark.slow
@pytest.mark.parametrize("after", [0.0, 0.3, 0.8, 1.5])
def test_ctrl_c_during_jax_training_exits_130_without_a_segfault(tmp_path, after) -> None:
    """The moments after config.json is written are JAX's compilation: before the fix, Ctrl-C there
    printed "interrupted" and then died with SIGSEGV at interpreter exit (status -11)."""
    run = tmp_path / "run"
    result = interrupt(
        ["train", "--out", str(run), "--no-progress", "--iterations", "100000"], run / "config.json", after
    )
    assert (result.returncode, result.stderr) == (130, "maml-parity: interrupted\n")
    assert runlock.LOCK_FILE not in os.listdir(run)
    log = run / "metrics.jsonl"  # not there yet if the interrupt came before the first step
    steps = [json.loads(line)["step"] for line in log.read_text().splitlines()] if log.exists() else []
    assert steps == list(range(len(steps)))  # whatever was logged is whole


@pytest.mark.slow
def test_ctrl_c_during_the_demo_exits_130_without_a_traceback(tmp_path) -> None:
    out = tmp_path / "d"
    result = interrupt(
        ["demo", "--out", str(out), "--iterations", "100000", "--no-progress"], out / "jax" / "config.json", 0.5
    )
    assert (result.returncode, result.stderr) == (130, "maml-parity: interrupted\n")


def test_distributed_flags_are_checked_before_any_work(tmp_path, capsys) -> None:
    out = str(tmp_path / "run")
    cases = {
        ("--coordinator", "localhost:1234", "--num-processes", "2", "--process-id", "7"): (
            "process_id: must be below --num-processes 2 (0..1), got 7"
        ),
        (
            "--num-processes",
            "2",
            "--process-id",
            "5",
        ): "coordinator: --num-processes and --process-id need --coordinator",
        ("--process-id", "0"): "coordinator: --process-id need --coordinator HOST:PORT",
        ("--coordinator", "localhost", "--num-processes", "2", "--process-id", "0"): "coordinator: must be HOST:PORT",
        ("--coordinator", "h:1", "--num-processes", "2"): "coordinator: give both --num-processes and --process-id",
    }
    for flags, expected in cases.items():
        assert main(["train", "--out", out, "--no-progress", *flags]) == EXIT_USAGE
        assert one_error_line(capsys).startswith(expected)
    assert listing(tmp_path) == []


@pytest.mark.slow
def test_distributed_start_up_times_out_in_one_line_and_answers_ctrl_c(tmp_path) -> None:
    args = ["train", "--out", str(tmp_path / "run"), "--no-progress", "--coordinator", "localhost:23456"]
    args += ["--meta-batch", "2", "--num-processes", "2", "--process-id", "0", "--init-timeout", "3"]
    t0 = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "parity", *args], capture_output=True, text=True, env=ENV, timeout=120
    )
    assert time.perf_counter() - t0 < 60
    assert result.returncode == 2
    assert result.stderr == (
        "maml-parity: error: coordinator: no answer from 'localhost:23456' within 3 s (2 processes expected; is every "
        "process started, and the address reachable?) (--init-timeout S sets the wait)\n"
    )
    child = subprocess.Popen(
        [sys.executable, "-m", "parity", *args[:-1], "100"], stderr=subprocess.PIPE, text=True, env=ENV
    )
    time.sleep(6)  # JAX imported, waiting for process 1
    child.send_signal(signal.SIGINT)
    _, err = child.communicate(timeout=60)
    assert (child.returncode, err) == (130, "maml-parity: interrupted\n")
    assert listing(tmp_path) == []


def test_start_distributed_passes_a_longer_timeout_to_jax_and_reports_its_error() -> None:
    seen = {}

    def fake(**kwargs):
        seen.update(kwargs)
        raise RuntimeError("UNAVAILABLE: connection refused\nmore detail")

    with pytest.raises(ConfigError, match=r"^coordinator: could not join 'h:1': UNAVAILABLE: connection refused$"):
        startup.start_distributed("h:1", 2, 0, timeout_s=5, initialize=fake)
    assert seen["initialization_timeout"] > 5 and seen["process_id"] == 0 and seen["num_processes"] == 2


# --- 6. readers: shape and type, one line naming the file ------------------------------------------


def write_run_for_report(tmp_path: Path, metrics: bytes, eval_json: str | None = None, manifest: str | None = None):
    from tests.test_robustness import minimal_eval

    (tmp_path / "config.json").write_text(SMALL.to_json())
    (tmp_path / "eval.json").write_text(eval_json if eval_json is not None else json.dumps(minimal_eval()))
    (tmp_path / "metrics.jsonl").write_bytes(metrics)
    if manifest is not None:
        (tmp_path / MANIFEST_FILE).write_text(manifest)


GOOD_ROW = {"step": 0, "outer_loss": 1.0, "inner_losses": [1.0, 0.5], "alpha": 0.1, "alpha_grad": 0.01, "wall_s": 0.1}


def _eval_without(key: str) -> str:
    from tests.test_robustness import minimal_eval

    data = minimal_eval()
    del data[key]
    return json.dumps(data)


READER_CASES = {
    "metrics-empty-object": (b"{}\n", None, None, "metrics.jsonl' line 1 is not a metrics row: 'step' must be"),
    "metrics-list": (b"[]\n", None, None, "metrics.jsonl' line 1 is not a metrics row: a JSON list, not an object"),
    "metrics-not-utf8": (b"\xff\xfe{\n", None, None, "metrics.jsonl' is not JSON lines (line 1 is not UTF-8 text)"),
    "metrics-step-repeated": (
        ((json.dumps(GOOD_ROW) + "\n") * 2).encode(),
        None,
        None,
        "metrics.jsonl' line 2 is not a metrics row: step 0 where step 1 was due",
    ),
    "eval-without-phase-shifts": (
        b"",
        "phase_shifts",
        None,
        "eval.json' is not a maml-parity-eval/1 file ('phase_shifts'",
    ),
    "eval-without-meta": (b"", "meta", None, "eval.json' is not a maml-parity-eval/1 file ('meta' must be a list"),
    "manifest-a-list": (
        b"",
        None,
        "[1, 2]",
        "checkpoint.json' is not a checkpoint manifest: a JSON list, not an object",
    ),
    "manifest-framework-escapes": (
        b"",
        None,
        json.dumps({"format": "f", "step": 1, "framework": "jax\n\x1b[31mred", "dtype": "float64", "config": {}}),
        "checkpoint.json' is not a checkpoint manifest: 'framework' holds control characters or is too long: "
        "'jax\\\\n\\\\x1b[31mred'",
    ),
    "manifest-step-text": (
        b"",
        None,
        json.dumps({"format": "f", "step": "1", "framework": "jax", "dtype": "float64", "config": {}}),
        "checkpoint.json' is not a checkpoint manifest: 'step' must be an integer, got '1'",
    ),
}


@pytest.mark.parametrize("case", sorted(READER_CASES))
def test_damaged_run_files_are_one_line_naming_the_file(tmp_path, capsys, case) -> None:
    metrics, drop, manifest, expected = READER_CASES[case]
    write_run_for_report(tmp_path, metrics, _eval_without(drop) if drop else None, manifest)
    before = snapshot(tmp_path)
    assert main(["report", str(tmp_path)]) == EXIT_USAGE
    line = one_error_line(capsys)
    assert line.startswith(f"dir: '{tmp_path}/") and expected in line, line
    assert "\x1b" not in line
    assert snapshot(tmp_path) == before


def test_resume_on_damaged_metrics_lines_is_one_line(tmp_path, capsys) -> None:
    cfg = config_file(tmp_path, SMALL, "small.json")
    run = tmp_path / "run"
    write_ckpt(run, small_state(SMALL, 2), SMALL, "torch")
    base = ["train", "--config", cfg, "--framework", "torch", "--out", str(run), "--resume", "--no-progress"]
    for lines, expected in (
        (b"{}\n", "resume: '" + str(run / "metrics.jsonl") + "' line 1 is not a metrics row (no integer 'step')"),
        (b"[]\n", "line 1 is not a metrics row"),
        (b'{"step": 0}\n\xff\n', "does not hold steps 0..1 before the checkpoint's step 2"),
    ):
        (run / "metrics.jsonl").write_bytes(lines)
        before = snapshot(run)
        assert main(base) == EXIT_USAGE
        assert expected in one_error_line(capsys)
        assert snapshot(run) == before


def _forged_checkpoint(path: Path, cfg: Config, edit) -> None:
    """A checkpoint whose checksum is valid although its contents were edited (a careful forger)."""
    from safetensors.numpy import save

    from parity.checkpoint import CHECKPOINT_FORMAT, flatten_state

    arrays = flatten_state(small_state(cfg, 5))
    manifest = {"format": CHECKPOINT_FORMAT, "step": 5, "framework": "jax", "dtype": cfg.dtype, "config": cfg.to_dict()}
    edit(arrays, manifest)
    text = json.dumps(manifest, sort_keys=True)
    path.mkdir(parents=True, exist_ok=True)
    (path / CHECKPOINT_FILE).write_bytes(save(arrays, metadata={"manifest": text, "checksum": checksum(text, arrays)}))


def test_an_absurd_adam_count_is_refused_before_either_twin_sees_it(tmp_path) -> None:
    cfg = SMALL.replace(outer_optimizer="adam")

    def huge_count(arrays, manifest):
        arrays["opt/params/count"] = np.asarray(2**40, dtype=np.int64)

    _forged_checkpoint(tmp_path, cfg, huge_count)
    with pytest.raises(
        CheckpointError, match=r"'opt/params/count' is 1099511627776; Adam's update count must be 0..step \(5\)"
    ):
        read_checkpoint(tmp_path)


def test_a_manifest_with_control_characters_is_refused(tmp_path) -> None:
    def escape_codes(arrays, manifest):
        manifest["framework"] = "jax\n\x1b[2Jgotcha"

    _forged_checkpoint(tmp_path, SMALL, escape_codes)
    with pytest.raises(CheckpointError) as info:
        read_checkpoint(tmp_path)
    assert "'framework' holds control characters" in str(info.value) and "\x1b" not in str(info.value)


def test_unknown_checkpoint_entries_are_refused_before_they_are_read(tmp_path, monkeypatch) -> None:
    def extra(arrays, manifest):
        arrays["junk"] = np.zeros(1000)

    _forged_checkpoint(tmp_path, SMALL, extra)
    import safetensors

    reads = []
    real = safetensors.safe_open

    class Counting:
        def __init__(self, *a, **k):
            self.inner = real(*a, **k)

        def __enter__(self):
            self.f = self.inner.__enter__()
            return self

        def __exit__(self, *a):
            return self.inner.__exit__(*a)

        def metadata(self):
            return self.f.metadata()

        def keys(self):
            return self.f.keys()

        def get_tensor(self, key):
            reads.append(key)
            return self.f.get_tensor(key)

    monkeypatch.setattr(safetensors, "safe_open", Counting)
    with pytest.raises(CheckpointError, match=r"unexpected \['junk'\]; refused before reading them"):
        read_checkpoint(tmp_path)
    assert reads == []


def test_config_files_are_read_with_a_size_cap(tmp_path, capsys) -> None:
    t0 = time.perf_counter()
    assert main(["train", "--config", "/dev/zero", "--out", str(tmp_path / "r")]) == EXIT_USAGE
    assert one_error_line(capsys) == "config: '/dev/zero' is larger than 1048576 bytes; not a config file"
    assert time.perf_counter() - t0 < 5 and listing(tmp_path) == []


def _npz(path: Path, entries: dict[str, np.ndarray]) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for name, array in entries.items():
            with z.open(f"{name}.npy", "w", force_zip64=True) as f:
                np.lib.format.write_array(f, array, allow_pickle=True)
    return path


def test_npz_entries_are_checked_before_inflating(tmp_path) -> None:
    ok = _npz(tmp_path / "ok.npz", {"a": np.zeros(3), "b": np.asarray("text")})
    assert safeio.check_npz_entries(ok, {"a", "b"}, 1000) == {
        "a": ((3,), np.dtype("float64")),
        "b": ((), np.dtype("<U4")),
    }
    with pytest.raises(ConfigError, match=r"^golden: .*unexpected entry 'c'$"):
        safeio.check_npz_entries(_npz(tmp_path / "c.npz", {"a": np.zeros(3), "c": np.zeros(1)}), {"a"}, 1000)
    with pytest.raises(ConfigError, match="holds Python objects; refused unread"):
        safeio.check_npz_entries(_npz(tmp_path / "o.npz", {"a": np.array([{}], dtype=object)}), {"a"}, 1000)
    # 256 MB of zeros deflate to about 250 kB: the declared size is refused, nothing is inflated.
    bomb = _npz(tmp_path / "bomb.npz", {"a": np.zeros(3), "big": np.zeros(1 << 25)})
    assert bomb.stat().st_size < 1 << 20
    t0 = time.perf_counter()
    with pytest.raises(ConfigError, match=r"entry 'big' declares 268435456 bytes \(float64\[33554432\]\), more than"):
        safeio.check_npz_entries(bomb, {"a", "big"}, 1 << 20)
    assert time.perf_counter() - t0 < 0.5


def test_fuzzed_npz_files_only_ever_raise_config_error(tmp_path) -> None:
    blob = _npz(tmp_path / "g.npz", {"config": np.asarray("{}"), "grad/w0": np.ones((8, 1))}).read_bytes()
    rng = np.random.default_rng(12)
    path = tmp_path / "damaged.npz"
    refused = 0
    for i in range(300):
        data = bytearray(blob)
        if i % 3 == 0:
            data = data[: int(rng.integers(0, len(blob)))]
        else:
            for pos in rng.integers(0, len(blob), size=int(rng.integers(1, 8))):
                data[pos] = int(rng.integers(0, 256))
        path.write_bytes(bytes(data))
        try:
            safeio.check_npz_entries(path, {"config", "grad/w0"}, 1 << 16)
        except ConfigError as err:
            assert str(err).startswith("golden: ") and "\n" not in str(err), str(err)
            refused += 1
    assert refused >= 150


metrics_lines = st.one_of(
    st.binary(max_size=40),
    st.builds(
        lambda v: json.dumps(v).encode(),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
            lambda inner: (
                st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from([*GOOD_ROW, "x"]), inner, max_size=6)
            ),
            max_leaves=8,
        ),
    ),
    st.builds(
        lambda row: json.dumps(row).encode(), st.fixed_dictionaries({k: st.just(v) for k, v in GOOD_ROW.items()})
    ),
)


@settings(derandomize=True, max_examples=200, deadline=None)
@given(st.lists(metrics_lines, max_size=4))
def test_any_metrics_file_reads_back_checked_rows_or_one_config_error(tmp_path_factory, lines) -> None:
    path = tmp_path_factory.getbasetemp() / "fuzzed-metrics.jsonl"
    path.write_bytes(b"\n".join(lines))
    try:
        rows = readers.read_metrics(path)
    except ConfigError as err:
        assert err.field == "dir" and "\n" not in str(err) and str(path) in str(err)
        return
    assert [r["step"] for r in rows] == list(range(len(rows)))
    assert all(readers.metrics_row_problem(r) is None for r in rows)


def _mutated_evals():
    from tests.test_robustness import minimal_eval

    json_leaf = st.one_of(st.none(), st.booleans(), st.integers(-3, 3), st.floats(), st.text(max_size=4), st.just([]))
    return st.tuples(st.sampled_from(sorted(minimal_eval())), json_leaf).map(
        lambda kv: {**minimal_eval(), kv[0]: kv[1]}
    )


@settings(derandomize=True, max_examples=200, deadline=None)
@given(st.one_of(_mutated_evals(), st.dictionaries(st.text(max_size=6), st.integers(), max_size=3)))
def test_any_eval_json_is_accepted_whole_or_one_config_error(tmp_path_factory, data) -> None:
    from parity.report import render

    folder = tmp_path_factory.getbasetemp()
    (folder / "eval.json").write_text(json.dumps(data))
    try:
        result = readers.read_eval_file(folder / "eval.json", folder)
    except ConfigError as err:
        assert err.field == "dir" and "\n" not in str(err)
        return
    render(folder, SMALL, result, [], {}, [])  # what the reader accepts, the report can render


@settings(derandomize=True, max_examples=200, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["format", "step", "framework", "dtype", "config", "versions", "x"]),
        st.one_of(st.none(), st.integers(-2, 2), st.text(max_size=6), st.just({}), st.just([])),
        max_size=7,
    )
)
def test_any_manifest_is_accepted_typed_or_refused(data) -> None:
    problem = readers.manifest_problem(data)
    if problem is None:
        assert isinstance(data["step"], int) and data["step"] >= 0 and isinstance(data["config"], dict)
        assert all(isinstance(data[k], str) and data[k].isprintable() for k in ("format", "framework", "dtype"))
    else:
        assert "\n" not in problem


# --- 7. odd values and the environment --------------------------------------------------------------


def test_odd_values_are_validation_errors() -> None:
    cases = {
        "x_range": ({"x_range": [-1.7e308, 1.7e308], "dtype": "float64"}, "x_range: the width high - low of"),
        "x_range-float32": ({"x_range": [-1e39, 1.0]}, "x_range: [-1e+39, 1.0] is not finite in float32"),
        "phase-argument": ({"frequency_range": [1e20, 1e20], "x_range": [-1e20, 1e20]}, "x_range: frequency x input"),
        "alpha_init-float32": ({"alpha_init": 1e300}, "alpha_init: 1e+300 makes the first inner step"),
        "alpha_init-negative": ({"alpha_init": -0.1}, "alpha_init: must be >= 0, got -0.1 (a negative alpha climbs"),
        "allow-not-bool": ({"allow_negative_alpha": 1}, "allow_negative_alpha: must be true or false"),
    }
    for name, (fields, expected) in cases.items():
        with pytest.raises(ConfigError) as info:
            Config.from_dict(fields)
        assert str(info.value).startswith(expected), (name, str(info.value))
    assert Config.from_dict({"alpha_init": 1e300, "dtype": "float64"}).alpha_init == 1e300
    negative = Config.from_dict({"alpha_init": -0.1, "allow_negative_alpha": True})
    assert negative.alpha_init == -0.1 and Config.from_json(negative.to_json()) == negative


def test_x_range_that_overflows_is_one_cli_line_with_nothing_written(tmp_path, capsys) -> None:
    cfg = config_file(tmp_path, {"x_range": [-1.7e308, 1.7e308], "dtype": "float64"})
    assert main(["train", "--config", cfg, "--out", str(tmp_path / "run")]) == EXIT_USAGE
    assert one_error_line(capsys).startswith("x_range: the width high - low of [-1.7e+308, 1.7e+308] overflows")
    assert listing(tmp_path) == ["cfg.json"]


@pytest.mark.parametrize(
    "env, expected",
    [
        ({"JAX_ENABLE_X64": "maybe"}, "maml-parity: error: JAX_ENABLE_X64: must be a boolean word (y, yes, t, true"),
        ({"JAX_PLATFORMS": "foo"}, "maml-parity: error: JAX_PLATFORMS: names 'foo', which JAX does not know"),
        ({"PYTHONIOENCODING": "ascii"}, "maml-parity: error: PYTHONIOENCODING: standard output encodes 'ascii'"),
    ],
)
def test_a_bad_environment_is_one_line_before_any_work(tmp_path, env, expected) -> None:
    args = [sys.executable, "-m", "parity", "train", "--out", str(tmp_path / "run"), "--no-progress"]
    result = subprocess.run(args, capture_output=True, text=True, env={**ENV, **env}, timeout=120)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.startswith(expected) and result.stderr.count("\n") == 1, result.stderr
    assert listing(tmp_path) == []


@pytest.mark.slow
def test_jax_platforms_naming_an_absent_platform_is_one_line(tmp_path) -> None:
    args = [sys.executable, "-m", "parity", "train", "--out", str(tmp_path / "run"), "--no-progress"]
    result = subprocess.run(args, capture_output=True, text=True, env={**ENV, "JAX_PLATFORMS": "tpu"}, timeout=120)
    assert result.returncode == 2
    assert result.stderr.startswith("maml-parity: error: JAX_PLATFORMS: 'tpu', but JAX could not start it")
    assert result.stderr.count("\n") == 1 and listing(tmp_path) == []


# --- 8. files created honouring the umask -----------------------------------------------------------


@pytest.mark.parametrize("mask", [0o022, 0o027, 0o002])
def test_atomic_writes_honour_the_umask(tmp_path, mask) -> None:
    old = os.umask(mask)
    try:
        atomic_write(tmp_path / "f.json", lambda f: f.write(b"{}"))
        write_ckpt(tmp_path / "run", small_state(SMALL, 1), SMALL, "jax")
    finally:
        os.umask(old)
    for path in (tmp_path / "f.json", tmp_path / "run" / CHECKPOINT_FILE, tmp_path / "run" / MANIFEST_FILE):
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask, path


def test_a_failed_atomic_write_names_the_file_not_its_temporary(tmp_path) -> None:
    def full_disk(name_it: bool):
        def write(f) -> None:  # what write() raises on a full disk: no file name, or the descriptor
            raise OSError(28, "No space left on device", *([f.name] if name_it else []))

        return write

    for name_it in (False, True):
        with pytest.raises(OSError) as info:
            atomic_write(tmp_path / "eval.json", full_disk(name_it))
        assert info.value.filename == str(tmp_path / "eval.json") and info.value.strerror == "No space left on device"
        assert listing(tmp_path) == []


def test_ctrl_c_while_the_interpreter_shuts_down_is_exit_130_without_a_traceback() -> None:
    """What `main` arms once a command has finished: a Ctrl-C during shutdown (here, inside an
    atexit handler, where Python would print a traceback and exit 0) ends the process at once."""
    code = (
        "import atexit, os, signal, time\n"
        # Python's own Ctrl-C handler, as in a terminal: a shell's background job starts with SIGINT ignored
        "signal.signal(signal.SIGINT, signal.default_int_handler)\n"
        "from parity.startup import exit_quietly_on_interrupt\n"
        "atexit.register(lambda: (os.kill(os.getpid(), signal.SIGINT), time.sleep(30)))\n"
        "exit_quietly_on_interrupt()\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV, timeout=60)
    assert (result.returncode, result.stderr) == (130, "maml-parity: interrupted\n")
    unarmed = subprocess.run(
        [sys.executable, "-c", code.replace("exit_quietly_on_interrupt()\n", "")],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=60,
    )
    assert unarmed.returncode == 0 and "KeyboardInterrupt" in unarmed.stderr  # the failure it prevents


# A gc callback that sends SIGINT to its own process: the signal is handled inside the callback,
# where a KeyboardInterrupt is printed as "Exception ignored" and dropped (JAX's _xla_gc_callback).
GC_INTERRUPT = r"""
import gc, os, signal, sys, time
signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal, not a background job's SIG_IGN
from parity import startup
if sys.argv[1] == "armed":
    startup.install_interrupt_handler(grace_s=30)
sent = []
def callback(phase, info):
    if not sent:
        sent.append(1)
        os.kill(os.getpid(), signal.SIGINT)
        for _ in range(1000):  # bytecodes in the callback: the handler runs here
            pass
gc.callbacks.append(callback)
try:
    gc.collect()
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        time.sleep(0.01)
    print("not interrupted")
except KeyboardInterrupt:
    print("interrupted")
"""


def test_ctrl_c_inside_a_gc_callback_is_not_swallowed() -> None:
    armed = subprocess.run([sys.executable, "-c", GC_INTERRUPT, "armed"], capture_output=True, text=True, env=ENV)
    assert armed.stdout == "interrupted\n" and armed.stderr == ""
    plain = subprocess.run([sys.executable, "-c", GC_INTERRUPT, "plain"], capture_output=True, text=True, env=ENV)
    assert plain.stdout == "not interrupted\n" and "Exception ignored" in plain.stderr  # the failure it prevents

"""Files and resources (issue 20, section 3, and --threads from section 4).

- A symbolic link where a run file or the run lock belongs never makes a command write through it.
- A FIFO (or any non-regular file) where a run file, a golden file, a config or the lock belongs is
  refused at once with one line, never waited on (a real subprocess under a timeout each).
- One reader for golden files: the pytest plugin's fixture refuses the zip bomb ``diff`` refuses.
- The memory estimate honours ``ulimit -v`` and the cgroup's memory limit, not only MemAvailable.
- ``train --resume`` reads ``metrics.jsonl`` a line at a time under the report's cap.
- ``diff --json`` is written atomically; ``-`` is standard output.
- ``--threads`` past four per core (or 1024) is refused naming the flag and the range.

docs/robustness.md ("Files and resources") has a row for each class, naming the test here.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from test_plugin import project, run_pytest
from test_run_safety import ENV, SMALL, listing, one_error_line, small_state, snapshot

from parity import limits, readers, safeio, threads
from parity.checkpoint import CHECKPOINT_FILE, atomic_write
from parity.checkpoint import write_checkpoint as write_ckpt
from parity.cli import EXIT_USAGE, main
from parity.config import ConfigError
from parity.diff import diff_files, write_report
from parity.golden import GoldenFileError, golden_arrays, read_golden, read_golden_arrays, write_golden
from parity.oracle import NumpyOracle

VICTIM = b"a file outside the run, which must survive\n"
RUN_FILES = (".lock", "config.json", "metrics.jsonl", CHECKPOINT_FILE, "checkpoint.json", "final.npz")


def make_run(folder: Path, step: int = 2) -> Path:
    """A small run on disk without training: config.json, a checkpoint at ``step``, its metrics."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(SMALL.to_json() + "\n")
    write_ckpt(folder, small_state(SMALL, step), SMALL, "jax")
    row = {"outer_loss": 0.5, "inner_losses": [0.5, 0.4], "alpha": 0.001, "alpha_grad": 0.0, "wall_s": 0.0}
    (folder / "metrics.jsonl").write_text("".join(json.dumps({"step": i, **row}) + "\n" for i in range(step)))
    return folder


def train_args(out: Path, *extra: str) -> list[str]:
    return ["train", "--framework", "jax", "--config", SMALL.to_json(), "--out", str(out), "--no-progress", *extra]


# --- symbolic links ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", RUN_FILES)
def test_a_link_where_a_run_file_belongs_is_refused_and_its_target_kept(tmp_path, capsys, name) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_bytes(VICTIM)
    run = make_run(tmp_path / "run") if name != ".lock" else tmp_path / "run"
    run.mkdir(exist_ok=True)
    (run / name).unlink(missing_ok=True)
    (run / name).symlink_to(victim)
    before = snapshot(run)
    assert main(train_args(run, "--resume")) == EXIT_USAGE
    message = one_error_line(capsys)
    assert message.startswith("out: ") and repr(str(run / name)) in message and "symbolic link" in message, message
    assert victim.read_bytes() == VICTIM and snapshot(run) == before and (run / name).is_symlink()


def test_a_planted_lock_link_refuses_a_fresh_train_too(tmp_path, capsys) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_bytes(VICTIM)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / ".lock").symlink_to(victim)
    assert main(train_args(tmp_path / "run")) == EXIT_USAGE
    assert one_error_line(capsys) == (
        f"out: {str(tmp_path / 'run' / '.lock')!r} is a symbolic link, not a lock file; remove it (nothing was written)"
    )
    assert victim.read_bytes() == VICTIM and listing(tmp_path / "run") == [".lock"]
    (tmp_path / "run" / ".lock").unlink()
    os.link(victim, tmp_path / "run" / ".lock")  # a hard link: the holder's record would overwrite the victim
    assert main(train_args(tmp_path / "run")) == EXIT_USAGE
    assert one_error_line(capsys).endswith(
        "/.lock' is a file with 2 hard links, not a lock file; remove it (nothing was written)"
    )
    assert victim.read_bytes() == VICTIM


def test_writes_never_go_through_a_link(tmp_path) -> None:
    """The two ways files are written: atomic replacement and the metrics log's open."""
    victim = tmp_path / "victim.txt"
    victim.write_bytes(VICTIM)
    link = tmp_path / "link.json"
    link.symlink_to(victim)
    with pytest.raises(ConfigError, match=r"^out: .*link\.json' is a symbolic link; it is never written through"):
        atomic_write(link, lambda f: f.write(b"x"))
    with pytest.raises(ConfigError, match=r"^out: .*link\.json' is a symbolic link; a run's files are never written"):
        safeio.open_regular(link, "out", write=True, append=True)
    dangling = tmp_path / "dangling.jsonl"
    dangling.symlink_to(tmp_path / "would_be_created")
    with pytest.raises(ConfigError, match="symbolic link"):
        safeio.open_regular(dangling, "out", write=True)
    assert victim.read_bytes() == VICTIM and not (tmp_path / "would_be_created").exists()
    with pytest.raises(ConfigError, match=r"^json: .*link\.json' is a symbolic link"):
        safeio.check_output_file(str(link), "json")
    hard = tmp_path / "hard.jsonl"
    os.link(victim, hard)
    with pytest.raises(ConfigError, match=r"hard\.jsonl' has 2 hard links; it is never written in place"):
        safeio.open_regular(hard, "out", write=True, append=True)
    assert victim.read_bytes() == VICTIM
    # a regular file is written as before
    plain = tmp_path / "plain.json"
    atomic_write(plain, lambda f: f.write(b"1"))
    fd = safeio.open_regular(plain, "out", write=True, append=True)
    os.write(fd, b"2")
    os.close(fd)
    assert plain.read_bytes() == b"12"


# --- FIFOs: refused at once, never waited on -----------------------------------------------------------


def _cli(args: list[str], cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "parity", *args], cwd=cwd, env=ENV, capture_output=True, text=True, timeout=timeout
    )


def _golden(path: Path, dtype: str = "float64") -> Path:
    cfg = SMALL.replace(dtype=dtype)
    return write_golden(path, golden_arrays(NumpyOracle(), cfg))


FIFO_CASES = {
    # name: (file made a FIFO, relative to the run folder, the command's arguments, words of the one line)
    "report-metrics": ("run/metrics.jsonl", ["report", "run"], "metrics.jsonl' is a FIFO (named pipe)"),
    "report-config": ("run/config.json", ["report", "run"], "config.json' is a FIFO (named pipe)"),
    "eval-checkpoint": ("run/checkpoint.safetensors", ["eval", "run", "--tasks", "2"], "is not a file"),
    "eval-eval-json": ("run/eval.json", ["eval", "run", "--tasks", "2"], "eval.json' is a FIFO (named pipe)"),
    "resume-metrics": ("run/metrics.jsonl", ["train", "--resume", "--out", "run"], "metrics.jsonl' is a FIFO"),
    "resume-lock": ("run/.lock", ["train", "--resume", "--out", "run"], ".lock' is a FIFO (named pipe), not a lock"),
    "resume-config": ("run/config.json", ["train", "--resume", "--out", "run"], "config.json' is a FIFO"),
    "train-config-flag": ("cfg.json", ["train", "--config", "cfg.json", "--out", "fresh"], "cfg.json' is a FIFO"),
    "diff-a": ("a.npz", ["diff", "a.npz", "b.npz"], "golden: 'a.npz' is a FIFO (named pipe), not a regular file"),
}


@pytest.mark.parametrize("case", FIFO_CASES, ids=list(FIFO_CASES))
def test_a_fifo_where_a_file_belongs_is_refused_at_once(tmp_path, case) -> None:
    fifo, args, words = FIFO_CASES[case]
    make_run(tmp_path / "run")
    _golden(tmp_path / "b.npz")
    if fifo.startswith("run/") and fifo != "run/.lock":
        (tmp_path / fifo).unlink(missing_ok=True)
    if "train" in args:
        args = [*args, "--framework", "jax", "--no-progress"]
        if "--config" not in args:
            args += ["--config", SMALL.to_json()]
    os.mkfifo(tmp_path / fifo)
    before = listing(tmp_path)
    t0 = time.perf_counter()
    proc = _cli(args, tmp_path, timeout=120)  # a hang ends in TimeoutExpired: a failure
    assert proc.returncode == EXIT_USAGE, (proc.stdout, proc.stderr)
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.startswith("maml-parity: error: ") and words in proc.stderr, proc.stderr
    assert listing(tmp_path) == before, time.perf_counter() - t0


def test_the_plugin_refuses_a_fifo_golden_file_at_once(tmp_path) -> None:
    where = project(tmp_path)
    (where / "test_mine").mkdir()
    os.mkfifo(where / "test_mine" / "mine.npz")
    code, out = run_pytest(where, "-k", "test_golden", timeout=120)
    assert code == 1 and "mine.npz' is a FIFO (named pipe), not a regular file; refused unread" in out, out
    assert "Traceback" not in out


# --- one golden-file reader: a zip bomb ------------------------------------------------------------------


@pytest.fixture(scope="module")
def bomb(tmp_path_factory) -> Path:
    """A 5 MB .npz whose ``outer_loss`` inflates to 1.2 GB of zeros (past MAX_GOLDEN_BYTES, 1 GiB)."""
    path = tmp_path_factory.mktemp("bomb") / "mine.npz"
    n = 150_000_000
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as z:
        with z.open("outer_loss.npy", "w", force_zip64=True) as f:
            np.lib.format.write_array_header_1_0(f, {"descr": "<f8", "fortran_order": False, "shape": (n,)})
            chunk, left = bytes(8 << 20), n * 8
            while left:
                f.write(chunk[: min(left, len(chunk))])
                left -= min(left, len(chunk))
    assert path.stat().st_size < 8 << 20
    return path


def test_one_golden_reader_refuses_a_zip_bomb_before_inflating_it(bomb) -> None:
    t0 = time.perf_counter()
    for read in (read_golden, read_golden_arrays, lambda p: diff_files(p, p)):
        with pytest.raises(GoldenFileError, match=r"entry 'outer_loss' declares 1200000000 bytes .* before inflating"):
            read(bomb)
    assert time.perf_counter() - t0 < 2


def test_the_plugin_golden_fixture_refuses_the_same_zip_bomb(tmp_path, bomb) -> None:
    where = project(tmp_path)
    (where / "test_mine").mkdir()
    (where / "test_mine" / "mine.npz").write_bytes(bomb.read_bytes())
    code, out = run_pytest(where, "-k", "test_golden", timeout=120)
    assert code == 1, out
    assert "entry 'outer_loss' declares 1200000000 bytes (float64[150000000])" in out, out
    assert "refused before inflating it" in out and "Traceback" not in out and "MemoryError" not in out


# --- memory: ulimit -v and the cgroup ----------------------------------------------------------------------


def _fake_system(tmp_path: Path, cgroup_line: str, files: dict[str, str], available_kb: int = 64 << 20) -> tuple:
    proc, root = tmp_path / "proc", tmp_path / "cgroup"
    (proc / "self").mkdir(parents=True)
    (proc / "meminfo").write_text(f"MemTotal: {2 * available_kb} kB\nMemAvailable: {available_kb} kB\n")
    (proc / "self" / "cgroup").write_text(cgroup_line + "\n")
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return str(proc), str(root)


def test_the_budget_is_the_tightest_of_meminfo_and_the_cgroup_v2_and_v1_limits(tmp_path) -> None:
    gib = 1 << 30
    v2 = {
        "memory.max": "max\n",  # the root: no limit
        "job/memory.max": f"{4 * gib}\n",
        "job/memory.current": f"{3 * gib}\n",
        "job/memory.stat": f"anon 1\ninactive_file {gib // 2}\n",  # page cache it may drop counts as free
        "job/task/memory.max": "max\n",
    }
    proc, root = _fake_system(tmp_path / "a", "0::/job/task", v2)
    assert limits.cgroup_headroom(proc, root) == (gib + gib // 2, 4 * gib)
    assert limits.memory_budget(proc, root) == (gib + gib // 2, "the cgroup's memory limit (4.0 GB) leaves")
    v1 = {
        "memory/memory.limit_in_bytes": "9223372036854771712\n",  # v1's "no limit"
        "memory/ci/memory.limit_in_bytes": f"{2 * gib}\n",
        "memory/ci/memory.usage_in_bytes": f"{gib + gib // 4}\n",
    }
    proc, root = _fake_system(tmp_path / "b", "4:memory:/ci\n0::/", v1)
    assert limits.memory_budget(proc, root) == (3 * gib // 4, "the cgroup's memory limit (2.0 GB) leaves")
    proc, root = _fake_system(tmp_path / "c", "0::/", {"memory.max": "max\n"}, available_kb=1 << 20)
    assert limits.cgroup_headroom(proc, root) is None
    assert limits.memory_budget(proc, root) == (gib, "of memory available")


ULIMIT_KB = 3_000_000  # ulimit -v 3G: the setting


def _under_ulimit(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    command = f"ulimit -v {ULIMIT_KB} && exec {sys.executable} -m parity " + " ".join(f"'{a}'" for a in args)
    return subprocess.run(["bash", "-c", command], cwd=cwd, env=ENV, capture_output=True, text=True, timeout=300)


@pytest.mark.slow  # a JAX training run under the limit
def test_a_meta_batch_past_ulimit_v_is_one_line_and_a_sane_rerun_works(tmp_path) -> None:
    big = ["train", "--preset", "seed-alpha", "--meta-batch", "50000", "--iterations", "2", "--out", "run"]
    proc = _under_ulimit([*big, "--no-progress"], tmp_path)
    assert proc.returncode == EXIT_USAGE and proc.stdout == "", (proc.stdout, proc.stderr)
    assert proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith("maml-parity: error: meta_batch: this run would need about ")
    assert "the address-space limit (ulimit -v, 2.9 GB) leaves; lower meta_batch" in proc.stderr
    assert listing(tmp_path) == []  # nothing written: the plain rerun below is not blocked
    proc = _under_ulimit(
        ["train", "--preset", "seed-alpha", "--iterations", "2", "--out", "run", "--no-progress"], tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    assert len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) == 2


# --- metrics.jsonl on --resume: a line at a time, under the report's cap ---------------------------------


def test_resume_reads_metrics_a_line_at_a_time_under_the_cap(tmp_path, capsys, monkeypatch) -> None:
    run = make_run(tmp_path / "run", step=2)
    path = run / "metrics.jsonl"
    size = path.stat().st_size + (5 << 30)
    with open(path, "ab") as f:  # 5 GB without one newline, sparse: no disk used
        f.truncate(size)
    monkeypatch.setattr(readers, "JSON_MAX_BYTES", 1 << 20)  # the cap, lowered so the test reads 1 MB, not 512
    t0 = time.perf_counter()
    assert main(train_args(run, "--resume")) == EXIT_USAGE
    assert one_error_line(capsys) == (f"resume: {str(path)!r} is larger than 1048576 bytes; not a maml-parity run file")
    assert time.perf_counter() - t0 < 60 and path.stat().st_size == size
    assert sorted(p.name for p in run.iterdir()) == ["checkpoint.json", CHECKPOINT_FILE, "config.json", "metrics.jsonl"]


def test_metrics_lines_counts_bytes_not_lines(tmp_path) -> None:
    path = tmp_path / "m.jsonl"
    path.write_bytes(b"a\n" * 10 + b"b" * 100)
    assert [n for n, _ in readers.metrics_lines(path, "dir", max_bytes=120)] == list(range(1, 12))
    with pytest.raises(ConfigError, match="is larger than 119 bytes"):
        list(readers.metrics_lines(path, "dir", max_bytes=119))


# --- diff --json ------------------------------------------------------------------------------------------


def test_diff_json_dash_is_standard_output_and_a_file_is_written_atomically(tmp_path, capsys, monkeypatch) -> None:
    a, b = _golden(tmp_path / "a.npz"), _golden(tmp_path / "b.npz")
    report = diff_files(a, b)
    monkeypatch.chdir(tmp_path)
    write_report(report, "-")
    assert json.loads(capsys.readouterr().out)["status"] == "same" and not (tmp_path / "-").exists()
    out = tmp_path / "diff.json"
    out.write_text("the previous report\n")

    def fail(*_: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="No space left on device"):
        write_report(report, out)
    assert out.read_text() == "the previous report\n" and listing(tmp_path) == ["a.npz", "b.npz", "diff.json"]
    monkeypatch.undo()
    write_report(report, out)
    assert json.loads(out.read_text())["ok"] is True


# --- --threads --------------------------------------------------------------------------------------------


def test_threads_past_four_per_core_are_refused_naming_the_flag(tmp_path, capsys) -> None:
    cores = os.cpu_count() or 1
    top = min(1024, 4 * cores)
    assert threads.max_threads() == top and threads.check_requested(top) == top
    expected = f"threads: must be an integer from 1 to {top} (4 per core, {cores} cores here), got {top + 1}"
    with pytest.raises(ConfigError) as err:
        threads.choose(top + 1)
    assert str(err.value) == expected
    assert main(["dump", "--framework", "jax", "--threads", "100000", "--out", str(tmp_path / "g.npz")]) == EXIT_USAGE
    assert one_error_line(capsys) == expected.replace(str(top + 1), "100000")
    assert listing(tmp_path) == []
    for text, words in (
        ("0", "threads: must be an integer >= 1, got 0"),
        ("x", "threads: must be an integer, got 'x'"),
    ):
        with pytest.raises(argparse.ArgumentTypeError, match=f"^{re.escape(words)}$"):
            threads.parse_flag(text)
    assert threads.parse_flag(str(top)) == top
    with pytest.raises(argparse.ArgumentTypeError, match=f"^{re.escape(expected)}$"):
        threads.parse_flag(str(top + 1))

"""Every evaluation of a run kept: ``DIR/eval.json`` is the latest, ``DIR/evals/<framework>-<n>.json``
each one ever made (``n`` counts that framework's evaluations of the run from 1).

A second ``eval`` (other phase shifts, the other framework, another dtype) never loses the first:
each is written under a name no earlier evaluation holds, created exclusively (an existing file is
never replaced, even by two evaluations racing outside the run lock), and ``eval.json`` is then
replaced atomically by the newest. The report compares the latest evaluation of each framework
that evaluated the same checkpoint the same way (``parity.report``).
"""

from __future__ import annotations

import json
import os
import platform
import re
import tempfile
from pathlib import Path
from typing import Any

from parity.checkpoint import atomic_write
from parity.config import ConfigError
from parity.rundir import EVAL_FILE
from parity.safeio import file_mode

LATEST = EVAL_FILE
KEPT_DIR = "evals"
_KEPT_NAME = re.compile(r"(?P<framework>[A-Za-z0-9_.]+(?:-[A-Za-z0-9_.]+)*)-(?P<n>[0-9]+)\.json")
# What must match for two evaluations to be compared number for number.
SAME_WORK = ("checkpoint_step", "tasks", "shots", "max_steps", "pretrain_steps", "random_seed", "query_points")


def keep(run_dir: Path, result: dict[str, Any]) -> Path:
    """Write ``result`` as the next ``evals/<framework>-<n>.json`` (never over an earlier one), then
    as ``eval.json``; returns the kept file's path."""
    text = (json.dumps(result, indent=1, allow_nan=False) + "\n").encode()
    folder = run_dir / KEPT_DIR
    folder.mkdir(exist_ok=True)
    taken = [n for framework, n, _ in kept(run_dir) if framework == result["framework"]]
    n = max(taken, default=0) + 1
    fd, tmp = tempfile.mkstemp(prefix=".eval-", suffix=".tmp", dir=folder)
    try:
        os.fchmod(fd, file_mode())
        with os.fdopen(fd, "wb") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        while True:  # a hard link fails on an existing name: nothing is ever replaced
            path = folder / f"{result['framework']}-{n}.json"
            try:
                os.link(tmp, path)
                break
            except FileExistsError:
                n += 1
    finally:
        Path(tmp).unlink(missing_ok=True)
    atomic_write(run_dir / LATEST, lambda f: f.write(text))
    return path


def kept(run_dir: Path) -> list[tuple[str, int, Path]]:
    """The kept evaluations as ``(framework, n, path)``, by framework then n; other files are ignored."""
    folder = run_dir / KEPT_DIR
    if not folder.is_dir():
        return []
    found = []
    for path in folder.iterdir():
        match = _KEPT_NAME.fullmatch(path.name)
        if match and path.is_file() and not path.is_symlink():
            found.append((match["framework"], int(match["n"]), path))
    return sorted(found, key=lambda item: (item[0], item[1]))


def comparable(run_dir: Path, main: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The latest kept evaluation of each other framework that did the same work as ``main`` (same
    checkpoint, tasks, shots, steps, baselines and dtype): ``{framework: result}``, ``main``'s first."""
    from parity.readers import read_eval_file

    out: dict[str, dict[str, Any]] = {main["framework"]: main}
    for framework, _, path in reversed(kept(run_dir)):  # newest first within each framework
        if framework not in out:
            try:
                result = read_eval_file(path, run_dir)
            except ConfigError:  # not an evaluation (written by hand, cut short): compared with nothing
                continue
            if same_work(result, main):
                out[framework] = result
    return {main["framework"]: main, **{k: v for k, v in sorted(out.items()) if k != main["framework"]}}


def same_work(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two evaluations adapted the same checkpoint on the same tasks the same way (phase shifts
    may differ: the comparison takes the ones they share)."""
    mode = [(r.get("baseline_alpha") or {}).get("mode", "meta") for r in (a, b)]
    return mode[0] == mode[1] and all(a.get(key) == b.get(key) for key in (*SAME_WORK, "dtype"))


def read_eval(run_dir: Path) -> dict[str, Any]:
    """``run_dir/eval.json``, checked for every key ``report`` reads (``parity.readers``)."""
    from parity.readers import read_eval_file

    path = run_dir / LATEST
    if not path.exists():
        raise ConfigError("dir", f"no eval.json in {str(run_dir)!r}; run `maml-parity eval {run_dir}` first")
    return read_eval_file(path, run_dir)


def read_json(path: Path, field: str) -> Any:
    """A JSON file (size-capped), or a ConfigError naming ``field`` and the file if it is not valid
    JSON; a checkpoint manifest copy (``checkpoint.json``) is also checked for shape and type."""
    from parity.checkpoint import MANIFEST_FILE
    from parity.readers import load_json, read_manifest

    if path.name == MANIFEST_FILE:
        return read_manifest(path, field)
    return load_json(path, field)


def hardware() -> dict[str, Any]:
    return {"platform": platform.platform(), "machine": platform.machine(), "cpu_count": os.cpu_count()}

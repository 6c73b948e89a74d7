"""Shape and type checks for the run files people and tools read back: ``metrics.jsonl``,
``eval.json``, ``checkpoint.json``.

Every reader ends in a :class:`ConfigError` whose message names the file (and the line) and what
is wrong, one line; strings taken from a file are escaped before they are shown
(:func:`parity.safeio.printable`). Files are read with a size cap.
"""

from __future__ import annotations

import itertools
import json
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from parity import safeio
from parity.config import ConfigError
from parity.safeio import printable

JSON_MAX_BYTES = 512 << 20  # an eval.json at the caps is tens of MB; a metrics log of 1e6 steps ~ 300 MB
EVAL_FORMAT = "maml-parity-eval/1"
STARTS = ("meta", "random", "pretrained")


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _finite(value: Any) -> bool:
    return _number(value) and math.isfinite(value)


def _number_or_null(value: Any) -> bool:
    return value is None or _finite(value)


def _summary(value: Any, keys: tuple[str, ...]) -> bool:
    """A number, or a dict of exactly ``keys`` holding numbers (per-parameter α summaries)."""
    if _number(value):
        return True
    return isinstance(value, dict) and set(value) == set(keys) and all(_number(v) for v in value.values())


def read_bytes_capped(path: Path, field: str, max_bytes: int = JSON_MAX_BYTES) -> bytes:
    return safeio.read_bytes_capped(path, field, max_bytes, "a maml-parity run file")


def load_json(path: Path, field: str) -> Any:
    """A JSON file, read with a size cap; one error naming the file otherwise."""
    data = read_bytes_capped(path, field)
    try:
        return json.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(field, f"{str(path)!r} is not UTF-8 text; delete it or write it again") from None
    except (ValueError, RecursionError) as err:  # JSONDecodeError is a ValueError
        reason = err.msg if isinstance(err, json.JSONDecodeError) else type(err).__name__
        where = f" at line {err.lineno}" if isinstance(err, json.JSONDecodeError) else ""
        raise ConfigError(
            field, f"{str(path)!r} is not valid JSON ({reason}{where}); delete it or write it again"
        ) from None


# --- metrics.jsonl ----------------------------------------------------------------------------------


def metrics_row_problem(row: Any) -> str | None:
    """What is wrong with one parsed metrics line, or None."""
    if not isinstance(row, dict):
        return f"a JSON {type(row).__name__}, not an object"
    step = row.get("step")
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        return f"'step' must be an integer >= 0, got {printable(repr(step), 40)}"
    if not _number(row.get("outer_loss")):
        return "'outer_loss' must be a number"
    inner = row.get("inner_losses")
    if not isinstance(inner, list) or not all(_number(v) for v in inner):
        return "'inner_losses' must be a list of numbers"
    if not _summary(row.get("alpha"), ("mean", "min", "max")):
        return "'alpha' must be a number or {mean, min, max}"
    if not _summary(row.get("alpha_grad"), ("norm",)):
        return "'alpha_grad' must be a number or {norm}"
    if "wall_s" in row and not _number(row["wall_s"]):
        return "'wall_s' must be a number"
    return None


def metrics_lines(path: Path, field: str = "dir", max_bytes: int | None = None) -> Iterator[tuple[int, bytes]]:
    """``(line number, bytes)`` of each line of a ``metrics.jsonl``: the one reader of metrics
    files (``report``, ``train --resume``). A regular file only (a FIFO is refused, not waited on),
    read a line at a time, never more than ``max_bytes`` (default :data:`JSON_MAX_BYTES`) in all:
    a larger file is one line naming it, not a MemoryError."""
    where = repr(str(path))
    max_bytes = JSON_MAX_BYTES if max_bytes is None else max_bytes
    with os.fdopen(safeio.open_regular(path, field), "rb") as f:
        total = 0
        for number in itertools.count(1):
            raw = f.readline(max_bytes - total + 1)
            if not raw:
                return
            total += len(raw)
            if total > max_bytes:
                raise ConfigError(field, f"{where} is larger than {max_bytes} bytes; not a maml-parity run file")
            yield number, raw


def read_metrics(path: Path, field: str = "dir") -> list[dict[str, Any]]:
    """Every row of a ``metrics.jsonl``, each checked; steps must be 0, 1, 2, ... in order."""
    rows: list[dict[str, Any]] = []
    where = repr(str(path))
    for number, raw in metrics_lines(path, field):
        if not raw.strip():
            continue
        try:
            row = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError:
            raise ConfigError(field, f"{where} is not JSON lines (line {number} is not UTF-8 text)") from None
        except (ValueError, RecursionError) as err:
            reason = err.msg if isinstance(err, json.JSONDecodeError) else type(err).__name__
            raise ConfigError(
                field, f"{where} is not JSON lines (line {number}: {reason}); resume the run with train --resume"
            ) from None
        problem = metrics_row_problem(row)
        if problem is None and row["step"] != len(rows):
            problem = f"step {row['step']} where step {len(rows)} was due"
        if problem is not None:
            raise ConfigError(field, f"{where} line {number} is not a metrics row: {problem}")
        rows.append(row)
    return rows


# --- checkpoint.json (the manifest copy) -----------------------------------------------------------

_MANIFEST_TYPES: dict[str, tuple[type, str]] = {
    "format": (str, "text"),
    "step": (int, "an integer"),
    "framework": (str, "text"),
    "dtype": (str, "text"),
    "config": (dict, "an object"),
}


def manifest_problem(manifest: Any) -> str | None:
    """What is wrong with a checkpoint manifest's shape and types, or None."""
    if not isinstance(manifest, dict):
        return f"a JSON {type(manifest).__name__}, not an object"
    for key, (kind, words) in _MANIFEST_TYPES.items():
        value = manifest.get(key)
        if not isinstance(value, kind) or isinstance(value, bool):
            return f"{key!r} must be {words}, got {printable(repr(value), 40)}"
    if manifest["step"] < 0:
        return f"'step' must be >= 0, got {manifest['step']}"
    for key in ("framework", "dtype", "format"):
        if not manifest[key].isprintable() or len(manifest[key]) > 200:
            return f"{key!r} holds control characters or is too long: {printable(manifest[key], 60)!r}"
    for key in ("versions", "sampler"):
        if key in manifest and not isinstance(manifest[key], dict):
            return f"{key!r} must be an object"
    return None


def read_manifest(path: Path, field: str = "dir") -> dict[str, Any]:
    manifest = load_json(path, field)
    problem = manifest_problem(manifest)
    if problem is not None:
        raise ConfigError(field, f"{str(path)!r} is not a checkpoint manifest: {problem}")
    return manifest  # type: ignore[no-any-return]


# --- eval.json ------------------------------------------------------------------------------------


def eval_problem(result: Any) -> str | None:
    """What is wrong with an ``eval.json``'s shape and types (what ``report`` reads), or None."""
    if not isinstance(result, dict) or result.get("format") != EVAL_FORMAT:
        return f"not a {EVAL_FORMAT} file"
    if result.get("family", "sinusoid") != "sinusoid":  # issue 18: another family's records (its module checks them)
        return _family_eval_problem(result)
    for key in ("tasks", "shots", "max_steps", "query_points", "pretrain_steps", "random_seed"):
        value = result.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            return f"{key!r} must be an integer >= 0"
    for key in ("framework", "dtype", "inner_loss"):
        if not isinstance(result.get(key), str):
            return f"{key!r} must be text"
    shifts = result.get("phase_shifts")
    if not isinstance(shifts, list) or not shifts or not all(_finite(b) for b in shifts):
        return "'phase_shifts' must be a non-empty list of numbers"
    if not _summary(result.get("alpha"), ("mean", "min", "max")):
        return "'alpha' must be a number or {mean, min, max}"
    n = result["max_steps"] + 1
    for start in STARTS:
        records = result.get(start)
        if not isinstance(records, list) or len(records) != len(shifts):
            return f"{start!r} must be a list of one record per phase shift ({len(shifts)})"
        for record in records:
            if not isinstance(record, dict):
                return f"{start!r} holds a record that is not an object"
            for key in ("mse_mean", "mse_ci95", "l1_mean", "l1_ci95"):
                values = record.get(key)
                if not isinstance(values, list) or len(values) != n or not all(_number_or_null(v) for v in values):
                    return f"{start}.{key} must be a list of {n} numbers (or null)"
            if "diverged" in record and not (
                isinstance(record["diverged"], list) and all(isinstance(v, int) for v in record["diverged"])
            ):
                return f"{start}.diverged must be a list of integers"
            if not _finite(record.get("phase_shift")):
                return f"{start}.phase_shift must be a number"
    fits = result.get("fits", [])
    if not isinstance(fits, list) or not all(isinstance(f, dict) for f in fits):
        return "'fits' must be a list of objects"
    return None


def _family_eval_problem(result: dict[str, Any]) -> str | None:
    from parity import eval_classification

    checks = {"classification": eval_classification.eval_problem}
    family = result["family"]
    if family not in checks:
        return f"'family' must be one of sinusoid, {', '.join(checks)}; got {family!r}"
    for key in ("framework", "dtype", "inner_loss"):
        if not isinstance(result.get(key), str):
            return f"{key!r} must be text"
    if not _summary(result.get("alpha"), ("mean", "min", "max")):
        return "'alpha' must be a number or {mean, min, max}"
    return checks[family](result)


def read_eval_file(path: Path, run_dir: Path, field: str = "dir") -> dict[str, Any]:
    result = load_json(path, field)
    problem = eval_problem(result)
    if problem is not None:
        detail = "" if problem.startswith("not a ") else f" ({problem})"
        raise ConfigError(
            field, f"{str(path)!r} is not a {EVAL_FORMAT} file{detail}; run `maml-parity eval {run_dir}` again"
        )
    return result  # type: ignore[no-any-return]

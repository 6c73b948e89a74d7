"""``maml-parity diff A.npz B.npz``: two golden (or trace) files from any source, compared.

The files must describe the same problem before their numbers mean anything: first the config
fields that change the numbers (``parity.golden.SIGNATURE_FIELDS``), named field by field when
they differ; then the inputs (``init/*``, ``tasks/*``), which must be identical, and are reported
as different inputs, not as a numerical mismatch, when they are not. Only then is every result
entry both files hold compared under the rule of :mod:`parity.compare` (``max|a − b| ≤ atol +
rtol·max|ref|``, A the reference, tolerances from the files' dtype and each entry's kind, or
``--rtol``/``--atol``), and the first divergence located in computation order
(:mod:`parity.localise`; through the traces when both files carry them).
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

from parity.checkpoint import atomic_write
from parity.compare import compare_leaf, tolerance
from parity.golden import TEXT_ENTRIES, read_golden, signature_differences
from parity.localise import first_divergence, points, where


def is_input(key: str) -> bool:
    return key.startswith("init/") or key.startswith("tasks/")


def diff_files(
    path_a: str | os.PathLike[str], path_b: str | os.PathLike[str], rtol: float | None = None, atol: float | None = None
) -> dict[str, Any]:
    """The comparison of two golden files, JSON-ready: ``ok``, ``status`` (``same``, ``mismatch``,
    ``different configs``, ``different inputs``) and the details. Unreadable files raise
    ``parity.golden.GoldenFileError``."""
    a, b = read_golden(path_a), read_golden(path_b)
    cfg_a, cfg_b = a["config"], b["config"]
    report: dict[str, Any] = {
        "a": {"path": str(path_a), "framework": str(a["framework"]), "format": _format(a)},
        "b": {"path": str(path_b), "framework": str(b["framework"]), "format": _format(b)},
        "dtype": cfg_a.dtype,
        "config_differences": [{"field": f, "a": va, "b": vb} for f, va, vb in signature_differences(cfg_a, cfg_b)],
        "other_config_differences": [
            {"field": f, "a": va, "b": vb}
            for f, va in cfg_a.flat().items()
            if (vb := cfg_b.flat()[f]) != va and f not in {d[0] for d in signature_differences(cfg_a, cfg_b)}
        ],
        "input_differences": [],
        "rows": [],
        "not_compared": [],
        "divergence": None,
    }
    if report["config_differences"]:
        return {**report, "ok": False, "status": "different configs"}
    report["input_differences"] = input_differences(a, b)
    if report["input_differences"]:
        return {**report, "ok": False, "status": "different inputs"}
    dtype = cfg_a.dtype
    results = [k for k in a if k not in TEXT_ENTRIES and not is_input(k)]
    others = [k for k in b if k not in TEXT_ENTRIES and not is_input(k)]
    report["not_compared"] = [{"key": k, "only_in": "a"} for k in sorted(set(results) - set(others))] + [
        {"key": k, "only_in": "b"} for k in sorted(set(others) - set(results))
    ]
    ordered = dict.fromkeys(key for key, _ in points(cfg_a, set(results) & set(others)))  # computation order
    for key in ordered:
        tol = tolerance(dtype, key, rtol, atol)
        if np.shape(a[key]) != np.shape(b[key]):
            report["rows"].append(
                {"key": key, "ok": False, "detail": f"shape {np.shape(b[key])} vs {np.shape(a[key])}"}
            )
            continue
        leaf = compare_leaf(key, a[key], b[key], tol)
        report["rows"].append(
            {
                "key": key,
                "max_abs_err": _json(leaf.max_abs_err),
                "max_rel_err": _json(leaf.max_rel_err),
                "worst_index": list(leaf.worst_index),
                "rtol": tol.rtol,
                "atol": tol.atol,
                "ok": leaf.ok,
            }
        )
    ok = all(row["ok"] for row in report["rows"])
    if not ok:
        common = set(results) & set(others)
        report["divergence"] = first_divergence(
            {k: a[k] for k in common}, {k: b[k] for k in common}, cfg_a, dtype, rtol=rtol, atol=atol
        )
    return {**report, "ok": ok, "status": "same" if ok else "mismatch"}


def input_differences(a: dict[str, Any], b: dict[str, Any]) -> list[dict[str, Any]]:
    """Inputs that are not identical (or that only one file holds)."""
    out = []
    for key in sorted({k for k in (*a, *b) if is_input(k)}):
        if key not in a or key not in b:
            out.append({"key": key, "detail": f"only in {'a' if key in a else 'b'}"})
        elif np.shape(a[key]) != np.shape(b[key]):
            out.append({"key": key, "detail": f"shape {list(np.shape(a[key]))} vs {list(np.shape(b[key]))}"})
        elif not np.array_equal(a[key], b[key], equal_nan=True):
            diff = np.abs(np.asarray(a[key], np.float64) - np.asarray(b[key], np.float64))
            out.append({"key": key, "detail": f"max |a - b| {float(np.nanmax(diff)):.3g}"})
    return out


def _format(golden: dict[str, Any]) -> str:
    return str(golden["format"]) if "format" in golden else "maml-parity-golden/1"


def _json(value: float) -> float | str:
    return value if math.isfinite(value) else str(value)


def report_lines(report: dict[str, Any]) -> list[str]:
    """The printed form: a header, the per-key table, the first divergence, a verdict line."""
    a, b = report["a"], report["b"]
    lines = [
        f"diff: A {a['path']} ({a['framework']}, {a['format']}) vs B {b['path']} ({b['framework']}, {b['format']})"
    ]
    if report["status"] == "different configs":
        fields = "; ".join(f"{d['field']}: {d['a']!r} vs {d['b']!r}" for d in report["config_differences"])
        return [*lines, f"DIFFERENT CONFIGS (fields that change the numbers): {fields}"]
    if report["status"] == "different inputs":
        inputs = "; ".join(f"{d['key']} ({d['detail']})" for d in report["input_differences"])
        line = f"DIFFERENT INPUTS, not a numerical mismatch: {inputs}"
        if report["other_config_differences"]:
            line += "; the configs differ in " + ", ".join(
                f"{d['field']} ({d['a']!r} vs {d['b']!r})" for d in report["other_config_differences"]
            )
        return [*lines, line]
    lines.append(f"{'entry':<28} {'max abs err':>11} {'max rel err':>11} {'rtol':>7}  {'worst index':<14} verdict")
    for row in report["rows"]:
        if "detail" in row:
            lines.append(f"{row['key']:<28} {row['detail']}  FAIL")
            continue
        index = str(tuple(row["worst_index"])) if row["worst_index"] else "-"
        lines.append(
            f"{row['key']:<28} {_num(row['max_abs_err'])} {_num(row['max_rel_err'])} {row['rtol']:>7.0e}  "
            f"{index:<14} {'ok' if row['ok'] else 'FAIL'}"
        )
    if report["divergence"] is not None:
        lines.append(f"  first divergence: {where(report['divergence'])}")
    failing = [row["key"] for row in report["rows"] if not row["ok"]]
    skipped = ", ".join(
        dict.fromkeys(  # a trace is one thing: all its entries or none
            f"{'trace/*' if d['key'].startswith('trace/') else d['key']} (only in {d['only_in'].upper()})"
            for d in report["not_compared"]
        )
    )
    verdict = (
        "SAME" if report["ok"] else f"MISMATCH in {len(failing)} of {len(report['rows'])} entries: {', '.join(failing)}"
    )
    if report["ok"]:
        verdict += f": {len(report['rows'])} entries within tolerance ({report['dtype']})"
    return [*lines, verdict + (f"; not compared: {skipped}" if skipped else "")]


def _num(value: Any) -> str:
    return f"{value:>11.2e}" if isinstance(value, float) else f"{value:>11}"


def write_report(report: dict[str, Any], target: str | os.PathLike[str]) -> None:
    """``--json``: ``"-"`` is standard output (as for ``check``), anything else a file written
    atomically (a temporary beside it, renamed over it: a reader never sees half a report)."""
    text = json.dumps(report, indent=1, default=str) + "\n"
    if str(target) == "-":
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    atomic_write(Path(target), lambda f: f.write(text.encode()), field="json")

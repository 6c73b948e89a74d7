"""``check``, ``dump`` and ``diff``: the parity matrix, golden files, and comparing two of them."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from parity.cli.common import (
    EXIT_MISMATCH,
    _device_args,
    _human,
    _json_target,
    _output_file,
    _set_threads,
    _write_json,
    config_changes,
    resolve_config,
)
from parity.cli.parser import _add_config_flags, _add_device_flags, _add_memory_flag, _add_threads_flag, _float_flag
from parity.config import ConfigError
from parity.registry import BUILTINS, ENTRY_POINT_GROUP, TWINS


def cmd_check(args: argparse.Namespace) -> int:
    from parity import harness

    json_target, human = _json_target(args), _human(args)
    changes = config_changes(args)
    cases = harness.with_changes(harness.all_cases(quick=args.quick), changes)
    if args.cases:
        cases = [c for c in cases if c.matches(args.cases)]
        if not cases:
            raise ConfigError("cases", f"no case name contains {args.cases!r}")
    device, precision = _device_args(args)
    if args.impl:
        if args.device is not None:
            raise ConfigError("device", "give devices inside --impl SPECs (e.g. --impl NAME@gpu), not with --impl")
        groups = [harness.load_impls(args.impl, precision, case_timeout=args.case_timeout)]
    elif args.device is not None:
        groups = [harness.load_impls(None, precision, device)]
    else:
        groups = harness.default_groups(precision)
    impls = [impl for group in groups for impl in group]
    names = list(dict.fromkeys(impl.name for impl in impls))
    thread_line = _set_threads(args, None, tuple({getattr(i, "framework", "") for i in impls} & set(TWINS)))
    pairs = "; ".join(f"reference {g[0].name}, checked: {', '.join(i.name for i in g[1:])}" for g in groups)
    print(
        f"parity check: {len(cases)} cases{_changed(changes)}; {pairs}; float64 and float32, {precision} precision; "
        f"{thread_line}",
        file=human,
        flush=True,
    )
    print(harness.TABLE_HEADER, file=human, flush=True)

    def on_case(case: Any, rows: list[Any]) -> None:
        for line in harness.table_lines(rows, verbose=args.verbose):
            print(line, file=human, flush=True)

    rows = harness.run_check(cases, on_case=on_case, groups=groups)
    ok = harness.overall_ok(rows, strict=args.strict)
    print(harness.summary(rows, strict=args.strict), file=human)
    if json_target:
        document = {
            "ok": ok,
            "implementations": names,
            "precision": precision,
            "rows": [harness.row_dict(r) for r in rows],
        }
        _write_json(json_target, document, human)
    return 0 if ok else EXIT_MISMATCH


def _changed(changes: list[dict[str, Any]]) -> str:
    """`` with hidden=[8], activation='relu' in every case`` (check's config flags), or nothing."""
    merged = {key: value for change in changes for key, value in change.items()}
    if not merged:
        return ""
    shown = ", ".join(f"{key}={json.dumps(value, default=str)}" for key, value in merged.items())
    return f" with {shown} in every case"


def cmd_dump(args: argparse.Namespace) -> int:
    from parity import limits
    from parity.golden import golden_arrays, write_golden
    from parity.worker import load

    cfg = resolve_config(args)
    out = _output_file(args.out, "out", suffix=".npz")
    limits.check_train(cfg.replace(iterations=1), args.max_memory)  # one meta-gradient, one batch
    thread_line = _set_threads(args, cfg, (args.framework,) if args.framework in TWINS else ())
    device, precision = _device_args(args)
    spec = args.framework
    if "@" not in spec and (device is not None or spec in TWINS):  # a twin computes on the CPU unless asked
        spec = f"{spec}@{device or 'cpu'}"  # a device only where the user typed one or the twin takes it
    impl = load(spec, args.case_timeout)
    prepare = getattr(impl, "prepare", None)
    if prepare is not None:
        prepare(cfg.dtype)
    if hasattr(impl, "precision"):
        impl.precision = precision
    check_device = getattr(impl, "check_device", None)
    if check_device is not None:
        check_device()
    path = write_golden(out, golden_arrays(impl, cfg, trace=args.trace))
    traced = ", with traces" if args.trace else ""
    print(
        f"wrote {path} ({impl.name}, {cfg.dtype}, T={cfg.inner_steps}, B={cfg.meta_batch}, {precision} precision"
        f"{traced}; {thread_line})"
    )
    return 0


def cmd_diff(args: argparse.Namespace) -> int:
    from parity.diff import diff_files, report_lines, write_report

    if args.json:
        _output_file(args.json, "json")
    report = diff_files(args.a, args.b, rtol=args.rtol, atol=args.atol)
    for line in report_lines(report):
        print(line)
    if args.json:
        write_report(report, Path(args.json))
        print(f"wrote {args.json}")
    return 0 if report["ok"] else EXIT_MISMATCH


def register_check(sub: Any) -> None:
    """The ``check`` subcommand and its flags."""
    p = sub.add_parser("check", help="run both twins over the parity matrix and compare them")
    p.add_argument("--quick", action="store_true", help="a covering subset of the matrix (every axis value once)")
    p.add_argument("--cases", metavar="SUBSTRING", help="only cases whose name (or name before --set) contains this")
    p.add_argument("--json", metavar="FILE", help="write {ok, rows} as JSON to FILE; '-': standard output")
    p.add_argument("--verbose", action="store_true", help="a line per quantity, not per case and pair")
    p.add_argument(
        "--impl",
        action="append",
        metavar="SPEC",
        help=f"an implementation: {' | '.join(BUILTINS)} | package.module:NAME | path/file.py:NAME | an entry point "
        f"(group {ENTRY_POINT_GROUP}), optionally @DEVICE; repeat it: the first is the reference, every other "
        f"is checked against it (default: {' '.join('--impl ' + name for name in TWINS)})",
    )
    p.add_argument("--strict", action="store_true", help="unsupported cases fail the check (exit 1)")
    _add_case_timeout_flag(p)
    _add_config_flags(p, None, framework=False)
    _add_device_flags(p, "highest", None)
    _add_threads_flag(p)
    p.set_defaults(func=cmd_check)


def _add_case_timeout_flag(p: argparse.ArgumentParser) -> None:
    from parity.worker import DEFAULT_TIMEOUT

    p.add_argument(
        "--case-timeout",
        type=_float_flag("case_timeout", 0),
        default=DEFAULT_TIMEOUT,
        metavar="S",
        help=f"seconds an implementation other than the built-ins may take per case, in its worker process "
        f"(default {DEFAULT_TIMEOUT:g}); past it the case is a FAIL row",
    )


def register_dump(sub: Any) -> None:
    """The ``dump`` subcommand and its flags."""
    p = sub.add_parser("dump", help="write a golden .npz file any implementation can check itself against")
    _add_config_flags(p, "seed-alpha")
    _add_device_flags(p, "highest", None)
    _add_case_timeout_flag(p)
    p.add_argument("--out", required=True, metavar="FILE.npz")
    _add_threads_flag(p)
    _add_memory_flag(p)
    p.set_defaults(func=cmd_dump)
    p.add_argument("--trace", action="store_true", help="also write the inner loop per task and step (trace/* entries)")


def register_diff(sub: Any) -> None:
    """The ``diff`` subcommand and its flags."""
    p = sub.add_parser(
        "diff", help="compare two golden or trace files from any source; exit 0 same, 1 different, 2 bad file"
    )
    p.add_argument("a", metavar="A.npz", help="the reference file")
    p.add_argument("b", metavar="B.npz", help="the file checked against it")
    p.add_argument("--rtol", type=_float_flag("rtol", 0), help="relative tolerance (default: by dtype and kind)")
    p.add_argument("--atol", type=_float_flag("atol", 0), help="absolute tolerance (default: by dtype and kind)")
    p.add_argument("--json", metavar="FILE", help="write the comparison as JSON")
    p.set_defaults(func=cmd_diff)

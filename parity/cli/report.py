"""``report`` and ``demo``: a run's figures and report, and the main job (both twins, compared)."""

from __future__ import annotations

import argparse
import os
from typing import Any

from parity.cli.common import (
    _device_args,
    _load_twin,
    _output_dir,
    _output_file,
    _refuse_existing_run,
    _run_dir,
    _set_threads,
)
from parity.cli.parser import _add_device_flags, _add_threads_flag, _int_flag
from parity.config import SEED_ALPHA, ConfigError
from parity.registry import TWINS, twin_labels
from parity.rundir import RunDir

DEMO_OUT = "runs/demo"  # the demo's output with no --out, or the first free DEMO_OUT-2, -3, ...


def cmd_report(args: argparse.Namespace) -> int:
    from parity.report import write_report
    from parity.runlock import run_lock

    run_dir = _run_dir(args.dir)
    _output_file(str(RunDir(run_dir).report), "dir")  # a read-only run is refused before the work
    with run_lock(run_dir, "dir"):
        path = write_report(run_dir)
    print(f"wrote {path}")
    return 0


def fresh_demo_dir(base: str = DEMO_OUT) -> str:
    """``base``, else ``base-2``, ``base-3``, ...: the first that does not exist. With no --out a
    second demo gets a directory of its own instead of being refused for the first one's."""
    for n in range(1, 10_000):
        candidate = base if n == 1 else f"{base}-{n}"
        if not os.path.lexists(candidate):
            return candidate
    raise ConfigError("out", f"{base!r} to {base + '-9999'!r} all exist; give --out DIR")


def cmd_demo(args: argparse.Namespace) -> int:
    import contextlib

    from parity.demo import run_demo
    from parity.runlock import run_lock

    chosen = args.out if args.out is not None else fresh_demo_dir()
    out = _output_dir(chosen)
    device, precision = _device_args(args)
    runs = [out / name for name in TWINS]
    for run in runs:
        _refuse_existing_run(run, str(run), "choose another --out for the demo")
    thread_line = _set_threads(args, SEED_ALPHA, TWINS)  # before JAX's backend starts
    for name in TWINS:
        twin = _load_twin(name, "float32", device)  # a device a twin cannot see: one line, before any work
        reason = twin.supports(SEED_ALPHA.replace(dtype="float64"))
        if reason:  # e.g. JAX with JAX_ENABLE_X64=0
            raise ConfigError(
                "dtype", f"the demo checks the twins' parity in float64 as well, and {name} cannot: {reason}"
            )
    if args.out is None:  # say where, first: the directory was not the user's choice
        taken = "" if chosen == DEMO_OUT else f" ({DEMO_OUT} exists, from an earlier demo)"
        thread_line = f"writing to {chosen}{taken}; {thread_line}"
    print(f"demo: {thread_line}", flush=True)
    with contextlib.ExitStack() as stack:
        for run in runs:
            stack.enter_context(run_lock(run, "out"))
        for run in runs:
            _refuse_existing_run(run, str(run), "choose another --out for the demo")
        return run_demo(
            out, iterations=args.iterations, progress=not args.no_progress, device=device, precision=precision
        )


def register_report(sub: Any) -> None:
    """The ``report`` subcommand and its flags."""
    p = sub.add_parser("report", help="figures and DIR/report.md from a run and its eval.json")
    p.add_argument("dir", metavar="DIR")
    p.set_defaults(func=cmd_report)


def register_demo(sub: Any) -> None:
    """The ``demo`` subcommand and its flags."""
    p = sub.add_parser("demo", help=f"the main job: seed-alpha in {twin_labels()}, compared")
    p.add_argument(
        "--out",
        metavar="DIR",
        help=f"where to write (default: {DEMO_OUT}, or {DEMO_OUT}-2, -3, ... where it exists); "
        "a DIR that holds a run is refused",
    )
    p.add_argument("--iterations", type=_int_flag("iterations", 1), default=5000)
    p.add_argument("--no-progress", action="store_true")
    _add_device_flags(p, "default")
    _add_threads_flag(p)
    p.set_defaults(func=cmd_demo)

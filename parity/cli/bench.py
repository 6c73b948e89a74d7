"""``bench``: the twins and the seed's own loop timed side by side, or the JAX twin's scaling."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from parity.cli.common import _human, _json_target, _output_file, _write_json
from parity.cli.parser import _int_flag
from parity.config import ConfigError
from parity.devices import DEVICE_HELP
from parity.registry import DEFAULT_TWIN, label, twin_labels


def cmd_bench(args: argparse.Namespace) -> int:
    from parity import bench
    from parity.safeio import IMAGE_SUFFIXES

    _json_target(args)
    if args.plot:
        _output_file(args.plot, "plot", IMAGE_SUFFIXES)
    human = _human(args)
    if args.scaling:
        return _bench_scaling(args)
    if args.conv and args.quick:
        raise ConfigError("conv", "--conv and --quick pick different settings; give one")
    settings = bench.plan(False, args.device, args.impl, only=bench.CONV_POINTS) if args.conv else None
    result = bench.run_bench(
        quick=args.quick,
        settings=settings,
        device=args.device,
        threads=args.threads,
        repeats=args.repeats,
        impls=args.impl,
        progress=lambda line: print(line, file=human, flush=True),
        command=_bench_command(args),
        unroll=args.unroll,
        chunk=args.chunk,
        pin=not args.no_pin,
        time_budget_s=args.time_budget,
        # The JSON is rewritten after every setting: a run stopped early keeps what it measured.
        on_setting=(lambda partial: bench.write_json(partial, Path(args.json)))
        if args.json not in (None, "-")
        else None,
    )
    for line in bench.summary_lines(result):
        print(line, file=human)
    if args.json:
        _write_json(args.json, result, human)
    if args.plot:
        bench.write_plot(result, Path(args.plot))
        print(f"wrote {args.plot}", file=human)
    return 0


def _bench_scaling(args: argparse.Namespace) -> int:
    from parity import bench, scaling

    human = _human(args)
    if args.device not in bench.DEVICES:
        raise ConfigError("device", f"must be one of {', '.join(bench.DEVICES)}; got {args.device!r}")
    print(
        f"bench --scaling: {label(scaling.scaling_twin().framework)} twin, sharded meta-batch, {args.device} "
        f"devices {list(scaling.DEVICE_COUNTS)}",
        file=human,
    )
    print(scaling.SCALING_HEADER, file=human, flush=True)
    kwargs = {"repeats": args.repeats} if args.repeats else {}
    result = scaling.run_scaling(
        device=args.device, progress=lambda line: print(line, file=human, flush=True), **kwargs
    )
    result["machine"]["command"] = _bench_command(args) + " --scaling"
    if args.json:
        _write_json(args.json, result, human)
    if args.plot:
        scaling.write_scaling_plot(result, Path(args.plot))
        print(f"wrote {args.plot}", file=human)
    return 0


def _bench_command(args: argparse.Namespace) -> str:
    words = [
        "maml-parity bench",
        "--quick" if args.quick else "",
        "--conv" if args.conv else "",
        f"--device {args.device} --threads {args.threads}",
    ]
    words.append("--no-pin" if args.no_pin else "")
    flags = ("repeats", "unroll", "chunk", "time_budget", "json", "plot")
    words += [f"--{flag.replace('_', '-')} {getattr(args, flag)}" for flag in flags if getattr(args, flag) is not None]
    words += [f"--impl {spec}" for spec in args.impl or ()]
    return " ".join(w for w in words if w)


def register_bench(sub: Any) -> None:
    """The ``bench`` subcommand and its flags."""
    p = sub.add_parser("bench", help=f"time the {twin_labels()} twins and the seed's own loop side by side")
    p.add_argument(
        "--quick",
        action="store_true",
        help="CPU: seed-alpha at B=1 and B=25, T=5, and B=25 with an Adam inner loop; GPU: the goals' three settings",
    )
    p.add_argument(
        "--conv",
        action="store_true",
        help="only the conv steps (issue 18): digits-5w1s and omniglot-5w1s sizes at meta-batch 32, 1 inner step, "
        "64 filters, synthetic images; on a CPU also the row written with functional transforms (vmap of grad)",
    )
    p.add_argument(
        "--json", metavar="FILE", help="write {machine, rows, targets, skipped} as JSON to FILE; '-': standard output"
    )
    p.add_argument(
        "--impl",
        action="append",
        metavar="SPEC",
        help="time this implementation (repeatable): a row of the built-in table (the rows each twin offers: "
        "see docs/performance.md) or any SPEC check takes (module:NAME, file.py:NAME, an entry point), timed "
        "through its contract call; default: the built-in rows",
    )
    p.add_argument("--device", default="cpu", help=f"{DEVICE_HELP} (default cpu; refused where none is visible)")
    p.add_argument("--threads", type=_int_flag("threads", 1), default=1, metavar="N", help="CPU threads (default 1)")
    p.add_argument("--repeats", type=_int_flag("repeats", 1), metavar="N", help="timed rounds per setting (default 5)")
    p.add_argument("--plot", metavar="FILE.png", help="time per task-step against B and T, log axes")
    p.add_argument(
        "--unroll",
        type=_int_flag("unroll"),
        metavar="T",
        help="twins that compile their loops: unroll inner loops up to T steps",
    )
    p.add_argument(
        "--chunk",
        type=_int_flag("chunk"),
        metavar="N",
        help="twins that compile their loops: outer steps per compiled call",
    )
    p.add_argument("--no-pin", action="store_true", help="do not bind the process to --threads cores")
    p.add_argument(
        "--time-budget",
        type=_int_flag("time_budget", 1),
        metavar="S",
        help="start no new setting after S seconds (the rest is listed as skipped); --json keeps partial results",
    )
    p.add_argument(
        "--scaling",
        action="store_true",
        help=f"instead: {label(DEFAULT_TWIN)} tasks/s against 1, 2, 4 devices, strong and weak (forced host "
        "devices on a CPU)",
    )
    p.set_defaults(func=cmd_bench)

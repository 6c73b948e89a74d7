"""``maml-parity``: one entry point, subcommands. Parses and dispatches; the logic lives elsewhere.

Bad input ends in one line naming the field and what is allowed, and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from parity.config import DTYPES, PRESETS, Config, ConfigError, get_preset

EXIT_MISMATCH = 1
EXIT_USAGE = 2


class UsageError(Exception):
    """Bad command-line input; the message is printed as one line and the exit status is 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, no usage dump
        raise UsageError(message)


# --- shared flags ------------------------------------------------------------------------------


def _add_config_flags(p: argparse.ArgumentParser, default_preset: str, framework: bool = True) -> None:
    p.add_argument("--preset", default=default_preset, help=f"named config ({', '.join(PRESETS)}); default {default_preset}")
    p.add_argument("--config", metavar="FILE.json", help="JSON config; its keys override the preset's")
    if framework:
        p.add_argument("--framework", default="jax", help="jax | torch (default jax)")
    p.add_argument("--dtype", help="float32 | float64 (default: the config's)")
    p.add_argument("--seed", type=_int_flag("seed"), help="sampler and init seed")
    p.add_argument("--inner-steps", type=_int_flag("inner_steps"), help="T, inner SGD steps")
    p.add_argument("--iterations", type=_int_flag("iterations"), help="outer steps")


def _int_flag(field: str) -> Any:
    def parse(text: str) -> int:
        try:
            return int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{field}: must be an integer, got {text!r}") from None

    return parse


def _nonneg_int_flag(field: str) -> Any:
    def parse(text: str) -> int:
        value = _int_flag(field)(text)
        if value < 0:
            raise argparse.ArgumentTypeError(f"{field}: must be an integer >= 0, got {value}")
        return value

    return parse


def _phase_flag(text: str) -> float:
    """A phase in radians: a number, or a multiple / fraction of pi ('pi', '-pi/2', '0.25pi')."""
    import math
    import re

    match = re.fullmatch(r"\s*(-?[0-9.]*)\s*\*?\s*pi\s*(?:/\s*([0-9.]+))?\s*", text.lower())
    try:
        if match:
            factor = {"": 1.0, "-": -1.0}.get(match.group(1)) or float(match.group(1))
            return factor * math.pi / (float(match.group(2)) if match.group(2) else 1.0)
        return float(text)
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"phase_shift: must be a number or a multiple of pi, got {text!r}") from None


def resolve_config(args: argparse.Namespace) -> Config:
    """Preset, then the config file's keys, then individual flags."""
    cfg = get_preset(args.preset)
    if args.config:
        path = Path(args.config)
        try:
            text = path.read_text()
        except OSError as err:
            raise ConfigError("config", f"cannot read {str(path)!r} ({err.strerror})") from None
        cfg = Config.from_json(text, base=cfg)
    overrides: dict[str, Any] = {}
    if args.dtype is not None:
        if args.dtype not in DTYPES:
            raise ConfigError("dtype", f"must be one of {', '.join(DTYPES)}; got {args.dtype!r}")
        overrides["dtype"] = args.dtype
    for flag, field in (("seed", "seed"), ("inner_steps", "inner_steps"), ("iterations", "iterations")):
        value = getattr(args, flag, None)
        if value is not None:
            overrides[field] = value
    return cfg.replace(**overrides) if overrides else cfg


def _load_twin(framework: str, dtype: str) -> Any:
    from parity.twins import load

    twin = load(framework, dtype)
    twin.model.check_dtype(dtype)
    return twin


# --- subcommands ---------------------------------------------------------------------------------


def cmd_check(args: argparse.Namespace) -> int:
    from parity import harness
    from parity.twins import enable_jax_x64

    enable_jax_x64()
    cases = harness.all_cases(quick=args.quick)
    if args.cases:
        cases = [c for c in cases if args.cases in c.name]
        if not cases:
            raise ConfigError("cases", f"no case name contains {args.cases!r}")
    print(f"parity check: {len(cases)} cases, JAX vs PyTorch, float64 and float32", flush=True)
    print(harness.TABLE_HEADER, flush=True)

    def on_case(case: Any, rows: list[Any]) -> None:
        for line in harness.table_lines(rows, verbose=args.verbose):
            print(line, flush=True)

    rows = harness.run_check(cases, on_case=on_case)
    ok = harness.overall_ok(rows)
    print(harness.summary(rows))
    if args.json:
        out = Path(args.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"ok": ok, "rows": [harness.row_dict(r) for r in rows]}, indent=1) + "\n")
        print(f"wrote {out}")
    return 0 if ok else EXIT_MISMATCH


def cmd_dump(args: argparse.Namespace) -> int:
    from parity.checkpoint import golden_arrays, write_golden

    cfg = resolve_config(args)
    twin = _load_twin(args.framework, cfg.dtype)
    path = write_golden(Path(args.out), golden_arrays(twin, cfg))
    print(f"wrote {path} ({args.framework}, {cfg.dtype}, T={cfg.inner_steps}, B={cfg.meta_batch})")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from parity.run import train_run

    from parity.twins import placement_for

    cfg = resolve_config(args)
    twin = _load_twin(args.framework, cfg.dtype)
    placement = placement_for(args.framework, cfg, args.devices, args.coordinator, args.num_processes, args.process_id)
    if placement is not None and placement.is_main:
        print(f"{args.framework}: meta-batch of {cfg.meta_batch} split over {placement.devices} devices", flush=True)
    out = Path(args.out)
    _, rows = train_run(
        twin,
        cfg,
        out,
        print_every=args.print_every,
        progress=not args.no_progress,
        resume=args.resume,
        checkpoint_every=args.checkpoint_every,
        placement=placement,
    )
    if placement is not None and not placement.is_main:
        return 0
    if rows:
        last = rows[-1]
        print(f"{args.framework}: {len(rows)} steps, last outer loss {last['outer_loss']:.4f}, alpha {last['alpha']}")
    print(f"wrote {out}/config.json, {out}/metrics.jsonl, {out}/checkpoint.safetensors, {out}/final.npz")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from parity.eval import EvalSpec, evaluate_run, summary_lines

    if args.dtype is not None and args.dtype not in DTYPES:
        raise ConfigError("dtype", f"must be one of {', '.join(DTYPES)}; got {args.dtype!r}")
    spec_args = {
        "tasks": args.tasks,
        "shots": args.shots,
        "max_steps": args.max_steps,
        "pretrain_steps": args.pretrain_steps,
    }
    if args.phase_shift is not None:
        spec_args["phase_shifts"] = tuple(args.phase_shift)
    run_dir = Path(args.dir)
    result = evaluate_run(run_dir, framework=args.framework, dtype=args.dtype, spec=EvalSpec(**spec_args))
    if args.json:
        print(json.dumps({k: v for k, v in result.items() if k != "fits"}, indent=1))
    else:
        print("\n".join(summary_lines(result)))
        print(f"wrote {run_dir}/eval.json")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from parity.report import write_report

    path = write_report(Path(args.dir))
    print(f"wrote {path}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from parity import bench

    mode = "quick" if args.quick else "full"
    print(f"bench: {mode} run on {args.device}, {args.threads} thread(s)", flush=True)
    print(bench.TABLE_HEADER, flush=True)
    result = bench.run_bench(
        quick=args.quick,
        device=args.device,
        threads=args.threads,
        repeats=args.repeats,
        progress=lambda line: print(line, flush=True),
        command=_bench_command(args),
    )
    for line in bench.summary_lines(result):
        print(line)
    if args.json:
        bench.write_json(result, Path(args.json))
        print(f"wrote {args.json}")
    if args.plot:
        bench.write_plot(result, Path(args.plot))
        print(f"wrote {args.plot}")
    return 0


def _bench_command(args: argparse.Namespace) -> str:
    words = ["maml-parity bench", "--quick" if args.quick else "", f"--device {args.device} --threads {args.threads}"]
    words += [f"--{flag} {getattr(args, flag)}" for flag in ("repeats", "json", "plot") if getattr(args, flag)]
    return " ".join(w for w in words if w)


def cmd_demo(args: argparse.Namespace) -> int:
    from parity.demo import run_demo

    return run_demo(Path(args.out), iterations=args.iterations, progress=not args.no_progress)


# --- parser ----------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="maml-parity", description="Twin JAX / PyTorch unrolled meta-learning, held to parity.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    p = sub.add_parser("check", help="run both twins over the parity matrix and compare them")
    p.add_argument("--quick", action="store_true", help="a covering subset of the matrix (every axis value once)")
    p.add_argument("--cases", metavar="SUBSTRING", help="only cases whose name contains this")
    p.add_argument("--json", metavar="FILE", help="write {ok, rows} as JSON")
    p.add_argument("--verbose", action="store_true", help="a line per quantity, not per case and pair")
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("dump", help="write a golden .npz file any implementation can check itself against")
    _add_config_flags(p, "seed-alpha")
    p.add_argument("--out", required=True, metavar="FILE.npz")
    p.set_defaults(func=cmd_dump)

    p = sub.add_parser("train", help="meta-train in one twin; writes config.json, metrics.jsonl, final.npz")
    _add_config_flags(p, "seed-alpha")
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--print-every", type=_int_flag("print_every"), default=0, metavar="N", help="the seed's printout every N steps")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--resume", action="store_true", help="continue from DIR's checkpoint (either twin's), bit for bit")
    p.add_argument(
        "--devices",
        type=_int_flag("devices"),
        metavar="N",
        help="split each meta-batch over N devices (JAX: default the most local devices that divide it; "
        "PyTorch: the torchrun world size)",
    )
    p.add_argument("--coordinator", metavar="HOST:PORT", help="JAX multi-host: jax.distributed coordinator address")
    p.add_argument("--num-processes", type=_int_flag("num_processes"), metavar="N", help="JAX multi-host: processes")
    p.add_argument("--process-id", type=_int_flag("process_id"), metavar="I", help="JAX multi-host: this process")
    p.add_argument(
        "--checkpoint-every",
        type=_nonneg_int_flag("checkpoint_every"),
        default=0,
        metavar="N",
        help="also checkpoint every N steps (default: only at the end)",
    )
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="adapt meta / random / pretrained inits on held-out tasks; writes DIR/eval.json")
    p.add_argument("dir", metavar="DIR", help="a training run (its checkpoint.safetensors)")
    p.add_argument("--framework", default="jax", help="jax | torch (default jax), whichever twin trained the run")
    p.add_argument("--dtype", help="float32 | float64 (default: the run's)")
    p.add_argument("--tasks", type=_int_flag("tasks"), default=600, metavar="N", help="held-out tasks (default 600)")
    p.add_argument("--shots", type=_int_flag("shots"), metavar="K", help="support points per task (default: the run's)")
    p.add_argument(
        "--max-steps", type=_int_flag("max_steps"), default=10, metavar="S", help="adaptation steps (default 10)"
    )
    p.add_argument(
        "--phase-shift",
        type=_phase_flag,
        nargs="+",
        metavar="B",
        help="phase shifts in radians; 'pi', 'pi/2', '0.5pi' work (default: 0 pi)",
    )
    p.add_argument(
        "--pretrain-steps",
        type=_int_flag("pretrain_steps"),
        default=2000,
        metavar="N",
        help="plain-regression steps for the 'pretrained' baseline (default 2000)",
    )
    p.add_argument("--json", action="store_true", help="print the results as JSON instead of a table")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("report", help="figures and DIR/report.md from a run and its eval.json")
    p.add_argument("dir", metavar="DIR")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("bench", help="time the JAX twin, the PyTorch twin and the seed's own loop side by side")
    p.add_argument("--quick", action="store_true", help="only seed-alpha at B=1 and B=25, T=5 (under two minutes)")
    p.add_argument("--json", metavar="FILE", help="write {machine, rows, targets, skipped} as JSON")
    p.add_argument("--device", default="cpu", help="cpu | gpu (default cpu; gpu fails where none is visible)")
    p.add_argument("--threads", type=_int_flag("threads"), default=1, metavar="N", help="CPU threads (default 1)")
    p.add_argument("--repeats", type=_int_flag("repeats"), metavar="N", help="timed calls per row (3 quick, 5 full)")
    p.add_argument("--plot", metavar="FILE.png", help="time per task-step against B and T, log axes")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("demo", help="the main job: seed-alpha in JAX and PyTorch, compared")
    p.add_argument("--out", default="runs/demo", metavar="DIR")
    p.add_argument("--iterations", type=_int_flag("iterations"), default=5000)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return EXIT_USAGE
        return int(args.func(args))
    except (ConfigError, UsageError) as err:
        print(f"maml-parity: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("maml-parity: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

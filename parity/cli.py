"""``maml-parity``: one entry point, subcommands. Parses and dispatches; the logic lives elsewhere.

Bad input ends in one line naming the field and what is allowed, and exit status 2. A training
run that diverges (a loss or gradient not finite) ends in one line and exit status 3.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from parity.config import DTYPES, PRESETS, Config, ConfigError, get_preset

EXIT_MISMATCH = 1
EXIT_USAGE = 2
EXIT_DIVERGED = 3


class UsageError(Exception):
    """Bad command-line input; the message is printed as one line and the exit status is 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, no usage dump
        # "argument --inner-steps: inner_steps: must be ..." -> "inner_steps: must be ...": the field first.
        match = re.fullmatch(r"argument [^:]+: ([a-z_]+: .*)", message, flags=re.DOTALL)
        raise UsageError(match.group(1) if match else message)


# --- shared flags ------------------------------------------------------------------------------


def _add_config_flags(p: argparse.ArgumentParser, default_preset: str, framework: bool = True) -> None:
    p.add_argument(
        "--preset", default=default_preset, help=f"named config ({', '.join(PRESETS)}); default {default_preset}"
    )
    p.add_argument("--config", metavar="FILE.json", help="JSON config; its keys override the preset's")
    if framework:
        p.add_argument("--framework", default="jax", help="jax | torch (default jax)")
    p.add_argument("--dtype", help="float32 | float64 (default: the config's)")
    p.add_argument("--seed", type=_int_flag("seed"), help="sampler and init seed")
    p.add_argument("--inner-steps", type=_int_flag("inner_steps"), help="T, inner SGD steps")
    p.add_argument("--iterations", type=_int_flag("iterations"), help="outer steps")
    p.add_argument(
        "--alpha-parametrisation",
        metavar="P",
        help="identity | softplus: learn alpha itself, or rho with alpha = softplus(rho) > 0 (default: the config's)",
    )


def _add_memory_flag(p: argparse.ArgumentParser) -> None:
    from parity.limits import parse_size

    p.add_argument(
        "--max-memory",
        type=lambda text: _argparse_type(parse_size, text),
        metavar="SIZE",
        help="refuse a run estimated to need more memory than SIZE (8G, 512M; default: what the machine has free)",
    )


def _argparse_type(parse: Any, text: str) -> Any:
    try:
        return parse(text)
    except ConfigError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _int_flag(field: str, minimum: int | None = None) -> Any:
    """An argparse type: an integer, at least ``minimum`` when given; errors name the field."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{field}: must be an integer, got {text!r}") from None
        if minimum is not None and value < minimum:
            raise argparse.ArgumentTypeError(f"{field}: must be an integer >= {minimum}, got {value}")
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
        from parity.safeio import read_text_capped

        cfg = Config.from_json(read_text_capped(args.config, "config"), base=cfg)
    overrides: dict[str, Any] = {}
    if args.dtype is not None:
        if args.dtype not in DTYPES:
            raise ConfigError("dtype", f"must be one of {', '.join(DTYPES)}; got {args.dtype!r}")
        overrides["dtype"] = args.dtype
    flags = ("seed", "inner_steps", "iterations", "alpha_parametrisation")
    for flag, field in zip(flags, flags, strict=True):
        value = getattr(args, flag, None)
        if value is not None:
            overrides[field] = value
    return cfg.replace(**overrides) if overrides else cfg


def _output_file(path: str, field: str, suffix: str | tuple[str, ...] | None = None) -> Path:
    """A file the command will write: refused now, before any work, if it cannot be one
    (``parity.safeio.check_output_file``: a name, the suffix, a writable folder)."""
    from parity.safeio import check_output_file

    return check_output_file(path, field, (suffix,) if isinstance(suffix, str) else suffix)


def _output_dir(path: str, field: str = "out") -> Path:
    """A directory the command will write into: refused now if it is (or lies under) a file, has
    no name, or cannot be written (``parity.safeio.check_output_dir``)."""
    from parity.safeio import check_output_dir

    return check_output_dir(path, field)


def _refuse_existing_run(out: Path, shown: str, hint: str) -> None:
    from parity.checkpoint import CHECKPOINT_FILE

    if any((out / name).exists() for name in (CHECKPOINT_FILE, "metrics.jsonl")):
        raise ConfigError("out", f"{shown!r} already holds a training run; {hint} (nothing was overwritten)")


def _run_dir(path: str) -> Path:
    """An existing training run (``eval`` and ``report`` read one)."""
    from parity.checkpoint import CHECKPOINT_FILE

    run_dir = Path(path)
    if not run_dir.exists():
        raise ConfigError("dir", f"no such directory {path!r}")
    if not run_dir.is_dir():
        raise ConfigError("dir", f"{path!r} is not a directory (give the run's --out DIR)")
    if not (run_dir / CHECKPOINT_FILE).exists() and not (run_dir / "config.json").exists():
        raise ConfigError(
            "dir", f"{path!r} holds no training run (no {CHECKPOINT_FILE}); make one with train --out DIR"
        )
    return run_dir


def _load_twin(framework: str, dtype: str) -> Any:
    from parity.twins import load

    twin = load(framework, dtype)
    twin.model.check_dtype(dtype)
    return twin


# --- subcommands ---------------------------------------------------------------------------------


def cmd_check(args: argparse.Namespace) -> int:
    from parity import harness
    from parity.twins import enable_jax_x64

    if args.json is not None:
        _output_file(args.json, "json")
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
    from parity import limits
    from parity.checkpoint import golden_arrays, write_golden

    cfg = resolve_config(args)
    out = _output_file(args.out, "out", suffix=".npz")
    limits.check_train(cfg.replace(iterations=1), args.max_memory)  # one meta-gradient, one batch
    twin = _load_twin(args.framework, cfg.dtype)
    path = write_golden(out, golden_arrays(twin, cfg))
    print(f"wrote {path} ({args.framework}, {cfg.dtype}, T={cfg.inner_steps}, B={cfg.meta_batch})")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    import contextlib
    import os

    from parity import limits
    from parity.runlock import run_lock
    from parity.startup import check_distributed_flags, start_distributed
    from parity.twins import placement_for

    cfg = resolve_config(args)
    out = _output_dir(args.out)
    check_distributed_flags(args.coordinator, args.num_processes, args.process_id)
    limits.check_train(cfg, args.max_memory)
    hint = "pass --resume to continue it, or choose another --out"
    if not args.resume:
        _refuse_existing_run(out, args.out, hint)
    dist = (args.coordinator, args.num_processes, args.process_id)
    if args.coordinator is not None and args.framework == "jax":  # before the lock: a timeout leaves nothing
        start_distributed(args.coordinator, args.num_processes, args.process_id, args.init_timeout)
        dist = (None, None, None)  # joined: placement_for must not join again
    # Only the first process of a distributed run writes files (JAX: process 0; torchrun: rank 0).
    writer = (args.process_id or 0) == 0 and os.environ.get("RANK", "0") == "0"
    with run_lock(out, "out") if writer else contextlib.nullcontext():
        if writer and not args.resume:
            _refuse_existing_run(out, args.out, hint)  # again, now that no one else can start one
        twin = _load_twin(args.framework, cfg.dtype)
        placement = placement_for(args.framework, cfg, args.devices, *dist)
        if placement is not None and placement.is_main:
            print(
                f"{args.framework}: meta-batch of {cfg.meta_batch} split over {placement.devices} devices", flush=True
            )
        return _train_locked(args, twin, cfg, out, placement)


def _train_locked(args: argparse.Namespace, twin: Any, cfg: Config, out: Path, placement: Any) -> int:
    """``train`` once the run directory's lock is held."""
    from parity.run import train_run
    from parity.training import TrainingDiverged

    try:
        _, rows = train_run(
            twin,
            cfg,
            out,
            print_every=args.print_every,
            progress=not args.no_progress,
            resume=args.resume,
            checkpoint_every=args.checkpoint_every or 0,
            placement=placement,
        )
    except TrainingDiverged as err:
        if placement is None or placement.is_main:  # every process stops; one says why
            print(f"maml-parity: training diverged at {err}; {_kept_checkpoint(out)}", file=sys.stderr)
        return EXIT_DIVERGED
    if placement is not None and not placement.is_main:
        return 0
    if rows:
        last = rows[-1]
        print(f"{args.framework}: {len(rows)} steps, last outer loss {last['outer_loss']:.4f}, alpha {last['alpha']}")
    print(f"wrote {out}/config.json, {out}/metrics.jsonl, {out}/checkpoint.safetensors, {out}/final.npz")
    return 0


def _kept_checkpoint(out: Path) -> str:
    from parity.checkpoint import CHECKPOINT_FILE, CheckpointError, read_checkpoint

    if not (out / CHECKPOINT_FILE).exists():
        return "no checkpoint was written (use --checkpoint-every N to keep one)"
    try:
        return f"the checkpoint of step {read_checkpoint(out).step} in {str(out)!r} is kept"
    except CheckpointError:
        return f"{str(out / CHECKPOINT_FILE)!r} was left as it was"


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
    spec = EvalSpec(**spec_args)  # a bad --tasks, --shots ... is named before the run is looked at
    from parity import limits
    from parity.checkpoint import read_checkpoint
    from parity.runlock import run_lock

    limits.check_eval_caps(spec.tasks, spec.shots, spec.max_steps, spec.pretrain_steps, len(spec.phase_shifts))
    run_dir = _run_dir(args.dir)
    saved = read_checkpoint(run_dir).config
    cfg = saved if args.dtype is None else saved.replace(dtype=args.dtype)
    limits.check_eval(
        cfg, spec.tasks, spec.shots, spec.max_steps, spec.pretrain_steps, len(spec.phase_shifts), args.max_memory
    )
    _output_file(str(run_dir / "eval.json"), "dir")  # a read-only run is refused before the work
    with run_lock(run_dir, "dir"):
        result = evaluate_run(run_dir, framework=args.framework, dtype=args.dtype, spec=spec)
    if args.json:
        print(json.dumps({k: v for k, v in result.items() if k != "fits"}, indent=1))
    else:
        print("\n".join(summary_lines(result)))
        print(f"wrote {run_dir}/eval.json")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from parity.report import write_report
    from parity.runlock import run_lock

    run_dir = _run_dir(args.dir)
    _output_file(str(run_dir / "report.md"), "dir")  # a read-only run is refused before the work
    with run_lock(run_dir, "dir"):
        path = write_report(run_dir)
    print(f"wrote {path}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from parity import bench
    from parity.safeio import IMAGE_SUFFIXES

    for flag, suffixes in (("json", None), ("plot", IMAGE_SUFFIXES)):
        if getattr(args, flag) is not None:
            _output_file(getattr(args, flag), flag, suffixes)
    if args.scaling:
        return _bench_scaling(args)
    result = bench.run_bench(
        quick=args.quick,
        device=args.device,
        threads=args.threads,
        repeats=args.repeats,
        progress=lambda line: print(line, flush=True),
        command=_bench_command(args),
        unroll=args.unroll,
        chunk=args.chunk,
        pin=not args.no_pin,
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


def _bench_scaling(args: argparse.Namespace) -> int:
    from parity import bench, scaling

    if args.device not in bench.DEVICES:
        raise ConfigError("device", f"must be one of {', '.join(bench.DEVICES)}; got {args.device!r}")
    print(f"bench --scaling: JAX twin, sharded meta-batch, {args.device} devices {list(scaling.DEVICE_COUNTS)}")
    print(scaling.SCALING_HEADER, flush=True)
    kwargs = {"repeats": args.repeats} if args.repeats else {}
    result = scaling.run_scaling(device=args.device, progress=lambda line: print(line, flush=True), **kwargs)
    result["machine"]["command"] = _bench_command(args) + " --scaling"
    if args.json:
        bench.write_json(result, Path(args.json))
        print(f"wrote {args.json}")
    if args.plot:
        scaling.write_scaling_plot(result, Path(args.plot))
        print(f"wrote {args.plot}")
    return 0


def _bench_command(args: argparse.Namespace) -> str:
    words = ["maml-parity bench", "--quick" if args.quick else "", f"--device {args.device} --threads {args.threads}"]
    words.append("--no-pin" if args.no_pin else "")
    flags = ("repeats", "unroll", "chunk", "json", "plot")
    words += [f"--{flag} {getattr(args, flag)}" for flag in flags if getattr(args, flag) is not None]
    return " ".join(w for w in words if w)


def cmd_demo(args: argparse.Namespace) -> int:
    import contextlib
    import os

    from parity.demo import run_demo
    from parity.runlock import run_lock
    from parity.startup import JAX_FALSE

    out = _output_dir(args.out)
    if os.environ.get("JAX_ENABLE_X64", "").strip().lower() in JAX_FALSE:
        raise ConfigError(
            "JAX_ENABLE_X64",
            "is off, but the demo checks the twins' parity in float64 as well; unset it (or set it to 1) for the demo",
        )
    runs = [out / "jax", out / "torch"]
    for run in runs:
        _refuse_existing_run(run, str(run), "choose another --out for the demo")
    with contextlib.ExitStack() as stack:
        for run in runs:
            stack.enter_context(run_lock(run, "out"))
        for run in runs:
            _refuse_existing_run(run, str(run), "choose another --out for the demo")
        return run_demo(out, iterations=args.iterations, progress=not args.no_progress)


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
    _add_memory_flag(p)
    p.set_defaults(func=cmd_dump)

    p = sub.add_parser("train", help="meta-train in one twin; writes config.json, metrics.jsonl, final.npz")
    _add_config_flags(p, "seed-alpha")
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument(
        "--print-every",
        type=_int_flag("print_every", 0),
        default=0,
        metavar="N",
        help="the seed's printout every N steps",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--resume", action="store_true", help="continue from DIR's checkpoint (either twin's), bit for bit")
    p.add_argument(
        "--devices",
        type=_int_flag("devices", 1),
        metavar="N",
        help="split each meta-batch over N devices (JAX: default the most local devices that divide it; "
        "PyTorch: the torchrun world size)",
    )
    p.add_argument("--coordinator", metavar="HOST:PORT", help="JAX multi-host: jax.distributed coordinator address")
    p.add_argument("--num-processes", type=_int_flag("num_processes", 1), metavar="N", help="JAX multi-host: processes")
    p.add_argument("--process-id", type=_int_flag("process_id", 0), metavar="I", help="JAX multi-host: this process")
    p.add_argument(
        "--checkpoint-every",
        type=_int_flag("checkpoint_every", 1),
        metavar="N",
        help="also checkpoint every N >= 1 steps (default: only at the end)",
    )
    p.add_argument(
        "--init-timeout",
        type=_int_flag("init_timeout", 1),
        default=120,
        metavar="S",
        help="JAX multi-host: seconds to wait for every process to join (default 120)",
    )
    _add_memory_flag(p)
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
    _add_memory_flag(p)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("report", help="figures and DIR/report.md from a run and its eval.json")
    p.add_argument("dir", metavar="DIR")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("bench", help="time the JAX twin, the PyTorch twin and the seed's own loop side by side")
    p.add_argument("--quick", action="store_true", help="only seed-alpha at B=1 and B=25, T=5 (under two minutes)")
    p.add_argument("--json", metavar="FILE", help="write {machine, rows, targets, skipped} as JSON")
    p.add_argument("--device", default="cpu", help="cpu | gpu (default cpu; gpu fails where none is visible)")
    p.add_argument("--threads", type=_int_flag("threads", 1), default=1, metavar="N", help="CPU threads (default 1)")
    p.add_argument("--repeats", type=_int_flag("repeats", 1), metavar="N", help="timed rounds per setting (default 5)")
    p.add_argument("--plot", metavar="FILE.png", help="time per task-step against B and T, log axes")
    p.add_argument("--unroll", type=_int_flag("unroll"), metavar="T", help="JAX: unroll inner loops up to T steps")
    p.add_argument("--chunk", type=_int_flag("chunk"), metavar="N", help="JAX: outer steps per compiled call")
    p.add_argument("--no-pin", action="store_true", help="do not bind the process to --threads cores")
    p.add_argument(
        "--scaling",
        action="store_true",
        help="instead: JAX tasks/s against 1, 2, 4 devices, strong and weak (forced host devices on a CPU)",
    )
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("demo", help="the main job: seed-alpha in JAX and PyTorch, compared")
    p.add_argument("--out", default="runs/demo", metavar="DIR")
    p.add_argument("--iterations", type=_int_flag("iterations", 1), default=5000)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """The command line. ``argv`` None (the console script, ``python -m parity``): the process
    ends here, so a Ctrl-C leaves through ``os._exit(130)`` (``parity.startup``)."""
    if argv is None:
        from parity.startup import install_interrupt_handler

        install_interrupt_handler()
    status = _main(argv)
    if argv is None:
        from parity.startup import exit_quietly_on_interrupt

        exit_quietly_on_interrupt()
    return status


def _main(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return EXIT_USAGE
        from parity.startup import check_environment

        uses_jax = args.command in ("check", "bench", "demo") or (
            args.command in ("dump", "train", "eval") and args.framework == "jax"
        )
        check_environment(uses_jax)
        return int(args.func(args))
    except (ConfigError, UsageError) as err:
        print(f"maml-parity: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        if argv is None:  # XLA's compiler threads may still run: no interpreter shutdown (parity.startup)
            from parity.startup import hard_exit

            hard_exit(130, "maml-parity: interrupted")
        print("maml-parity: interrupted", file=sys.stderr)
        return 130
    except RuntimeError as err:  # training that diverged elsewhere than in `train` (eval's pretrained baseline)
        from parity.training import TrainingDiverged

        if not isinstance(err, TrainingDiverged):
            raise
        print(f"maml-parity: training diverged at {err}", file=sys.stderr)
        return EXIT_DIVERGED
    except OSError as err:  # a file that cannot be read or written (permissions, a full disk): one line
        where = f" ({err.filename!r})" if err.filename else ""
        print(f"maml-parity: error: io: {err.strerror or err}{where}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())

"""``maml-parity``: one entry point, subcommands. Parses and dispatches; the logic lives elsewhere.

Bad input ends in one line naming the field and what is allowed, and exit status 2. A training
run that diverges (a loss or gradient not finite) ends in one line and exit status 3.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from parity.config import (
    ACTIVATIONS,
    ALPHA_MODES,
    DTYPES,
    LOSSES,
    PRESETS,
    SEED_ALPHA,
    Config,
    ConfigError,
    field_names,
    get_preset,
)

EXIT_MISMATCH = 1
EXIT_USAGE = 2
EXIT_DIVERGED = 3
TWINS = ("jax", "torch")


class UsageError(Exception):
    """Bad command-line input; the message is printed as one line and the exit status is 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, no usage dump
        # "argument --inner-steps: inner_steps: must be ..." -> "inner_steps: must be ...": the field first.
        match = re.fullmatch(r"argument [^:]+: ([a-z_]+: .*)", message, flags=re.DOTALL)
        raise UsageError(match.group(1) if match else message)


# --- shared flags ------------------------------------------------------------------------------


# Config fields with a flag of their own, in the order --help lists them: the fields people change
# most. The flag is the field's name with dashes; its type comes from the Config field (a list of
# integers, an integer, a number, a word, or true/false as a pair such as --first-order /
# --second-order); the Config checks the value, so an error names the field as a config file's
# would. Any other field: --set.
CONFIG_FLAGS: dict[str, str] = {
    "hidden": "hidden layer widths, e.g. --hidden 40 40",
    "activation": f"{' | '.join(ACTIVATIONS)}",
    "loss": f"inner and outer loss: {' | '.join(LOSSES)}",
    "inner_steps": "T, inner SGD steps",
    "alpha_mode": f"{' | '.join(ALPHA_MODES)}: alpha fixed, one learned alpha, or one per parameter entry",
    "alpha_init": "alpha, or the initial value of a learned alpha",
    "alpha_parametrisation": "identity | softplus: learn alpha itself, or rho with alpha = softplus(rho) > 0",
    "first_order": "first-order MAML: inner gradients held constant (alpha still gets a gradient)",
    "meta_batch": "B, tasks per outer step",
    "k_support": "K, support points per task",
    "k_query": "Q, query points per task",
    "outer_lr": "learning rate of the outer optimiser",
    "alpha_lr": "learning rate of a learned alpha's optimiser",
    "iterations": "outer steps",
    "seed": "sampler and init seed",
    "dtype": "float32 | float64",
}
# The second spelling of a true/false field's pair.
_NEGATED = {"first_order": ("--second-order", "the full meta-gradient through the inner loop")}

PRECEDENCE_HELP = (
    "Config precedence, lowest first: the preset; then --config (a JSON file, or inline JSON starting "
    "with '{'), whose keys replace the preset's; then the field flags (--hidden, --loss, ...); then "
    "every --set KEY=VALUE, in the order given. A later source replaces a field, never merges into it."
)


def _add_config_flags(p: argparse.ArgumentParser, default_preset: str, framework: bool = True) -> None:
    g = p.add_argument_group("config", PRECEDENCE_HELP)
    g.add_argument(
        "--preset", default=default_preset, help=f"named config ({', '.join(PRESETS)}); default {default_preset}"
    )
    g.add_argument(
        "--config",
        metavar="FILE.json|JSON",
        help='a JSON config file, or inline JSON such as \'{"loss": "mse"}\'; its keys replace the preset\'s',
    )
    if framework:
        p.add_argument("--framework", default="jax", help="jax | torch (default jax)")
    defaults = {f.name: f.default for f in dataclasses.fields(Config)}
    for field, help_text in CONFIG_FLAGS.items():
        flag = "--" + field.replace("_", "-")
        default = defaults[field]
        if isinstance(default, bool):
            g.add_argument(flag, dest=field, action="store_const", const=True, default=None, help=help_text)
            negated, negated_help = _NEGATED[field]
            g.add_argument(negated, dest=field, action="store_const", const=False, help=negated_help)
        elif isinstance(default, tuple):
            g.add_argument(flag, dest=field, nargs="+", type=_int_flag(field, 1), metavar="W", help=help_text)
        elif isinstance(default, int):
            g.add_argument(flag, dest=field, type=_int_flag(field), metavar="N", help=help_text)
        elif isinstance(default, float):
            g.add_argument(flag, dest=field, type=_float_flag(field), metavar="X", help=help_text)
        else:
            g.add_argument(flag, dest=field, metavar="WORD", help=help_text)
    g.add_argument(
        "--set",
        dest="set_fields",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="set any config field (repeatable); VALUE is read as JSON, else as a string: "
        "--set outer_lr=0.02 --set 'hidden=[64, 64]' --set init_scheme=maml",
    )


def _float_flag(field: str) -> Any:
    """An argparse type: a finite number; errors name the field."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{field}: must be a number, got {text!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{field}: must be a finite number, got {text!r}")
        return value

    return parse


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
    """The preset, then --config (file or inline JSON), then the field flags, then --set (see PRECEDENCE_HELP)."""
    cfg = get_preset(args.preset)
    if args.config:
        cfg = Config.from_json(_config_text(args.config), base=cfg)
    overrides: dict[str, Any] = {}
    if getattr(args, "dtype", None) is not None and args.dtype not in DTYPES:
        raise ConfigError("dtype", f"must be one of {', '.join(DTYPES)}; got {args.dtype!r}")
    for field in CONFIG_FLAGS:
        value = getattr(args, field, None)
        if value is not None:
            overrides[field] = tuple(value) if isinstance(value, list) else value
    cfg = cfg.replace(**overrides) if overrides else cfg
    for item in getattr(args, "set_fields", None) or []:
        cfg = cfg.replace(**dict([parse_set(item)]))
    return cfg


def _config_text(value: str) -> str:
    """--config's JSON text: the value itself when it starts with '{', else the named file's contents."""
    if value.lstrip().startswith("{"):
        return value
    path = Path(value)
    try:
        return path.read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError("config", f"cannot read {str(path)!r} ({err.strerror})") from None
    except UnicodeDecodeError:
        raise ConfigError("config", f"{str(path)!r} is not a UTF-8 text file (a JSON object is needed)") from None


def parse_set(item: str) -> tuple[str, Any]:
    """``KEY=VALUE`` -> (field, value): VALUE as JSON when it parses (numbers, true, lists), else the
    string itself (``--set activation=relu``). An unknown field is named with the allowed ones."""
    key, sep, text = item.partition("=")
    key = key.strip().replace("-", "_")
    if not sep or not key:
        raise ConfigError("set", f"must be KEY=VALUE (a config field and its value), got {item!r}")
    if key not in field_names():
        raise ConfigError(key, f"unknown config field (in --set {item!r}); allowed: {', '.join(field_names())}")
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        value = text
    if isinstance(value, list) and key == "hidden":
        value = tuple(value)
    return key, value


def _output_file(path: str, field: str, suffix: str | None = None) -> Path:
    """A file the command will write: refused now, before any work, if it cannot be one."""
    out = Path(path)
    if suffix is not None and out.suffix != suffix:
        raise ConfigError(field, f"must be a file name ending in {suffix}, got {path!r}")
    if out.is_dir():
        raise ConfigError(field, f"{path!r} is a directory; give a file name")
    for parent in out.parents:
        if parent.exists() and not parent.is_dir():
            raise ConfigError(field, f"cannot write {path!r}: {str(parent)!r} is not a directory")
    return out


def _output_dir(path: str, field: str = "out") -> Path:
    """A directory the command will write into: refused now if it is (or lies under) a file."""
    out = Path(path)
    for candidate in (out, *out.parents):
        if candidate.exists() and not candidate.is_dir():
            raise ConfigError(field, f"{str(candidate)!r} exists and is not a directory")
    return out


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


def _add_threads_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--threads",
        type=_int_flag("threads", 1),
        metavar="N",
        help="CPU threads (default: from the work's size, 1 for seed-sized models; the first line says which)",
    )


def _set_threads(args: argparse.Namespace, cfg: Config | None, frameworks: tuple[str, ...]) -> str:
    """Apply --threads (or the size-based default) before a framework starts; the line to print."""
    from parity import threads

    count, why = threads.choose(getattr(args, "threads", None), cfg)
    return f"{threads.apply(count, frameworks)}, {why}"


def _json_target(args: argparse.Namespace) -> str | None:
    """--json FILE, checked before any work; '-' is standard output."""
    target = getattr(args, "json", None)
    if target and target != "-":
        _output_file(target, "json")
    return target


def _human(args: argparse.Namespace) -> Any:
    """Where the human-readable lines go: standard error when --json - takes standard output."""
    return sys.stderr if getattr(args, "json", None) == "-" else sys.stdout


def _write_json(target: str, obj: Any, human: Any) -> None:
    text = json.dumps(obj, indent=1) + "\n"
    if target == "-":
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    from parity.checkpoint import atomic_write

    out = Path(target)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, lambda f: f.write(text.encode()))
    print(f"wrote {out}", file=human)


# --- subcommands ---------------------------------------------------------------------------------


def cmd_check(args: argparse.Namespace) -> int:
    from parity import harness
    from parity.twins import enable_jax_x64

    json_target, human = _json_target(args), _human(args)
    thread_line = _set_threads(args, None, ("jax", "torch"))
    enable_jax_x64()
    cases = harness.all_cases(quick=args.quick)
    if args.cases:
        cases = [c for c in cases if args.cases in c.name]
        if not cases:
            raise ConfigError("cases", f"no case name contains {args.cases!r}")
    print(
        f"parity check: {len(cases)} cases, JAX vs PyTorch, float64 and float32; {thread_line}", file=human, flush=True
    )
    print(harness.TABLE_HEADER, file=human, flush=True)

    def on_case(case: Any, rows: list[Any]) -> None:
        for line in harness.table_lines(rows, verbose=args.verbose):
            print(line, file=human, flush=True)

    rows = harness.run_check(cases, on_case=on_case)
    ok = harness.overall_ok(rows)
    print(harness.summary(rows), file=human)
    if json_target:
        _write_json(json_target, {"ok": ok, "rows": [harness.row_dict(r) for r in rows]}, human)
    return 0 if ok else EXIT_MISMATCH


def cmd_dump(args: argparse.Namespace) -> int:
    from parity.checkpoint import golden_arrays, write_golden

    cfg = resolve_config(args)
    out = _output_file(args.out, "out", suffix=".npz")
    thread_line = _set_threads(args, cfg, (args.framework,) if args.framework in TWINS else ())
    twin = _load_twin(args.framework, cfg.dtype)
    path = write_golden(out, golden_arrays(twin, cfg))
    print(f"wrote {path} ({args.framework}, {cfg.dtype}, T={cfg.inner_steps}, B={cfg.meta_batch}; {thread_line})")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from parity.checkpoint import CHECKPOINT_FILE
    from parity.run import train_run
    from parity.training import TrainingDiverged
    from parity.twins import placement_for

    cfg = resolve_config(args)
    out = _output_dir(args.out)
    if not args.resume and ((out / CHECKPOINT_FILE).exists() or (out / "metrics.jsonl").exists()):
        raise ConfigError(
            "out",
            f"{args.out!r} already holds a training run; pass --resume to continue it, or choose another --out "
            "(nothing was overwritten)",
        )
    main_process = _check_split(args, cfg)
    if main_process is None:  # another rank of a refused run: rank 0 says why, once
        return EXIT_USAGE
    thread_line = _set_threads(args, cfg, (args.framework,) if args.framework in TWINS else ())
    twin = _load_twin(args.framework, cfg.dtype)
    placement = placement_for(args.framework, cfg, args.devices, args.coordinator, args.num_processes, args.process_id)
    if placement is None or placement.is_main:
        print(f"train {args.framework}: {cfg.iterations} steps, {thread_line}", flush=True)
    if placement is not None and placement.is_main:
        print(f"{args.framework}: meta-batch of {cfg.meta_batch} split over {placement.devices} devices", flush=True)
    try:
        state, rows = train_run(
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
        from parity.run import alpha_summary
        from parity.training import final_values

        final = final_values(twin, state, cfg)
        alpha = final["alpha"] if "alpha" in final else {k[6:]: v for k, v in final.items() if k.startswith("alpha/")}
        print(
            f"{args.framework}: {len(rows)} steps, last outer loss {rows[-1]['outer_loss']:.4f}, "
            f"final alpha {_alpha_line(alpha_summary(alpha))} (after the last update: the checkpoint's)"
        )
    print(f"wrote {out}/config.json, {out}/metrics.jsonl, {out}/checkpoint.safetensors, {out}/final.npz")
    return 0


def _alpha_line(alpha: Any) -> str:
    if isinstance(alpha, dict):
        return "mean {mean:.6g} (min {min:.6g}, max {max:.6g})".format(**alpha)
    return f"{alpha:.6g}"


def _check_split(args: argparse.Namespace, cfg: Config) -> bool | None:
    """Refuse a meta-batch that does not split over the processes or devices asked for, before any
    framework or process group starts. True: this process may go on and is the one that prints;
    False: it may go on but stays quiet; None: the run is refused and another process says why.

    Under torchrun every rank gets here: rank 0 raises the one-line error, the others return None
    and exit 2 without a word, so the message is not repeated once per rank.
    """
    import os

    if args.framework == "torch" and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        parts, unit, rank = int(os.environ["WORLD_SIZE"]), "processes", int(os.environ.get("RANK", "0"))
    elif args.framework == "jax" and (args.devices or args.num_processes):
        parts, unit, rank = (args.devices or args.num_processes), "devices", args.process_id or 0
    else:
        return True
    if cfg.meta_batch % parts:
        if rank != 0:
            return None
        fit = cfg.meta_batch - cfg.meta_batch % parts or parts
        raise ConfigError(
            "devices",
            f"the meta-batch of {cfg.meta_batch} tasks does not split evenly over {parts} {unit}; "
            f"use a multiple of {parts}, e.g. --meta-batch {fit} (or --set meta_batch={fit})",
        )
    return rank == 0


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
        "baseline_alpha": args.baseline_alpha,
    }
    if args.phase_shift is not None:
        spec_args["phase_shifts"] = tuple(args.phase_shift)
    spec = EvalSpec(**spec_args)  # a bad --tasks, --shots ... is named before the run is looked at
    run_dir = _run_dir(args.dir)
    json_target, human = _json_target(args), _human(args)
    thread_line = _set_threads(args, _eval_work(run_dir, spec), (args.framework,) if args.framework in TWINS else ())
    print(f"eval {args.framework}: {thread_line}", file=human, flush=True)
    result = evaluate_run(run_dir, framework=args.framework, dtype=args.dtype, spec=spec)
    print("\n".join(summary_lines(result)), file=human)
    print(f"wrote {run_dir}/eval.json", file=human)
    if json_target:
        _write_json(json_target, result, human)
    return 0


def _eval_work(run_dir: Path, spec: Any) -> Config | None:
    """The evaluation's size as a config (all held-out tasks at once), for the thread default."""
    from parity.eval import QUERY_POINTS

    try:
        cfg = Config.from_json((run_dir / "config.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ConfigError):
        return None  # evaluate_run names what is wrong with the run
    return cfg.replace(meta_batch=spec.tasks, k_query=QUERY_POINTS, inner_steps=max(1, spec.max_steps))


def cmd_report(args: argparse.Namespace) -> int:
    from parity.report import write_report

    path = write_report(_run_dir(args.dir))
    print(f"wrote {path}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from parity import bench

    _json_target(args)
    if args.plot:
        _output_file(args.plot, "plot")
    human = _human(args)
    if args.scaling:
        return _bench_scaling(args)
    result = bench.run_bench(
        quick=args.quick,
        device=args.device,
        threads=args.threads,
        repeats=args.repeats,
        progress=lambda line: print(line, file=human, flush=True),
        command=_bench_command(args),
        unroll=args.unroll,
        chunk=args.chunk,
        pin=not args.no_pin,
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
        f"bench --scaling: JAX twin, sharded meta-batch, {args.device} devices {list(scaling.DEVICE_COUNTS)}",
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
    words = ["maml-parity bench", "--quick" if args.quick else "", f"--device {args.device} --threads {args.threads}"]
    words.append("--no-pin" if args.no_pin else "")
    flags = ("repeats", "unroll", "chunk", "json", "plot")
    words += [f"--{flag} {getattr(args, flag)}" for flag in flags if getattr(args, flag) is not None]
    return " ".join(w for w in words if w)


def cmd_demo(args: argparse.Namespace) -> int:
    from parity.demo import run_demo

    out = _output_dir(args.out)
    thread_line = _set_threads(args, SEED_ALPHA, TWINS)
    print(f"demo: {thread_line}", flush=True)
    return run_demo(out, iterations=args.iterations, progress=not args.no_progress)


# --- parser ----------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="maml-parity", description="Twin JAX / PyTorch unrolled meta-learning, held to parity.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    p = sub.add_parser("check", help="run both twins over the parity matrix and compare them")
    p.add_argument("--quick", action="store_true", help="a covering subset of the matrix (every axis value once)")
    p.add_argument("--cases", metavar="SUBSTRING", help="only cases whose name contains this")
    p.add_argument("--json", metavar="FILE", help="write {ok, rows} as JSON to FILE; '-': standard output")
    p.add_argument("--verbose", action="store_true", help="a line per quantity, not per case and pair")
    _add_threads_flag(p)
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("dump", help="write a golden .npz file any implementation can check itself against")
    _add_config_flags(p, "seed-alpha")
    p.add_argument("--out", required=True, metavar="FILE.npz")
    _add_threads_flag(p)
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
    _add_threads_flag(p)
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
    p.add_argument(
        "--baseline-alpha",
        default="meta",
        metavar="MODE",
        help="meta | tuned: the baselines adapt with the run's alpha (default), or each with its own alpha "
        "picked from a small grid on separate tuning tasks (the MAML paper's tuned baseline)",
    )
    p.add_argument(
        "--json", metavar="FILE", help="also write the results (eval.json's content) to FILE; '-': standard output"
    )
    _add_threads_flag(p)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("report", help="figures and DIR/report.md from a run and its eval.json")
    p.add_argument("dir", metavar="DIR")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("bench", help="time the JAX twin, the PyTorch twin and the seed's own loop side by side")
    p.add_argument("--quick", action="store_true", help="only seed-alpha at B=1 and B=25, T=5 (under two minutes)")
    p.add_argument(
        "--json", metavar="FILE", help="write {machine, rows, targets, skipped} as JSON to FILE; '-': standard output"
    )
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
    _add_threads_flag(p)
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

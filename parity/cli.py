"""``maml-parity``: one entry point, subcommands. Parses and dispatches; the logic lives elsewhere.

Bad input ends in one line naming the field and what is allowed, and exit status 2. A training
run that diverges (a loss or gradient not finite) ends in one line and exit status 3.
"""

from __future__ import annotations

import argparse
import json
import math
import os
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
from parity.registry import BUILTINS, DEFAULT_TWIN, ENTRY_POINT_GROUP, TWINS

EXIT_MISMATCH = 1
EXIT_USAGE = 2
EXIT_DIVERGED = 3
_TWIN_CHOICES = " | ".join(TWINS)


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
        p.add_argument("--framework", default=DEFAULT_TWIN, help=f"{_TWIN_CHOICES} (default {DEFAULT_TWIN})")
    defaults = Config().flat()
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


def _float_flag(field: str, minimum: float | None = None) -> Any:
    """An argparse type: a finite number, at least ``minimum`` when given; errors name the field."""
    bound = "" if minimum is None else f" >= {minimum:g}"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{field}: must be a number{bound}, got {text!r}") from None
        if not math.isfinite(value) or (minimum is not None and value < minimum):
            raise argparse.ArgumentTypeError(f"{field}: must be a finite number{bound}, got {text!r}")
        return value

    return parse


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


def _add_device_flags(p: argparse.ArgumentParser, precision: str, device: str | None = "cpu") -> None:
    """``--device`` and ``--precision``, checked (ConfigError naming the field) when the command runs."""
    from parity.devices import DEVICE_HELP, PRECISION_HELP, PRECISIONS

    default = f"default {device}" if device else "default: the twins on the CPU, and on a GPU where one is visible"
    p.add_argument("--device", default=device, help=f"{DEVICE_HELP} ({default}); refused where none is visible")
    text = f"{' | '.join(PRECISIONS)} (default {precision}): {PRECISION_HELP}"
    p.add_argument("--precision", default=precision, metavar="P", help=text)


def _device_args(args: argparse.Namespace) -> tuple[str | None, str]:
    """(device, precision) of a command, both checked now, before any work."""
    from parity.devices import check_precision, parse_device

    parse_device(args.device)
    return args.device, check_precision(args.precision)


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
    """--config's JSON text: the value itself when it starts with '{', else the named file's
    contents (read with a size cap: ``--config /dev/zero`` is refused, not read until memory runs out)."""
    from parity.safeio import read_text_capped

    if value.lstrip().startswith("{"):
        return value
    return read_text_capped(value, "config")


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


def _load_twin(framework: str, dtype: str, device: str | None = None, check_device: bool = True) -> Any:
    from parity.twins import load

    return load(framework, dtype, device, check_device)


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

    json_target, human = _json_target(args), _human(args)
    cases = harness.all_cases(quick=args.quick)
    if args.cases:
        cases = [c for c in cases if args.cases in c.name]
        if not cases:
            raise ConfigError("cases", f"no case name contains {args.cases!r}")
    device, precision = _device_args(args)
    if args.impl:
        if args.device is not None:
            raise ConfigError("device", "give devices inside --impl SPECs (e.g. --impl torch@cuda:0), not with --impl")
        groups = [harness.load_impls(args.impl, precision)]
    elif args.device is not None:
        groups = [harness.load_impls(None, precision, device)]
    else:
        groups = harness.default_groups(precision)
    impls = [impl for group in groups for impl in group]
    names = list(dict.fromkeys(impl.name for impl in impls))
    thread_line = _set_threads(args, None, tuple({getattr(i, "framework", "") for i in impls} & set(TWINS)))
    pairs = "; ".join(f"reference {g[0].name}, checked: {', '.join(i.name for i in g[1:])}" for g in groups)
    print(
        f"parity check: {len(cases)} cases; {pairs}; float64 and float32, {precision} precision; {thread_line}",
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


def cmd_dump(args: argparse.Namespace) -> int:
    from parity import limits
    from parity.golden import golden_arrays, write_golden
    from parity.registry import resolve

    cfg = resolve_config(args)
    out = _output_file(args.out, "out", suffix=".npz")
    limits.check_train(cfg.replace(iterations=1), args.max_memory)  # one meta-gradient, one batch
    thread_line = _set_threads(args, cfg, (args.framework,) if args.framework in TWINS else ())
    device, precision = _device_args(args)
    spec = args.framework if args.device is None or "@" in args.framework else f"{args.framework}@{device}"
    impl = resolve(spec)
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


def cmd_train(args: argparse.Namespace) -> int:
    import contextlib
    import os

    from parity import limits
    from parity.runlock import run_lock
    from parity.startup import check_distributed_flags, start_distributed

    cfg = resolve_config(args)
    out = _output_dir(args.out)
    check_distributed_flags(args.coordinator, args.num_processes, args.process_id)
    limits.check_train(cfg, args.max_memory)
    hint = "pass --resume to continue it, or choose another --out"
    if not args.resume:
        _refuse_existing_run(out, args.out, hint)
    main_process = _check_split(args, cfg)
    if main_process is None:  # another rank of a refused run: rank 0 says why, once
        return EXIT_USAGE
    thread_line = _set_threads(args, cfg, (args.framework,) if args.framework in TWINS else ())
    device, precision = _device_args(args)
    # JAX's backends must not start before jax.distributed.initialize: the device is checked after it,
    # still before any work.
    twin = _load_twin(args.framework, cfg.dtype, device, check_device=False)
    twin.precision = precision
    dist = (args.coordinator, args.num_processes, args.process_id)
    if args.coordinator is not None and twin.joins_coordinator:  # before the lock: a timeout leaves nothing
        start_distributed(args.coordinator, args.num_processes, args.process_id, args.init_timeout)
        dist = (None, None, None)  # joined: placement must not join again
    # Only the first process of a distributed run writes files (JAX: process 0; torchrun: rank 0).
    writer = (args.process_id or 0) == 0 and os.environ.get("RANK", "0") == "0"
    with run_lock(out, "out") if writer else contextlib.nullcontext():
        if writer and not args.resume:
            _refuse_existing_run(out, args.out, hint)  # again, now that no one else can start one
        placement = twin.placement(cfg, args.devices, *dist)
        twin.check_device()
        if placement is not None and placement.is_main:
            print(
                f"{args.framework}: meta-batch of {cfg.meta_batch} split over {placement.devices} devices", flush=True
            )
        announce = f"train {args.framework}: {cfg.iterations} steps, {thread_line}; on {device}, {precision} precision"
        return _train_locked(args, twin, cfg, out, placement, announce)


def _train_locked(
    args: argparse.Namespace, twin: Any, cfg: Config, out: Path, placement: Any, announce: str | None = None
) -> int:
    """``train`` once the run directory's lock is held."""
    from parity.run import train_run
    from parity.training import TrainingDiverged

    try:
        with twin.precision_scope():
            state, rows = train_run(
                twin,
                cfg,
                out,
                print_every=args.print_every,
                progress=not args.no_progress,
                resume=args.resume,
                checkpoint_every=args.checkpoint_every or 0,
                placement=placement,
                precision=twin.precision,
                announce=announce,
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

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # started by torchrun: one process per share
        parts, unit, rank = int(os.environ["WORLD_SIZE"]), "processes", int(os.environ.get("RANK", "0"))
    elif args.devices or args.num_processes:
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
    json_target, human = _json_target(args), _human(args)
    thread_line = _set_threads(args, _eval_work(run_dir, spec), (args.framework,) if args.framework in TWINS else ())
    device, precision = _device_args(args)
    _load_twin(args.framework, cfg.dtype, device)  # a device the twin cannot see: one line, before the work
    with run_lock(run_dir, "dir"):
        print(f"eval {args.framework} on {device}, {precision} precision: {thread_line}", file=human, flush=True)
        result = evaluate_run(
            run_dir, framework=args.framework, dtype=args.dtype, spec=spec, device=device, precision=precision
        )
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

    _json_target(args)
    if args.plot:
        _output_file(args.plot, "plot", IMAGE_SUFFIXES)
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
    flags = ("repeats", "unroll", "chunk", "time_budget", "json", "plot")
    words += [f"--{flag.replace('_', '-')} {getattr(args, flag)}" for flag in flags if getattr(args, flag) is not None]
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
    device, precision = _device_args(args)
    runs = [out / name for name in TWINS]
    for run in runs:
        _refuse_existing_run(run, str(run), "choose another --out for the demo")
    thread_line = _set_threads(args, SEED_ALPHA, TWINS)  # before JAX's backend starts
    for name in TWINS:
        _load_twin(name, "float32", device)  # a device either twin cannot see: one line, before any work
    print(f"demo: {thread_line}", flush=True)
    with contextlib.ExitStack() as stack:
        for run in runs:
            stack.enter_context(run_lock(run, "out"))
        for run in runs:
            _refuse_existing_run(run, str(run), "choose another --out for the demo")
        return run_demo(
            out, iterations=args.iterations, progress=not args.no_progress, device=device, precision=precision
        )


# --- parser ----------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="maml-parity", description="Twin JAX / PyTorch unrolled meta-learning, held to parity.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    p = sub.add_parser("check", help="run both twins over the parity matrix and compare them")
    p.add_argument("--quick", action="store_true", help="a covering subset of the matrix (every axis value once)")
    p.add_argument("--cases", metavar="SUBSTRING", help="only cases whose name contains this")
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
    _add_device_flags(p, "highest", None)
    _add_threads_flag(p)
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("dump", help="write a golden .npz file any implementation can check itself against")
    _add_config_flags(p, "seed-alpha")
    _add_device_flags(p, "highest")
    p.add_argument("--out", required=True, metavar="FILE.npz")
    _add_threads_flag(p)
    _add_memory_flag(p)
    p.set_defaults(func=cmd_dump)
    p.add_argument("--trace", action="store_true", help="also write the inner loop per task and step (trace/* entries)")

    p = sub.add_parser(
        "diff", help="compare two golden or trace files from any source; exit 0 same, 1 different, 2 bad file"
    )
    p.add_argument("a", metavar="A.npz", help="the reference file")
    p.add_argument("b", metavar="B.npz", help="the file checked against it")
    p.add_argument("--rtol", type=_float_flag("rtol", 0), help="relative tolerance (default: by dtype and kind)")
    p.add_argument("--atol", type=_float_flag("atol", 0), help="absolute tolerance (default: by dtype and kind)")
    p.add_argument("--json", metavar="FILE", help="write the comparison as JSON")
    p.set_defaults(func=cmd_diff)

    p = sub.add_parser("train", help="meta-train in one twin; writes config.json, metrics.jsonl, final.npz")
    _add_config_flags(p, "seed-alpha")
    _add_device_flags(p, "default")
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
        help="split each meta-batch over N devices (default: twins that shard over local devices use the most that "
        "divide it; under torchrun, the world size)",
    )
    p.add_argument("--coordinator", metavar="HOST:PORT", help="multi-host (twins that join a coordinator): its address")
    p.add_argument(
        "--num-processes", type=_int_flag("num_processes", 1), metavar="N", help="multi-host: the number of processes"
    )
    p.add_argument(
        "--process-id", type=_int_flag("process_id", 0), metavar="I", help="multi-host: this process's index"
    )
    p.add_argument(
        "--checkpoint-every",
        type=_int_flag("checkpoint_every", 1),
        metavar="N",
        help="also checkpoint every N >= 1 steps (default: only at the end)",
    )
    _add_threads_flag(p)
    p.add_argument(
        "--init-timeout",
        type=_int_flag("init_timeout", 1),
        default=120,
        metavar="S",
        help="multi-host: seconds to wait for every process to join (default 120)",
    )
    _add_memory_flag(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="adapt meta / random / pretrained inits on held-out tasks; writes DIR/eval.json")
    p.add_argument("dir", metavar="DIR", help="a training run (its checkpoint.safetensors)")
    p.add_argument(
        "--framework",
        default=DEFAULT_TWIN,
        help=f"{_TWIN_CHOICES} (default {DEFAULT_TWIN}), whichever twin trained the run",
    )
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
    _add_device_flags(p, "default")
    _add_threads_flag(p)
    _add_memory_flag(p)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("report", help="figures and DIR/report.md from a run and its eval.json")
    p.add_argument("dir", metavar="DIR")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("bench", help="time the JAX twin, the PyTorch twin and the seed's own loop side by side")
    p.add_argument(
        "--quick",
        action="store_true",
        help="CPU: seed-alpha at B=1 and B=25, T=5 (under a minute); GPU: the goals' three settings",
    )
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
        "--time-budget",
        type=_int_flag("time_budget", 1),
        metavar="S",
        help="start no new setting after S seconds (the rest is listed as skipped); --json keeps partial results",
    )
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
    _add_device_flags(p, "default")
    _add_threads_flag(p)
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
        from parity.startup import exit_quietly_on_interrupt, hard_exit

        exit_quietly_on_interrupt()
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            # A torchrun rank ends here, every file written and closed: left to interpreter shutdown,
            # the process group's C++ threads sometimes abort it ("terminate called without an active
            # exception", 1 run in 3 of two gloo ranks), and torchrun then reports the run failed.
            hard_exit(status)
    return status


def _main(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return EXIT_USAGE
        from parity.startup import check_environment

        framework = getattr(args, "framework", None)
        check_environment(TWINS if args.command in ("check", "bench", "demo") else (framework,) if framework else ())
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

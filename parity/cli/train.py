"""``train`` and ``eval``: meta-training in one twin, and evaluating a run it wrote."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from parity.cli.common import (
    EXIT_DIVERGED,
    EXIT_USAGE,
    _device_args,
    _human,
    _json_target,
    _load_twin,
    _output_dir,
    _output_file,
    _refuse_existing_run,
    _set_threads,
    _write_json,
    resolve_config,
)
from parity.cli.parser import (
    _TWIN_CHOICES,
    _add_config_flags,
    _add_device_flags,
    _add_memory_flag,
    _add_threads_flag,
    _int_flag,
    _phase_flag,
)
from parity.config import DTYPES, Config, ConfigError
from parity.environment import launched_process
from parity.registry import DEFAULT_TWIN, TWINS
from parity.rundir import RunDir


def cmd_train(args: argparse.Namespace) -> int:
    import contextlib

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
    writer = (args.process_id or 0) == 0 and launched_process()[0] == 0
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
            print(f"maml-parity: training diverged at {err}; {RunDir(out).kept_checkpoint_note()}", file=sys.stderr)
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
    run = RunDir(out)
    print(f"wrote {run.config}, {run.metrics}, {run.checkpoint}, {run.final}")
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
    rank, world = launched_process()
    if world > 1:  # started by a framework's launcher (torchrun): one process per share
        parts, unit = world, "processes"
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
    from parity.runlock import run_lock

    limits.check_eval_caps(spec.tasks, spec.shots, spec.max_steps, spec.pretrain_steps, len(spec.phase_shifts))
    run = RunDir(args.dir).require_run(args.dir)
    run_dir, ckpt = run.path, run.read_checkpoint()  # read once: evaluate_run is given it
    cfg = ckpt.config if args.dtype is None else ckpt.config.replace(dtype=args.dtype)
    limits.check_eval(
        cfg, spec.tasks, spec.shots, spec.max_steps, spec.pretrain_steps, len(spec.phase_shifts), args.max_memory
    )
    _output_file(str(run.eval_file), "dir")  # a read-only run is refused before the work
    json_target, human = _json_target(args), _human(args)
    thread_line = _set_threads(args, _eval_work(cfg, spec), (args.framework,) if args.framework in TWINS else ())
    device, precision = _device_args(args)
    twin = _load_twin(args.framework, cfg.dtype, device)  # a device it cannot see: one line, before the work
    with run_lock(run_dir, "dir"):
        print(f"eval {args.framework} on {device}, {precision} precision: {thread_line}", file=human, flush=True)
        result = evaluate_run(
            run_dir, args.framework, args.dtype, spec, device=device, precision=precision, ckpt=ckpt, twin=twin
        )
    print("\n".join(summary_lines(result)), file=human)
    print(f"wrote {run.eval_file}", file=human)
    if json_target:
        _write_json(json_target, result, human)
    return 0


def _eval_work(cfg: Config, spec: Any) -> Config:
    """The evaluation's size as a config (all held-out tasks at once), for the thread default."""
    from parity.eval import QUERY_POINTS

    return cfg.replace(meta_batch=spec.tasks, k_query=QUERY_POINTS, inner_steps=max(1, spec.max_steps))


def register_train(sub: Any) -> None:
    """The ``train`` subcommand and its flags."""
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
        "divide it; under a framework's launcher, the world size)",
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


def register_eval(sub: Any) -> None:
    """The ``eval`` subcommand and its flags."""
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

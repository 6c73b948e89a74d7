"""``maml-parity``: one entry point, subcommands. Parses and dispatches; the logic lives elsewhere.

Bad input ends in one line naming the field and what is allowed, and exit status 2. A training
run that diverges (a loss or gradient not finite) ends in one line and exit status 3.

Each command group registers its own subparser: ``check`` (check, dump, diff), ``train`` (train,
eval), ``report`` (report, demo), ``bench``; ``parser`` holds the flags, ``common`` what they share.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from parity.cli import bench, check, report, train
from parity.cli.common import (
    EXIT_DIVERGED,
    EXIT_MISMATCH,
    EXIT_USAGE,
    parse_set,
    resolve_config,
)
from parity.cli.parser import CONFIG_FLAGS, PRECEDENCE_HELP, UsageError, _Parser
from parity.config import ConfigError
from parity.environment import launched_process
from parity.registry import TWINS, twin_labels

__all__ = [
    "CONFIG_FLAGS",
    "EXIT_DIVERGED",
    "EXIT_MISMATCH",
    "EXIT_USAGE",
    "PRECEDENCE_HELP",
    "UsageError",
    "build_parser",
    "main",
    "parse_set",
    "resolve_config",
]

# The subcommands in the order --help lists them.
_REGISTER = (
    check.register_check,
    check.register_dump,
    check.register_diff,
    train.register_train,
    train.register_eval,
    report.register_report,
    bench.register_bench,
    report.register_demo,
)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="maml-parity", description=f"Twin {twin_labels(' / ')} unrolled meta-learning, held to parity."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for register in _REGISTER:
        register(sub)
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
        if launched_process()[1] > 1:
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

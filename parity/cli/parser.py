"""The command line's parser and flags: one-line argparse errors, the config flags, the device,
memory and threads flags, and typed flag parsers whose errors name the field."""

from __future__ import annotations

import argparse
import math
import re
from typing import Any, NoReturn

from parity.config import ACTIVATIONS, ALPHA_MODES, LOSSES, PRESETS, Config, ConfigError
from parity.families import FAMILIES
from parity.inner import INNER_OPTIMIZERS
from parity.models import MODELS
from parity.registry import DEFAULT_TWIN, TWINS

_TWIN_CHOICES = " | ".join(TWINS)


class UsageError(Exception):
    """Bad command-line input; the message is printed as one line and the exit status is 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, no usage dump
        # "argument --inner-steps: inner_steps: must be ..." -> "inner_steps: must be ...": the field first.
        match = re.fullmatch(r"argument [^:]+: ([a-z_]+: .*)", message, flags=re.DOTALL)
        raise UsageError(match.group(1) if match else message)


# Config fields with a flag of their own, in the order --help lists them: the fields people change
# most. The flag is the field's name with dashes; its type comes from the Config field (a list of
# integers, an integer, a number, a word, or true/false as a pair such as --first-order /
# --second-order); the Config checks the value, so an error names the field as a config file's
# would. Any other field: --set.
CONFIG_FLAGS: dict[str, str] = {
    "family": f"the task family: {' | '.join(FAMILIES)}, or a user's module:NAME / file.py:NAME",
    "model": f"the model: {' | '.join(MODELS)}, or a user's module:NAME / file.py:NAME",
    "inner_optimizer": f"the inner loop's optimiser: {' | '.join(INNER_OPTIMIZERS)}",
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


CHECK_CONFIG_HELP = (
    "Your configuration, checked: each field given (by --config, a field flag or --set KEY=VALUE, in that "
    "order) replaces that field in every case of the matrix, e.g. --hidden 64 64 --inner-steps 10 or "
    "--set inner_optimizer=sgd; cases that become the same run once. The dtype is not settable here: every "
    "case runs in float64 and float32."
)


def _add_config_flags(p: argparse.ArgumentParser, default_preset: str | None, framework: bool = True) -> None:
    """The config flags; ``default_preset`` None: no --preset (``check``: the flags change every case)."""
    if default_preset is None:
        g = p.add_argument_group("config", CHECK_CONFIG_HELP)
    else:
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
        "--data",
        dest="data_dir",
        metavar="DIR",
        help="sets data_dir: a classification data set's folder (omniglot: images_background/, images_evaluation/)",
    )
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


def _argparse_type(parse: Any, text: str) -> Any:
    try:
        return parse(text)
    except ConfigError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _add_memory_flag(p: argparse.ArgumentParser) -> None:
    from parity.limits import parse_size

    p.add_argument(
        "--max-memory",
        type=lambda text: _argparse_type(parse_size, text),
        metavar="SIZE",
        help="refuse a run estimated to need more memory than SIZE (8G, 512M; default: what the machine has free)",
    )


def _add_device_flags(p: argparse.ArgumentParser, precision: str, device: str | None = "cpu") -> None:
    """``--device`` and ``--precision``, checked (ConfigError naming the field) when the command runs."""
    from parity.devices import DEVICE_HELP, PRECISION_HELP, PRECISIONS

    default = f"default {device}" if device else "default: the twins on the CPU, and on a GPU where one is visible"
    p.add_argument("--device", default=device, help=f"{DEVICE_HELP} ({default}); refused where none is visible")
    text = f"{' | '.join(PRECISIONS)} (default {precision}): {PRECISION_HELP}"
    p.add_argument("--precision", default=precision, metavar="P", help=text)


def _add_threads_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--threads",
        type=_int_flag("threads", 1),
        metavar="N",
        help="CPU threads (default: from the work's size, 1 for seed-sized models; the first line says which)",
    )

"""What the commands share: exit statuses, config resolution, output targets checked before any
work, the run directory a command reads, threads, devices and the --json target."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from parity.cli.parser import CONFIG_FLAGS
from parity.config import DTYPES, Config, ConfigError, config_fields, get_preset, parse_set

EXIT_MISMATCH = 1

EXIT_USAGE = 2

EXIT_DIVERGED = 3


def resolve_config(args: argparse.Namespace) -> Config:
    """The preset, then --config (file or inline JSON), then the field flags, then --set (see PRECEDENCE_HELP)."""
    cfg = get_preset(args.preset)
    for changes in config_changes(args):
        cfg = cfg.replace(**changes)
    getattr(cfg.family, "check_ready", lambda: None)()  # e.g. the Omniglot presets without --data
    return cfg


def config_changes(args: argparse.Namespace) -> list[dict[str, Any]]:
    """What the command line changes in a config, in precedence order: --config's fields, the field
    flags, then each --set; each a dict of flat fields (``check`` applies them to every case)."""
    out: list[dict[str, Any]] = []
    if getattr(args, "config", None):
        out.append(config_fields(Config.from_json_object(_config_text(args.config))))
    overrides: dict[str, Any] = {}
    if getattr(args, "dtype", None) is not None and args.dtype not in DTYPES:
        raise ConfigError("dtype", f"must be one of {', '.join(DTYPES)}; got {args.dtype!r}")
    for field in CONFIG_FLAGS:
        value = getattr(args, field, None)
        if value is not None:
            overrides[field] = tuple(value) if isinstance(value, list) else value
    if getattr(args, "data_dir", None) is not None:  # --data DIR
        overrides["data_dir"] = args.data_dir
    if overrides:
        out.append(overrides)
    out.extend(dict([parse_set(item)]) for item in getattr(args, "set_fields", None) or [])
    return out


def _config_text(value: str) -> str:
    """--config's JSON text: the value itself when it starts with '{', else the named file's
    contents (read with a size cap: ``--config /dev/zero`` is refused, not read until memory runs out)."""
    from parity.safeio import read_text_capped

    if value.lstrip().startswith("{"):
        return value
    return read_text_capped(value, "config")


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
    from parity.rundir import RunDir

    RunDir(out).refuse_existing(shown, hint)


def _run_dir(path: str) -> Path:
    """An existing training run (``eval`` and ``report`` read one)."""
    from parity.rundir import RunDir

    return RunDir(path).require_run(path).path


def _load_twin(framework: str, dtype: str, device: str | None = None, check_device: bool = True) -> Any:
    from parity.twins import load

    return load(framework, dtype, device, check_device)


def _device_args(args: argparse.Namespace) -> tuple[str | None, str]:
    """(device, precision) of a command, both checked now, before any work."""
    from parity.devices import check_precision, parse_device

    parse_device(args.device)
    return args.device, check_precision(args.precision)


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

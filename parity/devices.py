"""Device and precision names, framework-neutral: what ``--device`` and ``--precision`` accept.

Each twin's ``model.resolve_device`` turns a parsed name into its framework's device object and
refuses, before any work, a device the framework cannot see; ``model.precision_scope`` applies a
precision inside a ``with`` block only.
"""

from __future__ import annotations

import re
from typing import NamedTuple

from parity.config import ConfigError

DEVICE_HELP = "cpu | gpu | cuda:N | tpu"
PRECISIONS = ("highest", "default")
PRECISION_HELP = "highest: full float32 matmuls (no TF32 / bf16 passes); default: each framework's own defaults"


class DeviceName(NamedTuple):
    kind: str  # "cpu" | "gpu" | "tpu"
    number: int | None  # cuda:N / gpu:N; None: the framework's first (or, under torchrun, the rank's own)


def parse_device(device: str | None) -> DeviceName:
    """``"cpu"``, ``"gpu"``, ``"cuda"``, ``"cuda:N"``, ``"gpu:N"``, ``"tpu"``, ``"tpu:N"``; None is ``"cpu"``."""
    if device is None:
        return DeviceName("cpu", None)
    match = re.fullmatch(r"(cpu|gpu|cuda|tpu)(?::([0-9]+))?", device.strip().lower())
    if not match or (match.group(1) == "cpu" and match.group(2) is not None):
        raise ConfigError("device", f"must be one of {DEVICE_HELP}; got {device!r}")
    kind = "gpu" if match.group(1) == "cuda" else match.group(1)
    return DeviceName(kind, None if match.group(2) is None else int(match.group(2)))


def canonical(device: str | None) -> str:
    """The name a run records: ``cpu``, ``gpu``, ``gpu:1``, ``tpu``."""
    kind, index = parse_device(device)
    return kind if index is None else f"{kind}:{index}"


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise ConfigError("precision", f"must be one of {', '.join(PRECISIONS)}; got {precision!r}")
    return precision


def not_visible(device: str, framework: str, seen: str) -> ConfigError:
    """The one-line refusal of a device the framework cannot see."""
    kind = parse_device(device).kind.upper()
    return ConfigError("device", f"{device!r}: no {kind} is visible to {framework} ({seen}); use --device cpu")

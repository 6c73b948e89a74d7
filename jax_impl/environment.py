"""The environment variables the JAX twin reads, declared without importing JAX (``parity.environment``).

JAX parses its boolean flags from ``JAX_<FLAG>`` when it is imported, and raises a ``ValueError``
from inside ``import jax`` for a word it does not know; ``JAX_PLATFORMS`` names the backends it
may start. JAX processes of a multi-host run are started by the user (``--process-id``), not by a
launcher, so :func:`launched_process` has nothing to report.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from parity.config import ConfigError
from parity.environment import Variable, boolean
from parity.safeio import printable

# JAX_PLATFORMS names JAX knows (its backends and the aliases it accepts).
PLATFORM_NAMES = ("cpu", "gpu", "cuda", "rocm", "tpu", "metal", "METAL", "iree", "neuron", "")
# The flags users set; JAX has more, and any other it refuses is caught by check_started.
BOOLEAN_FLAGS = (
    "JAX_ENABLE_X64",
    "JAX_DEBUG_NANS",
    "JAX_DEBUG_INFS",
    "JAX_DISABLE_JIT",
    "JAX_LOG_COMPILES",
    "JAX_ENABLE_CHECKS",
    "JAX_CHECK_TRACER_LEAKS",
    "JAX_EXPLAIN_CACHE_MISSES",
    "JAX_ENABLE_COMPILATION_CACHE",
    "JAX_DEBUG_KEY_REUSE",
)


def _platforms_known(value: str, _: Mapping[str, str]) -> bool:
    return all(name.strip() in PLATFORM_NAMES for name in value.split(","))


def _platform_refused(value: str) -> str:
    unknown = next(name.strip() for name in value.split(",") if name.strip() not in PLATFORM_NAMES)
    return (
        f"names {printable(unknown)!r}, which JAX does not know; "
        f"allowed: {', '.join(n for n in PLATFORM_NAMES if n)} (or unset it to let JAX choose)"
    )


VARIABLES = (
    # x64 was always checked: the demo and the float64 cases read it whatever the command's twins.
    Variable("JAX_ENABLE_X64", boolean("JAX_ENABLE_X64").allowed, boolean("JAX_ENABLE_X64").valid, always=True),
    *(boolean(name) for name in BOOLEAN_FLAGS[1:]),
    Variable(
        "JAX_PLATFORMS",
        f"a comma-separated list of {', '.join(n for n in PLATFORM_NAMES if n)} (or unset, to let JAX choose)",
        _platforms_known,
        refusal=_platform_refused,
    ),
)


def x64_refused(environ: Mapping[str, str]) -> bool:
    """``JAX_ENABLE_X64`` set to a false word: float64 is refused, never run in float32."""
    from parity.environment import FALSE_WORDS

    return environ.get("JAX_ENABLE_X64", "").strip().lower() in FALSE_WORDS


JOINS_COORDINATOR = True  # train --coordinator: jax.distributed.initialize in every process


def join_coordinator(**kwargs: Any) -> None:
    """``jax.distributed.initialize(coordinator_address=..., num_processes=..., process_id=..., ...)``."""
    import jax

    jax.distributed.initialize(**kwargs)


def launched_process(environ: Mapping[str, str]) -> tuple[int, int] | None:
    return None


def check_started(environ: Mapping[str, str]) -> None:
    """Import JAX (a flag it refuses becomes one line), and start the platforms JAX_PLATFORMS names."""
    try:
        import jax
    except ValueError as err:  # "invalid truth value 'x' for environment 'JAX_...'"
        match = re.search(r"environment '?(JAX_\w+)", str(err))
        name = match.group(1) if match else "JAX_*"
        raise ConfigError(name, f"JAX refuses it: {printable(str(err), 200)}") from None
    platforms = environ.get("JAX_PLATFORMS", "")
    if not platforms.strip() or [p.strip() for p in platforms.split(",")] == ["cpu"]:
        return
    try:
        jax.devices()
    except RuntimeError as err:
        reason = str(err).split("(set JAX_PLATFORMS", 1)[0].strip().rstrip(".")
        raise ConfigError(
            "JAX_PLATFORMS",
            f"{printable(platforms)!r}, but JAX could not start it ({printable(reason, 160)}); "
            "unset JAX_PLATFORMS to let JAX choose, or name a platform this machine has",
        ) from None

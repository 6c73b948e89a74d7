"""The environment variables the PyTorch twin reads, declared without importing torch (``parity.environment``).

``torchrun`` starts one process per share of the meta-batch and tells each its place in
``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK`` and ``LOCAL_WORLD_SIZE``. The command line reads them for
every command (only rank 0 writes files; a rank ends through ``os._exit``), so they are checked
whatever the command's twins.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from parity.config import ConfigError
from parity.environment import Variable, as_int, integer

VARIABLES: tuple[Variable, ...] = (
    integer("WORLD_SIZE", 1, always=True),
    integer("RANK", 0, below="WORLD_SIZE", always=True),
    integer("LOCAL_WORLD_SIZE", 1, always=True),
    integer("LOCAL_RANK", 0, below="LOCAL_WORLD_SIZE", always=True),
)


JOINS_COORDINATOR = False  # torchrun starts and joins the processes


def join_coordinator(**kwargs: Any) -> None:
    raise ConfigError("coordinator", "is for the JAX twin; launch PyTorch on several hosts with torchrun")


def launched_process(environ: Mapping[str, str]) -> tuple[int, int] | None:
    """(RANK, WORLD_SIZE) under torchrun with more than one process; None otherwise."""
    world = as_int(environ.get("WORLD_SIZE", "1")) or 1
    if world == 1:
        return None
    return as_int(environ.get("RANK", "0")) or 0, world


def check_started(environ: Mapping[str, str]) -> None:
    """Nothing torch refuses at start-up that the variables above do not cover."""

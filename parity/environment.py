"""Environment variables, checked before any framework is imported.

A framework reads some variables when it is imported (a boolean flag spelled ``banana`` is a
``ValueError`` from inside the import) and a launcher's (rank, world size) are read by the command
line itself. Each built-in framework package declares what it reads in a module that does not
import the framework (:data:`parity.registry.ENVIRONMENT` names them); each module defines

- ``VARIABLES``: a tuple of :class:`Variable` (name, what is allowed, a check);
- ``launched_process(environ)``: (rank, world size) when a launcher started this process as one
  of several, else None;
- ``JOINS_COORDINATOR`` and ``join_coordinator(**kwargs)``: whether ``train --coordinator``
  starts this framework's multi-host rendezvous, and the call that joins it (it blocks);
- ``check_started(environ)``: checks that need the framework itself (a platform that must start),
  run only when a command uses that framework.

:func:`check` runs them all and raises one :class:`ConfigError` naming the variable and what is
allowed. This program's own variables (``MPLBACKEND``, read when matplotlib is imported) are here.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from parity.config import ConfigError
from parity.safeio import printable

TRUE_WORDS = ("y", "yes", "t", "true", "on", "1")
FALSE_WORDS = ("n", "no", "f", "false", "off", "0")


@dataclasses.dataclass(frozen=True)
class Variable:
    """One environment variable a framework (or this program) reads, and what it accepts."""

    name: str
    allowed: str  # for the message: "must be <allowed>"
    valid: Callable[[str, Mapping[str, str]], bool]  # (value, the whole environment) -> acceptable
    always: bool = False  # checked for every command (the command line reads it), not only its framework's
    refusal: Callable[[str], str] | None = None  # the message for a bad value (default: "must be <allowed>")

    def message(self, value: str) -> str:
        if self.refusal is not None:
            return self.refusal(value)
        return f"must be {self.allowed}; got {printable(value)!r}"


def boolean(name: str) -> Variable:
    """A boolean word (the spellings Python's ``strtobool`` and the frameworks accept)."""
    words = ", ".join(TRUE_WORDS + FALSE_WORDS)
    return Variable(name, f"a boolean word ({words})", lambda v, _: v.strip().lower() in TRUE_WORDS + FALSE_WORDS)


def integer(name: str, minimum: int, below: str | None = None, always: bool = False) -> Variable:
    """A decimal integer >= ``minimum`` (and < the variable ``below``, when that one is a valid integer)."""

    def valid(value: str, environ: Mapping[str, str]) -> bool:
        number = as_int(value)
        if number is None or number < minimum:
            return False
        limit = as_int(environ.get(below, "")) if below else None
        return limit is None or number < limit

    allowed = f"an integer >= {minimum}" + (f" and below {below}" if below else "")
    return Variable(name, allowed, valid, always)


def as_int(value: str) -> int | None:
    text = value.strip()
    return int(text) if text.isascii() and text.isdigit() else None


# matplotlib's built-in backends (case-insensitive), or "module://package.backend" for one of a package's.
_PLOT_BACKENDS = (
    "agg cairo pdf pgf ps svg template inline macosx nbagg notebook webagg wx wxagg wxcairo "
    "gtk3agg gtk3cairo gtk4agg gtk4cairo qtagg qtcairo qt5agg qt5cairo tkagg tkcairo"
).split()
PLOT_VARIABLES = (
    Variable(
        "MPLBACKEND",
        f"a matplotlib backend ({', '.join(_PLOT_BACKENDS)}) or module://NAME; plots are written with agg",
        lambda v, _: v.strip().lower() in _PLOT_BACKENDS or (v.startswith("module://") and len(v) > 9),
        always=True,
    ),
)


def modules(frameworks: Iterable[str] | None = None) -> list[Any]:
    """The environment modules of the built-in frameworks (all of them when ``frameworks`` is None)."""
    from parity.registry import ENVIRONMENT

    names = list(ENVIRONMENT) if frameworks is None else [f for f in frameworks if f in ENVIRONMENT]
    return [importlib.import_module(ENVIRONMENT[name]) for name in names]


def variables(frameworks: Iterable[str]) -> list[Variable]:
    """What a command using ``frameworks`` must have right: theirs, and every ``always`` one."""
    used = set(frameworks)
    from parity.registry import ENVIRONMENT

    found = list(PLOT_VARIABLES)
    for name, module in zip(ENVIRONMENT, modules(), strict=True):
        found += [v for v in module.VARIABLES if v.always or name in used]
    return found


def check(frameworks: Iterable[str], environ: Mapping[str, str] | None = None) -> None:
    """Every declared variable that is set, then the frameworks' own start checks; raises ConfigError."""
    environ = os.environ if environ is None else environ
    names = list(frameworks)
    for variable in variables(names):
        value = environ.get(variable.name)
        if value is not None and not variable.valid(value, environ):
            raise ConfigError(variable.name, variable.message(value))
    for module in modules(names):
        module.check_started(environ)


def launched_process(environ: Mapping[str, str] | None = None) -> tuple[int, int]:
    """(rank, world size) of this process when a framework's launcher started several; else (0, 1)."""
    environ = os.environ if environ is None else environ
    for module in modules():
        found = module.launched_process(environ)
        if found is not None:
            return found
    return 0, 1


def coordinator_join() -> Callable[..., None]:
    """The rendezvous of ``train --coordinator``: the first built-in framework that joins one."""
    for module in modules():
        if module.JOINS_COORDINATOR:
            return module.join_coordinator  # type: ignore[no-any-return]
    raise ConfigError("coordinator", "no built-in framework starts a multi-host run")

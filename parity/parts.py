"""The building blocks of a config: frozen parts, declared fields, and the validation helpers.

A :class:`Part` is a small frozen dataclass holding one concern of an experiment (the task
family, the model, the inner loop, …). Every field is declared with :func:`field`, which records
what the field affects:

- ``meta_gradient``: it changes the computation of the meta-gradient (a different function is
  compiled: a layer width, the loss, the number of inner steps, the dtype);
- ``training``: it changes only the outer loop (learning rates, optimisers, how α is learned);
- ``data``: it changes the numbers fed in (ranges, seeds, initial values), not the computation.

Only ``meta_gradient`` fields key the compiled meta-gradient (:meth:`parity.config.Config.computation`),
and the check matrix must vary every one of them (``tests/test_matrix_coverage.py``). A field without
a declaration is an error at import time, so a new field cannot silently stay out of the key.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar

AFFECTS = ("meta_gradient", "training", "data")


class ConfigError(ValueError):
    """A config value outside what is allowed; ``field`` names the offending field."""

    def __init__(self, field: str, message: str):
        self.field = field
        super().__init__(f"{field}: {message}")


def field(default: Any, affects: str, doc: str = "") -> Any:
    """A part's field: its default, what it affects (see the module docstring) and one line of doc."""
    if affects not in AFFECTS:
        raise ValueError(f"affects must be one of {AFFECTS}, got {affects!r}")
    return dataclasses.field(default=default, metadata={"affects": affects, "doc": doc})


@dataclasses.dataclass(frozen=True)
class Part:
    """One frozen, validated group of config fields. Subclasses implement :meth:`check`.

    ``axis``: the name of the axis the part is chosen on (``family``, ``model``,
    ``inner_optimizer``), or empty for the fixed parts; chosen parts carry their choice in ``name``.
    """

    axis: ClassVar[str] = ""

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, list):  # JSON lists: tuples, so that parts stay hashable
                object.__setattr__(self, f.name, tuple(value))
        self.check()

    def check(self) -> None:
        """Validate every field (raise :class:`ConfigError` naming the field)."""

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        """The part's settable fields (its ``name``, the axis choice, excluded)."""
        return tuple(f.name for f in dataclasses.fields(cls) if f.name != "name")

    def values(self) -> dict[str, Any]:
        """Field name -> value (tuples as they are), ``name`` excluded."""
        return {name: getattr(self, name) for name in self.field_names()}

    def affecting(self, what: str) -> dict[str, Any]:
        """The fields declared to affect ``what`` (see :data:`AFFECTS`), with their values."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.metadata["affects"] == what}


def check_declared(part: type[Part]) -> type[Part]:
    """Class decorator: every field of ``part`` says what it affects (import-time check)."""
    for f in dataclasses.fields(part):
        if f.metadata.get("affects") not in AFFECTS:
            raise TypeError(f"{part.__name__}.{f.name}: declare it with parity.parts.field(..., affects=...)")
    return part


# --- validation helpers -----------------------------------------------------------------


def lookup(table: dict[str, Any], field: str, name: str) -> Any:
    """``table[name]``, or ConfigError naming ``field`` and what is allowed: option choices are
    tables, so an unknown name is refused instead of falling into an ``else``."""
    try:
        return table[name]
    except (KeyError, TypeError):
        raise ConfigError(field, f"must be one of {', '.join(table)}; got {name!r}") from None


def check_int(name: str, value: Any, minimum: int) -> None:
    # bool is an int subclass in Python; True is never a valid step count.
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(name, f"must be an integer >= {minimum}, got {value!r}")
    if value < minimum:
        raise ConfigError(name, f"must be an integer >= {minimum}, got {value}")


def check_float(name: str, value: Any, positive: bool = False, why: str = "") -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(name, f"must be a finite number, got {value!r}")
    if not is_finite(value):
        raise ConfigError(name, f"must be a finite number, got {value}")
    if positive and value <= 0:
        raise ConfigError(name, f"must be a finite number > 0{why}, got {value}")


def check_bool(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise ConfigError(name, f"must be true or false, got {value!r}")


def is_finite(value: float) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:  # a JSON integer too large for a float
        return False


def check_choice(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(name, f"must be one of {', '.join(allowed)}; got {value!r}")


def check_range(name: str, value: Any) -> tuple[float, float]:
    """A ``[low, high]`` pair of finite numbers with low <= high, as a float tuple."""
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise ConfigError(name, f"must be a pair [low, high], got {value!r}")
    low, high = value
    for end in (low, high):
        if isinstance(end, bool) or not isinstance(end, (int, float)) or not is_finite(end):
            raise ConfigError(name, f"must hold two finite numbers, got {list(value)!r}")
    if low > high:
        raise ConfigError(name, f"must satisfy low <= high, got [{low}, {high}]")
    return (float(low), float(high))


def set_float(part: Part, name: str) -> None:
    """Store a checked number as a float (JSON integers such as ``1`` become ``1.0``)."""
    object.__setattr__(part, name, float(getattr(part, name)))

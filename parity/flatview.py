"""The flat view of a :class:`parity.config.Config`: where each flat name lives, and changes by name.

Every field of every part has a flat name, unique across the parts of a config (``hidden``,
``inner_steps``, ``dtype``, …), and each axis its own (``family``, ``model``, ``inner_optimizer``).
These helpers map names to the parts that hold them (cached by the parts' types: every
``cfg.dtype`` looks here), apply flat changes (axis choices first, then fields, each into its part),
and turn nested or flat JSON into flat changes.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import TYPE_CHECKING, Any

from parity.families import FAMILIES
from parity.inner import INNER_OPTIMIZERS, InnerLoop
from parity.models import MODELS
from parity.outer import Numerics, OuterLoop
from parity.parts import ConfigError, Part

if TYPE_CHECKING:
    from parity.config import Config

PARTS = ("family", "model", "inner", "outer", "numerics")
# axis -> (its table, the part that holds the choice)
AXES: dict[str, tuple[dict[str, type[Part]], str]] = {
    "family": (FAMILIES, "family"),
    "model": (MODELS, "model"),
    "inner_optimizer": (INNER_OPTIMIZERS, "inner.optimizer"),
}


def part_at(cfg: Config, where: str) -> Any:
    part: Any = cfg
    for step in where.split("."):
        part = getattr(part, step)
    return part


def _declared(part: Part, name: str) -> str:
    return next(f.metadata["affects"] for f in dataclasses.fields(part) if f.name == name)


def _field_places(cfg: Config) -> tuple[tuple[str, str], ...]:
    """(flat name, the dotted path of the part holding it), axes first."""
    return _places(*_types(cfg))


@functools.lru_cache(maxsize=64)
def _places(family: Any, model: Any, optimizer: Any) -> tuple[tuple[str, str], ...]:
    # Depends only on the parts' types: cached, since every flat read (cfg.dtype) looks here.
    places = [(axis, where) for axis, (_t, where) in AXES.items()]
    for part_name, part in (("family", family), ("model", model), ("inner", InnerLoop)):
        for name in part.field_names():
            if part_name == "inner" and name == "optimizer":
                places += [(n, "inner.optimizer") for n in optimizer.field_names()]
            else:
                places.append((name, part_name))
    places += [(name, "outer") for name in OuterLoop.field_names()]
    places += [(name, "numerics") for name in Numerics.field_names()]
    return tuple(places)


def _flat_owners(cfg: Config) -> dict[str, tuple[str, ...]]:
    return _owners(*_types(cfg))


def _types(cfg: Config) -> tuple[Any, ...]:
    return type(cfg.family), type(cfg.model), type(cfg.inner.optimizer)


@functools.lru_cache(maxsize=64)
def _owners(family: Any, model: Any, optimizer: Any) -> dict[str, tuple[str, ...]]:
    owners: dict[str, tuple[str, ...]] = {}
    for name, where in _places(family, model, optimizer):
        owners[name] = (*owners.get(name, ()), where)
    return owners


def _affecting(part: Part) -> dict[str, Any]:
    """The part's fields declared ``meta_gradient``, with their values."""
    return {f.name: getattr(part, f.name) for f in dataclasses.fields(part) if f.metadata["affects"] == "meta_gradient"}


def _part_dict(part: Part) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in dataclasses.fields(part):
        value = getattr(part, f.name)
        if isinstance(value, Part):
            out[f.name] = _part_dict(value)
        else:
            out[f.name] = list(value) if isinstance(value, tuple) else value
    return out


def config_fields(data: dict[str, Any]) -> dict[str, Any]:
    """A nested (``to_dict``'s), flat (0.2's) or mixed config object -> flat field changes."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if key in PARTS and isinstance(value, dict):
            inner = dict(value)
            if key in AXES and "name" in inner:
                flat[key] = inner.pop("name")
            optimizer = inner.pop("optimizer", None) if key == "inner" else None
            if isinstance(optimizer, dict):
                optimizer = dict(optimizer)
                if "name" in optimizer:
                    flat["inner_optimizer"] = optimizer.pop("name")
                inner.update(optimizer)
            elif optimizer is not None:
                flat["inner_optimizer"] = optimizer
            for sub, sub_value in inner.items():
                _check_part_field(key, sub, value)
                if sub in flat:
                    raise ConfigError(str(sub), "given twice in the config object")
                flat[sub] = sub_value
        else:
            flat[key] = value
    return flat


def _part_field_names(part: str) -> tuple[str, ...]:
    """Every field a nested ``part`` object may hold, over every entry of its axis."""
    tables: dict[str, list[type[Part]]] = {
        "family": list(FAMILIES.values()),
        "model": list(MODELS.values()),
        "inner": [InnerLoop, *INNER_OPTIMIZERS.values()],
        "outer": [OuterLoop],
        "numerics": [Numerics],
    }
    names = dict.fromkeys(["name"] if part in AXES else [])
    for cls in tables[part]:
        names.update(dict.fromkeys(n for n in cls.field_names() if n != "optimizer"))
    return tuple(names)


def _check_part_field(part: str, sub: Any, nested: dict[str, Any]) -> None:
    """A nested object's key must be a field of its part: ``{"family": {"hidden": 8}}`` is refused
    naming ``family.hidden``, not read as the model's ``hidden``. A user's entry (``module:NAME``)
    declares its own fields, checked when it is built."""
    choice = nested.get("name")
    if isinstance(choice, str) and ":" in choice:
        return
    allowed = _part_field_names(part)
    if sub in allowed:
        return
    shown = f"{part}.{sub}" if isinstance(sub, str) and sub.isidentifier() else part
    raise ConfigError(shown, f"unknown field {str(sub)[:40]!r} of the {part} part; allowed: {', '.join(allowed)}")


def _with_flat(cfg: Config, changes: dict[str, Any]) -> Config:
    """``cfg`` with flat ``changes``: whole parts, then axis choices (a new choice starts from that
    entry's defaults), then fields, each into the part that holds it."""
    parts = {name: part_at(cfg, name) for name in PARTS}
    for name in PARTS:
        if name in changes and isinstance(changes[name], Part):
            parts[name] = changes.pop(name)
    for axis, (table, where) in AXES.items():
        if axis not in changes:
            continue
        choice = changes.pop(axis)
        entry = _axis_entry(table, axis, choice)
        current = part_at(cfg, where)
        if type(current) is entry and getattr(current, "name", None) == choice:
            continue
        made = _make(entry, axis, {"name": choice} if "name" in {f.name for f in dataclasses.fields(entry)} else {})
        if where == "inner.optimizer":
            parts["inner"] = dataclasses.replace(parts["inner"], optimizer=made)
        else:
            parts[where] = made
    holders: dict[str, dict[str, Any]] = {}
    probe = type(cfg).__new__(type(cfg))
    for name, part in parts.items():
        object.__setattr__(probe, name, part)
    owners = _flat_owners(probe)
    for key, value in changes.items():
        if key not in owners:
            raise _unknown_field(key, owners)
        where = owners[key][0]
        holders.setdefault(where, {})[key] = value
    for where, values in holders.items():
        if where == "inner.optimizer":
            optimizer = _make(type(parts["inner"].optimizer), "inner_optimizer", values, parts["inner"].optimizer)
            parts["inner"] = dataclasses.replace(parts["inner"], optimizer=optimizer)
        else:
            parts[where] = _make(type(parts[where]), where, values, parts[where])
    out = type(cfg).__new__(type(cfg))
    for name, part in parts.items():
        object.__setattr__(out, name, part)
    out._check()
    return out


def _make(entry: type[Part], axis: str, values: dict[str, Any], base: Part | None = None) -> Part:
    try:
        return dataclasses.replace(base, **values) if base is not None else entry(**values)
    except TypeError as err:  # a user's part class that does not take these fields
        raise ConfigError(axis, f"{entry.__name__} refused {sorted(values)} ({err})") from None


def _axis_entry(table: dict[str, type[Part]], axis: str, choice: Any) -> type[Part]:
    if isinstance(choice, str) and choice in table:
        return table[choice]
    if isinstance(choice, str) and ":" in choice and axis in ("family", "model"):
        from parity.registry import load_object

        entry = load_object(choice, axis)
        if not (isinstance(entry, type) and issubclass(entry, Part) and entry.axis == axis):
            raise ConfigError(axis, f"{choice!r} is not a parity.parts.Part subclass with axis = {axis!r}")
        return entry
    user = " or a module:NAME / file.py:NAME" if axis in ("family", "model") else ""
    raise ConfigError(axis, f"must be one of {', '.join(table)}{user}; got {choice!r}")


def _unknown_field(key: Any, owners: dict[str, Any]) -> ConfigError:
    allowed = ", ".join(owners)
    if isinstance(key, str) and key.isidentifier():
        return ConfigError(key, f"unknown config field; allowed: {allowed}")
    return ConfigError("config", f"unknown field {str(key)[:40]!r}; allowed: {allowed}")  # keep the message one line

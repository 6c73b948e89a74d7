"""Find an implementation from a SPEC: a built-in name, a module, a file, or an entry point.

SPEC is ``WHERE[@DEVICE]``, WHERE one of:

- a built-in name (:data:`BUILTINS`): ``jax``, ``torch``, ``numpy``;
- ``package.module:NAME``: an attribute of an importable module;
- ``path/to/file.py:NAME``: an attribute of a Python file, loaded under a private module name;
- the name of an entry point in the group ``maml_parity.implementations`` (an installed package
  declares ``[project.entry-points."maml_parity.implementations"] mine = "pkg.mod:NAME"``).

``NAME`` may be an implementation object, a class, or a factory function: a class or function is
called (with ``device=DEVICE`` when a device is given). ``@DEVICE`` (``cpu``, ``gpu``, ``cuda:N``,
``tpu``) is for implementations that take one; giving it to one that does not is an error.

This is the one module of ``parity/`` that names the frameworks: adding one is a line in
:data:`BUILTINS` and an adapter in its own package.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from parity.config import ConfigError

# name -> (adapter "module:attribute", packages whose versions a run records)
BUILTINS: dict[str, tuple[str, tuple[str, ...]]] = {
    "jax": ("jax_impl.adapter:JaxTwin", ("jax", "jaxlib", "optax")),
    "torch": ("torch_impl.adapter:TorchTwin", ("torch",)),
    "numpy": ("parity.oracle:NumpyOracle", ()),
}
# The built-ins that train (twins), and the pair the demo and a plain `check` compare.
TWINS = ("jax", "torch")
DEFAULT_TWIN = TWINS[0]
# name -> the module declaring, without importing the framework, the environment it reads and
# how its processes start (parity.environment).
# How text for people names each built-in (help texts, reports); any other implementation by its name.
LABELS: dict[str, str] = {"jax": "JAX", "torch": "PyTorch", "numpy": "NumPy"}


def label(name: str) -> str:
    """``jax`` -> ``JAX``: a built-in's name in prose; any other name as it is."""
    return LABELS.get(name, name)


def twin_labels(joiner: str = " and ") -> str:
    """The built-in twins in prose: ``JAX and PyTorch``."""
    return joiner.join(label(name) for name in TWINS)


ENVIRONMENT: dict[str, str] = {"jax": "jax_impl.environment", "torch": "torch_impl.environment"}
ENTRY_POINT_GROUP = "maml_parity.implementations"
COMMON_PACKAGES = ("numpy", "safetensors")


def versioned_packages() -> tuple[str, ...]:
    """Packages whose versions checkpoints and reports record."""
    return COMMON_PACKAGES + tuple(p for _, packages in BUILTINS.values() for p in packages)


def split_spec(spec: str) -> tuple[str, str | None]:
    """``"torch@cuda:0"`` -> ``("torch", "cuda:0")``; no ``@`` -> device None."""
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError("impl", "must name an implementation (jax, torch, numpy, module:NAME or file.py:NAME)")
    where, sep, device = spec.strip().rpartition("@") if "@" in spec else (spec.strip(), "", "")
    if sep and (not where or not device):
        raise ConfigError("impl", f"{spec!r}: write NAME@DEVICE, e.g. torch@cuda:0")
    return where, (device or None)


def resolve(spec: str) -> Any:
    """The implementation object a SPEC names (see the module docstring); errors name the SPEC."""
    where, device = split_spec(spec)
    if where in BUILTINS:
        target = _attribute(BUILTINS[where][0], spec)
    elif ":" in where and where.rsplit(":", 1)[0].endswith(".py"):
        target = _from_file(where, spec)
    elif ":" in where:
        target = _attribute(where, spec)
    else:
        target = _from_entry_point(where, spec)
    impl = _instantiate(target, device, spec)
    if not callable(getattr(impl, "meta_value_and_grad", None)) or not isinstance(getattr(impl, "name", None), str):
        raise ConfigError(
            "impl", f"{spec!r} is a {type(impl).__name__}, not an implementation (needs name and meta_value_and_grad)"
        )
    return impl


def load_object(where: str, field: str) -> Any:
    """The object ``module:NAME`` or ``file.py:NAME`` names (a user's task family or model, by
    config field ``field``); errors are one line naming ``field``."""
    if where.rsplit(":", 1)[0].endswith(".py"):
        return _from_file(where, where, field)
    return _attribute(where, where, field)


def _instantiate(target: Any, device: str | None, spec: str) -> Any:
    if inspect.isclass(target) or (callable(target) and not hasattr(target, "meta_value_and_grad")):
        if device is None:
            return target()
        try:
            accepts = "device" in inspect.signature(target).parameters
        except (TypeError, ValueError):
            accepts = False
        if not accepts:
            raise ConfigError("impl", f"{spec!r}: this implementation takes no device (remove '@{device}')")
        return target(device=device)
    if device is not None:
        if callable(getattr(target, "on_device", None)):
            return target.on_device(device)
        raise ConfigError("impl", f"{spec!r}: this implementation takes no device (remove '@{device}')")
    return target


def _attribute(path: str, spec: str, field: str = "impl") -> Any:
    module_name, _, attribute = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ConfigError(field, f"{spec!r}: cannot import {module_name!r} ({err})") from None
    return _get(module, attribute, spec, field)


def _from_file(where: str, spec: str, field: str = "impl") -> Any:
    file_name, _, attribute = where.rpartition(":")
    path = Path(file_name)
    if not path.is_file():
        raise ConfigError(field, f"{spec!r}: no such file {file_name!r}")
    module_name = f"_maml_parity_user_{abs(hash(str(path.resolve())))}"
    if module_name in sys.modules:
        return _get(sys.modules[module_name], attribute, spec, field)
    loader_spec = importlib.util.spec_from_file_location(module_name, path)
    if loader_spec is None or loader_spec.loader is None:
        raise ConfigError(field, f"{spec!r}: {file_name!r} is not a Python file")
    module = importlib.util.module_from_spec(loader_spec)
    sys.modules[module_name] = module  # dataclasses and pickling look the module up by name
    try:
        loader_spec.loader.exec_module(module)
    except Exception as err:
        del sys.modules[module_name]
        raise ConfigError(field, f"{spec!r}: loading {file_name!r} failed ({type(err).__name__}: {err})") from None
    return _get(module, attribute, spec, field)


def _from_entry_point(name: str, spec: str) -> Any:
    points = [ep for ep in metadata.entry_points(group=ENTRY_POINT_GROUP) if ep.name == name]
    if not points:
        known = ", ".join(BUILTINS)
        raise ConfigError(
            "impl",
            f"{spec!r} is not a built-in ({known}), a module:NAME, a file.py:NAME or an installed "
            f"entry point of group {ENTRY_POINT_GROUP!r}",
        )
    try:
        return points[0].load()
    except Exception as err:
        raise ConfigError("impl", f"{spec!r}: loading its entry point failed ({type(err).__name__}: {err})") from None


def _get(module: Any, attribute: str, spec: str, field: str = "impl") -> Any:
    if not attribute:
        raise ConfigError(field, f"{spec!r}: name the object after the colon (module:NAME)")
    try:
        return getattr(module, attribute)
    except AttributeError:
        # a file's private module name means nothing to its author: name the file
        where = module.__file__ if module.__name__.startswith("_maml_parity_user_") else module.__name__
        raise ConfigError(field, f"{spec!r}: {where} has no attribute {attribute!r}") from None

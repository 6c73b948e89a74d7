"""Shared test setup: JAX x64 on before any array is made, shape slips fail loudly; the twin fixtures."""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import jax
import pytest

jax.config.update("jax_enable_x64", True)
# Equinox's habit: implicit rank promotion is a bug in this code, so make it one.
jax.config.update("jax_numpy_rank_promotion", "raise")

# tests/ holds helper modules (mutants_impls.py, numpy_twin/) that some tests import by name.
sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("MPLBACKEND", "Agg")

from parity import registry  # noqa: E402  (after the JAX settings above)


@pytest.fixture(params=registry.TWINS)
def twin_name(request: pytest.FixtureRequest) -> str:
    """Each of the registry's built-in twins in turn: a test taking it runs once per twin."""
    return str(request.param)


@pytest.fixture
def third_twin(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Register the NumPy oracle twin (tests/numpy_twin) as a third built-in twin for one test; yields
    its name. Every ``parity`` module that bound the registry's tuple of twins by name sees the
    three (``from parity.registry import TWINS`` copies the binding, so each is patched)."""
    from numpy_twin import ADAPTER, NAME

    # Import every module that binds the tuple first: one imported while patched would keep three twins.
    for module_name in ("parity.cli", "parity.harness", "parity.twins", "parity.eval", "parity.demo"):
        importlib.import_module(module_name)
    original = registry.TWINS
    twins = (*original, NAME)
    monkeypatch.setitem(registry.BUILTINS, NAME, (ADAPTER, ()))
    for module_name, module in list(sys.modules.items()):
        if module_name == "parity" or module_name.startswith("parity."):
            for attribute, value in list(vars(module).items()):
                if value is original:
                    monkeypatch.setattr(module, attribute, twins)
    yield NAME


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs() -> Iterator[None]:
    """Drop JAX's compiled programs after each test module: one pytest process compiles hundreds of
    configurations (the matrix, conv, inner optimisers), and keeping them all grew it past 4 GB."""
    yield
    jax.clear_caches()

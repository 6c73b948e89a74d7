"""Shared test setup: JAX x64 on before any array is made, shape slips fail loudly."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import jax

jax.config.update("jax_enable_x64", True)
# Equinox's habit: implicit rank promotion is a bug in this code, so make it one.
jax.config.update("jax_numpy_rank_promotion", "raise")

# tests/ holds helper modules (mutants_impls.py) that some tests import by name.
sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("MPLBACKEND", "Agg")

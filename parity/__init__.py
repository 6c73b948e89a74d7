"""maml-parity: twin JAX / PyTorch implementations of an unrolled meta-objective.

This package is the framework-neutral part (config, task sampler, initial parameters,
checkpoints, comparison and the harness). Importing it imports neither JAX nor PyTorch.
"""

from parity.config import PRESETS, Config, ConfigError, get_preset

__version__ = "0.3.0"  # the one place the version is written (pyproject.toml reads it)

__all__ = ["PRESETS", "Config", "ConfigError", "__version__", "get_preset"]

"""Initial parameters, made once in NumPy and handed to either twin.

The seed's scheme: the first weight ``U(-1, 1)``, every later weight ``U(±1/√fan_in)``
(``1/√32`` at the seed's size), every bias zero. Weights are stored ``(out, in)``.
"""

from __future__ import annotations

import numpy as np

from parity.config import Config
from parity.tasks import INIT_STREAM, rng_for

Params = dict[str, np.ndarray]


def init_params(cfg: Config, seed: int | None = None) -> Params:
    """Fresh parameters for ``cfg``'s MLP, a pure function of ``seed`` (default ``cfg.seed``)."""
    rng = rng_for(cfg.seed if seed is None else seed, INIT_STREAM, 0)
    params: Params = {}
    for name, shape in cfg.param_shapes.items():
        if name.startswith("b"):
            params[name] = np.zeros(shape, dtype=cfg.dtype)
            continue
        fan_in = shape[1]
        bound = 1.0 if name == "w0" else 1.0 / np.sqrt(fan_in)
        params[name] = rng.uniform(-bound, bound, size=shape).astype(cfg.dtype)
    return params


def init_alpha(cfg: Config) -> np.ndarray | Params:
    """α's initial value: a 0-d array, or one array per parameter in ``per_parameter`` mode."""
    if cfg.alpha_mode == "per_parameter":
        return {name: np.full(shape, cfg.alpha_init, dtype=cfg.dtype) for name, shape in cfg.param_shapes.items()}
    return np.asarray(cfg.alpha_init, dtype=cfg.dtype)

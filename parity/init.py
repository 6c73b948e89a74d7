"""Initial parameters, made once in NumPy and handed to either twin.

``init_scheme="seed"`` (the default, the seed lab's): the first weight ``U(-1, 1)``, every later
weight ``U(±1/√fan_in)`` (``1/√32`` at the seed's size), every bias zero. ``"maml"`` (Finn et
al.'s reference code): every weight ``N(0, 0.01²)`` truncated at two standard deviations, biases
zero. Weights are stored ``(out, in)``.
"""

from __future__ import annotations

import numpy as np

from parity.config import Config
from parity.inner import alpha_shapes
from parity.tasks import INIT_STREAM, rng_for

Params = dict[str, np.ndarray]


def init_params(cfg: Config, seed: int | None = None) -> Params:
    """Fresh parameters for ``cfg``'s model, a pure function of ``seed`` (default ``cfg.seed``)."""
    rng = rng_for(cfg.seed if seed is None else seed, INIT_STREAM, 0)
    return cfg.model.init_params(cfg.param_shapes, rng, cfg.dtype)  # type: ignore[attr-defined, no-any-return]


def truncated_normal(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Standard normal draws redrawn until inside [-2, 2] (``tf.truncated_normal``'s rule)."""
    z = rng.standard_normal(shape)
    outside = np.abs(z) > 2
    while outside.any():
        z[outside] = rng.standard_normal(int(outside.sum()))
        outside = np.abs(z) > 2
    return z


def init_alpha(cfg: Config) -> np.ndarray | Params:
    """α's initial value: a 0-d array, or one array per parameter (``parity.inner.alpha_shapes``:
    shaped like it in ``per_parameter`` mode, [T] in ``per_layer_step``), every entry alpha_init."""
    shapes = alpha_shapes(cfg)
    if shapes is not None:
        return {name: np.full(shape, cfg.alpha_init, dtype=cfg.dtype) for name, shape in shapes.items()}
    return np.asarray(cfg.alpha_init, dtype=cfg.dtype)


def init_alpha_variable(cfg: Config) -> np.ndarray | Params:
    """The initial value of what the outer loop learns for α: α itself, or (``alpha_parametrisation``
    softplus) ρ = softplus⁻¹(alpha_init) = log(expm1(alpha_init)), so that α starts at alpha_init."""
    alpha = init_alpha(cfg)
    if cfg.alpha_parametrisation != "softplus":
        return alpha
    # log(e^a − 1) = a + log(1 − e^−a): no overflow for large a, no cancellation for small a.
    rho = cfg.alpha_init + np.log(-np.expm1(-cfg.alpha_init))
    if isinstance(alpha, dict):
        return {name: np.full_like(a, rho) for name, a in alpha.items()}
    return np.asarray(rho, dtype=cfg.dtype)


def alpha_from_variable(variable: np.ndarray | Params, cfg: Config) -> np.ndarray | Params:
    """α from the learned variable in NumPy (a checkpoint's ``alpha``): itself, or softplus(ρ)."""
    if cfg.alpha_parametrisation != "softplus":
        return variable
    if isinstance(variable, dict):
        return {name: np.logaddexp(v, 0.0).astype(v.dtype) for name, v in variable.items()}
    return np.asarray(np.logaddexp(variable, 0.0), dtype=np.asarray(variable).dtype)

"""Rematerialising the inner loop (``Config.remat``) changes memory, never the numbers.

float64, both twins: the meta-gradient with ``remat=True`` equals the one without, at 1e-10
relative, for second- and first-order MAML and every α mode.
"""

from __future__ import annotations

import numpy as np
import pytest

from parity.config import SEED_ALPHA, Config, ConfigError
from parity.init import init_alpha, init_params
from parity.tasks import sample_batch
from parity.twins import load

RTOL = 1e-10
ATOL = 1e-12
BASE = SEED_ALPHA.replace(dtype="float64", meta_batch=3, inner_steps=4, seed=3)


def meta_grads(framework: str, cfg: Config) -> dict[str, np.ndarray]:
    """Outer loss, support losses and the meta-gradient at the shared init, as NumPy arrays."""
    twin = load(framework, cfg.dtype)
    to = twin.model.to_arrays
    tasks = to(tuple(sample_batch(cfg, 0)[:4]), cfg.dtype)
    (loss, inner), (grad_params, grad_alpha) = twin.meta.meta_value_and_grad(
        to(init_params(cfg), cfg.dtype), to(init_alpha(cfg), cfg.dtype), tasks, cfg
    )
    out = {"outer_loss": loss, "inner_losses": inner, **{f"grad/{k}": v for k, v in grad_params.items()}}
    if isinstance(grad_alpha, dict):
        out.update({f"grad/alpha/{k}": v for k, v in grad_alpha.items()})
    else:
        out["grad/alpha"] = grad_alpha
    return {k: np.asarray(v) for k, v in twin.model.to_numpy(out).items()}


@pytest.mark.parametrize("framework", ["jax", "torch"])
@pytest.mark.parametrize(
    "changes",
    [{}, {"first_order": True}, {"alpha_mode": "per_parameter"}, {"inner_steps": 1, "loss": "mse"}],
    ids=["second-order", "first-order", "per-parameter", "T1-mse"],
)
def test_remat_gradients_equal_plain_gradients(framework, changes):
    cfg = BASE.replace(**changes)
    plain = meta_grads(framework, cfg)
    remat = meta_grads(framework, cfg.replace(remat=True))
    assert sorted(plain) == sorted(remat)
    for name, expected in plain.items():
        err = float(np.max(np.abs(remat[name] - expected)))
        scale = float(np.max(np.abs(expected)))
        assert err <= ATOL + RTOL * scale, f"{framework} {name}: max abs err {err:.3e} (scale {scale:.3e})"
    assert np.any(plain["grad/w1"] != 0)


def test_remat_is_validated_and_part_of_the_compile_key():
    with pytest.raises(ConfigError, match="remat"):
        BASE.replace(remat=1)
    assert BASE.meta_signature() != BASE.replace(remat=True).meta_signature()
    assert Config.from_json(BASE.replace(remat=True).to_json()).remat is True

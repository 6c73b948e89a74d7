"""Rematerialising the inner loop (``Config.remat``) changes memory, never the numbers.

float64, both twins: the meta-gradient with ``remat=True`` equals the one without, at 1e-10
relative, for second- and first-order MAML and every α mode.

Memory, measured without timing or the resident set size (both flaky): JAX by XLA's memory
analysis of the compiled meta-gradient (arguments + outputs + temporaries, what the bench
reports); PyTorch by the peak bytes of the distinct storages autograd holds for the backward
pass (``saved_tensors_hooks``), over the forward and the backward (where remat recomputes).
"""

from __future__ import annotations

import jax
import numpy as np
import pytest
import torch

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


@pytest.mark.parametrize(
    "changes",
    [{}, {"first_order": True}, {"alpha_mode": "per_parameter"}, {"inner_steps": 1, "loss": "mse"}],
    ids=["second-order", "first-order", "per-parameter", "T1-mse"],
)
def test_remat_gradients_equal_plain_gradients(twin_name, changes):
    cfg = BASE.replace(**changes)
    plain = meta_grads(twin_name, cfg)
    remat = meta_grads(twin_name, cfg.replace(remat=True))
    assert sorted(plain) == sorted(remat)
    for name, expected in plain.items():
        err = float(np.max(np.abs(remat[name] - expected)))
        scale = float(np.max(np.abs(expected)))
        assert err <= ATOL + RTOL * scale, f"{twin_name} {name}: max abs err {err:.3e} (scale {scale:.3e})"
    assert np.any(plain["grad/w1"] != 0)


def test_remat_is_validated_and_part_of_the_compile_key():
    with pytest.raises(ConfigError, match="remat"):
        BASE.replace(remat=1)
    assert BASE.meta_signature() != BASE.replace(remat=True).meta_signature()
    assert Config.from_json(BASE.replace(remat=True).to_json()).remat is True


def jax_peak_bytes(cfg: Config) -> int:
    """XLA's buffers of the compiled meta-gradient: arguments + outputs + temporaries."""
    twin = load("jax", cfg.dtype)
    to = twin.model.to_arrays
    args = (
        to(init_params(cfg), cfg.dtype),
        to(init_alpha(cfg), cfg.dtype),
        to(tuple(sample_batch(cfg, 0)[:4]), cfg.dtype),
    )
    compiled = jax.jit(lambda p, a, t: twin.meta.meta_value_and_grad(p, a, t, cfg)).lower(*args).compile()
    analysis = compiled.memory_analysis()
    assert analysis is not None, "this backend reports no memory analysis"
    return int(analysis.argument_size_in_bytes + analysis.output_size_in_bytes + analysis.temp_size_in_bytes)


class SavedTensorBytes:
    """Live bytes of the distinct storages autograd keeps for backward, and their peak."""

    def __init__(self) -> None:
        self.refs: dict[int, list[int]] = {}  # storage address → [bytes, handles alive]
        self.current = 0
        self.peak = 0

    def pack(self, tensor: torch.Tensor) -> _Saved:
        storage = tensor.untyped_storage()
        key = storage.data_ptr()
        entry = self.refs.setdefault(key, [storage.nbytes(), 0])
        if entry[1] == 0:
            self.current += entry[0]
            self.peak = max(self.peak, self.current)
        entry[1] += 1
        # Detached: holding the tensor itself (with its grad_fn) would make a reference cycle
        # through the graph node that saved it, and keep every graph alive.
        return _Saved(self, key, tensor.detach())

    def release(self, key: int) -> None:
        entry = self.refs[key]
        entry[1] -= 1
        if entry[1] == 0:
            self.current -= entry[0]
            del self.refs[key]


class _Saved:
    __slots__ = ("key", "meter", "tensor")

    def __init__(self, meter: SavedTensorBytes, key: int, tensor: torch.Tensor) -> None:
        self.meter, self.key, self.tensor = meter, key, tensor

    def __del__(self) -> None:
        self.meter.release(self.key)


def torch_peak_bytes(cfg: Config) -> int:
    twin = load("torch", cfg.dtype)
    to = twin.model.to_arrays
    args = (
        to(init_params(cfg), cfg.dtype),
        to(init_alpha(cfg), cfg.dtype),
        to(tuple(sample_batch(cfg, 0)[:4]), cfg.dtype),
    )
    meter = SavedTensorBytes()
    with torch.autograd.graph.saved_tensors_hooks(meter.pack, lambda saved: saved.tensor):
        twin.meta.meta_value_and_grad(*args, cfg)
    assert meter.current == 0, "saved tensors outlived the call: the measurement is leaking"
    return meter.peak


PEAK_BYTES = {"jax": jax_peak_bytes, "torch": torch_peak_bytes}


def test_remat_keeps_over_4_5x_less_memory_at_T64(twin_name):
    """T = 64, B = 2, seed-alpha, float32. Seen: JAX 1.80 → 0.33 MB (5.5×), PyTorch 1.41 → 0.23 MB
    (6.1×); 8-step segments keep 8 parameter sets and one segment's graph instead of 64 steps'."""
    cfg = SEED_ALPHA.replace(inner_steps=64, meta_batch=2)
    plain, remat = PEAK_BYTES[twin_name](cfg), PEAK_BYTES[twin_name](cfg.replace(remat=True))
    assert plain / remat >= 4.5, (plain, remat, plain / remat)


@pytest.mark.slow
def test_remat_memory_saving_at_the_readme_size_is_over_20x():
    """The README's rows: T = 1000, seed-alpha, float32. JAX at B = 25 (compiled only, not run):
    seen 342.8 → 14.9 MB, 23.0×. PyTorch at B = 1 (run: its T = 1000 backward takes minutes at
    B = 25 on a CPU): seen 10.93 → 0.48 MB of saved tensors, 22.8×."""
    cfg = SEED_ALPHA.replace(inner_steps=1000)
    for framework, B in (("jax", 25), ("torch", 1)):
        c = cfg.replace(meta_batch=B)
        plain, remat = PEAK_BYTES[framework](c), PEAK_BYTES[framework](c.replace(remat=True))
        assert plain / remat >= 20.0, (framework, plain, remat, plain / remat)


@pytest.mark.parametrize("framework", [pytest.param("jax", marks=pytest.mark.slow), "torch"])
def test_remat_memory_with_an_adam_inner_loop_grows_as_sqrt_T(framework):
    """Issue 19: Adam's m and v are carried through the rematerialised segments like the parameters.
    T = 10 → 40 (seed-alpha, B = 2, float32) multiplies the segments' carries by ⌈√40⌉ / ⌈√10⌉ =
    7 / 4, not by 4. Seen: JAX 0.51 → 0.85 MB (1.67×), PyTorch 0.33 → 0.62 MB (1.91×); without remat
    at T = 40: JAX 3.54 MB, PyTorch 2.86 MB (4.1× and 4.6× the rematerialised)."""
    cfg = SEED_ALPHA.replace(meta_batch=2, inner_optimizer="adam", remat=True)
    peak = PEAK_BYTES[framework]
    short, long = peak(cfg.replace(inner_steps=10)), peak(cfg.replace(inner_steps=40))
    plain = peak(cfg.replace(inner_steps=40, remat=False))
    assert long / short <= 2.2, (short, long, long / short)
    assert plain / long >= 3.5, (plain, long, plain / long)

"""What a bench run measures: settings, the sweeps around seed-alpha, and which rows each gets."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

from parity.config import Config, get_preset

# The rows: the twins, the seed's own loop, and (GPU first) variants of the PyTorch twin's step.
# - torch-graph: the twin's train_step captured once as a CUDA graph and replayed (GPU only);
# - torch-func: the meta-gradient written with torch.func (functional_call, grad, vmap over tasks);
# - jax-unrolled: the JAX row with its inner loop unrolled into straight-line code (unroll = T);
# - jax-cpu: in a GPU run, the JAX row on the host's CPU (B = 1 only: the "no slower than" goal).
IMPLS = ("seed-loop", "jax", "jax-unrolled", "jax-cpu", "torch", "torch-graph", "torch-func")
DEFAULT_IMPLS = ("seed-loop", "jax", "torch")  # a CPU run's rows
GPU_IMPLS = IMPLS
DEVICES = ("cpu", "gpu")

# The CPU sweep: inner steps, tasks per outer step, hidden width (both hidden layers).
SWEEP_T = (1, 5, 20, 100)
SWEEP_B_CPU = (1, 25, 256)
SWEEP_WIDTH = (32, 128)
# The GPU sweep: fewer T (the time per step is linear in T), B up to 65,536 (≈ 3 min on an H100).
SWEEP_T_GPU = (5, 100)
SWEEP_B_GPU = (1, 256, 4096, 65_536)
# The seed loop runs one task at a time; past this many tasks per step it measures nothing new.
SEED_LOOP_MAX_B = 256
SEED_LOOP_MAX_B_GPU = 1  # on a GPU it is launch-bound: B = 1 says all there is to say
# Small B on a GPU: where launch overhead dominates and the graph / unrolled rows matter.
SMALL_B_GPU = 256
# Long unrolls, with and without rematerialisation (Config.remat): peak memory is the point.
REMAT_T = 1000
REMAT_B = 25

# Plain (not rematerialised) residuals of one inner step ≈ 3 parameter sets per task (measured:
# T = 1000, B = 25, 1153 parameters: 343 MB); used to skip rows that cannot fit.
_RESIDUAL_PARAM_SETS = 3.0


@dataclasses.dataclass(frozen=True)
class Setting:
    """One point of the bench: a preset changed in T, B, width (and remat)."""

    config: str  # preset name
    T: int  # inner steps
    B: int  # tasks per outer step
    width: int  # both hidden layers
    remat: bool = False

    def cfg(self) -> Config:
        base = get_preset(self.config)
        return base.replace(
            inner_steps=self.T, meta_batch=self.B, hidden=(self.width,) * len(base.hidden), remat=self.remat
        )

    @property
    def label(self) -> str:
        return f"{self.config} T={self.T} B={self.B} w={self.width}" + (" remat" if self.remat else "")


SEED_ALPHA_POINT = Setting("seed-alpha", T=5, B=1, width=32)
BATCH_POINT = Setting("seed-alpha", T=5, B=25, width=32)
QUICK_SETTINGS = (SEED_ALPHA_POINT, BATCH_POINT)
# The GPU goals' settings (issue 10): B = 1, T = 100 at B = 4,096, and B = 65,536.
LONG_POINT = Setting("seed-alpha", T=100, B=4096, width=32)
BIG_BATCH_POINT = Setting("seed-alpha", T=5, B=65_536, width=32)
QUICK_SETTINGS_GPU = (SEED_ALPHA_POINT, LONG_POINT, BIG_BATCH_POINT)


def full_settings(device: str = "cpu") -> list[Setting]:
    """The full sweep of a device.

    CPU: the seed configs, the T × B × width sweep (around seed-alpha) and the long-unroll pair.
    GPU: the goals' settings first (a run cut short by its time budget still measures them), then
    the T × B × width sweep; no seed-maml and no remat pair (CPU questions).
    """
    if device == "gpu":
        settings = list(QUICK_SETTINGS_GPU)
        sweep = [Setting("seed-alpha", T, B, w) for w in SWEEP_WIDTH for T in SWEEP_T_GPU for B in SWEEP_B_GPU]
        return settings + [s for s in sweep if s not in settings]
    settings = [Setting("seed-maml", T=3, B=1, width=32)]
    settings += [Setting("seed-alpha", T, B, w) for w in SWEEP_WIDTH for T in SWEEP_T for B in SWEEP_B_CPU]
    # remat first: the host allocator may reuse memory an earlier, larger row freed, which hides
    # growth from the resident-set measurement (the PyTorch rows); the smaller peak goes first.
    settings += [Setting("seed-alpha", REMAT_T, REMAT_B, 32, remat=r) for r in (True, False)]
    return settings


def plan(quick: bool, device: str, impls: Sequence[str] | None = None) -> list[tuple[Setting, list[str]]]:
    """Which settings a run measures, and with which implementations (the seed loop first).

    ``impls`` (default: the device's rows) is filtered per setting: the seed loop has no remat and
    stops at SEED_LOOP_MAX_B (1 on a GPU); the CUDA-graph and unrolled-JAX rows are for small B on
    a GPU (where launch overhead dominates), and torch-func is a GPU row.
    """
    gpu = device == "gpu"
    wanted = tuple(impls) if impls is not None else (GPU_IMPLS if gpu else DEFAULT_IMPLS)
    if quick:
        settings = list(QUICK_SETTINGS_GPU if gpu else QUICK_SETTINGS)
    else:
        settings = full_settings(device)
    out = []
    for s in settings:
        chosen = [impl for impl in IMPLS if impl in wanted]
        if s.remat or s.B > (SEED_LOOP_MAX_B_GPU if gpu else SEED_LOOP_MAX_B) or s.T > max(SWEEP_T):
            chosen = [impl for impl in chosen if impl != "seed-loop"]
        if s.remat or s.B > SMALL_B_GPU:
            chosen = [impl for impl in chosen if impl not in ("torch-graph", "jax-unrolled")]
        if not gpu or s != SEED_ALPHA_POINT:
            chosen = [impl for impl in chosen if impl != "jax-cpu"]
        if s.T > max(SWEEP_T_GPU[0], 20):  # straight-line code for 100 steps: long compiles, nothing new
            chosen = [impl for impl in chosen if impl != "jax-unrolled"]
        out.append((s, chosen))
    return out


def estimated_mb(setting: Setting) -> float:
    """Rough peak memory of a batched twin's step: the residuals the backward pass keeps."""
    n_params = sum(math.prod(s) for s in setting.cfg().param_shapes.values())
    sets = 2 * math.ceil(math.sqrt(setting.T)) if setting.remat else _RESIDUAL_PARAM_SETS * setting.T
    return sets * setting.B * n_params * 4 / 2**20


def jax_chunk_length(setting: Setting) -> int:
    """Outer steps per compiled call: enough to amortise dispatch, few when a step is long."""
    work = setting.B * max(setting.T, 1) * (setting.width / 32) ** 2
    return int(min(500, max(1, math.ceil(20_000 / work))))

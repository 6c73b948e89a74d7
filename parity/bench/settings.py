"""What a bench run measures: settings, the sweeps around seed-alpha, and which rows each gets."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

from parity.config import PRESETS, Config, get_preset

# The rows (which implementations, with which limits) are the twins' adapters' (parity.bench.rows);
# the settings and the sweeps are here.
DEVICES = ("cpu", "gpu")  # bench --scaling: forced host devices, or the visible GPUs

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
    inner_optimizer: str = "sgd"  # an entry of parity.inner.INNER_OPTIMIZERS, its fields' defaults

    def cfg(self) -> Config:
        base = get_preset(self.config)
        if base.model.name == "conv":  # cls-conv: width = filters per block, synthetic images of the preset's size
            return base.replace(
                inner_steps=self.T,
                meta_batch=self.B,
                width=self.width,
                remat=self.remat,
                dataset="synthetic",
                inner_optimizer=self.inner_optimizer,
            )
        return base.replace(
            inner_steps=self.T,
            meta_batch=self.B,
            hidden=(self.width,) * len(base.hidden),
            remat=self.remat,
            inner_optimizer=self.inner_optimizer,
        )

    @property
    def label(self) -> str:
        optimizer = "" if self.inner_optimizer == "sgd" else f" {self.inner_optimizer}"
        return f"{self.config} T={self.T} B={self.B} w={self.width}" + (" remat" if self.remat else "") + optimizer


SEED_ALPHA_POINT = Setting("seed-alpha", T=5, B=1, width=32)
BATCH_POINT = Setting("seed-alpha", T=5, B=25, width=32)
# Issue 19: an inner optimiser's step against SGD's at the batch point (the same rows, back to back).
ADAM_BATCH_POINT = dataclasses.replace(BATCH_POINT, inner_optimizer="adam")
INNER_OPTIMIZER_POINTS = (ADAM_BATCH_POINT, dataclasses.replace(BATCH_POINT, inner_optimizer="momentum"))
QUICK_SETTINGS = (SEED_ALPHA_POINT, BATCH_POINT, ADAM_BATCH_POINT)
# cls-conv (issue 18): a digits-5w1s step (meta-batch 32, 1 inner step, 64 filters per block) and an
# Omniglot-sized one (28×28, 4 blocks of 64), both on synthetic images of the preset's size.
CONV_POINTS = (Setting("digits-5w1s", T=1, B=32, width=64), Setting("omniglot-5w1s", T=1, B=32, width=64))
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
    if is_accelerator(device):
        settings = list(QUICK_SETTINGS_GPU)
        sweep = [Setting("seed-alpha", T, B, w) for w in SWEEP_WIDTH for T in SWEEP_T_GPU for B in SWEEP_B_GPU]
        return settings + [s for s in sweep if s not in settings]
    settings = [Setting("seed-maml", T=3, B=1, width=32)]
    settings += [Setting("seed-alpha", T, B, w) for w in SWEEP_WIDTH for T in SWEEP_T for B in SWEEP_B_CPU]
    settings += list(INNER_OPTIMIZER_POINTS)
    # remat first: the host allocator may reuse memory an earlier, larger row freed, which hides
    # growth from the resident-set measurement (the PyTorch rows); the smaller peak goes first.
    settings += [Setting("seed-alpha", REMAT_T, REMAT_B, 32, remat=r) for r in (True, False)]
    return settings + [s for s in CONV_POINTS if s.config in PRESETS]  # cls-conv: the conv steps (issue 18)


def plan(
    quick: bool, device: str, impls: Sequence[str] | None = None, only: Sequence[Setting] | None = None
) -> list[tuple[Setting, list[str]]]:
    """Which settings a run measures (``only``: these instead), and with which rows (the baseline first).

    ``impls`` (default: the device's default rows; a row's name or any implementation SPEC) is
    filtered per setting by each row's limits (:class:`parity.bench.rows.BenchRow`: the seed loop
    has no remat and stops at SEED_LOOP_MAX_B, 1 on a GPU; the graph-captured and unrolled rows
    are for small B, where launch overhead dominates).
    """
    from parity.bench.rows import choose, table

    rows, explicit = choose(impls, device)
    accelerator = is_accelerator(device)
    settings = list(QUICK_SETTINGS_GPU if accelerator else QUICK_SETTINGS) if quick else full_settings(device)
    settings = list(only) if only is not None else settings

    def rows_at(setting: Setting) -> list[Any]:
        # A CPU run's default rows, plus those a row asks for at this setting (BenchRow.cpu_default_at).
        if explicit or accelerator:
            return rows
        names = {r.name for r in rows}
        return [r for r in table() if r.name in names or setting in r.cpu_default_at]

    return [(s, [row.name for row in rows_at(s) if keeps(row, s, accelerator)]) for s in settings]


def keeps(row: Any, setting: Setting, accelerator: bool) -> bool:
    """Whether ``row`` (a BenchRow) times ``setting`` in a CPU or an accelerator run."""
    limit = row.max_B_accelerator if accelerator else row.max_B
    return not (
        (setting.remat and not row.remat)
        or (limit is not None and setting.B > limit)
        or (row.max_T is not None and setting.T > row.max_T)
        or (row.accelerator_only and not accelerator)
        or (row.only_at is not None and setting != row.only_at)
        or (row.inner_optimizers is not None and setting.inner_optimizer not in row.inner_optimizers)
    )


def is_accelerator(device: str) -> bool:
    """A GPU or TPU run (cuda:N included): the accelerator settings and rows."""
    from parity.devices import parse_device

    return parse_device(device).kind != "cpu"


def estimated_mb(setting: Setting) -> float:
    """Rough peak memory of a batched twin's step: the residuals the backward pass keeps."""
    n_params = sum(math.prod(s) for s in setting.cfg().param_shapes.values())
    sets = 2 * math.ceil(math.sqrt(setting.T)) if setting.remat else _RESIDUAL_PARAM_SETS * setting.T
    return sets * setting.B * n_params * 4 / 2**20

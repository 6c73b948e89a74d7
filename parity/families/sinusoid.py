"""The sinusoid family: ``y = A·sin(ω·x + φ)``, each of A, ω, φ drawn uniformly per task (NumPy).

The meta-batch of outer step ``i`` is a pure function of ``(seed, stream, i)`` (``parity.tasks``).
"""

from __future__ import annotations

import dataclasses
import math
import sys
from typing import TYPE_CHECKING, Any, NamedTuple

from parity.parts import ConfigError, Part, check_choice, check_declared, check_int, check_range, field, is_finite

if TYPE_CHECKING:
    import numpy as np

    from parity.config import Config

LOSSES = ("l1", "mse")
# Fields that hold a (low, high) range of a uniform distribution.
RANGE_FIELDS = ("amplitude_range", "frequency_range", "phase_range", "x_range")
# Largest finite value of each dtype (no NumPy import here).
DTYPE_MAX = {"float32": 3.4028234663852886e38, "float64": sys.float_info.max}


class TaskBatch(NamedTuple):
    """A meta-batch of sinusoid tasks. Leading axes are ``[B]`` for one step or ``[N, B]`` for a stack."""

    x_support: np.ndarray  # [B, K, 1]
    y_support: np.ndarray  # [B, K, 1]
    x_query: np.ndarray  # [B, Q, 1]
    y_query: np.ndarray  # [B, Q, 1]
    amplitude: np.ndarray  # [B]
    frequency: np.ndarray  # [B]
    phase: np.ndarray  # [B]


@check_declared
@dataclasses.dataclass(frozen=True)
class Sinusoid(Part):
    """Regression of ``A·sin(ω·x + φ)`` from K support points; scored on Q query points."""

    axis = "family"
    name: str = field("sinusoid", "meta_gradient")
    amplitude_range: tuple[float, float] = field((1.0, 1.0), "data", "A; the seed fixes A = 1")
    frequency_range: tuple[float, float] = field((0.5, 1.0), "data", "ω; the seed's `a`")
    phase_range: tuple[float, float] = field((0.0, 0.0), "data", "φ; the seed trains on φ = 0")
    x_range: tuple[float, float] = field((-2 * math.pi, 2 * math.pi), "data", "inputs, support and query")
    k_support: int = field(4, "meta_gradient", "K: points the inner loop fits")
    k_query: int = field(4, "meta_gradient", "Q: points the outer loss scores")
    loss: str = field("l1", "meta_gradient", "inner and outer loss: l1 (the seed's) | mse")

    @property
    def input_shape(self) -> tuple[int, ...]:
        """What the model sees per point: one number."""
        return (1,)

    @property
    def n_outputs(self) -> int:
        """What the model produces per point: one number."""
        return 1

    def check(self) -> None:
        for name in RANGE_FIELDS:
            object.__setattr__(self, name, check_range(name, getattr(self, name)))
        check_int("k_support", self.k_support, minimum=1)
        check_int("k_query", self.k_query, minimum=1)
        check_choice("loss", self.loss, LOSSES)

    def task_points(self) -> tuple[int, int]:
        """(support points, query points) of one task."""
        return self.k_support, self.k_query

    def check_config(self, cfg: Config) -> None:
        """Finite fields whose arithmetic is not finite in ``cfg.dtype``: refused by name.

        Sampling draws ``low + (high - low)·u`` in float64 and casts to the dtype; a task is
        ``A·sin(ω·x + φ)``; the first inner step subtracts α times a gradient that scales with the
        inputs and amplitudes. Each of these must stay finite (the MSE loss also squares A).
        """
        top = DTYPE_MAX[cfg.dtype]
        for name in RANGE_FIELDS:
            low, high = getattr(self, name)
            if max(abs(low), abs(high)) > top:
                raise ConfigError(name, f"{[low, high]} is not finite in {cfg.dtype} (largest {top:.4g})")
            if not is_finite(high - low) or high - low > DTYPE_MAX["float64"]:
                raise ConfigError(
                    name, f"the width high - low of {[low, high]} overflows; sampling in it is not finite"
                )
        scale = {name: max(abs(v) for v in getattr(self, name)) for name in RANGE_FIELDS}
        argument = scale["frequency_range"] * scale["x_range"] + scale["phase_range"]
        if not argument <= top:
            raise ConfigError(
                "x_range", f"frequency x input + phase reaches {argument:.4g}, past {cfg.dtype}'s largest {top:.4g}"
            )
        if self.loss == "mse" and not scale["amplitude_range"] ** 2 <= top:
            raise ConfigError("amplitude_range", f"the squared amplitude is not finite in {cfg.dtype} (loss mse)")
        step = abs(cfg.alpha_init) * max(1.0, scale["x_range"]) * max(1.0, scale["amplitude_range"])
        if not step <= top:
            raise ConfigError(
                "alpha_init",
                f"{cfg.alpha_init:g} makes the first inner step (alpha x gradient, which scales with the inputs "
                f"and amplitudes) not finite in {cfg.dtype} (largest {top:.4g})",
            )

    def sample(self, rng: Any, batch_size: int, stream: int = 0) -> TaskBatch:
        """One meta-batch from ``rng`` (a NumPy Generator), float64; every stream draws the same way."""
        B = batch_size
        amplitude = rng.uniform(*self.amplitude_range, size=B)  # [B]
        frequency = rng.uniform(*self.frequency_range, size=B)  # [B]
        phase = rng.uniform(*self.phase_range, size=B)  # [B]
        x_support = rng.uniform(*self.x_range, size=(B, self.k_support, 1))  # [B, K, 1]
        x_query = rng.uniform(*self.x_range, size=(B, self.k_query, 1))  # [B, Q, 1]
        return TaskBatch(
            x_support=x_support,
            y_support=sinusoid(x_support, amplitude, frequency, phase),
            x_query=x_query,
            y_query=sinusoid(x_query, amplitude, frequency, phase),
            amplitude=amplitude,
            frequency=frequency,
            phase=phase,
        )


def sinusoid(x: np.ndarray, amplitude: np.ndarray, frequency: np.ndarray, phase: np.ndarray) -> np.ndarray:
    """``A·sin(ω·x + φ)`` with per-task A, ω, φ of shape [B] broadcast over x [B, P, 1]."""
    import numpy as np

    a, w, p = (v[:, None, None] for v in (amplitude, frequency, phase))
    return a * np.sin(w * x + p)

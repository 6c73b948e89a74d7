"""The one experiment config: a frozen dataclass, validated on construction, JSON in and out.

Every field is checked in ``__post_init__``; a bad value raises :class:`ConfigError`, whose
message names the field and what is allowed. The CLI turns that into one line and exit status 2.
Presets are plain instances (``PRESETS``), not code paths.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import sys
from typing import Any

ACTIVATIONS = ("tanh", "relu")
INIT_SCHEMES = ("seed", "maml")
LOSSES = ("l1", "mse")
ALPHA_MODES = ("fixed", "scalar", "per_parameter")
ALPHA_PARAMETRISATIONS = ("identity", "softplus")
OPTIMIZERS = ("sgd", "adam")
DTYPES = ("float32", "float64")

# Fields that hold a (low, high) range of a uniform distribution.
_RANGE_FIELDS = ("amplitude_range", "frequency_range", "phase_range", "x_range")


class ConfigError(ValueError):
    """A config value outside what is allowed; ``field`` names the offending field."""

    def __init__(self, field: str, message: str):
        self.field = field
        super().__init__(f"{field}: {message}")


@dataclasses.dataclass(frozen=True)
class Config:
    """A whole experiment: task family, model, inner loop, outer loop, numerics.

    Defaults are the seed lab's part 1 (``seed-maml``).
    """

    # --- task family: y = A·sin(ω·x + φ), each drawn uniformly from its range, per task.
    amplitude_range: tuple[float, float] = (1.0, 1.0)  # A; the seed fixes A = 1
    frequency_range: tuple[float, float] = (0.5, 1.0)  # ω; the seed's `a`
    phase_range: tuple[float, float] = (0.0, 0.0)  # φ; the seed trains on φ = 0
    x_range: tuple[float, float] = (-2 * math.pi, 2 * math.pi)  # inputs, support and query
    k_support: int = 4  # K: points the inner loop fits
    k_query: int = 4  # Q: points the outer loss scores
    # --- model: MLP 1 → hidden... → 1, parameters {"w0","b0",...}, weights (out, in)
    hidden: tuple[int, ...] = (32, 32)
    activation: str = "tanh"  # tanh | relu
    # seed: first weight U(-1, 1), later weights U(±1/√fan_in), biases 0 (the seed lab's).
    # maml: every weight N(0, 0.01²) truncated at 2σ, biases 0 (Finn et al.'s reference code).
    init_scheme: str = "seed"
    # --- inner loop: T steps of w ← w − α·∇L_support(w)
    loss: str = "l1"  # l1 (mean absolute error, the seed's) | mse
    inner_steps: int = 3  # T; 0 means no adaptation
    alpha_mode: str = "fixed"  # fixed | scalar (seed part 4) | per_parameter (Meta-SGD)
    alpha_init: float = 0.03  # α, or the initial value of every entry of a learned α
    # A negative alpha_init climbs the inner loss; refused unless asked for with this set true.
    allow_negative_alpha: bool = False
    # What the outer loop learns for a learned α: α itself (identity), or ρ with α = softplus(ρ)
    # (softplus), which keeps α > 0 whatever the updates; ρ starts where softplus(ρ) = alpha_init.
    alpha_parametrisation: str = "identity"
    first_order: bool = False  # treat inner gradients as constants (FOMAML); α still gets a gradient
    # Rematerialise the inner loop: keep only each step's parameters for the backward pass and
    # recompute the rest (activations, inner gradients) there; less memory for long unrolls
    # (T in the hundreds), about one more forward pass of time. Same gradients.
    remat: bool = False
    # --- outer loop
    outer_optimizer: str = "sgd"  # for the initial parameters: sgd | adam
    outer_lr: float = 1e-2
    alpha_optimizer: str = "adam"  # for a learned α: sgd | adam
    alpha_lr: float = 1e-4
    meta_batch: int = 1  # B: tasks per outer step (the seed uses one)
    iterations: int = 5000  # outer steps
    # --- numerics and randomness
    dtype: str = "float32"  # float32 | float64
    seed: int = 0  # drives the task sampler and the initial parameters

    def __post_init__(self) -> None:
        for name in _RANGE_FIELDS:
            object.__setattr__(self, name, _check_range(name, getattr(self, name)))
        _check_int("k_support", self.k_support, minimum=1)
        _check_int("k_query", self.k_query, minimum=1)
        hidden = self.hidden
        if isinstance(hidden, list):
            hidden = tuple(hidden)
        if not isinstance(hidden, tuple) or len(hidden) < 1:
            raise ConfigError("hidden", f"must be a non-empty list of layer widths, got {hidden!r}")
        for width in hidden:
            _check_int("hidden", width, minimum=1)
        object.__setattr__(self, "hidden", hidden)
        _check_choice("activation", self.activation, ACTIVATIONS)
        _check_choice("init_scheme", self.init_scheme, INIT_SCHEMES)
        _check_choice("loss", self.loss, LOSSES)
        _check_int("inner_steps", self.inner_steps, minimum=0)
        _check_choice("alpha_mode", self.alpha_mode, ALPHA_MODES)
        _check_float("alpha_init", self.alpha_init)
        if not isinstance(self.allow_negative_alpha, bool):
            raise ConfigError("allow_negative_alpha", f"must be true or false, got {self.allow_negative_alpha!r}")
        _check_choice("alpha_parametrisation", self.alpha_parametrisation, ALPHA_PARAMETRISATIONS)
        if self.alpha_parametrisation == "softplus":
            if self.alpha_mode == "fixed":
                raise ConfigError(
                    "alpha_parametrisation",
                    "softplus applies to a learned alpha (alpha_mode scalar or per_parameter); alpha_mode is fixed",
                )
            _check_float("alpha_init", self.alpha_init, positive=True, why=" (alpha_parametrisation softplus)")
        if self.alpha_init < 0 and not self.allow_negative_alpha:
            raise ConfigError(
                "alpha_init",
                f"must be >= 0, got {self.alpha_init} (a negative alpha climbs the inner loss; "
                "set allow_negative_alpha to true to run it anyway)",
            )
        if not isinstance(self.first_order, bool):
            raise ConfigError("first_order", f"must be true or false, got {self.first_order!r}")
        if not isinstance(self.remat, bool):
            raise ConfigError("remat", f"must be true or false, got {self.remat!r}")
        _check_choice("outer_optimizer", self.outer_optimizer, OPTIMIZERS)
        _check_float("outer_lr", self.outer_lr, positive=True)
        _check_choice("alpha_optimizer", self.alpha_optimizer, OPTIMIZERS)
        _check_float("alpha_lr", self.alpha_lr, positive=True)
        _check_int("meta_batch", self.meta_batch, minimum=1)
        _check_int("iterations", self.iterations, minimum=0)
        _check_choice("dtype", self.dtype, DTYPES)
        _check_int("seed", self.seed, minimum=0)
        _check_arithmetic(self)
        object.__setattr__(self, "alpha_init", float(self.alpha_init))
        object.__setattr__(self, "outer_lr", float(self.outer_lr))
        object.__setattr__(self, "alpha_lr", float(self.alpha_lr))

    # --- derived quantities -------------------------------------------------------------

    @property
    def alpha_learned(self) -> bool:
        """Whether the outer loop updates α."""
        return self.alpha_mode != "fixed"

    @property
    def layer_sizes(self) -> tuple[int, ...]:
        """Widths from input to output, e.g. (1, 32, 32, 1)."""
        return (1, *self.hidden, 1)

    @property
    def param_names(self) -> tuple[str, ...]:
        """Parameter names in the canonical order: w0, b0, w1, b1, ..."""
        n_layers = len(self.hidden) + 1
        return tuple(f"{kind}{i}" for i in range(n_layers) for kind in ("w", "b"))

    @property
    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """Shape of every parameter; weights are (out, in) as in ``torch.nn.Linear``."""
        sizes = self.layer_sizes
        shapes: dict[str, tuple[int, ...]] = {}
        for i, (n_in, n_out) in enumerate(itertools.pairwise(sizes)):
            shapes[f"w{i}"] = (n_out, n_in)
            shapes[f"b{i}"] = (n_out,)
        return shapes

    def meta_signature(self) -> Config:
        """This config with every field that does not change the meta-gradient's computation
        reset to its default: the key under which a compiled meta-gradient is reused."""
        return Config(
            k_support=self.k_support,
            k_query=self.k_query,
            hidden=self.hidden,
            activation=self.activation,
            loss=self.loss,
            inner_steps=self.inner_steps,
            # fixed and scalar α run the same computation; only the outer loop differs.
            alpha_mode="per_parameter" if self.alpha_mode == "per_parameter" else "scalar",
            first_order=self.first_order,
            remat=self.remat,
            dtype=self.dtype,
        )

    # --- (de)serialisation ----------------------------------------------------------------

    def replace(self, **changes: Any) -> Config:
        """A copy with some fields changed (validated like any other config)."""
        unknown = sorted(set(changes) - set(field_names()))
        if unknown:
            raise _unknown_field(unknown[0])
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict (tuples become lists)."""
        out = dataclasses.asdict(self)
        for key, value in out.items():
            if isinstance(value, tuple):
                out[key] = list(value)
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: Any, base: Config | None = None) -> Config:
        """Build from a dict; unknown keys are an error. Missing keys come from ``base``."""
        if not isinstance(data, dict):
            raise ConfigError("config", f"must be a JSON object, got {type(data).__name__}")
        unknown = sorted(set(data) - set(field_names()))
        if unknown:
            raise _unknown_field(unknown[0])
        return (base or cls()).replace(**data)

    @classmethod
    def from_json(cls, text: str, base: Config | None = None) -> Config:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ConfigError("config", f"not valid JSON ({err.msg} at line {err.lineno})") from None
        except (ValueError, RecursionError) as err:  # an integer of > 4300 digits, nesting too deep
            raise ConfigError("config", f"not valid JSON ({type(err).__name__}: {str(err)[:80]})") from None
        return cls.from_dict(data, base=base)


def field_names() -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(Config))


def _unknown_field(key: Any) -> ConfigError:
    allowed = ", ".join(field_names())
    if isinstance(key, str) and key.isidentifier():
        return ConfigError(key, f"unknown config field; allowed: {allowed}")
    return ConfigError("config", f"unknown field {str(key)[:40]!r}; allowed: {allowed}")  # keep the message one line


# --- validation helpers -----------------------------------------------------------------


def lookup(table: dict[str, Any], field: str, name: str) -> Any:
    """``table[name]``, or ConfigError naming ``field`` and what is allowed: option choices are
    tables, so an unknown name is refused instead of falling into an ``else``."""
    try:
        return table[name]
    except (KeyError, TypeError):
        raise ConfigError(field, f"must be one of {', '.join(table)}; got {name!r}") from None


def _check_int(name: str, value: Any, minimum: int) -> None:
    # bool is an int subclass in Python; True is never a valid step count.
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(name, f"must be an integer >= {minimum}, got {value!r}")
    if value < minimum:
        raise ConfigError(name, f"must be an integer >= {minimum}, got {value}")


def _check_float(name: str, value: Any, positive: bool = False, why: str = "") -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(name, f"must be a finite number, got {value!r}")
    if not _is_finite(value):
        raise ConfigError(name, f"must be a finite number, got {value}")
    if positive and value <= 0:
        raise ConfigError(name, f"must be a finite number > 0{why}, got {value}")


def _is_finite(value: float) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:  # a JSON integer too large for a float
        return False


def _check_choice(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(name, f"must be one of {', '.join(allowed)}; got {value!r}")


def _check_range(name: str, value: Any) -> tuple[float, float]:
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise ConfigError(name, f"must be a pair [low, high], got {value!r}")
    low, high = value
    for end in (low, high):
        if isinstance(end, bool) or not isinstance(end, (int, float)) or not _is_finite(end):
            raise ConfigError(name, f"must hold two finite numbers, got {list(value)!r}")
    if low > high:
        raise ConfigError(name, f"must satisfy low <= high, got [{low}, {high}]")
    return (float(low), float(high))


# Largest finite value of each dtype (no NumPy import here).
_DTYPE_MAX = {"float32": 3.4028234663852886e38, "float64": sys.float_info.max}


def _check_arithmetic(cfg: Config) -> None:
    """Finite fields whose arithmetic is not finite in ``cfg.dtype``: refused by name.

    Sampling draws ``low + (high - low)·u`` in float64 and casts to the dtype; a task is
    ``A·sin(ω·x + φ)``; the first inner step subtracts α times a gradient that scales with the
    inputs and amplitudes. Each of these must stay finite (the MSE loss also squares A).
    """
    top = _DTYPE_MAX[cfg.dtype]
    for name in _RANGE_FIELDS:
        low, high = getattr(cfg, name)
        if max(abs(low), abs(high)) > top:
            raise ConfigError(name, f"{[low, high]} is not finite in {cfg.dtype} (largest {top:.4g})")
        if not _is_finite(high - low) or high - low > _DTYPE_MAX["float64"]:
            raise ConfigError(name, f"the width high - low of {[low, high]} overflows; sampling in it is not finite")
    scale = {name: max(abs(v) for v in getattr(cfg, name)) for name in _RANGE_FIELDS}
    argument = scale["frequency_range"] * scale["x_range"] + scale["phase_range"]
    if not argument <= top:
        raise ConfigError(
            "x_range", f"frequency x input + phase reaches {argument:.4g}, past {cfg.dtype}'s largest {top:.4g}"
        )
    if cfg.loss == "mse" and not scale["amplitude_range"] ** 2 <= top:
        raise ConfigError("amplitude_range", f"the squared amplitude is not finite in {cfg.dtype} (loss mse)")
    step = abs(cfg.alpha_init) * max(1.0, scale["x_range"]) * max(1.0, scale["amplitude_range"])
    if not step <= top:
        raise ConfigError(
            "alpha_init",
            f"{cfg.alpha_init:g} makes the first inner step (alpha x gradient, which scales with the inputs and "
            f"amplitudes) not finite in {cfg.dtype} (largest {top:.4g})",
        )


# --- presets ------------------------------------------------------------------------------

# The seed lab, part 1: fixed α = 0.03, T = 3, outer SGD lr 1e-2, one task per step.
SEED_MAML = Config()

# The seed lab, part 4: α learned (init 0.1) with Adam lr 1e-4, T = 5.
SEED_ALPHA = Config(inner_steps=5, alpha_mode="scalar", alpha_init=0.1)

# Finn, Abbeel & Levine 2017, sinusoid regression (section 5.1).
MAML_PAPER = Config(
    amplitude_range=(0.1, 5.0),
    frequency_range=(1.0, 1.0),
    phase_range=(0.0, math.pi),
    x_range=(-5.0, 5.0),
    k_support=10,
    k_query=10,
    hidden=(40, 40),
    activation="relu",
    init_scheme="maml",
    loss="mse",
    inner_steps=1,
    alpha_mode="fixed",
    alpha_init=0.01,
    outer_optimizer="adam",
    outer_lr=1e-3,
    meta_batch=25,
    iterations=70_000,
)

# The same with the reference implementation's inner step size: cbfinn/maml's main.py defaults
# update_lr to 1e-3 and its sinusoid command does not override it, while the paper's text says
# α = 0.01. Its 5-shot numbers (Table 2) are the ones this preset reproduces (README).
MAML_PAPER_CODE = MAML_PAPER.replace(alpha_init=0.001)

# Li, Zhou, Chen & Li 2017 (Meta-SGD): the same task family, a learned α per parameter entry.
META_SGD = MAML_PAPER.replace(alpha_mode="per_parameter", alpha_optimizer="adam", alpha_lr=1e-3)

PRESETS: dict[str, Config] = {
    "seed-maml": SEED_MAML,
    "seed-alpha": SEED_ALPHA,
    "maml-paper": MAML_PAPER,
    "maml-paper-code": MAML_PAPER_CODE,
    "meta-sgd": META_SGD,
}


def get_preset(name: str) -> Config:
    try:
        return PRESETS[name]
    except KeyError:
        raise ConfigError("preset", f"unknown preset {name!r}; allowed: {', '.join(PRESETS)}") from None

"""The experiment config: a composition of small frozen parts, validated, JSON in and out.

A :class:`Config` is five parts, each a :class:`parity.parts.Part`:

- ``family``: the task family (axis ``family``: :data:`parity.families.FAMILIES`), its data and loss;
- ``model``: the model (axis ``model``: :data:`parity.models.MODELS`);
- ``inner``: the inner loop (:class:`parity.inner.InnerLoop`), holding the inner optimiser
  (axis ``inner_optimizer``: :data:`parity.inner.INNER_OPTIMIZERS`);
- ``outer``: the outer loop (:class:`OuterLoop`);
- ``numerics``: dtype and seed (:class:`Numerics`).

Every field also has a flat name, unique across the parts (``hidden``, ``inner_steps``,
``dtype``, …), and each axis its own (``family``, ``model``, ``inner_optimizer``): the names of
the CLI's flags and of ``--set KEY=VALUE``, of the 0.2 config files (which still read), and the
attributes an implementation reads (``cfg.inner_steps``, ``cfg.loss``, ``cfg.dtype``). JSON nests
the parts (:meth:`Config.to_dict`). A bad value raises :class:`ConfigError`, whose message names
the field and what is allowed; the CLI turns that into one line and exit status 2. Presets are
plain instances (:data:`PRESETS`), not code paths.
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

from parity.families import FAMILIES
from parity.families.sinusoid import LOSSES
from parity.flatview import (
    AXES,
    PARTS,
    _affecting,
    _declared,
    _field_places,
    _flat_owners,
    _part_dict,
    _with_flat,
    config_fields,
    part_at,
)
from parity.inner import ALPHA_MODES, ALPHA_PARAMETRISATIONS, InnerLoop
from parity.models import MODELS
from parity.models.mlp import ACTIVATIONS, INIT_SCHEMES
from parity.outer import DTYPES, OPTIMIZERS, Numerics, OuterLoop
from parity.parts import ConfigError, Part, lookup

__all__ = [
    "ACTIVATIONS",
    "ALPHA_MODES",
    "ALPHA_PARAMETRISATIONS",
    "DTYPES",
    "INIT_SCHEMES",
    "LOSSES",
    "MAML_PAPER",
    "MAML_PAPER_CODE",
    "META_SGD",
    "OPTIMIZERS",
    "PRESETS",
    "SEED_ALPHA",
    "SEED_MAML",
    "Config",
    "ConfigError",
    "Numerics",
    "OuterLoop",
    "computation_fields",
    "config_fields",
    "field_names",
    "get_preset",
    "lookup",
    "parse_set",
]


@dataclasses.dataclass(frozen=True, init=False)
class Config:
    """A whole experiment: task family, model, inner loop, outer loop, numerics.

    ``Config(**flat)`` takes the parts by name (``Config(model=MLP(hidden=(40,)))``) and any flat
    field (``Config(hidden=(40,), dtype="float64")``). Defaults are the seed lab's part 1
    (``seed-maml``).
    """

    # Any part of its axis (a table's entry or a user's class): each has ``name`` and its own fields.
    family: Any
    model: Any
    inner: InnerLoop
    outer: OuterLoop
    numerics: Numerics

    def __init__(self, **fields: Any) -> None:
        parts = {name: fields.pop(name) for name in PARTS if isinstance(fields.get(name), Part)}
        defaults = {"family": FAMILIES["sinusoid"](), "model": MODELS["mlp"](), "inner": InnerLoop()}
        defaults.update(outer=OuterLoop(), numerics=Numerics())
        for name in PARTS:
            object.__setattr__(self, name, parts.get(name, defaults[name]))
        if fields:
            changed = _with_flat(self, fields)
            for name in PARTS:
                object.__setattr__(self, name, getattr(changed, name))
        self._check()

    def _check(self) -> None:
        for name, part_type in (("inner", InnerLoop), ("outer", OuterLoop), ("numerics", Numerics)):
            if not isinstance(getattr(self, name), part_type):
                raise ConfigError(name, f"must be a {part_type.__name__}, got {type(getattr(self, name)).__name__}")
        for axis, (_table, where) in AXES.items():
            if getattr(part_at(self, where), "axis", None) != axis:
                raise ConfigError(axis, f"must be a part of axis {axis}")
        check_config = getattr(self.family, "check_config", None)
        if check_config is not None:
            check_config(self)

    # --- the flat view ----------------------------------------------------------------------

    def __getattr__(self, name: str) -> Any:
        # Called only for names that are not attributes: the flat fields and the axis choices.
        if name.startswith("_") or name in PARTS:
            raise AttributeError(name)
        for where in _flat_owners(self).get(name, ()):
            return getattr(part_at(self, where), "name" if name in AXES else name)
        for part in (self.family, self.model, self.inner, self.outer, self.numerics):
            if hasattr(type(part), name):  # a part's derived property, e.g. alpha_learned
                return getattr(part, name)
        raise AttributeError(f"Config has no field {name!r} (family {self.family.name}, model {self.model.name})")

    def flat(self) -> dict[str, Any]:
        """Every flat name -> value (axes by their choice), in the parts' order."""
        return {
            name: part_at(self, where[0]).name if name in AXES else getattr(self, name)
            for name, where in _flat_owners(self).items()
        }

    @property
    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """Shape of every parameter, in the canonical order (the model's, for the family's inputs)."""
        return self.model.param_shapes(self.family.input_shape, self.family.n_outputs)  # type: ignore[attr-defined]

    @property
    def param_names(self) -> tuple[str, ...]:
        """Parameter names in the canonical order: w0, b0, w1, b1, ... for the MLP."""
        return tuple(self.param_shapes)

    @property
    def traced_layers(self) -> dict[str, tuple[int, ...]]:
        """Per input point, the shape of each layer output a trace records (``trace/activation/<name>``):
        the model part's optional ``layer_shapes``; none for a model without it (the MLP)."""
        shapes = getattr(self.model, "layer_shapes", None)
        return dict(shapes(self.family.input_shape)) if shapes is not None else {}

    @property
    def layer_sizes(self) -> tuple[int, ...]:
        """The MLP's widths from input to output, e.g. (1, 32, 32, 1)."""
        return self.model.layer_sizes(self.family.input_shape, self.family.n_outputs)  # type: ignore[attr-defined]

    # --- what keys a compiled computation ---------------------------------------------------

    def meta_signature(self) -> Config:
        """This config with every field that does not change the meta-gradient's computation reset
        to its default: the static argument under which a compiled meta-gradient is reused.
        Fixed and scalar α run the same computation (only the outer loop differs)."""
        fresh = {name: type(part_at(self, name))(**_affecting(part_at(self, name))) for name in ("family", "model")}
        inner = dataclasses.replace(
            InnerLoop(),
            **_affecting(self.inner),
        )
        if inner.alpha_mode == "fixed":
            inner = dataclasses.replace(inner, alpha_mode="scalar")
        return Config(
            family=fresh["family"],
            model=fresh["model"],
            inner=inner,
            outer=OuterLoop(),
            numerics=Numerics(dtype=self.dtype),
        )

    # --- changes and (de)serialisation ------------------------------------------------------

    def replace(self, **changes: Any) -> Config:
        """A copy with some flat fields (or whole parts, or axis choices) changed, validated."""
        return _with_flat(self, changes)

    def to_dict(self) -> dict[str, Any]:
        """The nested JSON-ready dict: one object per part, each chosen part with its ``name``."""
        return {name: _part_dict(part_at(self, name)) for name in PARTS}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: Any, base: Config | None = None) -> Config:
        """Build from a nested dict (``to_dict``'s) or a flat one (0.2's); unknown keys are an error.
        Missing keys come from ``base``."""
        if not isinstance(data, dict):
            raise ConfigError("config", f"must be a JSON object, got {type(data).__name__}")
        return (base or cls()).replace(**config_fields(data))

    @classmethod
    def from_json(cls, text: str, base: Config | None = None) -> Config:
        return cls.from_dict(cls.from_json_object(text), base=base)

    @staticmethod
    def from_json_object(text: str) -> dict[str, Any]:
        """JSON text -> the config object it holds (not yet checked against the fields)."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ConfigError("config", f"not valid JSON ({err.msg} at line {err.lineno})") from None
        except (ValueError, RecursionError) as err:  # an integer of > 4300 digits, nesting too deep
            raise ConfigError("config", f"not valid JSON ({type(err).__name__}: {str(err)[:80]})") from None
        if not isinstance(data, dict):
            raise ConfigError("config", f"must be a JSON object, got {type(data).__name__}")
        return data


def field_names(cfg: Config | None = None) -> tuple[str, ...]:
    """The flat names of ``cfg`` (default: the default config): axes first, then every part's fields."""
    return tuple(_flat_owners(cfg or Config()))


def parse_set(item: str) -> tuple[str, Any]:
    """``KEY=VALUE`` -> (field, value): VALUE as JSON when it parses (numbers, true, lists), else the
    string itself (``--set activation=relu``). An unknown field is named with the allowed ones."""
    key, sep, text = item.partition("=")
    key = key.strip().replace("-", "_")
    if not sep or not key:
        raise ConfigError("set", f"must be KEY=VALUE (a config field and its value), got {item!r}")
    if key not in every_field_name():
        allowed = ", ".join(every_field_name())
        raise ConfigError(key, f"unknown config field (in --set {item!r}); allowed: {allowed}")
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        value = text
    return key, value  # lists become tuples in the part that takes them


def every_field_name() -> tuple[str, ...]:
    """Every flat name any built-in family, model and inner optimiser offers (``--set`` takes these;
    whether the config being changed has the field is checked when it is changed)."""
    names = dict.fromkeys(field_names())
    for table, _where in AXES.values():
        for entry in table.values():
            names.update(dict.fromkeys(entry.field_names()))
    return tuple(names)


def computation_fields(cfg: Config | None = None) -> tuple[str, ...]:
    """The flat names declared to change the meta-gradient's computation (``affects`` ==
    ``meta_gradient``), axes included: what the check matrix must vary."""
    cfg = cfg or Config()
    out = [axis for axis in AXES]
    for name, where in _field_places(cfg):
        if name not in AXES and _declared(part_at(cfg, where), name) == "meta_gradient":
            out.append(name)
    return tuple(out)


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

# Few-shot classification (issue 18) on scikit-learn's 8x8 digits, the default data (no download;
# parity.data: 24 / 8 / 8 rotated-digit classes for meta-train / -validation / -test): the MAML
# paper's recipe (1 inner step of fixed alpha, outer Adam 1e-3) on a conv net that fits 8x8 images,
# 3 blocks of 32 filters with max-pool (8 -> 4 -> 2 -> 1). alpha = 0.4 is the paper's Omniglot step
# (pixels in [0, 1] there too). Eval scores every adaptation step 0..--max-steps, so the paper's
# test-time steps are rows of its curve, not a config field.
DIGITS_5W1S = Config(
    family="classification",
    dataset="digits",
    n_way=5,
    k_support=1,
    k_query=5,
    image_size=8,
    rotations=True,
    model="conv",
    depth=3,
    width=32,
    pool="max",
    inner_steps=1,
    alpha_mode="fixed",
    alpha_init=0.4,
    outer_optimizer="adam",
    outer_lr=1e-3,
    meta_batch=32,
    iterations=2000,
)
DIGITS_5W5S = DIGITS_5W1S.replace(k_support=5, meta_batch=16)

# Finn et al. 2017, Omniglot (section 5.2, appendix A.1): 28x28 images, rotations as new classes,
# 4 blocks of 64 filters with stride-2 convolutions, 5-way: 1 inner step of alpha = 0.4, meta-batch
# 32; 20-way: 5 steps of alpha = 0.1, meta-batch 16 (the appendix, and the reference code's README
# command); Adam 1e-3, 60,000 iterations; the query set holds K images per class, as the reference
# code samples 2K per class. They carry no data_dir: a run refuses to start until --data DIR names
# the Omniglot folder (Classification.check_ready).
OMNIGLOT_5W1S = DIGITS_5W1S.replace(
    dataset="omniglot", k_query=1, image_size=28, depth=4, width=64, pool="stride", iterations=60_000
)
OMNIGLOT_20W1S = OMNIGLOT_5W1S.replace(n_way=20, inner_steps=5, alpha_init=0.1, meta_batch=16)

# MAML++ (Antoniou et al. 2019, "How to train your MAML") on Finn et al.'s sinusoid setting
# (MAML_PAPER): LSLR (per-layer per-step learned α), the multi-step loss annealed onto the last
# step, first-order annealing, 5 inner steps. Left out: per-step batch-norm statistics and weights
# (the MLP has no batch norm; they belong to the conv model), the cosine-annealed outer learning
# rate, and MAML++'s epochs (its annealing schedules count outer steps here).
MAML_PP_SINUSOID = MAML_PAPER.replace(
    inner_steps=5,
    alpha_mode="per_layer_step",
    msl=True,
    msl_anneal=10_000,
    first_order_steps=10_000,
    alpha_optimizer="adam",
    alpha_lr=1e-3,
)

# MAML++ on the digits preset (DIGITS_5W1S): LSLR (one learned α per parameter tensor per inner
# step, started at 0.1, MAML++'s Omniglot inner step size, learned with Adam 1e-3 as the weights
# are), 5 inner steps, the multi-step loss annealed onto the last step over the first 10% of the
# run, first order for its first quarter, then second order; the digits preset's outer Adam 1e-3,
# meta-batch 32 and 2,000 steps. Left out, as in MAML_PP_SINUSOID: per-step batch-norm statistics
# and weights (batch norm here always uses the statistics of the batch it is applied to, with one
# γ, β per block shared by every step), the cosine-annealed outer learning rate, and epochs (the
# schedules count outer steps).
MAML_PP_DIGITS = DIGITS_5W1S.replace(
    inner_steps=5,
    alpha_mode="per_layer_step",
    alpha_init=0.1,
    msl=True,
    msl_anneal=200,
    first_order_steps=500,
    alpha_optimizer="adam",
    alpha_lr=1e-3,
)

PRESETS: dict[str, Config] = {
    "seed-maml": SEED_MAML,
    "seed-alpha": SEED_ALPHA,
    "maml-paper": MAML_PAPER,
    "maml-paper-code": MAML_PAPER_CODE,
    "meta-sgd": META_SGD,
    "digits-5w1s": DIGITS_5W1S,
    "digits-5w5s": DIGITS_5W5S,
    "omniglot-5w1s": OMNIGLOT_5W1S,
    "omniglot-20w1s": OMNIGLOT_20W1S,
    "maml++-sinusoid": MAML_PP_SINUSOID,
    "maml++-digits": MAML_PP_DIGITS,
}


def get_preset(name: str) -> Config:
    try:
        return PRESETS[name]
    except KeyError:
        raise ConfigError("preset", f"unknown preset {name!r}; allowed: {', '.join(PRESETS)}") from None

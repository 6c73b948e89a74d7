"""The check matrix: which configurations ``check`` (and the pytest plugin) compares.

A case is named data: a config (always described in float64; the float32 runs replace the
dtype) and a kind, ``gradient`` (losses and meta-gradients at the initial parameters on the
step-0 meta-batch) or ``trajectory`` (parameters and α after N outer steps from the same start).

Every field of the config that changes the meta-gradient's computation is an axis
(:data:`AXES`; ``dtype`` is varied by running every case in both dtypes). The full matrix is the
original design (inner steps × α × loss × α mode × order, the other axes at their first value,
names unchanged) plus the rows an all-pairs design needs to put every value of every axis next
to every value of every other; the quick matrix is an all-pairs design seeded with the original
quick rows (so their names survive). ``parity.pairwise`` builds both, deterministically.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any

from parity.config import SEED_ALPHA, Config, ConfigError
from parity.pairwise import all_pairs

# The original axes of docs/design.md.
INNER_STEPS = (0, 1, 2, 3, 5, 10)
ALPHAS = (0.001, 0.01, 0.05, 0.1)
LOSSES = ("l1", "mse")
ALPHA_MODES = ("fixed", "scalar", "per_parameter")
ORDERS = ("second", "first")
# The axes a port can get wrong that the original matrix held still (issue 20 §6). The first value
# of each is the original matrix's, which a case name leaves out.
ACTIVATIONS = ("tanh", "relu")
# two square hidden layers; one; three of unequal widths (a depth other than two, non-square layers)
HIDDEN = ((32, 32), (40,), (16, 24, 8))
SIZES = ((4, 4), (4, 7), (7, 4))  # (support K, query Q): equal; more query points; fewer
PARAMETRISATIONS = ("identity", "softplus")
REMAT = (False, True)
INNER_OPTIMIZERS = ("sgd", "momentum", "adam")  # issue 19: the inner optimiser, at its defaults

AXES: dict[str, tuple[Any, ...]] = {
    "inner_steps": INNER_STEPS,
    "alpha_init": ALPHAS,
    "loss": LOSSES,
    "alpha_mode": ALPHA_MODES,
    "order": ORDERS,
    "activation": ACTIVATIONS,
    "hidden": HIDDEN,
    "sizes": SIZES,
    "alpha_parametrisation": PARAMETRISATIONS,
    "remat": REMAT,
    "inner_optimizer": INNER_OPTIMIZERS,
}
_NAMES = tuple(AXES)
_ORIGINAL = 5  # the first five axes are the original design's

# Four tasks per meta-batch, so that batching over tasks is exercised, at the seed's sizes.
BASE = SEED_ALPHA.replace(meta_batch=4, dtype="float64", seed=7)
TRAJECTORY_STEPS = 20


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    cfg: Config  # float64; float32 runs use cfg.replace(dtype="float32")
    kind: str = "gradient"  # gradient | trajectory
    steps: int = 0  # trajectory only: outer steps
    was: str = ""  # the matrix's name of the case a --set changed (``name`` says what it now runs)

    def matches(self, substring: str) -> bool:
        """Whether ``--cases SUBSTRING`` selects this case: by its name, or by the matrix name it had
        before a ``--set`` changed it (``--cases T1- --set inner_steps=10`` still picks the T1 rows)."""
        return substring in self.name or substring in self.was


def case_name(
    T: int,
    alpha: float,
    loss: str,
    mode: str,
    order: str,
    activation: str = ACTIVATIONS[0],
    hidden: tuple[int, ...] = HIDDEN[0],
    sizes: tuple[int, int] = SIZES[0],
    parametrisation: str = PARAMETRISATIONS[0],
    remat: bool = REMAT[0],
    inner_optimizer: str = INNER_OPTIMIZERS[0],
) -> str:
    """``T2-a0.05-l1-per_parameter-second``, then a token for each newer axis off its first value:
    ``-relu``, ``-h16x24x8``, ``-k4q7``, ``-softplus``, ``-remat``, ``-adam``."""
    name = f"T{T}-a{alpha:g}-{loss}-{mode}-{order}"
    if activation != ACTIVATIONS[0]:
        name += f"-{activation}"
    if hidden != HIDDEN[0]:
        name += "-h" + "x".join(str(w) for w in hidden)
    if sizes != SIZES[0]:
        name += f"-k{sizes[0]}q{sizes[1]}"
    if parametrisation != PARAMETRISATIONS[0]:
        name += f"-{parametrisation}"
    if remat != REMAT[0]:
        name += "-remat"
    if inner_optimizer != INNER_OPTIMIZERS[0]:
        name += f"-{inner_optimizer}"
    return name


def allowed(row: dict[int, Any]) -> bool:
    """Whether a (partial) row is a config worth a case: T = 0 has no inner gradient to hold
    constant (first order = second order), per_layer_step needs a step, and softplus applies to a
    learned α only."""
    values = {_NAMES[i]: v for i, v in row.items()}
    if values.get("inner_steps") == 0 and values.get("order") == "first":
        return False
    if values.get("inner_steps") == 0 and values.get("alpha_mode") == "per_layer_step":
        return False
    return not (values.get("alpha_mode") == "fixed" and values.get("alpha_parametrisation") == "softplus")


def _defaults(old: tuple[Any, ...]) -> tuple[Any, ...]:
    return (*old, *(AXES[name][0] for name in _NAMES[_ORIGINAL:]))


def _original_rows(quick: bool) -> list[tuple[Any, ...]]:
    axes = [AXES[name] for name in _NAMES[:_ORIGINAL]]
    if quick:
        # The original quick rows: the i-th value of every axis (cycling).
        n = max(len(a) for a in axes)
        old = [tuple(a[i % len(a)] for a in axes) for i in range(n)]
    else:
        old = list(itertools.product(*axes))
    return [_defaults(row) for row in old if allowed(dict(enumerate(_defaults(row))))]


def design(quick: bool = False) -> list[tuple[Any, ...]]:
    """The matrix's rows (one value per axis of :data:`AXES`): the original rows, then the all-pairs rows."""
    return all_pairs(list(AXES.values()), allowed, seed=_original_rows(quick))


def case_for(row: tuple[Any, ...]) -> Case:
    T, alpha, loss, mode, order, activation, hidden, (K, Q), parametrisation, remat, inner_optimizer = row
    cfg = BASE.replace(
        inner_steps=T,
        alpha_init=alpha,
        loss=loss,
        alpha_mode=mode,
        first_order=order == "first",
        activation=activation,
        hidden=hidden,
        k_support=K,
        k_query=Q,
        alpha_parametrisation=parametrisation,
        remat=remat,
        inner_optimizer=inner_optimizer,
    )
    return Case(case_name(*row), cfg)


# Issue 19's LSLR α (alpha_mode per_layer_step), in rows of its own after the design: as a value
# of the designed alpha_mode axis it would reshuffle every all-pairs row (and the cases the tests
# and scripts/mutants name). Quick: second order with Adam, first order with momentum and remat.
LSLR_QUICK = (
    (3, 0.05, "l1", "per_layer_step", "second", "relu", HIDDEN[1], SIZES[1], "identity", False, "adam"),
    (2, 0.01, "mse", "per_layer_step", "first", "tanh", HIDDEN[2], SIZES[2], "identity", True, "momentum"),
)


def lslr_rows(quick: bool) -> list[tuple[Any, ...]]:
    """The per_layer_step rows: the two quick ones, or T x order x inner optimiser (the rest defaults)."""
    if quick:
        return list(LSLR_QUICK)
    rows = itertools.product((1, 3, 10), ORDERS, INNER_OPTIMIZERS)
    return [_defaults((T, 0.05, "l1", "per_layer_step", order))[:-1] + (opt,) for T, order, opt in rows]


# Issue 19's multi-step loss (msl), rows of its own for the same reason, named with a "-msl" suffix.
# Quick: second order with SGD and a scalar α; MAML++'s own mix (LSLR, first order, Adam) with remat.
MSL_QUICK = (
    (3, 0.05, "mse", "scalar", "second", "tanh", HIDDEN[1], SIZES[1], "identity", False, "sgd"),
    (2, 0.01, "l1", "per_layer_step", "first", "relu", HIDDEN[2], SIZES[2], "identity", True, "adam"),
)


def msl_rows(quick: bool) -> list[tuple[Any, ...]]:
    """The msl rows: the two quick ones, or T x order x inner optimiser (the rest defaults)."""
    if quick:
        return list(MSL_QUICK)
    rows = itertools.product((2, 5), ORDERS, INNER_OPTIMIZERS)
    return [_defaults((T, 0.05, "l1", "scalar", order))[:-1] + (opt,) for T, order, opt in rows]


def msl_case(row: tuple[Any, ...]) -> Case:
    case = case_for(row)
    return Case(f"{case.name}-msl", case.cfg.replace(msl=True))


def gradient_cases(quick: bool = False) -> list[Case]:
    """The full matrix, or (``quick``) the all-pairs subset (see the module's docstring), then the
    per_layer_step rows (:func:`lslr_rows`) and the multi-step loss rows (:func:`msl_rows`)."""
    cases = [case_for(row) for row in [*design(quick), *lslr_rows(quick)]]
    return cases + [msl_case(row) for row in msl_rows(quick)]


def trajectory_cases() -> list[Case]:
    """Training trajectories: the seed's learned-α setting, Adam + MSE + ReLU with Meta-SGD's α, and
    a softplus-parametrised per-parameter α trained by SGD (Adam would hide a missing dα/dρ: it
    divides out a gradient's scale) on a three-layer ReLU net with more query than support points."""
    seed_alpha = BASE.replace(inner_steps=5, alpha_mode="scalar", alpha_init=0.1)
    meta_sgd = BASE.replace(
        inner_steps=2,
        loss="mse",
        activation="relu",
        alpha_mode="per_parameter",
        alpha_init=0.01,
        outer_optimizer="adam",
        outer_lr=1e-3,
        alpha_lr=1e-3,
    )
    softplus = BASE.replace(
        inner_steps=2,
        activation="relu",
        hidden=HIDDEN[2],
        k_query=7,
        alpha_mode="per_parameter",
        alpha_parametrisation="softplus",
        alpha_init=0.05,
        alpha_optimizer="sgd",
        alpha_lr=1e-2,
    )
    return [
        Case("trajectory-seed-alpha", seed_alpha, "trajectory", TRAJECTORY_STEPS),
        Case("trajectory-meta-sgd-style", meta_sgd, "trajectory", TRAJECTORY_STEPS),
        Case("trajectory-softplus", softplus, "trajectory", TRAJECTORY_STEPS),
    ]


# Few-shot classification with the conv net (issue 18), sized for CI: 8×8 synthetic images, 3-way,
# 2 blocks of 2-3 filters, B = 2. Each row changes what a port gets wrong: the pool, which parameters
# the inner loop adapts, batch norm's ε; with α modes, orders and step counts from the axes above.
CLASSIFICATION_BASE = BASE.replace(
    family="classification",
    model="conv",
    dataset="synthetic",
    n_way=3,
    k_support=1,
    k_query=2,
    image_size=8,
    depth=2,
    width=3,
    meta_batch=2,
    alpha_init=0.1,
)
# (name, changes, quick?)
CLASSIFICATION_ROWS: tuple[tuple[str, dict[str, Any], bool], ...] = (
    ("cls-T1-max-all-eps1e-3", dict(inner_steps=1), True),
    (
        "cls-T2-stride-no_bn-eps1e-5-scalar-k2",
        dict(inner_steps=2, pool="stride", adapt="no_bn", bn_eps=1e-5, alpha_mode="scalar", k_support=2, width=2),
        True,
    ),
    (
        "cls-T2-max-head-first-per_parameter",
        dict(inner_steps=2, adapt="head", first_order=True, alpha_mode="per_parameter"),
        False,
    ),
    ("cls-T1-stride-all-eps1e-5-k2", dict(inner_steps=1, pool="stride", bn_eps=1e-5, k_support=2), False),
)


def classification_cases(quick: bool = False) -> list[Case]:
    """Tiny conv-classification gradient cases (quick: the rows marked so)."""
    return [
        Case(name, CLASSIFICATION_BASE.replace(**changes))
        for name, changes, in_quick in CLASSIFICATION_ROWS
        if in_quick or not quick
    ]


def all_cases(quick: bool = False) -> list[Case]:
    return gradient_cases(quick) + classification_cases(quick) + trajectory_cases()


def with_changes(cases: list[Case], changes: list[dict[str, Any]]) -> list[Case]:
    """Every case with ``changes`` applied in order (``check --set``, the field flags); cases that
    become the same computation run once. The dtype stays the case's: check runs both.

    A family or model some cases already have selects those cases (``--family classification``: the
    matrix's classification cases; a sinusoid case cannot be swapped onto images); one no case has
    (a user's ``file.py:NAME``) is applied to every case. Every other field, ``inner_optimizer``
    included, is applied to every case that has it (``--set inner_optimizer=adam``: the matrix with
    Adam inner loops)."""
    if any("dtype" in change for change in changes):
        raise ConfigError("dtype", "check runs every case in float64 and float32; it takes no dtype")
    for axis in ("family", "model"):
        chosen = [change[axis] for change in changes if axis in change]
        if chosen and any(case.cfg.flat()[axis] == chosen[-1] for case in cases):
            cases = [case for case in cases if case.cfg.flat()[axis] == chosen[-1]]
            changes = [{k: v for k, v in change.items() if k != axis} for change in changes]
    fields = {key for change in changes for key in change}
    held = {key for case in cases for key in case.cfg.flat()} | {"family", "model", "inner_optimizer"}
    if fields - held:  # a field no case has: refused by name, with what is allowed
        cases[0].cfg.replace(**{sorted(fields - held)[0]: None})
    out: list[Case] = []
    seen: set[tuple[str, Any, int]] = set()
    for case in cases:
        cfg = case.cfg
        for change in changes:
            cfg = cfg.replace(**{k: v for k, v in change.items() if k in cfg.flat() or k in ("family", "model")})
        key = (case.kind, cfg, case.steps)
        if key not in seen:
            seen.add(key)
            name = renamed(case, cfg)
            out.append(dataclasses.replace(case, name=name, cfg=cfg, was=case.name if name != case.name else ""))
    return out


def renamed(case: Case, cfg: Config) -> str:
    """The case's name for what it now computes: a designed sinusoid case is named from its new
    config (``--set inner_optimizer=adam`` turns ``…-remat-momentum`` into ``…-remat-adam``, not a
    row that says momentum while it runs Adam); any other case gets the new inner optimiser's token."""
    if cfg == case.cfg:
        return case.name
    flat = cfg.flat()
    if case.kind == "gradient" and flat["family"] == "sinusoid" and case.name == _name_of(case.cfg):
        return _name_of(cfg)
    if flat["inner_optimizer"] != case.cfg.inner_optimizer:
        return f"{case.name}-{flat['inner_optimizer']}"
    return case.name


def _name_of(cfg: Config) -> str:
    """:func:`case_name` of a sinusoid config (``-msl`` where it uses the multi-step loss)."""
    name = case_name(
        cfg.inner_steps,
        cfg.alpha_init,
        cfg.loss,
        cfg.alpha_mode,
        "first" if cfg.first_order else "second",
        cfg.activation,
        tuple(cfg.hidden),
        (cfg.k_support, cfg.k_query),
        cfg.alpha_parametrisation,
        cfg.remat,
        cfg.inner_optimizer,
    )
    return f"{name}-msl" if cfg.msl else name

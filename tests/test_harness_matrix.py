"""The check matrix: every computation field varied, an all-pairs design that is one, stable names."""

from __future__ import annotations

import itertools

import pytest

from parity import harness, matrix
from parity.pairwise import all_pairs, covered_by, required_pairs


def _computation_fields() -> tuple[str, ...]:
    """Every field declared to change the meta-gradient (parity.config.computation_fields), plus
    alpha_parametrisation (it changes what training differentiates); an axis counts once its table
    offers a second choice (adding one to FAMILIES, MODELS or INNER_OPTIMIZERS makes this demand it)."""
    from parity.config import AXES, computation_fields

    return tuple(f for f in computation_fields() if f not in AXES or len(AXES[f][0]) > 1) + ("alpha_parametrisation",)


_COMPUTATION_FIELDS = _computation_fields()


def _value(cfg, field):
    value = cfg.flat()[field]
    return tuple(value) if isinstance(value, list) else value


def _varied(cases, field) -> set:
    if field == "dtype":  # every case runs in both dtypes: the comparisons say which
        impls = [type("I", (), {"name": n})() for n in ("a", "b")]
        return {dtype for dtype, _, _ in harness.comparisons(impls)}
    # a case whose parts do not hold the field (a conv case has no hidden widths) gives it no value
    return {_value(case.cfg, field) for case in cases if field in case.cfg.flat()}


@pytest.mark.parametrize("quick", [True, False], ids=["quick", "full"])
def test_every_computation_field_is_varied(quick):
    cases = harness.all_cases(quick=quick)
    never = [f for f in _COMPUTATION_FIELDS if len(_varied(cases, f)) < 2]
    assert not never, f"fields the {'quick' if quick else 'full'} matrix never varies: {never}"


def test_the_computation_fields_hold_every_field_the_jit_key_keeps():
    """A field that Config.meta_signature() keeps (does not reset to its default) is a computation field."""
    from parity.config import Config

    every_field_changed = Config(
        amplitude_range=(0.5, 2.0),
        frequency_range=(1.0, 2.0),
        phase_range=(0.0, 1.0),
        x_range=(-1.0, 1.0),
        k_support=5,
        k_query=6,
        hidden=(3,),
        activation="relu",
        init_scheme="maml",
        loss="mse",
        inner_steps=1,
        alpha_mode="per_parameter",
        alpha_init=0.5,
        allow_negative_alpha=True,
        alpha_parametrisation="softplus",
        first_order=True,
        remat=True,
        msl=True,
        msl_anneal=5,
        first_order_steps=2,
        outer_optimizer="adam",
        outer_lr=0.5,
        alpha_optimizer="sgd",
        alpha_lr=0.5,
        meta_batch=2,
        iterations=7,
        dtype="float64",
        seed=3,
    )
    default = Config().flat()
    axes = {"family", "model", "inner_optimizer"}  # one choice each today: nothing to change
    assert all(v != default[f] for f, v in every_field_changed.flat().items() if f not in axes)  # none left out
    kept = {f for f, v in every_field_changed.meta_signature().flat().items() if v != default[f]}
    assert kept and kept <= set(_COMPUTATION_FIELDS)


@pytest.mark.parametrize("quick", [True, False], ids=["quick", "full"])
def test_the_design_covers_every_allowed_pair_and_nothing_disallowed(quick):
    axes = list(matrix.AXES.values())
    rows = matrix.design(quick)
    covered = set().union(*(covered_by(axes, row) for row in rows))
    assert required_pairs(axes, matrix.allowed) <= covered
    assert all(matrix.allowed(dict(enumerate(row))) for row in rows)
    # the two constraints: no first-order T = 0, no softplus under a fixed α
    names = list(matrix.AXES)
    for row in rows:
        v = dict(zip(names, row, strict=True))
        assert not (v["inner_steps"] == 0 and v["order"] == "first")
        assert not (v["alpha_mode"] == "fixed" and v["alpha_parametrisation"] == "softplus")


def test_all_pairs_on_small_axes_is_a_covering_design_and_deterministic():
    axes = [(0, 1, 2), ("a", "b"), (True, False), ("x", "y", "z", "w")]
    rows = all_pairs(axes)
    for i, j in itertools.combinations(range(len(axes)), 2):
        seen = {(row[i], row[j]) for row in rows}
        assert seen == set(itertools.product(axes[i], axes[j])), (i, j)
    assert rows == all_pairs(axes)  # no randomness
    assert 12 <= len(rows) < 3 * 2 * 2 * 4  # at least |x| * |w|, far below the product
    # a constraint on a pair: that pair never appears, every other one still does
    no_2w = all_pairs(axes, lambda r: not (r.get(0) == 2 and r.get(3) == "w"))
    assert not any(row[0] == 2 and row[3] == "w" for row in no_2w)
    assert {(row[0], row[3]) for row in no_2w} == set(itertools.product(axes[0], axes[3])) - {(2, "w")}
    # seed rows come first, unchanged, and their pairs are not asked for again
    seeded = all_pairs(axes, seed=[(0, "a", True, "x")])
    assert seeded[0] == (0, "a", True, "x")
    with pytest.raises(ValueError, match="not allowed"):
        all_pairs(axes, lambda r: r.get(0) != 0, seed=[(0, "a", True, "x")])


def test_the_original_case_names_survive():
    old_quick = [
        "T0-a0.001-l1-fixed-second",
        "T1-a0.01-mse-scalar-first",
        "T2-a0.05-l1-per_parameter-second",
        "T3-a0.1-mse-fixed-first",
        "T5-a0.001-l1-scalar-second",
        "T10-a0.01-mse-per_parameter-first",
    ]
    quick = [c.name for c in harness.gradient_cases(quick=True)]
    assert quick[:6] == old_quick
    full = harness.gradient_cases()
    original = [
        f"T{T}-a{a:g}-{loss}-{mode}-{order}"
        for T, a, loss, mode, order in itertools.product(
            matrix.INNER_STEPS, matrix.ALPHAS, matrix.LOSSES, matrix.ALPHA_MODES, matrix.ORDERS
        )
        if not (T == 0 and order == "first")
    ]
    assert [c.name for c in full[: len(original)]] == original and len(original) == 264
    for cases in (quick, [c.name for c in full]):
        assert len(set(cases)) == len(cases)
    # the original cases keep their configs: the newer axes at their first values
    t2 = next(c for c in full if c.name == "T2-a0.05-l1-per_parameter-second").cfg
    assert (t2.activation, t2.hidden, t2.k_support, t2.k_query, t2.alpha_parametrisation, t2.remat) == (
        "tanh",
        (32, 32),
        4,
        4,
        "identity",
        False,
    )


def test_a_name_says_every_axis_off_its_first_value():
    case = matrix.case_for((2, 0.05, "mse", "scalar", "second", "relu", (16, 24, 8), (4, 7), "softplus", True, "sgd"))
    assert case.name == "T2-a0.05-mse-scalar-second-relu-h16x24x8-k4q7-softplus-remat"
    cfg = case.cfg
    assert (cfg.inner_steps, cfg.alpha_init, cfg.loss, cfg.alpha_mode, cfg.first_order) == (
        2,
        0.05,
        "mse",
        "scalar",
        False,
    )
    assert (cfg.activation, cfg.hidden, cfg.k_support, cfg.k_query) == ("relu", (16, 24, 8), 4, 7)
    assert cfg.alpha_parametrisation == "softplus" and cfg.remat and cfg.dtype == "float64"


def test_a_case_changed_by_set_is_named_for_what_it_now_runs():
    cases = matrix.all_cases(quick=True)
    changed = matrix.with_changes(cases, [{"inner_optimizer": "adam"}])
    by_name = {c.name: c for c in changed}
    assert len(by_name) == len(changed)  # names stay unique
    for case in changed:
        assert case.cfg.inner_optimizer == "adam"
        assert "momentum" not in case.name and "adam" in case.name, case.name
    # A designed sinusoid case is renamed from its config; the others get the optimiser's token.
    was = next(c for c in cases if c.name.endswith("-remat-momentum"))
    assert was.name.removesuffix("-momentum") + "-adam" in by_name
    assert "cls-T1-max-all-eps1e-3-adam" in by_name and "trajectory-seed-alpha-adam" in by_name
    # --cases still finds a changed case by the matrix name it had (and by its new one)
    assert was.name.removesuffix("-momentum") + "-adam" in {c.name for c in changed if c.matches(was.name)}
    ten = matrix.with_changes(cases, [{"inner_steps": 10}])
    assert {c.was for c in ten if c.matches("T1-") and c.cfg.family.name == "sinusoid"} == {
        c.name for c in cases if c.name.startswith("T1-")
    }
    # Unchanged cases keep their names (a --set that changes nothing renames nothing).
    same = {c.name: c.cfg for c in matrix.with_changes(cases, [{"inner_optimizer": "sgd"}])}
    for case in cases:
        if case.cfg.inner_optimizer == "sgd":
            assert same[case.name] == case.cfg


def test_the_quick_matrix_holds_the_port_bugs_blind_spots_and_stays_quick():
    """Issue 20 §6: support ≠ query size both ways, depths 1 and 3 and unequal widths, ReLU at every
    depth, softplus in plain meta-gradient cases and in a trajectory."""
    cases = harness.gradient_cases(quick=True)
    cfgs = [c.cfg for c in cases]
    assert any(c.k_query > c.k_support for c in cfgs) and any(c.k_query < c.k_support for c in cfgs)
    assert {len(c.hidden) for c in cfgs} == {1, 2, 3}
    assert any(len(set(c.hidden)) > 1 for c in cfgs)
    assert {len(c.hidden) for c in cfgs if c.activation == "relu"} == {1, 2, 3}
    assert {c.alpha_mode for c in cfgs if c.alpha_parametrisation == "softplus"} == {"scalar", "per_parameter"}
    assert any(c.cfg.alpha_parametrisation == "softplus" for c in harness.trajectory_cases())
    # 6 inner-step counts x 4 alphas is the floor of any all-pairs design over these axes
    assert 24 <= len(cases) <= 30
    assert len(harness.trajectory_cases()) == 3


def _newer_axes_cases() -> list[harness.Case]:
    """One quick case per dimension the original matrix held still, and the softplus trajectory."""
    quick = harness.gradient_cases(quick=True)
    picks = [
        lambda c: c.k_query > c.k_support and c.inner_steps > 0,
        lambda c: c.activation == "relu" and len(c.hidden) == 3 and c.inner_steps > 0,
        lambda c: len(c.hidden) == 1 and c.inner_steps > 0,
    ]
    cases = [next(case for case in quick if pick(case.cfg)) for pick in picks]
    return [*dict.fromkeys(cases), next(c for c in harness.trajectory_cases() if c.name == "trajectory-softplus")]


@pytest.mark.parity
@pytest.mark.parametrize("case", _newer_axes_cases(), ids=lambda c: c.name)
def test_the_twins_agree_on_the_newer_axes(case):
    """The twins on a query larger than the support, three ReLU layers of unequal widths, one
    hidden layer, and a softplus α trained by SGD (scripts/mutants plants a bug in one twin on each)."""
    rows = harness.run_case(case, harness.load_impls(["jax", "torch"]))
    assert harness.overall_ok(rows) and all(r.verdict == "ok" for r in rows), [r for r in rows if not r.ok][:2]
    assert max(r.max_rel_err for r in rows if r.dtype == "float64") <= 1e-10

"""The config: presets as docs/design.md gives them, validation naming the field, JSON round trip."""

from __future__ import annotations

import math

import pytest

from parity.config import PRESETS, Config, ConfigError, get_preset


def test_seed_presets_match_the_seed_lab():
    maml = get_preset("seed-maml")
    assert (maml.inner_steps, maml.alpha_mode, maml.alpha_init) == (3, "fixed", 0.03)
    assert (maml.outer_optimizer, maml.outer_lr, maml.meta_batch, maml.iterations) == ("sgd", 1e-2, 1, 5000)
    assert maml.frequency_range == (0.5, 1.0) and maml.amplitude_range == (1.0, 1.0)
    assert maml.phase_range == (0.0, 0.0) and maml.x_range == (-2 * math.pi, 2 * math.pi)
    assert (maml.k_support, maml.k_query, maml.hidden, maml.activation, maml.loss) == (4, 4, (32, 32), "tanh", "l1")
    alpha = get_preset("seed-alpha")
    assert (alpha.inner_steps, alpha.alpha_mode, alpha.alpha_init) == (5, "scalar", 0.1)
    assert (alpha.alpha_optimizer, alpha.alpha_lr, alpha.outer_lr) == ("adam", 1e-4, 1e-2)


def test_paper_presets_match_the_papers():
    paper = get_preset("maml-paper")  # Finn, Abbeel & Levine 2017, section 5.1
    assert (paper.amplitude_range, paper.phase_range, paper.x_range) == ((0.1, 5.0), (0.0, math.pi), (-5.0, 5.0))
    assert paper.frequency_range == (1.0, 1.0) and (paper.hidden, paper.activation, paper.loss) == (
        (40, 40),
        "relu",
        "mse",
    )
    assert (paper.alpha_mode, paper.alpha_init, paper.inner_steps, paper.k_support, paper.k_query) == (
        "fixed",
        0.01,
        1,
        10,
        10,
    )
    assert (paper.meta_batch, paper.outer_optimizer, paper.outer_lr, paper.iterations) == (25, "adam", 1e-3, 70_000)
    assert get_preset("maml-paper-code") == paper.replace(alpha_init=0.001)
    assert get_preset("meta-sgd") == paper.replace(alpha_mode="per_parameter", alpha_lr=1e-3)


def test_param_shapes_are_out_by_in():
    cfg = Config(hidden=(40, 20))
    assert cfg.param_shapes == {"w0": (40, 1), "b0": (40,), "w1": (20, 40), "b1": (20,), "w2": (1, 20), "b2": (1,)}
    assert cfg.param_names == ("w0", "b0", "w1", "b1", "w2", "b2")


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_json_round_trip(name):
    cfg = PRESETS[name]
    assert Config.from_json(cfg.to_json()) == cfg


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"inner_steps": -1}, "inner_steps"),
        ({"inner_steps": True}, "inner_steps"),
        ({"inner_steps": 2.0}, "inner_steps"),
        ({"k_support": 0}, "k_support"),
        ({"k_query": 0}, "k_query"),
        ({"meta_batch": 0}, "meta_batch"),
        ({"frequency_range": (1.0, 0.5)}, "frequency_range"),
        ({"x_range": (0.0, math.inf)}, "x_range"),
        ({"amplitude_range": (1.0,)}, "amplitude_range"),
        ({"alpha_init": math.nan}, "alpha_init"),
        ({"alpha_init": math.inf}, "alpha_init"),
        ({"outer_lr": 0.0}, "outer_lr"),
        ({"hidden": ()}, "hidden"),
        ({"hidden": (32, 0)}, "hidden"),
        ({"activation": "gelu"}, "activation"),
        ({"loss": "huber"}, "loss"),
        ({"alpha_mode": "matrix"}, "alpha_mode"),
        ({"dtype": "float16"}, "dtype"),
        ({"first_order": 1}, "first_order"),
        ({"not_a_field": 1}, "not_a_field"),
    ],
)
def test_bad_values_name_their_field(changes, field):
    with pytest.raises(ConfigError) as err:
        Config().replace(**changes)
    assert err.value.field == field
    assert str(err.value).startswith(f"{field}:")


def test_unknown_preset_and_bad_json():
    with pytest.raises(ConfigError, match=r"preset: unknown preset 'nope'"):
        get_preset("nope")
    with pytest.raises(ConfigError, match=r"^config: not valid JSON"):
        Config.from_json("{")
    with pytest.raises(ConfigError, match=r"^alpha_init:"):
        Config.from_json('{"alpha_init": NaN}')
    with pytest.raises(ConfigError, match=r"^hidden_sizes: unknown config field"):
        Config.from_json('{"hidden_sizes": [3]}')


def test_json_lists_become_tuples_and_missing_keys_come_from_the_base():
    cfg = Config.from_json('{"hidden": [8, 8], "x_range": [-1, 1]}', base=get_preset("seed-alpha"))
    assert cfg.hidden == (8, 8) and cfg.x_range == (-1.0, 1.0)
    assert cfg.alpha_mode == "scalar" and cfg.inner_steps == 5
    assert hash(cfg) == hash(Config.from_json(cfg.to_json()))


def test_meta_signature_ignores_what_does_not_change_the_computation():
    a = get_preset("seed-alpha").replace(seed=3, alpha_init=0.05, outer_lr=0.5, iterations=7)
    b = get_preset("seed-alpha").replace(alpha_mode="fixed")
    assert a.meta_signature() == b.meta_signature()
    assert a.meta_signature() != a.replace(first_order=True).meta_signature()

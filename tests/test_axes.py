"""The config's parts and axes: declared fields, nested JSON, 0.2 files, tables, a user's family."""

from __future__ import annotations

import dataclasses
import json
import textwrap
from pathlib import Path

import numpy as np
import pytest

from parity.config import AXES, PRESETS, SEED_ALPHA, Config, ConfigError, computation_fields, field_names
from parity.families import FAMILIES
from parity.inner import INNER_OPTIMIZERS, InnerLoop
from parity.models import MODELS
from parity.parts import AFFECTS
from parity.tasks import sample_batch

ROOT = Path(__file__).resolve().parents[1]

# What a 0.2 config.json held: one flat object (seed-alpha's).
CONFIG_0_2 = {
    "alpha_init": 0.1, "alpha_lr": 0.0001, "alpha_mode": "scalar", "alpha_optimizer": "adam",
    "alpha_parametrisation": "identity", "allow_negative_alpha": False, "amplitude_range": [1.0, 1.0],
    "activation": "tanh", "dtype": "float32", "first_order": False, "frequency_range": [0.5, 1.0],
    "hidden": [32, 32], "init_scheme": "seed", "inner_steps": 5, "iterations": 5000, "k_query": 4,
    "k_support": 4, "loss": "l1", "meta_batch": 1, "outer_lr": 0.01, "outer_optimizer": "sgd",
    "phase_range": [0.0, 0.0], "remat": False, "seed": 0, "x_range": [-6.283185307179586, 6.283185307179586],
}  # fmt: skip


def all_parts() -> list[type]:
    from parity.config import Numerics, OuterLoop

    return [*FAMILIES.values(), *MODELS.values(), *INNER_OPTIMIZERS.values(), InnerLoop, OuterLoop, Numerics]


@pytest.mark.parametrize("part", all_parts(), ids=lambda p: p.__name__)
def test_every_field_of_every_part_declares_what_it_affects(part):
    for f in dataclasses.fields(part):
        assert f.metadata.get("affects") in AFFECTS, f"{part.__name__}.{f.name}"


# Flat fields added after 0.2 (issue 19: MAML++'s multi-step loss and first-order annealing); a 0.2
# file leaves them out and reads with their defaults.
AFTER_0_2 = {"msl", "msl_anneal", "first_order_steps"}


def test_flat_names_are_unique_and_cover_the_0_2_fields():
    names = field_names()
    assert len(names) == len(set(names))
    assert set(CONFIG_0_2) | set(AXES) | AFTER_0_2 == set(names)


def test_a_0_2_flat_config_file_still_reads_and_equals_the_preset():
    assert Config.from_dict(CONFIG_0_2) == PRESETS["seed-alpha"]


@pytest.mark.parametrize("name", list(PRESETS))
def test_nested_json_round_trips_and_nests_the_parts(name):
    cfg = PRESETS[name]
    data = json.loads(cfg.to_json())
    assert set(data) == {"family", "model", "inner", "outer", "numerics"}
    classification = "digits" in name or "omniglot" in name  # issue 18's presets, maml++-digits too
    family, model = ("classification", "conv") if classification else ("sinusoid", "mlp")
    assert data["family"]["name"] == family and data["model"]["name"] == model
    assert data["inner"]["optimizer"] == {"name": "sgd"}
    assert Config.from_json(cfg.to_json()) == cfg


def test_flat_reads_are_the_parts_fields():
    cfg = SEED_ALPHA.replace(hidden=(8, 3), dtype="float64")
    assert cfg.hidden == cfg.model.hidden == (8, 3)
    assert cfg.dtype == cfg.numerics.dtype == "float64"
    assert cfg.inner_steps == cfg.inner.inner_steps == 5
    assert (cfg.family.name, cfg.model.name, cfg.inner_optimizer) == ("sinusoid", "mlp", "sgd")
    assert cfg.flat()["model"] == "mlp" and cfg.flat()["hidden"] == (8, 3)
    with pytest.raises(AttributeError, match="no field 'width'"):
        _ = cfg.width


@pytest.mark.parametrize(
    ("changes", "field", "allowed"),
    [
        ({"family": "omniglot-ish"}, "family", "sinusoid"),
        ({"model": "gelu-net"}, "model", "mlp"),
        ({"inner_optimizer": "lion"}, "inner_optimizer", "sgd"),
        ({"activation": "gelu"}, "activation", "tanh, relu"),
        ({"widht": 3}, "widht", "hidden"),
    ],
)
def test_an_unknown_choice_is_one_message_naming_the_field_and_what_is_allowed(changes, field, allowed):
    with pytest.raises(ConfigError) as err:
        Config().replace(**changes)
    assert err.value.field == field and allowed in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("data", "field", "allowed"),
    [
        ({"family": {"A": None}}, "family.A", "amplitude_range"),
        ({"family": {"hidden": [8]}}, "family.hidden", "n_way"),  # a model field under family: refused, not moved
        ({"inner": {"optimizer": {"name": "adam", "beta": 0.9}}}, "inner.beta", "beta1"),
        ({"numerics": {"dtype": "float64", "sede": 1}}, "numerics.sede", "seed"),
    ],
)
def test_a_nested_objects_unknown_field_is_named_with_its_part(data, field, allowed):
    with pytest.raises(ConfigError) as err:
        Config.from_dict(data)
    assert err.value.field == field and allowed in str(err.value) and "\n" not in str(err.value)


def test_only_meta_gradient_fields_change_the_compile_key():
    base = SEED_ALPHA.replace(dtype="float64")
    same = base.replace(alpha_init=0.5, outer_lr=0.3, seed=9, x_range=(-1.0, 1.0), init_scheme="maml", iterations=3)
    assert same.meta_signature() == base.meta_signature()
    assert hash(same.meta_signature()) == hash(base.meta_signature())
    fields = set(computation_fields()) - set(AXES)
    values = {
        "k_support": 5, "k_query": 6, "loss": "mse", "hidden": (4,), "activation": "relu", "inner_steps": 2,
        "alpha_mode": "per_parameter", "first_order": True, "remat": True, "msl": True, "dtype": "float32",
    }  # fmt: skip
    assert set(values) == fields, "a new computation field needs a value here"
    for name, value in values.items():
        assert base.replace(**{name: value}).meta_signature() != base.meta_signature(), name


USER_FAMILY = '''
import dataclasses
import numpy as np
from parity.parts import Part, field, check_declared
from parity.families.sinusoid import TaskBatch

@check_declared
@dataclasses.dataclass(frozen=True)
class Lines(Part):
    """y = a·x + c: a user's regression family."""
    axis = "family"
    name: str = field("lines", "meta_gradient")
    k_support: int = field(3, "meta_gradient")
    k_query: int = field(5, "meta_gradient")
    loss: str = field("mse", "meta_gradient")
    slope: float = field(2.0, "data")
    input_shape = (1,)
    n_outputs = 1

    def sample(self, rng, batch_size, stream=0):
        a = rng.uniform(-self.slope, self.slope, size=batch_size)
        c = rng.uniform(-1, 1, size=batch_size)
        xs = rng.uniform(-1, 1, size=(batch_size, self.k_support, 1))
        xq = rng.uniform(-1, 1, size=(batch_size, self.k_query, 1))
        line = lambda x: a[:, None, None] * x + c[:, None, None]
        return TaskBatch(xs, line(xs), xq, line(xq), a, np.ones_like(a), c)
'''


def test_a_users_family_from_a_file_samples_and_the_twins_agree_on_it(tmp_path):
    from parity.harness import Case, load_impls, run_case

    path = tmp_path / "lines.py"
    path.write_text(textwrap.dedent(USER_FAMILY))
    cfg = SEED_ALPHA.replace(family=f"{path}:Lines", meta_batch=3, dtype="float64", hidden=(6, 5))
    assert cfg.family.name == f"{path}:Lines" and (cfg.k_support, cfg.k_query, cfg.loss) == (3, 5, "mse")
    batch = sample_batch(cfg, 0)
    assert batch.x_support.shape == (3, 3, 1) and batch.x_query.shape == (3, 5, 1)
    a, c = batch.amplitude, batch.phase
    np.testing.assert_allclose(batch.y_query, a[:, None, None] * batch.x_query + c[:, None, None])
    assert Config.from_json(cfg.to_json()) == cfg
    rows = run_case(Case("user-family", cfg), load_impls(["numpy", "jax", "torch"]))
    compared = [r for r in rows if r.verdict != "unsupported"]
    assert compared and all(r.verdict == "ok" for r in compared), [r for r in rows if r.verdict != "ok"]
    assert {r.quantity for r in compared} >= {"outer_loss", "grad/w0", "grad/alpha"}


def test_a_users_family_that_is_not_a_part_is_refused_by_name(tmp_path):
    path = tmp_path / "bad.py"
    path.write_text("class NotAPart:\n    pass\n")
    with pytest.raises(ConfigError) as err:
        Config().replace(family=f"{path}:NotAPart")
    assert err.value.field == "family" and "Part" in str(err.value)
    with pytest.raises(ConfigError, match="no such file") as err:
        Config().replace(model="nowhere.py:Net")
    assert err.value.field == "model"


def test_a_0_2_checkpoint_with_a_flat_config_reads_and_resumes(tmp_path):
    """A checkpoint as 0.2 wrote it (its manifest's config one flat object) reads, and the run resumes."""
    from safetensors.numpy import load_file, save

    from parity.checkpoint import checksum, read_checkpoint
    from parity.run import train_run
    from parity.twins import load

    cfg = Config.from_dict(CONFIG_0_2).replace(iterations=2, meta_batch=2)
    twin = load("jax", cfg.dtype)
    train_run(twin, cfg, tmp_path, chunk=2, progress=False)
    file = tmp_path / "checkpoint.safetensors"
    from safetensors import safe_open

    with safe_open(str(file), framework="numpy") as f:
        manifest = json.loads(f.metadata()["manifest"])
    arrays = load_file(str(file))
    flat = {k: v for k, v in json.loads(json.dumps(cfg.flat())).items() if k not in AXES and k not in AFTER_0_2}
    assert set(flat) == set(CONFIG_0_2)
    manifest["config"] = flat  # the 0.2 form
    text = json.dumps(manifest, sort_keys=True)
    file.write_bytes(save(arrays, metadata={"manifest": text, "checksum": checksum(text, arrays)}))
    (tmp_path / "config.json").write_text(json.dumps(flat))
    assert read_checkpoint(tmp_path).config == cfg
    _state, rows = train_run(twin, cfg.replace(iterations=4), tmp_path, chunk=2, progress=False, resume=True)
    assert [r["step"] for r in rows] == [0, 1, 2, 3]

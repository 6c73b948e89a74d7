"""Golden files: written by `maml-parity dump`, checked by an implementation that reads only the file."""

from __future__ import annotations

import json

import numpy as np
import pytest

from parity.cli import main
from parity.compare import TOLERANCES
from parity.config import PRESETS, Config, field_names
from parity.golden import FORMAT, SIGNATURE_FIELDS, GoldenFileError, read_golden, signature_fields, write_golden
from parity.harness import BASE
from parity.oracle import NumpyOracle, golden_results
from parity.twins import step0_inputs

# A version 1 file holds exactly these besides its numbers (no format tag, no per-task losses).
V2_ONLY = ("format", "conventions", "meta_signature", "rule", "task_outer_loss")


@pytest.mark.parametrize(
    "preset_args, overrides",
    [
        (["--preset", "seed-alpha"], {}),
        (["--preset", "seed-maml", "--inner-steps", "2"], {}),
        (["--preset", "meta-sgd"], {}),
        # first order with T >= 2: with one inner step first- and second-order dL/dalpha coincide
        (["--preset", "seed-alpha", "--inner-steps", "3"], {"first_order": True}),
        (["--preset", "seed-maml", "--inner-steps", "2"], {"first_order": True, "loss": "mse"}),
    ],
    ids=["seed-alpha", "seed-maml-T2", "meta-sgd", "seed-alpha-first-order-T3", "seed-maml-first-order-T2-mse"],
)
def test_independent_implementation_reproduces_the_golden_file(tmp_path, twin_name, preset_args, overrides):
    path = tmp_path / "golden.npz"
    if overrides:
        (tmp_path / "overrides.json").write_text(json.dumps(overrides))
        preset_args = [*preset_args, "--config", str(tmp_path / "overrides.json")]
    assert main(["dump", *preset_args, "--framework", twin_name, "--dtype", "float64", "--out", str(path)]) == 0
    with np.load(path, allow_pickle=False) as data:  # the format promise: no pickles
        assert {"config", "framework", "outer_loss", "inner_losses", "tasks/x_support", "init/w0", "grad/w0"} <= set(
            data.files
        )
        assert str(data["framework"]) == twin_name
    golden = read_golden(path)
    cfg = golden["config"]
    assert all(getattr(cfg, k) == v for k, v in overrides.items())
    # version 2: the tag, the meta-signature, per-task losses and the comparison rule
    assert str(golden["format"]) == FORMAT == "maml-parity-golden/2"
    assert json.loads(str(golden["meta_signature"])) == json.loads(
        json.dumps({k: cfg.flat()[k] for k in SIGNATURE_FIELDS})
    )
    assert golden["task_outer_loss"].shape == (cfg.meta_batch,)
    np.testing.assert_allclose(golden["task_outer_loss"].mean(), golden["outer_loss"], rtol=1e-13)
    rule = json.loads(str(golden["rule"]))
    assert rule["measure"] == "max|a - b| <= atol + rtol * max|ref|"
    assert rule["tolerances"]["float32"]["grad"] == {"rtol": TOLERANCES[("float32", "grad")][0], "atol": 1e-6}
    assert "softplus" in str(golden["conventions"]) and "init/alpha" in str(golden["conventions"])
    assert golden["tasks/x_support"].shape == (cfg.meta_batch, cfg.k_support, 1)
    assert golden["inner_losses"].shape == (cfg.inner_steps,)
    assert golden["grad/w1"].shape == golden["init/w1"].shape == cfg.param_shapes["w1"]
    recomputed = golden_results(golden)
    assert set(recomputed) == {k for k in golden if k in ("outer_loss", "inner_losses") or k.startswith("grad/")}
    # README: the reference reproduces the golden file to ≤ 2e-15 relative (seen); held at 2e-14,
    # plus 1e-15 absolute for leaves that are exactly zero.
    for key, value in recomputed.items():
        scale = float(np.abs(golden[key]).max())
        err = float(np.abs(value - golden[key]).max())
        assert err <= 1e-15 + 2e-14 * scale, (key, err, scale)


def test_reference_is_not_fooled_by_a_wrong_gradient(tmp_path):
    """The independent check must fail on a golden file whose gradient is off."""
    path = tmp_path / "golden.npz"
    assert main(["dump", "--framework", "jax", "--dtype", "float64", "--out", str(path)]) == 0
    golden = read_golden(path)
    golden["grad/w1"] = golden["grad/w1"] * (1 + 1e-6)
    recomputed = golden_results(golden)
    rel = np.abs(recomputed["grad/w1"] - golden["grad/w1"]).max() / np.abs(golden["grad/w1"]).max()
    assert rel > 1e-9


def test_unreadable_golden_files_give_a_clear_error(tmp_path):
    empty = tmp_path / "empty.npz"
    empty.write_bytes(b"")
    with pytest.raises(GoldenFileError, match="not a readable golden file"):
        read_golden(empty)
    with pytest.raises(GoldenFileError, match="no such file"):
        read_golden(tmp_path / "missing.npz")
    other = tmp_path / "other.npz"
    np.savez(other, x=np.zeros(3))
    with pytest.raises(GoldenFileError, match="unexpected entry 'x'"):
        read_golden(other)


def test_first_and_second_order_alpha_gradients_coincide_at_one_inner_step_only():
    """Why the first-order golden presets have T >= 2: at T = 1 a first-order bug in dL/dalpha is invisible."""
    oracle = NumpyOracle()
    for T, same in ((1, True), (3, False)):
        cfg = BASE.replace(hidden=(8, 8), inner_steps=T, alpha_mode="scalar", alpha_init=0.05)
        params, alpha, tasks = step0_inputs(cfg)
        second = oracle.meta_value_and_grad(params, alpha, tasks, cfg)["alpha_grad"]
        first = oracle.meta_value_and_grad(params, alpha, tasks, cfg.replace(first_order=True))["alpha_grad"]
        rel = abs(float(first - second)) / abs(float(second))
        assert (rel < 1e-12) if same else (rel > 1e-3), (T, rel)


@pytest.fixture(scope="module")
def small_golden(tmp_path_factory):
    """A version 2 file of a small config (torch, float64, fixed alpha), with traces, and its arrays as written."""
    tmp = tmp_path_factory.mktemp("golden")
    (tmp / "small.json").write_text(
        json.dumps({"hidden": [8], "meta_batch": 2, "inner_steps": 2, "alpha_mode": "fixed"})
    )
    path = tmp / "small.npz"
    args = ["dump", "--framework", "torch", "--dtype", "float64", "--config", str(tmp / "small.json")]
    assert main([*args, "--trace", "--out", str(path)]) == 0
    golden = read_golden(path)
    return path, {k: (np.asarray(v.to_json()) if k == "config" else v) for k, v in golden.items()}


def test_a_version_1_file_written_the_old_way_still_loads(tmp_path, small_golden, capsys):
    path, arrays = small_golden
    v1 = {k: v for k, v in arrays.items() if k not in V2_ONLY and not k.startswith("trace/")}
    with open(tmp_path / "v1.npz", "wb") as f:  # as version 1 wrote it: np.savez, no format entry
        np.savez(f, **v1)
    golden = read_golden(tmp_path / "v1.npz")
    assert "format" not in golden and set(golden) == set(v1)
    recomputed = golden_results(golden)
    for key, value in recomputed.items():
        np.testing.assert_allclose(value, golden[key], rtol=1e-9, atol=1e-15)
    capsys.readouterr()
    assert main(["diff", str(tmp_path / "v1.npz"), str(path)]) == 0
    out = capsys.readouterr().out
    assert "maml-parity-golden/1" in out and "SAME" in out and "task_outer_loss (only in B)" in out


def test_v2_entries_are_checked(tmp_path, small_golden):
    _, arrays = small_golden
    cases = {
        "format": (
            {**arrays, "format": np.asarray("maml-parity-golden/3")},
            "format 'maml-parity-golden/3' is not one",
        ),
        "signature": ({**arrays, "meta_signature": np.asarray('{"loss": "mse"}')}, "'meta_signature' disagrees"),
        "trace": ({k: v for k, v in arrays.items() if k != "trace/adapted/w0"}, "trace entries incomplete"),
        "per-task": (
            {**arrays, "task_outer_loss": arrays["task_outer_loss"][:1]},
            r"'task_outer_loss' is float64\[1\]",
        ),
        "untagged": ({k: v for k, v in arrays.items() if k != "format"}, None),  # reads as version 1
    }
    for name, (broken, message) in cases.items():
        write_golden(tmp_path / f"{name}.npz", broken)
        if message is None:
            read_golden(tmp_path / f"{name}.npz")
            continue
        with pytest.raises(GoldenFileError, match=message):
            read_golden(tmp_path / f"{name}.npz")


def test_the_alpha_gradient_is_optional_under_a_fixed_alpha_only(tmp_path, small_golden, capsys):
    path, arrays = small_golden
    assert Config.from_json(str(arrays["config"])).alpha_mode == "fixed"  # the fixture dumps a fixed alpha
    write_golden(tmp_path / "no-alpha-grad.npz", {k: v for k, v in arrays.items() if k != "grad/alpha"})
    assert "grad/alpha" not in read_golden(tmp_path / "no-alpha-grad.npz")
    capsys.readouterr()
    assert main(["diff", str(path), str(tmp_path / "no-alpha-grad.npz")]) == 0
    assert "not compared: grad/alpha (only in A)" in capsys.readouterr().out
    scalar = Config.from_json(str(arrays["config"])).replace(alpha_mode="scalar").to_json()
    write_golden(
        tmp_path / "scalar.npz",
        {
            **{k: v for k, v in arrays.items() if k not in ("grad/alpha", "meta_signature")},
            "config": np.asarray(scalar),
        },
    )
    with pytest.raises(GoldenFileError, match=r"entries missing for its config: \['grad/alpha'\]"):
        read_golden(tmp_path / "scalar.npz")


def test_the_signature_fields_are_those_config_meta_signature_keeps():
    """Every field outside the golden signature (SIGNATURE_FIELDS, plus the computation fields a
    preset sets off their default: maml++-sinusoid's msl) and remat is reset by Config.meta_signature()."""
    default = Config().meta_signature().flat()
    for cfg in (c for c in PRESETS.values() if c.family.name == "sinusoid"):  # the fields are the sinusoid MLP's
        signature = cfg.meta_signature().flat()
        for field in field_names():
            if field not in (*signature_fields(cfg), "remat"):
                assert signature[field] == default[field], field
    changed = Config().replace(k_support=5, k_query=6, hidden=(3,), activation="relu", loss="mse", inner_steps=4)
    changed = changed.replace(alpha_mode="per_parameter", first_order=True, dtype="float64")
    kept = changed.meta_signature().flat()
    assert all(kept[f] == changed.flat()[f] for f in SIGNATURE_FIELDS)


def test_a_third_party_file_written_as_documented_diffs_without_a_plugin(tmp_path, small_golden, capsys):
    """docs/formats-golden.md, "Writing your own file": the NumPy oracle as the third party."""
    path, _ = small_golden
    with np.load(path, allow_pickle=False) as f:
        golden = {k: f[k] for k in f.files}
    cfg = Config.from_json(str(golden["config"]))
    params = {k[5:]: v for k, v in golden.items() if k.startswith("init/") and not k.startswith("init/alpha")}
    tasks = tuple(golden[f"tasks/{k}"] for k in ("x_support", "y_support", "x_query", "y_query"))
    result = NumpyOracle().meta_value_and_grad(params, golden["init/alpha"], tasks, cfg)
    mine = {k: v for k, v in golden.items() if k.startswith(("init/", "tasks/")) or k in ("config", "dtype", "format")}
    mine.update({"framework": np.asarray("mine"), "outer_loss": result["outer_loss"]})
    mine.update({"inner_losses": result["inner_losses"], **{f"grad/{k}": g for k, g in result["grads"].items()}})
    np.savez(tmp_path / "mine.npz", **mine)  # no grad/alpha: optional under the fixture's fixed alpha
    capsys.readouterr()
    assert main(["diff", str(path), str(tmp_path / "mine.npz")]) == 0
    out = capsys.readouterr().out
    assert "SAME: 6 entries within tolerance (float64); not compared: " in out
    assert "grad/alpha (only in A)" in out and "task_outer_loss (only in A), trace/* (only in A)" in out
    mine["grad/b0"] = mine["grad/b0"] + 1e-6
    np.savez(tmp_path / "mine.npz", **mine)
    assert main(["diff", str(path), str(tmp_path / "mine.npz")]) == 1
    assert "first divergence: after the inner loop, grad/b0 index (" in capsys.readouterr().out


def test_an_oversized_entry_is_refused_before_it_is_inflated(tmp_path):
    """A member whose .npy header declares 16 GiB (with no data behind it) is refused from the header
    alone: the reader never allocates what a golden file's layout cannot need."""
    import zipfile

    path = tmp_path / "bomb.npz"
    with zipfile.ZipFile(path, "w") as z:
        with z.open("config.npy", "w") as f:
            np.lib.format.write_array(f, np.asarray("{}"))
        with z.open("trace/query_loss.npy", "w") as f:
            header = {"descr": "<f8", "fortran_order": False, "shape": (1 << 31,)}
            np.lib.format.write_array_header_1_0(f, header)  # the header only: 16 GiB declared, 0 written
    with pytest.raises(GoldenFileError, match=r"declares 17179869184 bytes .* refused before inflating it"):
        read_golden(path)

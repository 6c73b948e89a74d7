"""The command line: bad input is one line naming the field, exit status 2, no traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "parity", *args],
        capture_output=True,
        text=True,
        env=full_env,
        cwd=cwd or ROOT,
        timeout=300,
    )


def write_config(tmp_path: Path, text: str) -> str:
    path = tmp_path / "cfg.json"
    path.write_text(text)
    return str(path)


BAD_INPUTS = {
    "negative-T": (["--inner-steps", "-1"], "inner_steps: must be an integer >= 0, got -1"),
    "non-integer-T": (["--inner-steps", "2.5"], "inner_steps: must be an integer, got '2.5'"),
    "K-zero": (["--config", '{"k_support": 0}'], "k_support: must be an integer >= 1, got 0"),
    "inverted-range": (["--config", '{"frequency_range": [1.0, 0.5]}'], "frequency_range: must satisfy low <= high"),
    "nan-alpha": (["--config", '{"alpha_init": NaN}'], "alpha_init: must be a finite number, got nan"),
    "infinite-alpha": (["--config", '{"alpha_init": Infinity}'], "alpha_init: must be a finite number, got inf"),
    "unknown-key": (["--config", '{"alpha": 0.1}'], "alpha: unknown config field"),
    "wrong-type": (["--config", '{"hidden": "32"}'], "hidden: must be a non-empty list"),
    "unknown-preset": (["--preset", "maml-2"], "preset: unknown preset 'maml-2'"),
    "unknown-framework": (["--framework", "mxnet"], "framework: must be one of jax, torch; got 'mxnet'"),
    "unknown-dtype": (["--dtype", "float16"], "dtype: must be one of float32, float64; got 'float16'"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_is_one_line_and_exit_2(tmp_path, case):
    args, expected = BAD_INPUTS[case]
    if args[0] == "--config":
        args = ["--config", write_config(tmp_path, args[1])]
    out = tmp_path / "run"
    result = run_cli("train", *args, "--out", str(out))
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("maml-parity: error: ")
    assert expected in lines[0]
    assert "Traceback" not in result.stderr
    assert not out.exists()  # nothing written for a refused run


def test_float64_with_jax_x64_switched_off_is_refused(tmp_path):
    result = run_cli(
        "dump",
        "--framework",
        "jax",
        "--dtype",
        "float64",
        "--out",
        str(tmp_path / "g.npz"),
        env={"JAX_ENABLE_X64": "0"},
    )
    assert result.returncode == 2
    assert result.stderr.strip().startswith("maml-parity: error: dtype: float64 needs JAX's x64 mode")
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "g.npz").exists()


def test_missing_required_flag_and_unknown_command():
    result = run_cli("dump")
    assert result.returncode == 2 and "--out" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    result = run_cli("frobnicate")
    assert result.returncode == 2 and "invalid choice" in result.stderr


def test_help_imports_neither_framework():
    code = (
        "import sys; from parity.cli import build_parser; build_parser(); "
        "print(sorted(m for m in ('jax', 'torch') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}
    )
    assert result.stdout.strip() == "[]"
    result = run_cli("--help")
    assert result.returncode == 0
    for command in ("check", "dump", "train", "demo"):
        assert command in result.stdout


def test_train_writes_config_and_metrics(tmp_path):
    out = tmp_path / "run"
    result = run_cli(
        "train", "--framework", "torch", "--iterations", "12", "--inner-steps", "2", "--out", str(out), "--no-progress"
    )
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(12))
    assert {"step", "outer_loss", "inner_losses", "alpha", "alpha_grad", "wall_s"} <= set(rows[0])
    assert len(rows[0]["inner_losses"]) == 2 and rows[0]["alpha"] == pytest.approx(0.1)
    assert json.loads((out / "config.json").read_text())["inner"]["inner_steps"] == 2  # nested since 0.3


# --- config flags, --set, inline --config (issue 13) ---------------------------------------------


def parsed_config(*args: str):
    from parity.cli import build_parser, resolve_config

    return resolve_config(build_parser().parse_args(["dump", "--out", "x.npz", *args]))


def test_config_precedence_preset_then_config_then_flags_then_set():
    cfg = parsed_config(
        "--preset",
        "maml-paper",
        "--config",
        '{"inner_steps": 2, "loss": "l1", "outer_lr": 0.5}',
        "--inner-steps",
        "3",
        "--set",
        "inner_steps=4",
        "--set",
        "hidden=[8, 8]",
        "--set",
        "activation=tanh",
    )
    assert cfg.inner_steps == 4  # --set last
    assert cfg.loss == "l1" and cfg.outer_lr == 0.5  # the config's keys over the preset's
    assert cfg.hidden == (8, 8) and cfg.activation == "tanh"  # JSON list; a bare word is a string
    assert cfg.meta_batch == 25 and cfg.k_support == 10  # the rest from the preset
    flags = parsed_config("--hidden", "64", "64", "--first-order", "--alpha-mode", "per_parameter", "--k-query", "7")
    assert flags.hidden == (64, 64) and flags.first_order is True and flags.alpha_mode == "per_parameter"
    assert flags.k_query == 7
    assert parsed_config("--config", '{"first_order": true}', "--second-order").first_order is False
    assert parsed_config("--config", '{"first_order": true}').first_order is True


def test_every_field_flag_reaches_the_config():
    from parity.cli import CONFIG_FLAGS

    values = {
        "family": (["sinusoid"], "sinusoid"),
        "model": (["mlp"], "mlp"),
        "inner_optimizer": (["sgd"], "sgd"),
        "hidden": (["5", "6"], (5, 6)),
        "activation": (["relu"], "relu"),
        "loss": (["mse"], "mse"),
        "inner_steps": (["7"], 7),
        "alpha_mode": (["scalar"], "scalar"),
        "alpha_init": (["0.25"], 0.25),
        "alpha_parametrisation": (["softplus"], "softplus"),
        "first_order": ([], True),
        "meta_batch": (["6"], 6),
        "k_support": (["3"], 3),
        "k_query": (["9"], 9),
        "outer_lr": (["0.003"], 0.003),
        "alpha_lr": (["0.02"], 0.02),
        "iterations": (["11"], 11),
        "seed": (["4"], 4),
        "dtype": (["float64"], "float64"),
    }
    assert set(values) == set(CONFIG_FLAGS)
    for field, (words, expected) in values.items():
        cfg = parsed_config("--" + field.replace("_", "-"), *words)
        assert cfg.flat()[field] == expected, field


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--set", "alpha=1"], "alpha: unknown config field"),
        (["--set", "outer_lr"], "set: must be KEY=VALUE"),
        (["--set", "outer_lr=fast"], "outer_lr: must be a finite number, got 'fast'"),
        (["--set", "hidden=[0]"], "hidden: must be an integer >= 1, got 0"),
        (["--outer-lr", "nan"], "outer_lr: must be a finite number, got 'nan'"),
        (["--hidden", "0"], "hidden: must be an integer >= 1, got 0"),
        (["--loss", "huber"], "loss: must be one of l1, mse; got 'huber'"),
        (["--config", '{"inner_steps": -1}'], "inner_steps: must be an integer >= 0, got -1"),
        (["--config", "{not json"], "config: not valid JSON"),
    ],
)
def test_bad_config_flags_are_one_line_exit_2(tmp_path, args, expected):
    out = tmp_path / "run"
    result = run_cli("train", *args, "--out", str(out))
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [f"maml-parity: error: {result.stderr.split('error: ', 1)[1].strip()}"]
    assert expected in result.stderr
    assert not out.exists()


def test_train_flags_land_in_config_json_and_final_alpha_is_reported(tmp_path):
    out = tmp_path / "run"
    result = run_cli(
        "train",
        "--framework",
        "torch",
        "--hidden",
        "16",
        "16",
        "--loss",
        "mse",
        "--first-order",
        "--meta-batch",
        "4",
        "--set",
        "outer_lr=0.02",
        "--config",
        '{"inner_steps": 2}',
        "--iterations",
        "3",
        "--out",
        str(out),
        "--no-progress",
    )
    assert result.returncode == 0, result.stderr
    nested = json.loads((out / "config.json").read_text())  # parts nested since 0.3
    assert (nested["model"]["hidden"], nested["family"]["loss"], nested["inner"]["first_order"]) == (
        [16, 16],
        "mse",
        True,
    )
    assert (nested["outer"]["meta_batch"], nested["outer"]["outer_lr"], nested["inner"]["inner_steps"]) == (4, 0.02, 2)
    lines = result.stdout.splitlines()
    assert lines[0].startswith("train torch: 3 steps, 1 CPU thread")  # seed-sized: one thread, said first
    import numpy as np

    final_alpha = float(np.load(out / "final.npz")["alpha"])
    last_used = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])["alpha"]
    assert final_alpha != last_used  # the update after the last step moved it
    assert f"final alpha {final_alpha:.6g} (after the last update" in result.stdout


def test_jax_devices_that_do_not_split_the_meta_batch_are_refused_before_jax_starts(tmp_path):
    out = tmp_path / "run"
    result = run_cli("train", "--framework", "jax", "--preset", "maml-paper", "--devices", "2", "--out", str(out))
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "maml-parity: error: devices: the meta-batch of 25 tasks does not split evenly over 2 devices; "
        "use a multiple of 2, e.g. --meta-batch 24 (or --set meta_batch=24)"
    )
    assert not out.exists()


@pytest.mark.parametrize("rank", [0, 1])
def test_meta_batch_that_does_not_split_is_refused_once_by_rank_0(tmp_path, rank):
    # The check runs before torch.distributed starts, so the environment torchrun sets is enough.
    env = {"WORLD_SIZE": "2", "RANK": str(rank), "LOCAL_RANK": str(rank)}
    out = tmp_path / "run"
    result = run_cli("train", "--framework", "torch", "--preset", "maml-paper", "--out", str(out), env=env)
    assert result.returncode == 2
    if rank == 0:
        assert result.stderr.strip() == (
            "maml-parity: error: devices: the meta-batch of 25 tasks does not split evenly over 2 processes; "
            "use a multiple of 2, e.g. --meta-batch 24 (or --set meta_batch=24)"
        )
    else:
        assert result.stderr == "" and result.stdout == ""
    assert not out.exists()


def test_eval_json_writes_the_file_and_dash_is_stdout(tmp_path):
    out = tmp_path / "run"
    assert (
        run_cli("train", "--framework", "torch", "--iterations", "2", "--out", str(out), "--no-progress").returncode
        == 0
    )
    common = ["eval", str(out), "--framework", "torch", "--tasks", "3", "--max-steps", "1", "--pretrain-steps", "1"]
    result = run_cli(*common, "--json", str(tmp_path / "e.json"))
    assert result.returncode == 0, result.stderr
    written = json.loads((tmp_path / "e.json").read_text())
    assert written == json.loads((out / "eval.json").read_text())  # eval.json is still written, and equal
    assert written["tasks"] == 3 and len(written["meta"][0]["mse_mean"]) == 2
    result = run_cli(*common, "--json", "-")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["tasks"] == 3  # stdout holds the JSON only; the table went to stderr
    assert "query MSE" in result.stderr


# --- demo with no --out: a fresh directory each time (issue 20 §5) --------------------------------


def test_demo_without_out_picks_a_fresh_directory_and_an_explicit_out_stays_refused(tmp_path, monkeypatch, capsys):
    """The README's first command can be run twice; the training itself is replaced by a stand-in
    that leaves what a real demo leaves (a run in DIR/jax and DIR/torch)."""
    from parity.cli import main

    seen = []

    def stand_in(out, **kwargs):
        seen.append(out)
        for name in ("jax", "torch"):
            (out / name).mkdir(parents=True, exist_ok=True)  # the run lock made it
            (out / name / "metrics.jsonl").write_text('{"step": 0}\n')
        return 0

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("parity.demo.run_demo", stand_in)
    firsts = []
    for _ in range(3):
        assert main(["demo", "--iterations", "2", "--no-progress"]) == 0
        firsts.append(capsys.readouterr().out.splitlines()[0])
    assert seen == [Path("runs/demo"), Path("runs/demo-2"), Path("runs/demo-3")]
    assert firsts[0].startswith("demo: writing to runs/demo; ")
    assert firsts[1].startswith("demo: writing to runs/demo-2 (runs/demo exists, from an earlier demo); ")
    assert firsts[2].startswith("demo: writing to runs/demo-3 (")
    before = (tmp_path / "runs" / "demo" / "jax" / "metrics.jsonl").read_bytes()
    assert main(["demo", "--out", "runs/demo", "--iterations", "2"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err == (
        "maml-parity: error: out: 'runs/demo/jax' already holds a training run; choose another --out for the demo "
        "(nothing was overwritten)\n"
    )
    assert len(seen) == 3 and (tmp_path / "runs" / "demo" / "jax" / "metrics.jsonl").read_bytes() == before
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["demo", "demo-2", "demo-3"]

"""Golden files beyond the sinusoid MLP with SGD (issues 18 and 19): few-shot classification with the
conv net, the inner optimisers (momentum, Nesterov, Adam) with their state in the traces, LSLR with
the multi-step loss, and the maml++-digits preset. Each file is written by `maml-parity dump`, read
back from disk alone, and reproduced by the NumPy oracle; the twins' files diff clean against each
other; a planted change in one entry is named by `diff`. The JAX dumps compile a conv meta-gradient
(tens of seconds on a shared CPU): those tests are slow; the PyTorch ones run in CI."""

from __future__ import annotations

import json

import numpy as np
import pytest

from parity.cli import main
from parity.config import DIGITS_5W1S, PRESETS
from parity.golden import GoldenFileError, read_golden, write_golden
from parity.oracle import NumpyOracle, golden_results

SMALL_CONV = ["--set", "width=3", "--set", "depth=2", "--set", "meta_batch=2"]
SMALL_MLP = ["--set", "hidden=[8]", "--set", "meta_batch=2", "--set", "inner_steps=3"]
CLS = ["--preset", "digits-5w1s", *SMALL_CONV, "--set", "inner_steps=2"]
MLP = ["--preset", "seed-alpha", *SMALL_MLP]
# name -> (dump arguments, the state slots its trace must hold)
CASES: dict[str, tuple[list[str], set[str]]] = {
    "cls-sgd": (CLS, set()),
    "cls-adam": ([*CLS, "--set", "inner_optimizer=adam"], {"m", "v"}),
    "mlp-adam": ([*MLP, "--set", "inner_optimizer=adam"], {"m", "v"}),
    "mlp-momentum": ([*MLP, "--set", "inner_optimizer=momentum"], {"momentum"}),
    "mlp-nesterov": ([*MLP, "--set", "inner_optimizer=momentum", "--set", "nesterov=true"], {"momentum"}),
    "maml++-sinusoid": (["--preset", "maml++-sinusoid", *SMALL_MLP], set()),  # LSLR + MSL
    "maml++-digits": (["--preset", "maml++-digits", *SMALL_CONV, "--set", "inner_steps=3"], set()),
}
CONV_CASES = {"cls-sgd", "cls-adam", "maml++-digits"}
# A leaf passes when max|file − oracle| ≤ ATOL + RTOL·max|file|. Seen (2-core CPU, float64): ≤ 8e-14
# relative (Adam on the conv net; ≤ 3e-15 under SGD). ATOL: the conv biases before batch norm have
# a gradient that is zero in exact arithmetic (the mean subtraction cancels them), ~4e-16 as computed.
RTOL = 1e-12
ATOL = 1e-14


@pytest.fixture(scope="module")
def dumps(tmp_path_factory):
    """``dumps(case, framework)``: the path of that case's float64 golden file with traces, written once."""
    where = tmp_path_factory.mktemp("golden-cls")
    written: dict[tuple[str, str], object] = {}

    def dump(case: str, framework: str):
        if (case, framework) not in written:
            path = where / f"{case}-{framework}.npz"
            args = [*CASES[case][0], "--framework", framework, "--dtype", "float64", "--trace", "--out", str(path)]
            assert main(["dump", *args]) == 0
            written[case, framework] = path
        return written[case, framework]

    return dump


def _inputs(golden: dict) -> tuple[dict, object, tuple]:
    """Parameters, α and tasks as the file holds them (what ``golden_results`` reads too)."""
    names = [k[5:] for k in golden if k.startswith("init/") and not k.startswith("init/alpha")]
    alpha = golden["init/alpha"] if "init/alpha" in golden else {k: golden[f"init/alpha/{k}"] for k in names}
    tasks = tuple(golden[f"tasks/{k}"] for k in ("x_support", "y_support", "x_query", "y_query"))
    return {k: golden[f"init/{k}"] for k in names}, alpha, tasks


def noise_only(cfg) -> set[str]:
    """Trace entries that are rounding noise amplified by Adam: a conv bias b_i sits right before
    batch norm, which subtracts the batch mean, so its gradient is 0 in exact arithmetic and ~1e-16
    as computed; Adam's step m̂/(√v̂ + ε) turns that into ~1e-16/ε = 1e-8 per step, a different
    amount in each implementation. Nothing downstream depends on b_i (batch norm cancels it again).
    Under SGD the same noise moves b_i by α·1e-16: nothing to see."""
    if cfg.model.name != "conv" or cfg.inner_optimizer != "adam":
        return set()
    return {f"trace/adapted/b{i}" for i in range(cfg.depth)}


def _assert_noise_bounded(golden: dict, arrays: dict, cfg) -> None:
    """The noise-only entries: b_i moves by at most α·T·1e-6 from its start (the bound |u| ≤ |g|/ε
    with |g| ≤ 1e-14), in the file and in the other result alike; its gradients are zero to 1e-14."""
    for key in noise_only(cfg) & set(arrays):
        name = key.rsplit("/", 1)[1]
        for values in (golden[key], arrays[key]):
            moved = float(np.abs(values - golden[f"init/{name}"]).max())
            assert moved <= cfg.alpha_init * cfg.inner_steps * 1e-6, (key, moved)
        assert float(np.abs(golden[f"trace/inner_grad/{name}"]).max()) <= 1e-14, name


def _assert_reproduced(golden: dict, recomputed: dict) -> None:
    skipped = noise_only(golden["config"])
    _assert_noise_bounded(golden, recomputed, golden["config"])
    for key, value in ((k, v) for k, v in recomputed.items() if k not in skipped):
        scale = float(np.abs(golden[key]).max())
        err = float(np.abs(value - golden[key]).max())
        assert err <= ATOL + RTOL * scale, (key, err, scale)


TWINS = ["torch", pytest.param("jax", marks=pytest.mark.slow)]


@pytest.mark.parametrize("framework", TWINS)
@pytest.mark.parametrize("case", list(CASES))
def test_the_oracle_reproduces_the_file_and_its_trace(dumps, case, framework):
    path = dumps(case, framework)
    with np.load(path, allow_pickle=False) as data:  # the format promise: plain arrays, no pickles
        assert str(data["framework"]) == framework
    golden = read_golden(path)
    cfg = golden["config"]
    B, T = cfg.meta_batch, cfg.inner_steps
    if case in CONV_CASES:  # PyTorch's exchange layout: images [B, N·K, C, H, W], one-hot labels
        N, K, S = cfg.n_way, cfg.k_support, cfg.image_size
        assert golden["tasks/x_support"].shape == (B, N * K, 1, S, S)
        assert golden["tasks/y_support"].shape == (B, N * K, N)
        assert golden["init/w0"].shape == (cfg.width, 1, 3, 3) and golden["grad/w1"].shape == (3, 3, 3, 3)
    if cfg.alpha_mode == "per_layer_step":  # LSLR: one α per tensor per step, each with its gradient
        assert golden["init/alpha/w0"].shape == golden["grad/alpha/w0"].shape == (T,)
    # per task, the outer loss whose mean is outer_loss (under MSL too: the weighted multi-step loss)
    np.testing.assert_allclose(golden["task_outer_loss"].mean(), golden["outer_loss"], rtol=1e-13)
    recomputed = golden_results(golden)
    assert {k for k in recomputed if k.startswith("grad/")} == {k for k in golden if k.startswith("grad/")}
    _assert_reproduced(golden, recomputed)
    # the trace: every step of every task, the optimiser's state included, as the oracle runs it
    trace = NumpyOracle().trace(*_inputs(golden), cfg)
    assert set(trace) == {k for k in golden if k.startswith("trace/")}
    assert {k.split("/")[2] for k in trace if k.startswith("trace/state/")} == CASES[case][1]
    for slot in CASES[case][1]:
        assert golden[f"trace/state/{slot}/w1"].shape == (B, T, *cfg.param_shapes["w1"])
    _assert_reproduced(golden, trace)


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_the_twins_files_diff_clean(dumps, case, capsys):
    """Clean in every entry, traces included; under Adam on the conv net, all but the noise-only
    entries (``noise_only``), which diff names, and nothing else: they stay within their bound."""
    capsys.readouterr()
    a, b = dumps(case, "jax"), dumps(case, "torch")
    cfg = read_golden(a)["config"]
    noise = sorted(noise_only(cfg))
    assert main(["diff", str(a), str(b)]) == (1 if noise else 0)
    out = capsys.readouterr().out
    assert "not compared" not in out  # every entry, the traces too, compared
    if noise:
        assert f"MISMATCH in {len(noise)} of " in out and out.rstrip().endswith(", ".join(noise))
        _assert_noise_bounded(read_golden(a), read_golden(b), cfg)
    else:
        assert "SAME: " in out
    if CASES[case][1]:
        assert "trace/state/" in out


def _perturbed(tmp_path, path, key: str, index: tuple[int, ...]):
    """A copy of the file with one entry of ``key`` moved by 1e-6 of the entry's largest value."""
    with np.load(path, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    arrays[key] = arrays[key].copy()
    arrays[key][index] += 1e-6 * np.abs(arrays[key]).max()
    out = tmp_path / f"{key.replace('/', '-')}.npz"
    write_golden(out, arrays)
    return out


@pytest.mark.parametrize(
    "case, key, index, where",
    [
        ("cls-sgd", "grad/w1", (2, 1, 0, 2), "after the inner loop, grad/w1 index (2, 1, 0, 2)"),
        ("cls-sgd", "trace/adapted/w1", (1, 1, 0, 2, 1, 1), "inner step 1, adapted/w1 task 1 index (0, 2, 1, 1)"),
        ("cls-sgd", "trace/inner_grad/gamma0", (0, 0, 2), "inner step 0, inner_grad/gamma0 task 0 index (2,)"),
        ("cls-adam", "trace/state/v/w0", (1, 1, 2, 0, 1, 2), "inner step 1, state/v/w0 task 1 index (2, 0, 1, 2)"),
        ("mlp-adam", "trace/state/m/w1", (0, 2, 0, 5), "inner step 2, state/m/w1 task 0 index (0, 5)"),
        ("mlp-nesterov", "trace/state/momentum/b0", (1, 1, 3), "inner step 1, state/momentum/b0 task 1 index (3,)"),
    ],
)
def test_diff_names_a_perturbed_entry(tmp_path, dumps, capsys, case, key, index, where):
    path = dumps(case, "torch")
    capsys.readouterr()
    assert main(["diff", str(path), str(path)]) == 0  # the unperturbed file: the same
    assert main(["diff", str(path), str(_perturbed(tmp_path, path, key, index))]) == 1
    out = capsys.readouterr().out
    assert f"first divergence: {where}: " in out, out
    assert "MISMATCH in 1 of " in out and out.rstrip().endswith(key)


def test_a_classification_trace_from_the_oracle_diffs_clean_against_a_twins(tmp_path, dumps, capsys):
    """`dump --trace` by the NumPy oracle (no framework) on a classification case: accepted by diff,
    and the same as the PyTorch twin's in every entry, traces included."""
    oracle = tmp_path / "numpy.npz"
    args = [*CASES["cls-sgd"][0], "--framework", "numpy", "--dtype", "float64", "--trace", "--out", str(oracle)]
    assert main(["dump", *args]) == 0
    capsys.readouterr()
    assert main(["diff", str(oracle), str(dumps("cls-sgd", "torch"))]) == 0
    out = capsys.readouterr().out
    assert "trace/adapted/w_head" in out and "SAME: " in out and "not compared" not in out


def test_the_trace_state_entries_are_checked_against_the_inner_optimizer(tmp_path, dumps):
    with np.load(dumps("mlp-adam", "torch"), allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    v_w0 = arrays["trace/state/v/w0"]
    cases = {
        "foreign-slot": ({**arrays, "trace/state/momentum/w0": v_w0}, r"unexpected \['trace/state/momentum/w0'\]"),
        "one-missing": (
            {k: a for k, a in arrays.items() if k != "trace/state/v/b1"},
            r"missing \['trace/state/v/b1'\]",
        ),
        "shape": ({**arrays, "trace/state/v/w0": v_w0[:, :2]}, r"'trace/state/v/w0' is float64\[2, 2, 8, 1\]"),
        "no-parameter": ({**arrays, "trace/state/v/w9": v_w0}, "'trace/state/v/w9' names no parameter"),
    }
    for name, (broken, message) in cases.items():
        write_golden(tmp_path / f"{name}.npz", broken)
        with pytest.raises(GoldenFileError, match=message):
            read_golden(tmp_path / f"{name}.npz")
    # a trace without any state (a third party's that records none) still reads
    write_golden(tmp_path / "stateless.npz", {k: a for k, a in arrays.items() if not k.startswith("trace/state/")})
    read_golden(tmp_path / "stateless.npz")


def test_the_maml_pp_digits_preset():
    cfg = PRESETS["maml++-digits"]
    base, flat = DIGITS_5W1S.flat(), cfg.flat()
    changed = {k for k in flat if flat[k] != base[k]}
    # digits-5w1s's task family, model and outer loop; MAML++'s inner loop on top of it
    assert changed <= {"inner_steps", "alpha_mode", "alpha_init", "msl", "msl_anneal", "first_order_steps"} | {
        "alpha_optimizer",
        "alpha_lr",
    }, changed
    assert cfg.alpha_mode == "per_layer_step" and cfg.msl and cfg.inner_steps > 1  # LSLR, MSL over steps
    # both annealing schedules end inside the run: MSL onto the last step, then second order
    assert 0 < cfg.msl_anneal < cfg.iterations and 0 < cfg.first_order_steps < cfg.iterations
    assert json.loads(cfg.to_json())["family"]["name"] == "classification"
    assert 0 < cfg.msl_anneal < cfg.first_order_steps < cfg.iterations  # both annealings end inside the run


@pytest.mark.slow
def test_maml_pp_digits_trains_two_steps(tmp_path):
    out = tmp_path / "run"
    assert main(["train", "--preset", "maml++-digits", "--iterations", "2", "--out", str(out)]) == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [row["outer_loss"] for row in rows if "outer_loss" in row]
    assert len(losses) == 2 and all(np.isfinite(losses))
    config = json.loads((out / "config.json").read_text())
    assert config["inner"]["alpha_mode"] == "per_layer_step" and config["inner"]["msl"] is True


def test_the_plugins_golden_fixture_holds_a_classification_adam_case(maml_parity_golden):
    """The pytest plugin's golden regression on the conv net with an Adam inner loop: the PyTorch
    twin against the file committed beside this module, and the NumPy oracle against it too (so
    the file is the oracle's numbers, whoever wrote it)."""
    cfg = DIGITS_5W1S.replace(width=3, depth=2, meta_batch=2, inner_steps=2, inner_optimizer="adam", dtype="float64")
    arrays = maml_parity_golden.check("torch", "digits-adam", cfg=cfg)
    assert arrays["grad/w1"].shape == (3, 3, 3, 3) and arrays["outer_loss"].shape == ()
    maml_parity_golden.check("numpy", "digits-adam", cfg=cfg)

"""The twins against each other, through the harness and the `check` command (select: -m parity)."""

from __future__ import annotations

import json

import pytest

from parity import harness
from parity.checktable import relative_is_meaningful
from parity.cli import main
from parity.compare import STABILITY_LIMIT
from parity.registry import TWINS

pytestmark = pytest.mark.parity


@pytest.fixture(scope="module")
def quick_rows():
    return harness.run_check(harness.all_cases(quick=True))


def test_quick_matrix_covers_every_axis_value():
    names = [c.name for c in harness.gradient_cases(quick=True)]
    for T in harness.INNER_STEPS:
        assert any(n.startswith(f"T{T}-") for n in names)
    for token in [
        *(f"-a{a:g}-" for a in harness.ALPHAS),
        "-l1-",
        "-mse-",
        "-fixed-",
        "-scalar-",
        "-per_parameter-",
        "-first",
        "-second",
    ]:
        assert any(token in n for n in names), token


def test_full_matrix_is_the_design_matrix():
    cases = harness.gradient_cases()
    # 6 T × 4 α × 2 losses × 3 α modes × 2 orders, less T = 0 first order (same as second order),
    # first; then the all-pairs rows that vary the newer axes (parity.matrix; test_harness_matrix.py)
    original = 6 * 4 * 2 * 3 * 2 - 4 * 2 * 3
    assert all(c.name.count("-") == 4 for c in cases[:original])
    # then 18 all-pairs rows, LSLR's own 18 and the multi-step loss's 12 (parity.matrix)
    rest = cases[original:]
    msl = [c for c in rest if "-msl" in c.name]
    lslr = [c for c in rest if "per_layer_step" in c.name and c not in msl]
    pairs = [c for c in rest if c not in msl and c not in lslr]
    assert (len(pairs), len(lslr), len(msl)) == (18, 18, 12) and all(c.name.count("-") > 4 for c in pairs)
    assert len({c.name for c in cases}) == len(cases)


def test_twins_agree_on_the_quick_matrix(quick_rows):
    assert harness.overall_ok(quick_rows)
    assert all(r.ok for r in quick_rows), [r for r in quick_rows if not r.ok][:3]
    f64 = [r for r in quick_rows if r.dtype == "float64"]
    # where the values exceed atol (a conv bias's meta-gradient is 0 in exact arithmetic: rounding only)
    assert f64 and max(r.max_rel_err for r in f64 if r.stable and relative_is_meaningful(r)) <= 1e-10
    pairs = {(r.framework_pair, r.dtype) for r in quick_rows}
    assert pairs == {
        ("jax~torch", "float64"),
        ("jax~torch", "float32"),
        ("jax64~jax", "float32"),
        ("jax64~torch", "float32"),
    }
    quantities = {r.quantity for r in quick_rows}
    assert {
        "outer_loss",
        "inner_losses",
        "grad/w0",
        "grad/b2",
        "grad/alpha",
        "grad/alpha/w1",
        "params/w1",
        "alpha",
    } <= quantities


def test_an_unstable_case_is_flagged_not_asserted():
    # MSE with α = 0.3 over 10 steps: the inner loop blows up (each step's gain is well above 1).
    cfg = harness.BASE.replace(inner_steps=10, alpha_init=0.3, loss="mse")
    rows = harness.run_case(harness.Case("unstable-mse-a0.3", cfg), harness.load_impls(list(TWINS)))
    assert rows[0].stability > STABILITY_LIMIT
    assert all(not r.stable for r in rows)
    assert any(r.verdict == "unstable" for r in rows)  # outside the tight tolerance, and excused
    assert harness.overall_ok(rows)


def test_check_command_writes_json_and_exits_zero(tmp_path, capsys):
    out = tmp_path / "check.json"
    assert main(["check", "--quick", "--cases", "T3-", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["ok"] is True and report["rows"]
    keys = {"case", "framework_pair", "dtype", "quantity", "max_abs_err", "max_rel_err", "rtol", "atol", "stable", "ok"}
    assert keys <= set(report["rows"][0])
    printed = capsys.readouterr().out
    assert "PASS" in printed and "T3-a0.1-mse-fixed-first" in printed

"""The harness fails when it should: planted bugs in the worked example, and the registry's SPECs.

Each mutant (``tests/mutants_impls.py``) is the worked example (``examples/torchfunc_maml.py``)
with one bug users actually hit. ``check`` must end in exit 1, print a FAIL row naming the case
and the quantity, and show no traceback. The control (the example itself, loaded the same way)
passes on the same case, so each mutant is caught for its own bug.
"""

from __future__ import annotations

import json
import math
import re
from importlib import metadata
from pathlib import Path

import pytest

from parity import harness
from parity.cli import main
from parity.registry import ENTRY_POINT_GROUP, resolve

ROOT = Path(__file__).resolve().parent.parent
MUTANTS = ROOT / "tests" / "mutants_impls.py"
# Second order, per-parameter α, l1, T = 2: every planted bug changes something here.
CASE = "T2-a0.05-l1-per_parameter-second"


def spec(name: str) -> str:
    return f"{MUTANTS}:{name}"


def check(capsys, tmp_path, *impls: str, case: str = CASE, strict: bool = False) -> tuple[int, str, dict]:
    argv = ["check", "--quick", "--cases", case, "--json", str(tmp_path / "check.json")]
    for impl in impls:
        argv += ["--impl", impl]
    if strict:
        argv.append("--strict")
    code = main(argv)
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    document = json.loads((tmp_path / "check.json").read_text()) if (tmp_path / "check.json").exists() else {}
    return code, out + err, document


def failing(document: dict, dtype: str = "float64") -> set[str]:
    """The quantities of the FAIL rows of the float64 reference~mutant comparison."""
    return {r["quantity"] for r in document["rows"] if r["verdict"] == "FAIL" and r["dtype"] == dtype}


def fail_lines(out: str) -> list[str]:
    return [line for line in out.splitlines() if line.startswith(CASE) and re.search(r"\sFAIL(:|$)", line.rstrip())]


def test_the_control_passes(capsys, tmp_path):
    code, out, document = check(capsys, tmp_path, "jax", spec("CONTROL"))
    assert code == 0, out
    rows = [r for r in document["rows"] if r["framework_pair"] == "jax~control" and r["dtype"] == "float64"]
    assert rows and all(r["verdict"] == "ok" and r["max_rel_err"] <= 1e-10 for r in rows)


# mutant -> (the float64 quantities that must fail, the quantities that must stay within tolerance)
NUMERIC_MUTANTS = {
    # (a) missing create_graph: values unchanged, every meta-gradient off
    "NO_CREATE_GRAPH": ({"grad/w0", "grad/w1", "grad/alpha/w0"}, {"outer_loss", "inner_losses"}),
    # (b) α detached: dL/dα = 0, dL/dw untouched
    "ALPHA_DETACHED": ({"grad/alpha/w0", "grad/alpha/w2"}, {"outer_loss", "inner_losses", "grad/w0", "grad/b2"}),
    # (c) sum instead of mean
    "SUM_LOSS": ({"outer_loss", "inner_losses", "grad/w0"}, set()),
    # (d) a transposed square weight (w1 is 32 × 32): the shapes let it through, the numbers do not
    "TRANSPOSED_W1": ({"outer_loss", "inner_losses", "grad/w1"}, set()),
    # (e) α with the wrong sign: the first support loss is right, the adapted ones are not
    "ALPHA_WRONG_SIGN": ({"outer_loss", "inner_losses", "grad/w0", "grad/alpha/w0"}, set()),
}


@pytest.mark.parametrize("mutant", sorted(NUMERIC_MUTANTS))
def test_numeric_mutant_is_caught(capsys, tmp_path, mutant):
    must_fail, must_pass = NUMERIC_MUTANTS[mutant]
    code, out, document = check(capsys, tmp_path, "jax", spec(mutant))
    assert code == 1, out
    failed = failing(document)
    assert must_fail <= failed, (mutant, failed)
    assert not must_pass & failed, (mutant, must_pass & failed)
    for row in document["rows"]:
        if row["verdict"] == "FAIL":
            assert math.isfinite(row["max_abs_err"]) and row["max_abs_err"] > row["atol"] + row["rtol"] * 1e-3
    # the printed table: a FAIL row naming the case, the pair and a failing quantity; the summary names them too
    lines = fail_lines(out)
    assert lines and any(q in line for line in lines for q in failed), out
    assert f"failing: {CASE} (" in out


def test_alpha_detached_returns_a_zero_alpha_gradient(capsys, tmp_path):
    """The reason (b) fails: the reference's dL/dα is far from zero, the mutant's is zero."""
    code, _, document = check(capsys, tmp_path, "jax", spec("ALPHA_DETACHED"))
    assert code == 1
    alpha_rows = [r for r in document["rows"] if r["quantity"].startswith("grad/alpha/") and r["dtype"] == "float64"]
    # |mutant − reference| = |reference| (the mutant's dL/dα is 0): relative error exactly 1 on every
    # α leaf the reference gives a gradient (b2's is 0 here: the l1 signs of the output cancel)
    nonzero = [r for r in alpha_rows if r["max_abs_err"] > 0]
    assert len(nonzero) >= 5 and all(r["max_rel_err"] == pytest.approx(1.0, abs=1e-12) for r in nonzero)


# --- the dimensions the original matrix held still (issue 20 §6) ---------------------------------


def _first_quick_case(predicate) -> str:
    """The first quick case that shows the dimension and that the worked example computes (an MLP
    with SGD inner steps: it reports the other cases unsupported)."""
    from mutants_impls import CONTROL

    return next(
        c.name for c in harness.gradient_cases(quick=True) if predicate(c.cfg) and CONTROL.supports(c.cfg) is None
    )


# mutant -> (which quick case shows it, the float64 quantities that must fail, those that must not)
DIMENSION_MUTANTS = {
    "SUPPORT_SIZE_FOR_QUERY": (lambda c: c.k_query > c.k_support, {"outer_loss", "grad/w0"}, {"inner_losses"}),
    "DEPTH_FIXED_AT_TWO": (lambda c: len(c.hidden) != 2, {"outer_loss", "grad/w0"}, set()),
    "RELU_FIRST_LAYER_ONLY": (lambda c: c.activation == "relu" and len(c.hidden) > 1, {"outer_loss", "grad/w0"}, set()),
    # T = 0 has no dL/dalpha to scale: the first softplus case with an inner step
    "SOFTPLUS_RHO_GRADIENT": (
        lambda c: c.alpha_parametrisation == "softplus" and c.inner_steps > 0 and c.alpha_mode == "scalar",
        {"grad/alpha"},
        {"outer_loss", "inner_losses", "grad/w0", "grad/b1"},
    ),
}


@pytest.mark.parametrize("mutant", sorted(DIMENSION_MUTANTS))
def test_a_port_bug_the_original_matrix_missed_is_caught_by_check_quick(capsys, tmp_path, mutant):
    """Each of these passed the original quick and full matrices (the report of issue 20 §6 shows
    it); ``check --quick`` now holds a case that fails it, named with the quantity."""
    predicate, must_fail, must_pass = DIMENSION_MUTANTS[mutant]
    case = _first_quick_case(predicate)
    code, out, document = check(capsys, tmp_path, "jax", spec(mutant), case=case)
    assert code == 1, out
    assert {r["case"] for r in document["rows"]} == {case}  # the name picks exactly that case
    failed = failing(document)
    assert must_fail <= failed and not must_pass & failed, (mutant, case, failed)
    lines = [line for line in out.splitlines() if line.startswith(case) and re.search(r"\sFAIL(:|$)", line.rstrip())]
    assert any(q in line for line in lines for q in failed), out
    assert f"failing: {case} (" in out
    # and the control passes the same case: the case fails the mutant for its bug
    code, out, _ = check(capsys, tmp_path, "jax", spec("CONTROL"), case=case)
    assert code == 0, out


@pytest.mark.parametrize(
    ("mutant", "message"),
    [
        ("RAISES", "raised RuntimeError: planted failure: the meta-gradient could not be computed"),
        ("MISSING_KEY", "the result lacks ['inner_losses']"),
        ("FLOAT32_ALWAYS", "is float32, expected float64 (no silent change of precision)"),
        ("TRANSPOSED_W0", "raised RuntimeError"),  # (d') the non-square layer: the shapes refuse it
    ],
)
def test_broken_mutant_is_a_fail_row_with_its_message(capsys, tmp_path, mutant, message):
    code, out, document = check(capsys, tmp_path, "jax", spec(mutant))
    assert code == 1, out
    errors = [r for r in document["rows"] if r["verdict"] == "FAIL" and r["quantity"] == "error"]
    assert errors and all(message in r["detail"] for r in errors if r["dtype"] == "float64"), errors
    lines = fail_lines(out)
    assert any("error" in line and message in line for line in lines), out


def test_the_documented_example_passes(capsys, tmp_path):
    """The complete implementation in docs/contract.md, as a reader would save it, passes check."""
    text = (ROOT / "docs" / "contract.md").read_text()
    section = text[text.index("## A complete implementation") :]
    code = section[section.index("```python\n") + len("```python\n") : section.index("\n```\n")]
    (tmp_path / "mine.py").write_text(code + "\n")
    code_, out, document = check(capsys, tmp_path, "jax", f"{tmp_path / 'mine.py'}:IMPL")
    assert code_ == 0, out
    mine = [r for r in document["rows"] if r["framework_pair"] == "jax~mine"]
    assert {r["dtype"] for r in mine} == {"float64", "float32"} and all(r["verdict"] == "ok" for r in mine)


# --- the registry's SPECs ---------------------------------------------------------------------------


def test_spec_module_name():
    impl = resolve("mutants_impls:CONTROL")  # tests/ is on sys.path (conftest.py)
    assert impl.name == "control" and callable(impl.meta_value_and_grad)


def test_spec_file_name_and_class():
    assert resolve(spec("CONTROL")).name == "control"
    instance = resolve(spec("Control"))  # a class is instantiated
    assert type(instance).__name__ == "Control"


def test_spec_entry_point(monkeypatch):
    point = metadata.EntryPoint(name="mine", value="mutants_impls:CONTROL", group=ENTRY_POINT_GROUP)

    def entry_points(group=None):
        return [point] if group == ENTRY_POINT_GROUP else []

    monkeypatch.setattr("parity.registry.metadata.entry_points", entry_points)
    assert resolve("mine").name == "control"


def _usage_error(capsys, impl: str) -> str:
    assert main(["check", "--quick", "--cases", CASE, "--impl", "jax", "--impl", impl]) == 2
    out, err = capsys.readouterr()
    assert out == "" and "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("maml-parity: error: impl: "), err
    return lines[0]


@pytest.mark.parametrize("target", ["CONTROL", "Control"])
def test_device_on_an_implementation_without_one_is_one_line_exit_2(capsys, target):
    line = _usage_error(capsys, spec(target) + "@cpu")
    assert "takes no device" in line and "@cpu" in line


def test_unknown_spec_is_one_line_exit_2(capsys):
    line = _usage_error(capsys, "no_such_impl")
    assert "'no_such_impl'" in line and "entry point" in line


def test_missing_attribute_and_file_are_one_line_exit_2(capsys):
    assert "no attribute 'NOPE'" in _usage_error(capsys, spec("NOPE"))
    assert "no such file" in _usage_error(capsys, "tests/does_not_exist.py:IMPL")


def test_strict_turns_unsupported_into_exit_1(capsys, tmp_path):
    case = "T0-a0.001-l1-fixed-second"
    code, out, document = check(capsys, tmp_path, "jax", spec("FLOAT64_ONLY"), case=case)
    assert code == 0, out
    verdicts = {(r["dtype"], r["framework_pair"]): r["verdict"] for r in document["rows"]}
    assert verdicts[("float32", "jax~float64-only")] == "unsupported"
    # float32 of the implementation under test compared nothing: not a PASS (issue 20), exit 0 without --strict
    assert "\nINCOMPLETE: 1 cases" in out and "1 with unsupported pairs" in out
    assert "not compared: float64-only in float32 (float64-only (float32): computes in float64 only)" in out
    code, out, document = check(capsys, tmp_path, "jax", spec("FLOAT64_ONLY"), case=case, strict=True)
    assert code == 1 and "(--strict: counted as failing)" in out and not document["ok"]


def test_unsupported_never_counts_as_passing(capsys, tmp_path):
    case = "T0-a0.001-l1-fixed-second"
    code, out, document = check(capsys, tmp_path, "jax", spec("SUPPORTS_NOTHING"), case=case)
    assert code == 1  # nothing of it compared at all: a failure even without --strict (issue 20) ...
    assert "not compared: supports-nothing in any case (" in out and "fails the check" in out
    mine = [r for r in document["rows"] if "supports-nothing" in r["framework_pair"]]
    assert mine and all(r["verdict"] == "unsupported" and not r["ok"] for r in mine)  # ... but never passes
    assert "supports no case" in out
    assert (
        main(["check", "--quick", "--cases", case, "--impl", "jax", "--impl", spec("SUPPORTS_NOTHING"), "--strict"])
        == 1
    )
    capsys.readouterr()


# --- the built-ins against the oracle -----------------------------------------------------------------


@pytest.mark.parity
@pytest.mark.slow
def test_quick_check_numpy_jax_torch(capsys, tmp_path):
    """``check --quick --impl numpy --impl jax --impl torch`` passes; every stable float64 row ≤ 1e-10."""
    out_file = tmp_path / "check.json"
    code = main(["check", "--quick", "--impl", "numpy", "--impl", "jax", "--impl", "torch", "--json", str(out_file)])
    out, err = capsys.readouterr()
    assert code == 0, out + err
    rows = json.loads(out_file.read_text())["rows"]
    stable64 = [r for r in rows if r["dtype"] == "float64" and r["stable"] and r["verdict"] != "unsupported"]
    pairs = {r["framework_pair"] for r in stable64}
    assert {"numpy~jax", "numpy~torch"} <= pairs
    assert stable64 and all(r["ok"] for r in stable64)
    # relative errors where values exceed atol (a conv bias's meta-gradient is 0 in exact arithmetic;
    # its rows, "inf" in JSON, are judged by atol and are ok above)
    judged = [r for r in stable64 if isinstance(r["max_rel_err"], float) and r["max_rel_err"] > 0]
    judged = [r for r in judged if r["rtol"] * r["max_abs_err"] / r["max_rel_err"] >= r["atol"]]
    assert judged and all(r["max_rel_err"] <= 1e-10 for r in judged)


def test_every_planted_bug_of_scripts_mutants_still_finds_its_text_exactly_once():
    """A refactor that moves the code a mutant edits would make scripts/mutants plant nothing."""
    import importlib.util
    import sys as _sys
    from importlib.machinery import SourceFileLoader

    root = Path(__file__).resolve().parent.parent
    loader = SourceFileLoader("_maml_parity_mutants_script", str(root / "scripts" / "mutants"))
    spec = importlib.util.spec_from_loader(loader.name, loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    _sys.modules[loader.name] = module  # dataclasses look their module up by name
    loader.exec_module(module)
    counts = {
        (mutant.name, path): (root / path).read_text().count(old)
        for mutant in module.MUTANTS
        for path, old, _new in mutant.edits
    }
    assert len(module.MUTANTS) >= 30 and all(n == 1 for n in counts.values()), {
        k: n for k, n in counts.items() if n != 1
    }

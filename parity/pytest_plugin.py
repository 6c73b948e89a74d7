"""The maml-parity pytest plugin: check your implementation of the contract inside your own suite.

Registered through the ``pytest11`` entry point (``maml_parity``), so it is active in every pytest
run of an environment where maml-parity is installed. Loading it imports no framework, not even
NumPy: everything it needs is imported inside the hooks and fixtures, and only when a test asks
for them. Without ``-p parity.pytest_plugin`` it is also loaded by ``pytest_plugins =
["parity.pytest_plugin"]`` in a ``conftest.py``.

What it adds:

- the marker ``maml_parity`` (registered, so ``--strict-markers`` suites pass), put on every
  generated case; ``@pytest.mark.maml_parity(cases="T2-", matrix="quick")`` narrows the cases of
  one test;
- options ``--maml-parity-impl SPEC`` (the implementation under test; ini ``maml_parity_impl``),
  ``--maml-parity-reference SPEC`` (default ``jax``; ini ``maml_parity_reference``),
  ``--maml-parity-matrix quick|full`` (default ``full``; ini ``maml_parity_matrix``),
  ``--maml-parity-cases SUBSTRING`` (ini ``maml_parity_cases``), ``--maml-parity-strict``
  (an unsupported case fails instead of being skipped) and ``--maml-parity-regen`` (rewrite golden
  files);
- ``maml_parity_case``: a test that requests it runs once per matrix case (ids are the case names,
  as ``maml-parity check`` prints them); ``maml_parity_case.check()`` compares the implementation
  under test with the reference on that case and fails with the table of what differed;
- ``maml_parity``: for hand-written tests, ``maml_parity.check(impl, "T2-a0.05-l1-per_parameter-second")``
  (``impl`` an object or a SPEC; ``None``: the implementation under test) returns the rows or fails
  with the table;
- ``maml_parity_golden``: ``maml_parity_golden.check(impl_or_arrays, "name")`` compares against
  ``<test file's folder>/<test module>/name.npz`` with the documented tolerances (as
  pytest-regressions' ``ndarrays_regression`` does); a missing file, or ``--maml-parity-regen``,
  writes it and fails once, so a new golden file never passes unseen.

SPEC is what ``maml-parity check --impl`` takes (``parity.registry``). Implementation errors are
rows, never tracebacks: a failing case shows ``parity.harness.table_lines``.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import pytest

from parity.registry import BUILTINS, DEFAULT_TWIN

MARKER = "maml_parity"
MATRICES = ("full", "quick")


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("maml-parity", "maml-parity: check an implementation of the MAML contract")
    group.addoption(
        "--maml-parity-impl",
        metavar="SPEC",
        help="the implementation under test: module:NAME | path/file.py:NAME | "
        f"{' | '.join(BUILTINS)} | an entry point",
    )
    group.addoption(
        "--maml-parity-reference", metavar="SPEC", help=f"the reference it is compared with (default {DEFAULT_TWIN})"
    )
    group.addoption("--maml-parity-matrix", choices=MATRICES, help="the cases: the full matrix or the quick subset")
    group.addoption("--maml-parity-cases", metavar="SUBSTRING", help="only cases whose name contains this")
    group.addoption("--maml-parity-strict", action="store_true", default=None, help="unsupported cases fail")
    group.addoption("--maml-parity-regen", action="store_true", help="rewrite maml_parity_golden files")
    group.addoption(
        "--maml-parity-case-timeout", metavar="S", help="seconds per case for an implementation's worker (default 300)"
    )
    group.addoption(
        "--maml-parity-set",
        action="append",
        metavar="KEY=VALUE",
        help="change a config field in every case (repeatable), as `maml-parity check --set`",
    )
    parser.addini("maml_parity_set", "maml-parity: KEY=VALUE config changes applied to every case", type="linelist")
    parser.addini("maml_parity_impl", "maml-parity: the implementation under test (SPEC)", default="")
    parser.addini("maml_parity_reference", "maml-parity: the reference implementation (SPEC)", default=DEFAULT_TWIN)
    parser.addini("maml_parity_matrix", "maml-parity: full | quick", default="full")
    parser.addini("maml_parity_cases", "maml-parity: only cases whose name contains this", default="")
    parser.addini("maml_parity_strict", "maml-parity: unsupported cases fail", type="bool", default=False)
    parser.addini("maml_parity_case_timeout", "maml-parity: seconds per case in a worker", default="")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"{MARKER}(cases=SUBSTRING, matrix='quick'|'full'): a maml-parity contract check "
        "(narrows the cases a test requesting maml_parity_case runs)",
    )


def _setting(config: pytest.Config, name: str) -> Any:
    value = config.getoption(f"--maml-parity-{name.replace('_', '-')}")
    if value is not None:
        return value
    value = config.getini(f"maml_parity_{name}")
    if name in ("impl", "reference") and value:
        return _from_ini_folder(config, value)
    return value


def _from_ini_folder(config: pytest.Config, spec: str) -> str:
    """A ``file.py:NAME`` SPEC of the ini file is relative to the ini file's folder (the rootdir
    without one), not to wherever pytest was started."""
    where, at, device = spec.rpartition("@") if "@" in spec else (spec, "", "")
    file_name, colon, attribute = where.rpartition(":")
    if not colon or not file_name.endswith(".py") or Path(file_name).is_absolute():
        return spec
    folder = config.inipath.parent if config.inipath is not None else config.rootpath
    return f"{folder / file_name}:{attribute}{at}{device}"


def _case_timeout(config: pytest.Config) -> float:
    from parity.config import ConfigError
    from parity.worker import DEFAULT_TIMEOUT, check_timeout

    value = _setting(config, "case_timeout")
    try:
        return check_timeout(value) if value not in (None, "") else DEFAULT_TIMEOUT
    except ConfigError as err:
        raise pytest.UsageError(f"maml_parity_case_timeout: {str(err).partition(': ')[2]}") from None


_LOADED = pytest.StashKey[dict[str, Any]]()
_LOAD_ERROR = pytest.StashKey[str]()


def pytest_collection_modifyitems(config: pytest.Config) -> None:
    """An implementation under test that cannot be loaded: one usage error (exit 4), no test run."""
    error = config.stash.get(_LOAD_ERROR, None)
    if error is not None:
        raise pytest.UsageError(error)


def load_spec(config: pytest.Config, spec: str) -> Any:
    """An implementation from a SPEC, once per session (a user's in a worker, ``parity.worker``);
    raises ConfigError when it cannot be loaded."""
    from parity.worker import load

    loaded = config.stash.setdefault(_LOADED, {})
    if spec not in loaded:
        loaded[spec] = load(spec, _case_timeout(config))
    return loaded[spec]


def _changed(cases: list[Any], config: pytest.Config) -> list[Any]:
    """The cases with ``--maml-parity-set`` / ``maml_parity_set`` applied (ini lines first, then options)."""
    from parity import harness
    from parity.config import ConfigError, parse_set

    items = [*(config.getini("maml_parity_set") or []), *(config.getoption("--maml-parity-set") or [])]
    try:
        return harness.with_changes(cases, [dict([parse_set(item)]) for item in items])
    except ConfigError as err:  # one usage error for the session (pytest_collection_modifyitems), no test run
        config.stash[_LOAD_ERROR] = f"maml_parity_set: {err}"
        return []


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "maml_parity_case" not in metafunc.fixturenames:
        return
    from parity import harness

    marker = metafunc.definition.get_closest_marker(MARKER)
    options = dict(marker.kwargs) if marker is not None else {}
    matrix = options.get("matrix") or _setting(metafunc.config, "matrix")
    if matrix not in MATRICES:
        raise pytest.UsageError(f"maml_parity_matrix: must be one of {', '.join(MATRICES)}, got {matrix!r}")
    cases = _changed(harness.all_cases(quick=matrix == "quick"), metafunc.config)
    where = _setting(metafunc.config, "cases")
    if where:
        cases = [c for c in cases if c.matches(where)]
        if not cases:
            raise pytest.UsageError(f"maml_parity_cases: no case of the {matrix} matrix contains {where!r}")
    if options.get("cases"):  # the marker narrows further; none left: pytest reports an empty parameter set
        cases = [c for c in cases if c.matches(options["cases"])]
    spec = _setting(metafunc.config, "impl")
    if spec:  # one clear error for an implementation that cannot be loaded, not one per case
        from parity.config import ConfigError

        try:
            load_spec(metafunc.config, spec)
        except ConfigError as err:  # raised once collection is done (pytest_collection_modifyitems)
            metafunc.config.stash[_LOAD_ERROR] = f"maml-parity: {err}"
    params = [pytest.param(case, id=case.name, marks=pytest.mark.maml_parity) for case in cases]
    metafunc.parametrize("maml_parity_case", params, indirect=True)


# --- the objects the fixtures hand out ---------------------------------------------------------------


class ParityChecker:
    """Compares implementations with a reference on named matrix cases (the ``maml_parity`` fixture)."""

    def __init__(self, config: pytest.Config):
        self.config = config

    @property
    def impl_spec(self) -> str | None:
        return _setting(self.config, "impl") or None

    @property
    def reference_spec(self) -> str:
        return _setting(self.config, "reference") or DEFAULT_TWIN

    @property
    def strict(self) -> bool:
        return bool(_setting(self.config, "strict"))

    def resolve(self, impl: Any) -> Any:
        """An implementation from an object or a SPEC (resolved once per session)."""
        if not isinstance(impl, str):
            return impl
        from parity.config import ConfigError

        try:
            return load_spec(self.config, impl)
        except ConfigError as err:
            pytest.fail(f"maml-parity: {err}", pytrace=False)

    def under_test(self) -> Any:
        if self.impl_spec is None:
            pytest.fail(
                "maml-parity: no implementation under test: pass --maml-parity-impl SPEC "
                "or set maml_parity_impl in the ini file",
                pytrace=False,
            )
        return self.resolve(self.impl_spec)

    def case(self, name: str) -> Any:
        from parity import harness

        for case in _changed(harness.all_cases(), self.config):
            if case.name == name:
                return case
        pytest.fail(
            f"maml-parity: no matrix case named {name!r} (names as `maml-parity check` prints them)", pytrace=False
        )

    def rows(self, impl: Any, case: Any, reference: Any = None) -> list[Any]:
        """Every comparison of ``impl`` with the reference on ``case`` (a Case or its name)."""
        from parity import harness

        case = self.case(case) if isinstance(case, str) else case
        ref = self.resolve(reference if reference is not None else self.reference_spec)
        mine = self.under_test() if impl is None else self.resolve(impl)
        if ref.name == mine.name:
            pytest.fail(f"maml-parity: the reference and the implementation are both named {ref.name!r}", pytrace=False)
        for each in (ref, mine):
            set_precision = getattr(each, "set_precision", None)
            if set_precision is not None:
                set_precision("highest")
        return harness.run_case(case, [ref, mine])

    def check(self, impl: Any = None, case: Any = None, reference: Any = None) -> list[Any]:
        """Compare and assert: returns the rows; fails with the table when a comparison fails, skips
        when the implementation supports none of the case (fails instead under ``strict``)."""
        from parity import harness

        if case is None:
            raise TypeError("maml_parity.check needs a case (a matrix case name or a Case)")
        case = self.case(case) if isinstance(case, str) else case
        mine = self.under_test() if impl is None else self.resolve(impl)
        reason = self.unsupported(mine, case)
        if reason is not None:  # never counted as passing: skipped, or failed under strict
            message = f"maml-parity: {mine.name} does not support {case.name}: {reason}"
            if self.strict:
                pytest.fail(message + " (strict)", pytrace=False)
            pytest.skip(message)
        rows = self.rows(mine, case, reference)
        table = "\n".join([harness.TABLE_HEADER, *harness.table_lines(rows), harness.summary(rows, self.strict)])
        if not harness.overall_ok(rows, strict=self.strict):
            pytest.fail(f"maml-parity: the implementation differs from the reference\n{table}", pytrace=False)
        if not any(row.verdict in ("ok", "unstable") and row.framework_pair.endswith(f"~{mine.name}") for row in rows):
            pytest.fail(f"maml-parity: nothing of {mine.name} was compared on {case.name}\n{table}", pytrace=False)
        for who, what, why in harness.coverage_gaps(rows):  # a dtype compared nothing: said, never silent
            warnings.warn(f"maml-parity: {case.name}: nothing of {who} compared in {what} ({why})", stacklevel=2)
        return rows

    @staticmethod
    def unsupported(impl: Any, case: Any) -> str | None:
        """Why ``impl`` runs ``case`` in neither dtype (None when it runs it in one at least)."""
        from parity.contract import unsupported_reason

        if case.kind == "trajectory" and getattr(impl, "train_trajectory", None) is None:
            return "no train_trajectory capability (trajectories need training)"
        reasons = [unsupported_reason(impl, case.cfg.replace(dtype=dtype)) for dtype in ("float64", "float32")]
        return None if None in reasons else str(reasons[0])


class ParityCase:
    """One matrix case for the implementation under test (the ``maml_parity_case`` fixture)."""

    def __init__(self, checker: ParityChecker, case: Any):
        self.checker = checker
        self.case = case
        self.name: str = case.name

    def __repr__(self) -> str:
        return f"<maml-parity case {self.name}>"

    def check(self, impl: Any = None, reference: Any = None) -> list[Any]:
        return self.checker.check(impl, self.case, reference)


class GoldenChecker:
    """Golden-file regression (the ``maml_parity_golden`` fixture), in the spirit of ``ndarrays_regression``.

    ``check(impl_or_arrays, name, cfg=None)``: ``impl_or_arrays`` is an implementation (an object,
    a SPEC, or None for the implementation under test: its losses and meta-gradients on ``cfg``,
    by default the matrix's base config in float64, at the shared initial parameters on the
    step-0 meta-batch) or a ``{name: ndarray}`` of your own.
    The file is ``datadir / f"{name}.npz"``; each array is held to the tolerance of its dtype and
    quantity (``parity.compare.tolerance``).
    """

    def __init__(self, checker: ParityChecker, datadir: Path, regen: bool):
        self.checker = checker
        self.datadir = datadir
        self.regen = regen

    def arrays(self, impl_or_arrays: Any, cfg: Any = None) -> dict[str, Any]:
        import numpy as np

        if isinstance(impl_or_arrays, dict):
            return {k: np.asarray(v) for k, v in impl_or_arrays.items()}
        impl = self.checker.under_test() if impl_or_arrays is None else self.checker.resolve(impl_or_arrays)
        from parity import harness
        from parity.twins import meta_results, step0_inputs

        cfg = cfg if cfg is not None else harness.BASE
        prepare = getattr(impl, "prepare", None)
        if prepare is not None:
            prepare(cfg.dtype)
        set_precision = getattr(impl, "set_precision", None)
        if set_precision is not None:
            set_precision("highest")
        return meta_results(impl, cfg, *step0_inputs(cfg))

    def check(self, impl_or_arrays: Any, name: str, cfg: Any = None) -> dict[str, Any]:
        import numpy as np

        from parity.checkpoint import atomic_write
        from parity.compare import StructureError, compare_leaf, tolerance
        from parity.golden import GoldenFileError, read_golden_arrays

        if not name or os.sep in name or name.startswith("."):
            raise ValueError(f"maml_parity_golden: {name!r} is not a file name")
        arrays = self.arrays(impl_or_arrays, cfg)
        bad = sorted(k for k, v in arrays.items() if v.dtype not in (np.float32, np.float64))
        if bad:
            raise TypeError(f"maml_parity_golden: {bad} are not float32 or float64 arrays")
        path = self.datadir / f"{name}.npz"
        if self.regen or not path.exists():
            atomic_write(path, lambda f: np.savez(f, **arrays))
            why = "regenerated (--maml-parity-regen)" if self.regen else "did not exist"
            pytest.fail(f"maml-parity golden file {path} {why}: written; check it and rerun", pytrace=False)
        try:  # the one golden-file reader: capped, a zip bomb or a FIFO refused before reading
            golden = read_golden_arrays(path, allowed=lambda key: True)
        except GoldenFileError as err:
            pytest.fail(f"maml-parity: {err}", pytrace=False)
        notes: list[str] = []  # what the table cannot show: entries, dtypes, shapes
        lines, failed = [], False
        missing, extra = sorted(set(golden) - set(arrays)), sorted(set(arrays) - set(golden))
        if missing or extra:
            notes.append(f"entries differ from the golden file: missing {missing}, unexpected {extra}")
        for key in sorted(set(golden) & set(arrays)):
            expected, got = golden[key], arrays[key]
            if got.dtype != expected.dtype:
                notes.append(f"{key}: {got.dtype}, the golden file holds {expected.dtype}")
                continue
            tol = tolerance(str(expected.dtype), key)
            try:
                leaf = compare_leaf(key, expected, got, tol)
            except StructureError as err:
                notes.append(str(err))
                continue
            failed = failed or not leaf.ok
            lines.append(
                f"{key:<20} {expected.dtype!s:<8} {leaf.max_abs_err:>11.2e} {leaf.max_rel_err:>11.2e} "
                f"{tol.rtol:>7.0e}  {'ok' if leaf.ok else 'FAIL'}"
            )
        if notes or failed:
            header = f"{'quantity':<20} {'dtype':<8} {'max abs err':>11} {'max rel err':>11} {'rtol':>7}  verdict"
            pytest.fail(
                f"maml-parity: differs from the golden file {path} (--maml-parity-regen rewrites it)\n"
                + "".join(f"{note}\n" for note in notes)
                + "\n".join([header, *lines]),
                pytrace=False,
            )
        return arrays


# --- fixtures ---------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def maml_parity(pytestconfig: pytest.Config) -> ParityChecker:
    """Compare implementations with the reference on named cases: ``maml_parity.check(impl, case_name)``."""
    return ParityChecker(pytestconfig)


@pytest.fixture
def maml_parity_case(request: pytest.FixtureRequest, maml_parity: ParityChecker) -> ParityCase:
    """One matrix case (the plugin parametrises every test that requests this fixture)."""
    return ParityCase(maml_parity, request.param)


@pytest.fixture
def maml_parity_golden(request: pytest.FixtureRequest, maml_parity: ParityChecker) -> GoldenChecker:
    """Golden-file regression: ``maml_parity_golden.check(impl_or_arrays, name)`` (see GoldenChecker)."""
    test_file = Path(str(request.node.path))
    datadir = test_file.parent / test_file.stem
    return GoldenChecker(maml_parity, datadir, bool(request.config.getoption("--maml-parity-regen")))

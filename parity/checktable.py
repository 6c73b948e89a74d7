"""What ``check`` prints: one line per case, details for failing ones, the verdict, and progress.

The default is compact: a case is one line (its verdict, its worst relative error and which
quantity, pair and dtype it was), and only a failing case adds its rows, where the pair first
parts (``parity.localise``) and what the pattern of the failure usually means. ``verbose`` prints
every row. A verdict of PASS needs something compared for every implementation under test in
every dtype it was asked for: what was not compared is named (:func:`coverage_gaps`), the
verdict is then INCOMPLETE, and ``--strict`` fails it; when nothing of an implementation was
compared at all, the check fails.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import textwrap
import time
from typing import Any, TextIO

from parity.localise import where

TABLE_HEADER = f"{'case':<34} {'verdict':<9} worst: relative error / its rtol, quantity (pair dtype)"
WIDTH = 120  # the longest line of the default output, but for an implementation's own message
_COLUMNS = f"{'abs err':>9} {'rel err':>9} {'rtol':>5} {'gain∏':>5}  verdict"
DETAIL_HEADER = f"{'case':<34} {'pair':<12} {'dtype':<7} {'quantity':<14} {_COLUMNS}"
LEGEND = (
    "legend: gain∏ is the stability gate's product (nan: no implementation measures it; 1: no inner steps); "
    "a relative error of inf: the reference is 0 there and the other is not"
)
COMPARED = ("ok", "unstable", "FAIL")


def _scale(row: Any) -> float:
    """max|reference| of a row, from its absolute and relative errors (0: the reference is 0)."""
    if math.isinf(row.max_rel_err):
        return 0.0
    return row.max_abs_err / row.max_rel_err if row.max_rel_err > 0 else math.inf


def _badness(row: Any) -> float:
    """How much of its allowance ``atol + rtol·max|ref|`` a row uses: 1 means exactly at it."""
    if not math.isfinite(row.max_abs_err):
        return math.inf
    allowance = row.atol + row.rtol * _scale(row)
    return row.max_abs_err / allowance if allowance > 0 else (math.inf if row.max_abs_err else 0.0)


def relative_is_meaningful(row: Any) -> bool:
    """Whether the relative error decides the row: values above what atol covers (not a gradient that
    is 0 in exact arithmetic, such as a bias before batch norm, whose rounding is all that differs)."""
    return row.rtol * _scale(row) >= row.atol


def _rank(row: Any) -> tuple[int, float]:
    # a failing row first, then unsupported, then the one nearest its tolerance
    return ({"FAIL": 3, "unsupported": 2}.get(row.verdict, 1), _badness(row) if row.verdict != "unsupported" else 0)


def case_verdict(rows: list[Any]) -> str:
    verdicts = {r.verdict for r in rows}
    if "FAIL" in verdicts:
        return "FAIL"
    if not verdicts & set(COMPARED):
        return "unsupported"
    return "unstable" if "unstable" in verdicts else "ok"


def case_line(rows: list[Any]) -> str:
    """One line for a case: ``T2-a0.05-…  ok  3.1e-15 (3e-05) grad/w1, jax~torch float64``."""
    compared = [r for r in rows if r.verdict in COMPARED and not math.isnan(r.max_abs_err)]
    parts = []
    if compared:
        w = max(compared, key=_badness)
        if relative_is_meaningful(w) or w.verdict == "FAIL":
            parts.append(f"{w.max_rel_err:.1e} / {w.rtol:.0e} {w.quantity} ({w.framework_pair} {w.dtype})")
        else:  # values within atol of 0: the absolute error is what is judged
            parts.append(f"abs {w.max_abs_err:.1e} / {w.atol:.0e} {w.quantity} ({w.framework_pair} {w.dtype})")
    unsupported = len({(r.framework_pair, r.dtype) for r in rows if r.verdict == "unsupported"})
    if unsupported:
        parts.append(f"{unsupported} unsupported")
    errors = sum(1 for r in rows if r.verdict == "FAIL" and math.isnan(r.max_abs_err))
    if errors:
        parts.append(f"{errors} error{'s' if errors > 1 else ''}")
    return f"{rows[0].case:<34} {case_verdict(rows):<9} {'; '.join(parts)}".rstrip()


def detail_lines(rows: list[Any], verbose: bool = False) -> list[str]:
    """The rows of a case: every row with ``verbose``, else a line per failing (pair, dtype)
    naming its worst quantity. A row without numbers (an exception, a wrong structure, a case the
    implementation cannot run) prints its reason; a located failure its first divergence and
    what its pattern usually means."""
    if verbose:
        shown = rows
    else:
        groups: dict[tuple[str, str], list[Any]] = {}
        for row in rows:
            groups.setdefault((row.framework_pair, row.dtype), []).append(row)
        shown = [max(g, key=_rank) for g in groups.values() if any(r.verdict == "FAIL" for r in g)]
    lines = []
    located: set[tuple[str, str]] = set()
    for r in shown:
        head = f"{r.case:<34} {r.framework_pair:<12} {r.dtype:<7} {r.quantity:<14} "
        if math.isnan(r.max_abs_err) and r.detail:
            lines.append(f"{r.case} {r.framework_pair} {r.dtype} {r.quantity} {r.verdict}: {r.detail}")
        else:
            lines.append(
                f"{head}{r.max_abs_err:>9.2e} {r.max_rel_err:>9.2e} {r.rtol:>5.0e} {r.stability:>5.3g}  {r.verdict}"
            )
        if r.divergence is not None and (r.framework_pair, r.dtype) not in located:
            located.add((r.framework_pair, r.dtype))
            lines.append(f"  first divergence: {where({**r.divergence, 'note': ''})}")
            for label in ("note", "pattern"):
                if r.divergence.get(label):
                    lines += wrap(f"  {label}: {r.divergence[label]}")
    return lines


def wrap(text: str, indent: str = "    ") -> list[str]:
    """``text`` in lines of at most :data:`WIDTH` characters (never inside a word or a name)."""
    return textwrap.wrap(text, WIDTH, subsequent_indent=indent, break_long_words=False, break_on_hyphens=False)


def table_lines(rows: list[Any], verbose: bool = False) -> list[str]:
    """What ``check`` prints for the rows of one or more cases: per case its line, then (failing
    cases, or every case with ``verbose``) its rows under :data:`DETAIL_HEADER`."""
    by_case: dict[str, list[Any]] = {}
    for row in rows:
        by_case.setdefault(row.case, []).append(row)
    lines = []
    for case_rows in by_case.values():
        lines.append(case_line(case_rows))
        details = detail_lines(case_rows, verbose)
        if details:
            lines += [DETAIL_HEADER, *details]
    return lines


# --- the verdict --------------------------------------------------------------------------------------


def _under_test(row: Any) -> str | None:
    """The implementation a row checks: the actual side of its pair; None for the reference held
    to its own float64 results (``jax64~jax``), which is not under test."""
    reference, _, actual = row.framework_pair.partition("~")
    return None if reference == f"{actual}64" else actual


def _dtype(row: Any) -> str:
    return str(row.dtype)


def _kind(row: Any) -> str:
    return "trajectory cases" if row.case.startswith("trajectory") else "gradient cases"


def coverage_gaps(rows: list[Any]) -> list[tuple[str, str, str]]:
    """``(implementation, what, why)`` for each implementation under test with nothing compared
    at all (``what`` is "any case"), in a dtype it was asked for, or in a class of cases
    (gradient, trajectory): every such row unsupported or not compared."""
    gaps = []
    # The reference of compared rows is what the others are held to, not under test itself: where it
    # cannot run a case (the oracle's trajectories) the next implementation stands in for it there.
    references = {r.framework_pair.partition("~")[0].removesuffix("64") for r in rows if r.verdict in COMPARED}
    for impl in dict.fromkeys(x for x in map(_under_test, rows) if x is not None and x not in references):
        mine = [r for r in rows if _under_test(r) == impl]
        if not any(r.verdict in COMPARED for r in mine):
            gaps.append((impl, "any case", _reasons(mine)))
            continue
        for key in (_dtype, _kind):
            for value in sorted({key(r) for r in mine}):
                here = [r for r in mine if key(r) == value]
                if not any(r.verdict in COMPARED for r in here):
                    gaps.append((impl, value, _reasons(here)))
    return gaps


def _reasons(rows: list[Any]) -> str:
    reasons = sorted({r.detail for r in rows if r.detail})
    return "; ".join(reasons[:2]) + (" …" if len(reasons) > 2 else "") if reasons else "nothing returned"


def overall_ok(rows: list[Any], strict: bool = False) -> bool:
    """No FAIL row, and something of every implementation under test compared; with ``strict``,
    no unsupported row and no dtype left uncompared either."""
    if not rows or not any(r.verdict in COMPARED for r in rows):
        return False
    gaps = coverage_gaps(rows)
    if any(what == "any case" for _, what, _ in gaps) or (strict and gaps):
        return False
    return all(
        row.verdict in ("ok", "unstable", "not compared") or (row.verdict == "unsupported" and not strict)
        for row in rows
    )


def summary(rows: list[Any], strict: bool = False) -> str:
    cases = {r.case for r in rows}
    failed = sorted({r.case for r in rows if r.verdict == "FAIL"})
    unsupported = sorted({r.case for r in rows if r.verdict == "unsupported"})
    unstable = sorted({r.case for r in rows if not r.stable})
    numbers = [
        r.max_rel_err
        for r in rows
        if r.dtype == "float64" and r.stable and not math.isnan(r.max_rel_err) and relative_is_meaningful(r)
    ]
    worst64 = max(numbers, default=0.0)
    gaps = coverage_gaps(rows)
    ok = overall_ok(rows, strict)
    verdict = "FAIL" if not ok else ("INCOMPLETE" if gaps else "PASS")
    compared = sum(1 for r in rows if r.verdict in COMPARED)
    line = (
        f"{verdict}: {len(cases)} cases, {compared} comparisons; {len(failed)} failing, "
        f"{len(unstable)} unstable (reported, not asserted), {len(unsupported)} with unsupported pairs"
    )
    extra = [
        f"worst stable float64 relative error {worst64:.2e} (values above atol)"
        + ("; unsupported pairs (--strict: counted as failing)" if strict and unsupported else "")
    ]
    extra += _unsupported_lines(rows)
    for impl, what, why in gaps:
        fails = "fails the check" if what == "any case" or strict else "--strict fails this"
        extra.append(f"not compared: {impl} in {what} ({why}); {fails}")
    if failed:
        extra.append("failing: " + ", ".join(_failing_case(rows, case) for case in failed))
        extra += _patterns(rows, failed)
    if any(math.isnan(r.stability) or math.isinf(r.max_rel_err) for r in rows if r.verdict in COMPARED):
        extra.append(LEGEND)
    return "\n".join([*wrap(line), *(part for text in extra for part in wrap(text))])


def _failing_case(rows: list[Any], case: str) -> str:
    bad = [r for r in rows if r.case == case and r.verdict == "FAIL"]
    quantities = sorted({f"{r.framework_pair} {r.dtype} {r.quantity}" for r in bad})
    return f"{case} ({'; '.join(quantities[:3])}{' ...' if len(quantities) > 3 else ''})"


def _unsupported_lines(rows: list[Any]) -> list[str]:
    """One line per reason an implementation gave for not running cases, with how many."""
    counts: dict[str, set[str]] = {}
    for r in rows:
        if r.verdict == "unsupported":
            counts.setdefault(r.detail, set()).add(r.case)
    return [f"unsupported in {len(cases)} case{'s' if len(cases) > 1 else ''}: {why}" for why, cases in counts.items()]


def _patterns(rows: list[Any], failed: list[str]) -> list[str]:
    """What the failures' patterns usually mean (``parity.localise.explain``), once each."""
    found: dict[str, set[str]] = {}
    for r in rows:
        pattern = (r.divergence or {}).get("pattern") if r.verdict == "FAIL" else None
        if pattern:
            found.setdefault(pattern, set()).add(r.case)
    lines = [f"pattern ({len(cases)} of {len(failed)} failing cases): {p}" for p, cases in found.items()]
    first_order_passed = any(
        r.case not in failed and "-first" in r.case and r.verdict in ("ok", "unstable") for r in rows
    )
    if failed and first_order_passed and all(c.endswith("-second") for c in failed):
        lines.append("only second-order cases fail while first-order ones pass: look at how the inner gradient is kept")
    return lines


# --- progress ----------------------------------------------------------------------------------------


@dataclasses.dataclass
class Progress:
    """A case counter with an estimate of the time left, on standard error: rewritten in place on
    a terminal, else a line every ``every`` cases (none for a run shorter than that)."""

    total: int
    stream: TextIO = dataclasses.field(default_factory=lambda: sys.stderr)
    every: int = 25
    start: float = dataclasses.field(default_factory=time.monotonic)
    shown: bool = False

    def _tty(self) -> bool:
        isatty = getattr(self.stream, "isatty", None)
        return bool(isatty and isatty())

    def clear(self) -> None:
        """Remove the in-place counter before other lines are printed."""
        if self.shown:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self.shown = False

    def update(self, done: int) -> None:
        if done >= self.total or (not self._tty() and done % self.every):
            return
        elapsed = time.monotonic() - self.start
        left = elapsed / done * (self.total - done)
        text = f"progress: {done}/{self.total} cases, {_duration(elapsed)} so far, about {_duration(left)} left"
        if self._tty():
            self.stream.write(f"\r{text}")
            self.shown = True
        else:
            self.stream.write(text + "\n")
        self.stream.flush()


def _duration(elapsed: float) -> str:
    seconds = round(elapsed)
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"

"""A small deterministic all-pairs (pairwise) covering design.

Given axes (each a tuple of values) it returns rows, one value per axis, such that for every two
axes every pair of their values appears in some row, except pairs no allowed row can hold. It is
the greedy construction: take the first pair not yet covered, then fill the other axes one at a
time with the value that covers the most pairs still uncovered (ties: the earlier value). Not the
smallest design, but deterministic (no randomness, no dependence on hash order), so case names
and counts are stable from run to run and machine to machine.

``seed`` rows come first and count as covering their pairs: the check matrix seeds the design
with its older rows so that their names survive the growth of the matrix.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from typing import Any

Row = tuple[Any, ...]
# allowed(partial): whether an assignment {axis index: value} can be part of a valid row.
Allowed = Callable[[dict[int, Any]], bool]


def _always(_: dict[int, Any]) -> bool:
    return True


def required_pairs(axes: Sequence[Sequence[Any]], allowed: Allowed = _always) -> set[tuple[int, int, int, int]]:
    """``(axis i, value index a, axis j, value index b)`` with i < j for every allowed pair."""
    pairs = set()
    for i, j in itertools.combinations(range(len(axes)), 2):
        for a, b in itertools.product(range(len(axes[i])), range(len(axes[j]))):
            if allowed({i: axes[i][a], j: axes[j][b]}):
                pairs.add((i, a, j, b))
    return pairs


def covered_by(axes: Sequence[Sequence[Any]], row: Row) -> set[tuple[int, int, int, int]]:
    """The pairs (as in :func:`required_pairs`) a full row covers."""
    index = [list(axis).index(value) for axis, value in zip(axes, row, strict=True)]
    return {(i, index[i], j, index[j]) for i, j in itertools.combinations(range(len(axes)), 2)}


def all_pairs(axes: Sequence[Sequence[Any]], allowed: Allowed = _always, seed: Sequence[Row] = ()) -> list[Row]:
    """The seed rows, then greedy rows until every allowed pair of values is covered.

    Every seed row must be allowed; each added row is (``allowed`` is asked of every partial row
    built, so it must be a constraint on pairs of axes: a partial row that passes extends to a full
    one that does).
    """
    uncovered = required_pairs(axes, allowed)
    rows: list[Row] = []
    for row in seed:
        if not allowed(dict(enumerate(row))):
            raise ValueError(f"seed row {row!r} is not allowed")
        rows.append(tuple(row))
        uncovered -= covered_by(axes, row)
    while uncovered:
        i, a, j, b = min(uncovered)
        chosen = {i: a, j: b}  # axis -> value index
        for k in range(len(axes)):
            if k not in chosen:
                chosen[k] = _best_value(axes, chosen, k, uncovered, allowed)
        row = tuple(axes[k][chosen[k]] for k in range(len(axes)))
        rows.append(row)
        uncovered -= covered_by(axes, row)
    return rows


def _best_value(
    axes: Sequence[Sequence[Any]],
    chosen: dict[int, int],
    k: int,
    uncovered: set[tuple[int, int, int, int]],
    allowed: Allowed,
) -> int:
    """The value index of axis ``k`` that, with the values chosen so far, covers most uncovered pairs."""
    best, best_gain = -1, -1
    for v in range(len(axes[k])):
        partial = {m: axes[m][c] for m, c in chosen.items()} | {k: axes[k][v]}
        if not allowed(partial):
            continue
        gain = sum(((m, c, k, v) if m < k else (k, v, m, c)) in uncovered for m, c in chosen.items())
        if gain > best_gain:
            best, best_gain = v, gain
    if best < 0:
        raise ValueError(f"no allowed value on axis {k} for the partial row {chosen}")
    return best

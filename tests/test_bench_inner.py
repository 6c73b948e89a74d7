"""The bench's inner-optimiser settings (issue 19): an Adam or momentum inner loop timed against
SGD's at the same point, by the same rows; the ratio is a declared target of both twins."""

from __future__ import annotations

import math
import os

import pytest

from parity import bench
from parity.bench import Setting
from parity.bench.rows import targets_of_twins

TINY = Setting("seed-alpha", T=2, B=3, width=8)
TINY_ADAM = Setting("seed-alpha", T=2, B=3, width=8, inner_optimizer="adam")


def test_a_setting_carries_its_inner_optimizer_into_the_config_and_label():
    assert TINY_ADAM.cfg().inner_optimizer == "adam" and TINY.cfg().inner_optimizer == "sgd"
    assert TINY_ADAM.cfg().replace(inner_optimizer="sgd") == TINY.cfg()
    assert TINY_ADAM.label.endswith(" adam") and TINY.label == "seed-alpha T=2 B=3 w=8"
    assert bench.ADAM_BATCH_POINT.cfg().inner_steps == 5 and bench.ADAM_BATCH_POINT.cfg().meta_batch == 25


def test_each_twin_declares_the_adam_over_sgd_goal():
    goals = {t.name: (t.op, t.goal) for t in targets_of_twins() if "adam / sgd" in t.name}
    assert goals == {
        "jax adam / sgd inner loop, time per step, B=25 T=5": ("<=", 1.5),
        "torch adam / sgd inner loop, time per step, B=25 T=5": ("<=", 2),
    }


@pytest.fixture(scope="module")
def result():
    saved = os.environ.get("XLA_FLAGS")
    settings = [(TINY, ["jax", "torch"]), (TINY_ADAM, ["seed-loop", "jax", "torch"])]
    yield bench.run_bench(settings=settings, repeats=2, min_call_s=0.001, command="pytest", pin=False)
    if saved is None:
        os.environ.pop("XLA_FLAGS", None)
    else:
        os.environ["XLA_FLAGS"] = saved


@pytest.mark.slow  # four compiles: about 20 s on a quiet core, a minute on a loaded one
def test_adam_rows_are_timed_apart_and_the_ratio_is_theirs(result):
    rows = {(r["impl"], r["inner_optimizer"]): r for r in result["rows"]}
    assert sorted(rows) == [("jax", "adam"), ("jax", "sgd"), ("torch", "adam"), ("torch", "sgd")]
    for impl in ("jax", "torch"):
        sgd, adam = rows[(impl, "sgd")], rows[(impl, "adam")]
        assert math.isfinite(adam["us_per_step"]) and adam["us_per_step"] > 0
        # Adam carries m and v through the loop: its compiled program is a different, larger one.
        if impl == "jax":
            assert adam["xla_total_mb"] > sgd["xla_total_mb"]
        declared = [bench.Target("ratio", bench.optimizer_ratio(impl, TINY_ADAM), "<=", 1e9)]
        (target,) = bench.targets([bench.Row(**_fields(r)) for r in result["rows"]], declared=declared)
        assert target["value"] == pytest.approx(adam["us_per_step"] / sgd["us_per_step"], rel=1e-12)
        assert target["met"] is True
    # The seed's loop has only plain gradient steps: asked for at the Adam point, it is left out.
    assert not any(r["impl"] == "seed-loop" for r in result["rows"])
    (skip,) = [s for s in result["skipped"] if s["impl"] == "seed-loop"]
    assert skip == {"impl": "seed-loop", "setting": TINY_ADAM.label, "reason": "no adam inner optimiser (only sgd)"}
    table = bench.table_lines(result)
    # Columns: impl config T B w inner (remat blank).
    assert sum(line.split()[5] == "adam" for line in table[1:5]) == 2


def _fields(row: dict) -> dict:
    names = set(bench.Row.__dataclass_fields__)
    return {k: v for k, v in row.items() if k in names}

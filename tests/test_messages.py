"""What the messages say: the verdict names the tolerance that decided it; the thread default."""

from __future__ import annotations

import numpy as np

from parity.compare import compare_leaf, decided_by, margin, tolerance, verdict_reason
from parity.config import MAML_PAPER, SEED_ALPHA


def test_tiny_values_pass_on_the_absolute_tolerance_and_say_so():
    # The demo's grad/b2: values ~1e-17 whose relative error is 3 but whose absolute error is nothing.
    leaf = compare_leaf("grad/b2", np.array([6.9e-18]), np.array([2.8e-17]), tolerance("float64", "grad/b2"))
    assert leaf.ok and leaf.max_rel_err > 1
    assert decided_by(leaf) == "absolute"
    assert verdict_reason(leaf) == "max abs err 2.1e-17 <= atol 1e-12 (values ~6.9e-18; relative error not meaningful)"


def test_ordinary_values_pass_on_the_relative_tolerance_and_a_failure_shows_the_sum():
    tol = tolerance("float32", "grad/w0")
    leaf = compare_leaf("grad/w0", np.array([0.5, -2.0]), np.array([0.5, -2.0001]), tol)
    assert leaf.ok and decided_by(leaf) == "relative"
    assert verdict_reason(leaf).startswith("max rel err 5e-05 <= rtol 0.0002 (max abs err 0.0001, values ~2)")
    assert 0.2 < margin(leaf) < 0.3  # 1e-4 of an allowance of 1e-6 + 2e-4 * 2
    bad = compare_leaf("grad/w0", np.array([0.5, -2.0]), np.array([0.5, -2.01]), tol)
    assert not bad.ok and margin(bad) > 1
    assert verdict_reason(bad).startswith("max abs err 0.01 > atol 1e-06 + rtol 0.0002 x max|ref| 2 = 0.0004")
    nan = compare_leaf("outer_loss", np.array(1.0), np.array(np.nan), tolerance("float64", "outer_loss"))
    assert verdict_reason(nan).startswith("non-finite")


def test_thread_default_is_one_for_seed_sized_work_and_the_flag_wins(monkeypatch):
    from parity import threads

    monkeypatch.setattr(threads, "_load_average", lambda: 0.0)  # an idle machine
    assert threads.choose(None, SEED_ALPHA) == (1, "auto: small model, one thread is fastest")
    assert threads.work_size(SEED_ALPHA) < threads.SMALL_WORK
    big = MAML_PAPER.replace(hidden=(256, 256))
    count, why = threads.choose(None, big)
    assert count == threads.available_cores() and why.startswith("auto: larger model")
    assert threads.choose(3, SEED_ALPHA) == (3, "--threads")
    monkeypatch.setattr(threads, "_load_average", lambda: float(threads.available_cores()))  # a busy one
    assert threads.choose(None, big)[0] == 1
    assert threads.choose(None, big)[1].startswith("auto: larger model, but the machine is busy")


def test_apply_sets_torch_threads():
    import torch

    from parity import threads

    before = torch.get_num_threads()
    try:
        line = threads.apply(1, ("torch",))
        assert torch.get_num_threads() == 1
        assert line == "1 CPU thread (torch 1)"
    finally:
        torch.set_num_threads(before)

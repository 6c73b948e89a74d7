"""A downstream suite checking its own MAML implementation with the maml-parity plugin."""

import pytest


def test_matches_the_reference(maml_parity_case):
    """One test per matrix case (the quick subset, see pytest.ini); fails with the table of what differed."""
    maml_parity_case.check()


@pytest.mark.maml_parity(cases="-second")
def test_second_order_against_the_numpy_oracle(maml_parity_case):
    """The second-order cases again, against the framework-free oracle (float64 only)."""
    rows = maml_parity_case.check(reference="numpy")
    assert any(row.framework_pair == "numpy~torchfunc" and row.verdict == "ok" for row in rows)


def test_a_named_case_by_hand(maml_parity):
    """A hand-written check: the rows come back for assertions of your own."""
    rows = maml_parity.check(None, "T3-a0.1-mse-fixed-first")
    float64 = [row for row in rows if row.dtype == "float64" and row.framework_pair == "jax~torchfunc"]
    assert float64 and max(row.max_rel_err for row in float64) <= 1e-10


def test_golden(maml_parity_golden):
    """Losses and meta-gradients at the shared start, against tests/test_contract/base.npz."""
    maml_parity_golden.check(None, "base")

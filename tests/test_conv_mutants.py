"""``check`` on a classification case catches the port bugs of issue 18 §7, each in a user
implementation (``tests/conv_mutants_impls.py``), and names where each first parts from the
reference: the conv block, the loss, the parameter; the PyTorch twin loaded the same way passes.

The episodes come from this file's generator (the family's sampler is patched), so the test is about
the harness and the objective, not about a data set."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from parity.cli import main
from parity.families.classification import Classification, EpisodeBatch

ROOT = Path(__file__).resolve().parent.parent
IMPLS = ROOT / "tests" / "conv_mutants_impls.py"
CASE = "cls-T1-max-all-eps1e-3"
STRIDE_CASE = "cls-T2-stride-no_bn-eps1e-5-scalar-k2"  # stride-2 convolutions: where 'SAME' padding differs


def _episodes(self, rng, batch_size, stream=0):
    """N noisy class prototypes per episode, labels permuted, one-hot (float64)."""
    N, S = self.n_way, self.image_size
    prototypes = rng.uniform(0.0, 1.0, (batch_size, N, 1, S, S))

    def draw(per_class):
        labels = np.stack([rng.permutation(np.repeat(np.arange(N), per_class)) for _ in range(batch_size)])
        x = prototypes[np.arange(batch_size)[:, None], labels] + 0.3 * rng.standard_normal(
            (batch_size, N * per_class, 1, S, S)
        )
        return x, np.eye(N)[labels]

    (xs, ys), (xq, yq) = draw(self.k_support), draw(self.k_query)
    return EpisodeBatch(xs, ys, xq, yq, np.tile(np.arange(N), (batch_size, 1)))


@pytest.fixture(autouse=True)
def _own_episodes(monkeypatch):
    monkeypatch.setattr(Classification, "sample", _episodes)


def check(capsys, tmp_path, impl, case=CASE):
    argv = ["check", "--quick", "--cases", case, "--json", str(tmp_path / "check.json"), "--impl", "jax"]
    code = main([*argv, "--impl", f"{IMPLS}:{impl}"])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out + err, json.loads((tmp_path / "check.json").read_text())


def test_the_control_passes_the_classification_case(capsys, tmp_path):
    code, out, document = check(capsys, tmp_path, "CONTROL")
    assert code == 0, out
    rows = [r for r in document["rows"] if r["framework_pair"] == "jax~control" and r["dtype"] == "float64"]
    assert rows and all(r["verdict"] == "ok" for r in rows)
    # the conv biases' meta-gradients are zero (batch norm subtracts them): rounding on both sides
    biases = {f"grad/b{i}" for i in range(2)}
    assert all(r["max_rel_err"] <= 1e-10 for r in rows if r["quantity"] not in biases), rows
    assert all(r["max_abs_err"] <= 1e-14 for r in rows if r["quantity"] in biases), rows


def test_query_labels_permuted_apart_from_the_support_labels_are_caught(capsys, tmp_path):
    code, out, document = check(capsys, tmp_path, "LABELS_REPERMUTED")
    assert code == 1, out
    failed = {r["quantity"] for r in document["rows"] if r["verdict"] == "FAIL" and r["dtype"] == "float64"}
    # the support set is untouched (its losses agree); the query loss and every meta-gradient do not
    assert {"outer_loss", "grad/w0", "grad/w_head"} <= failed and "inner_losses" not in failed, failed
    assert f"failing: {CASE} (" in out


@pytest.mark.parametrize(
    ("impl", "case", "where"),
    [
        # a forward-pass bug at every block shows first in block 0's output on the support set
        ("HWIO_READ_AS_OIHW", CASE, "inner step 0, activation/block0 task "),
        # compiles the stride-2 case (about a minute on a loaded core); scripts/mutants plants it in CI
        pytest.param("SAME_PADDING", STRIDE_CASE, "inner step 0, activation/block0 task ", marks=pytest.mark.slow),
        ("BN_EPS_1E5", CASE, "inner step 0, activation/block0 task "),
        ("BN_RUNNING_STATS", CASE, "inner step 0, activation/block0 task "),
        # the layers agree, the loss on them does not
        ("CROSS_ENTROPY_SUM", CASE, "inner step 0, support_loss task "),
        # the forward pass and the inner gradient agree; the first conv weight is not stepped
        ("HEAD_ONLY", CASE, "inner step 0, adapted/w0 task "),
        # the support set agrees to the end of the inner loop; the query loss does not
        ("LABELS_REPERMUTED", CASE, "after the inner loop, query_loss task "),
    ],
)
def test_each_port_bug_fails_check_named_where_it_first_differs(capsys, tmp_path, impl, case, where):
    code, out, document = check(capsys, tmp_path, impl, case)
    assert code == 1, out
    lines = [line for line in out.splitlines() if line.startswith("  first divergence: ")]
    assert lines and all(line.startswith(f"  first divergence: {where}") for line in lines), out
    located = [r["divergence"] for r in document["rows"] if r["verdict"] == "FAIL" and r.get("divergence")]
    assert located and located[0]["inner_step"] in (0, None), located[0]

"""The report of a non-default run: the tables and figures it names exist and parse; a write that
fails part way leaves the previous report whole."""

from __future__ import annotations

import errno
import json
import re
import struct
from pathlib import Path

import pytest

from parity.cli import main

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, f"{path.name} is not a PNG"
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


@pytest.fixture(scope="module")
def meta_sgd_run(tmp_path_factory) -> Path:
    """A meta-sgd-like run (per-parameter α, MSE, ReLU, meta-batch 25), a few steps, one phase shift."""
    run = tmp_path_factory.mktemp("report") / "meta-sgd"
    common = ["--preset", "meta-sgd", "--hidden", "8", "8", "--iterations", "12"]
    assert main(["train", "--framework", "jax", *common, "--out", str(run), "--no-progress"]) == 0
    eval_args = ["--tasks", "12", "--max-steps", "3", "--phase-shift", "pi", "--pretrain-steps", "5"]
    assert main(["eval", str(run), *eval_args, "--baseline-alpha", "tuned"]) == 0
    assert main(["report", str(run)]) == 0
    return run


def test_report_names_tables_and_figures_that_exist_and_parse(meta_sgd_run):
    text = (meta_sgd_run / "report.md").read_text()
    figures = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert sorted(figures) == ["adaptation.png", "alpha.png", "fit.png", "phase_shift.png", "training_loss.png"]
    for name in figures:
        width, height = png_size(meta_sgd_run / name)
        assert 300 <= width <= 2000 and 300 <= height <= 2000, (name, width, height)
    # Every Markdown table is rectangular: no cells run together, none missing.
    tables = re.findall(r"((?:^\|.*\|\n)+)", text, flags=re.MULTILINE)
    assert len(tables) >= 4
    for table in tables:
        widths = {line.count("|") for line in table.splitlines()}
        assert len(widths) == 1, table
    # One table per phase shift, the shift named as such, with every starting point.
    assert "**phase shift 3.142 (π)**: query MSE after k adaptation steps" in text
    section = text.split("**phase shift 3.142 (π)**", 1)[1].split("\n\n", 2)[1]
    assert [line.split("|")[1].strip() for line in section.splitlines()[2:]] == [
        "meta-learned init",
        "random init",
        "pretrained (plain regression)",
    ]
    assert "No task diverged" in text or "**Diverged tasks**" in text
    # The tuned baselines: the α chosen is the grid's best on the tuning tasks, and the report says it.
    result = json.loads((meta_sgd_run / "eval.json").read_text())
    tuned = result["baseline_alpha"]
    for name, chosen in tuned["chosen"].items():
        scores = [(m, a) for m, a in zip(tuned["tuning_mse"][name], tuned["grid"]) if m is not None]
        assert chosen == min(scores)[1]
        assert f"α = {chosen:g} (tuned on {tuned['tuning_tasks']} separate tasks)" in text
    for section_name in ("## Config", "## Versions and hardware", "## Meta-training"):
        assert section_name in text


def test_a_failed_write_leaves_the_previous_report_whole(meta_sgd_run, monkeypatch, capsys):
    from parity import plots

    before = {p.name: p.read_bytes() for p in meta_sgd_run.iterdir() if p.suffix in (".md", ".png")}

    def full_disk(result, cfg, path):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(plots, "phase_shift_figure", full_disk)
    assert main(["report", str(meta_sgd_run)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("maml-parity: error: io: No space left on device (") and "phase_shift.png" in err
    after = {p.name: p.read_bytes() for p in meta_sgd_run.iterdir() if p.suffix in (".md", ".png")}
    assert after == before  # not one figure replaced: they are moved in only once all are written
    assert not [p for p in meta_sgd_run.iterdir() if p.name.startswith(".report-")]  # no temporary left


@pytest.mark.slow
def test_demo_writes_one_report_with_parity_and_both_twins_alpha(tmp_path, capsys):
    from parity.demo import run_demo

    assert run_demo(tmp_path, iterations=3, progress=False, eval_tasks=4) == 0
    out = capsys.readouterr().out
    # The parity lines name the deciding tolerance and the reason.
    for dtype in ("float64", "float32"):
        line = next(line for line in out.splitlines() if line.strip().startswith(f"{dtype}:"))
        assert "closest to its limit" in line and "decided by the" in line and line.endswith("-> ok")
        assert ("<= atol" in line) or ("<= rtol" in line)
    assert out.strip().endswith(f"report: {tmp_path / 'report.md'}")
    text = (tmp_path / "report.md").read_text()
    demo = json.loads((tmp_path / "demo.json").read_text())
    # The α table of both twins beside the seed's column, from the two runs' metrics.
    jax_alpha = json.loads((tmp_path / "jax" / "metrics.jsonl").read_text().splitlines()[0])["alpha"]
    torch_alpha = json.loads((tmp_path / "torch" / "metrics.jsonl").read_text().splitlines()[0])["alpha"]
    assert "| step | α, JAX twin | α, PyTorch twin | α, the seed's run |" in text
    assert f"| 0 | {jax_alpha:.5f} | {torch_alpha:.5f} |  |" in text
    # The parity section: every quantity of both dtypes, with its errors, tolerances and verdict.
    rows = [line for line in text.splitlines() if line.startswith("| float64 |") or line.startswith("| float32 |")]
    assert len(rows) == len(demo["parity"]) == 18  # 9 quantities (losses, dL/dα, 6 parameter grads) x 2
    for row, record in zip(rows, demo["parity"]):
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[:2] == [record["dtype"], record["quantity"]]
        assert float(cells[2]) == pytest.approx(record["max_abs_err"], rel=0.05, abs=1e-300)
        assert cells[7] == record["decided_by"] and cells[8] == "ok"
    # The evaluation and the figures, named relative to the report, exist and parse.
    assert "**phase shift 3.142 (π)**" in text
    figures = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert len(figures) == 6 and "twins.png" in figures  # the run's five and the twins side by side
    for name in figures:
        png_size(tmp_path / name)

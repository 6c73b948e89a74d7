"""``maml-parity demo``: the seed's learned-α experiment trained in every twin (JAX first, the
reference), each other twin checked against it, then the reference's run evaluated on held-out and
phase-shifted tasks against random and pretrained inits, with a report."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from parity import registry
from parity.checkpoint import atomic_write
from parity.compare import compare_trees, decided_by, margin, verdict_reason
from parity.config import SEED_ALPHA, Config
from parity.demo_report import write_demo_report
from parity.run import train_run
from parity.rundir import RunDir
from parity.tasks import sample_batch
from parity.twins import Twin, load, meta_results

# What the seed printed for α (part 4): a stochastic run, so the shape, not the digits.
SEED_ALPHA_SEEN = {500: 0.08678, 1000: 0.07558, 2000: 0.04408, 3000: 0.01924, 4000: 0.01521, 4500: 0.01537}
# The seed's part 2 shifted by pi; the steps in between show how fast the meta-learned init degrades.
DEMO_PHASE_SHIFTS = (0.0, np.pi / 4, np.pi / 2, 3 * np.pi / 4, np.pi)
PARITY_BATCH = 25  # tasks of the fresh meta-batch the twins' gradients are compared on


def run_demo(
    out: Path,
    iterations: int = 5000,
    progress: bool = True,
    eval_tasks: int = 200,
    device: str | None = None,
    precision: str = "default",
    cfg: Config | None = None,
) -> int:
    """Every twin of the registry trains ``cfg`` (default seed-alpha) on ``device``; ``precision`` applies to
    the training runs and the evaluation (the float64 / float32 parity lines always use full float32 matmuls).
    ``progress``: training bars, and a line on standard error before each stretch of work after training."""
    twins = registry.TWINS
    reference = twins[0]
    load(reference, "float64")  # float64 for the parity check at the end: switched on before any array
    cfg = (cfg or SEED_ALPHA).replace(iterations=iterations)
    say, note = _printer(), _notes(progress)
    say(
        f"seed-alpha: T={cfg.inner_steps}, alpha init {cfg.alpha_init} (Adam {cfg.alpha_lr}), "
        f"SGD {cfg.outer_lr}, {iterations} steps, one task per step, {cfg.dtype}"
    )
    runs, train_s = {}, {}
    for name in twins:
        t0 = time.perf_counter()
        twin = load(name, None, device)
        with twin.precision_scope(precision):
            _, rows = train_run(twin, cfg, out / name, progress=progress, precision=precision)
        runs[name] = rows
        train_s[name] = time.perf_counter() - t0
        say(f"{name}: trained in {train_s[name]:.1f} s -> {out / name}")
    alpha_rows, by_twin = alpha_table(runs, iterations, say)

    parity_rows, parity_summary, ok = parity_check(out / reference, twins, cfg, device, say, note)
    evaluate_and_report(out / reference, eval_tasks, say, device, precision, cfg, note)
    demo = {
        "iterations": iterations,
        "train_s": train_s,
        "alpha_rows": alpha_rows,
        "alpha_max_diff": max(by_twin.values(), default=0.0),
        "alpha_max_diff_by_twin": by_twin,
        "parity_batch": PARITY_BATCH,
        "parity": parity_rows,
        "parity_summary": parity_summary,
    }
    atomic_write(out / "demo.json", lambda f: f.write((json.dumps(demo, indent=1) + "\n").encode()))
    note("drawing the figures and writing the report")
    report = write_demo_report(out, demo, {name: out / name for name in twins})
    outputs = ", ".join(f"{out}/{name}" for name in twins)
    say(f"\nfull matrix: maml-parity check   |   outputs: {outputs}, {out}/demo.json")
    say(f"report: {report}")
    return 0 if ok else 1


def parity_check(  # type: ignore[no-untyped-def]
    reference_run: Path, twins: tuple[str, ...], cfg: Config, device: str | None, say, note
) -> tuple[list[dict[str, Any]], dict[str, str], bool]:
    """Every twin's meta-gradient against the first's at the first twin's learned initialisation, in float64
    and float32: the rows, one summary line per dtype and pair, and whether every compared pair agreed."""
    reference = twins[0]
    say(f"\nparity at the {reference}-learned initialisation (a fresh meta-batch of {PARITY_BATCH} tasks):")
    final = dict(np.load(RunDir(reference_run).final))
    params = {k.split("/", 1)[1]: v for k, v in final.items() if k.startswith("params/")}
    rows: list[dict[str, Any]] = []
    summary: dict[str, str] = {}
    ok = True
    for dtype in ("float64", "float32"):
        note(f"{dtype}: every twin's meta-gradient at the learned initialisation (compiling first)")
        cfg_d = cfg.replace(dtype=dtype, meta_batch=PARITY_BATCH)
        results = {name: _meta_grads(name, device, cfg_d, params, float(final["alpha"])) for name in twins}
        for other in twins[1:]:
            key = dtype if len(twins) == 2 else f"{dtype} {reference}~{other}"
            line, failures = _parity_pair(results[reference], results[other], dtype, f"{reference}~{other}", rows)
            ok &= not failures
            summary[key] = line
            say(f"  {key}: {line}")
            for failure in failures:
                say(f"    {failure}")
    return rows, summary, ok


def alpha_table(runs: dict[str, list[dict[str, Any]]], iterations: int, say: Any) -> tuple[list[dict], dict]:
    """α of every twin every 500 steps beside the seed's; the largest difference of each twin from the first."""
    names = list(runs)
    say("\nalpha used at each step (the seed saw 0.087 at step 500, falling to about 0.015 by 4500):")
    say(f"{'step':>6} " + " ".join(f"{n:>9}" for n in names) + f" {'seed':>9}")
    alpha_rows = []
    for step in range(0, iterations, 500):
        seen = SEED_ALPHA_SEEN.get(step)
        row = {"step": step, **{n: runs[n][step]["alpha"] for n in names}, "seed": seen}
        alpha_rows.append(row)
        values = " ".join(f"{row[n]:>9.5f}" for n in names)
        say(f"{step:>6} {values} {'' if seen is None else f'{seen:.5f}':>9}")
    by_twin = {n: max(abs(a["alpha"] - b["alpha"]) for a, b in zip(runs[names[0]], runs[n])) for n in names[1:]}
    return alpha_rows, by_twin


def _parity_pair(
    ref: dict[str, np.ndarray] | str, got: dict[str, np.ndarray] | str, dtype: str, pair: str, rows: list[dict]
) -> tuple[str, list[str]]:
    """One pair's parity line and the quantities outside tolerance; its rows appended to ``rows``. A side
    that does not compute ``dtype`` (its reason, a string) leaves the pair not compared: said so, with
    no rows, never counted as passing."""
    if isinstance(ref, str) or isinstance(got, str):
        return f"not compared ({ref if isinstance(ref, str) else got})", []
    leaves = compare_trees(ref, got, dtype)
    pair_ok = all(leaf.ok for leaf in leaves)
    # The quantity closest to its limit, measured against what its tolerance allows.
    tightest = max(leaves, key=margin)
    line = (
        f"{len(leaves)} quantities {'all within tolerance' if pair_ok else 'NOT all within tolerance'}; "
        f"closest to its limit: {tightest.name}, {verdict_reason(tightest)}, decided by the "
        f"{decided_by(tightest)} tolerance -> {'ok' if pair_ok else 'MISMATCH'}"
    )
    for leaf in leaves:
        rows.append(
            {
                "pair": pair,
                "dtype": dtype,
                "quantity": leaf.name,
                "max_abs_err": leaf.max_abs_err,
                "max_rel_err": leaf.max_rel_err,
                "ref_scale": leaf.ref_scale,
                "rtol": leaf.tol.rtol,
                "atol": leaf.tol.atol,
                "decided_by": decided_by(leaf),
                "reason": verdict_reason(leaf),
                "ok": leaf.ok,
            }
        )
    return line, [f"{leaf.name}: {verdict_reason(leaf)}" for leaf in leaves if not leaf.ok]


def evaluate_and_report(  # type: ignore[no-untyped-def]
    run_dir: Path,
    tasks: int,
    say,
    device: str | None = None,
    precision: str = "default",
    cfg: Config = SEED_ALPHA,
    note=None,
) -> None:
    """The seed's parts 2 and 3 on the reference twin's run: held-out tasks, phase shifts, random and
    pretrained baselines (writes ``run_dir/eval.json``; the report is the demo's)."""
    from parity.eval import EvalSpec, evaluate_run, summary_lines

    reference = registry.TWINS[0]
    spec = EvalSpec(tasks=tasks, max_steps=10, phase_shifts=DEMO_PHASE_SHIFTS, pretrain_steps=1000)
    say(
        f"\nevaluation ({reference}): {tasks} held-out tasks, "
        "adapted from the meta-learned, a random and a pretrained init:"
    )
    t0 = time.perf_counter()
    result = evaluate_run(
        run_dir, framework=reference, spec=spec, device=device, precision=precision, progress=note or False
    )
    for line in summary_lines(result):
        say("  " + line)
    T = cfg.inner_steps
    meta, rand = result["meta"][0]["mse_mean"][T], result["random"][0]["mse_mean"][T]
    shifted = result["meta"][-1]["mse_mean"][T]
    say(
        f"  after T={T} steps: meta MSE {meta:.4f} vs random {rand:.4f} ({rand / meta:.1f}x lower; the seed's claim "
        f"needs >= 3x: {'ok' if rand >= 3 * meta else 'NOT MET'}); shifted by pi: {shifted:.4f} "
        f"({'worse' if shifted > meta else 'NOT worse'} than unshifted)"
    )
    say(f"  evaluated in {time.perf_counter() - t0:.1f} s")


def _meta_grads(  # type: ignore[no-untyped-def]
    name: str, device: str | None, cfg, params: dict[str, np.ndarray], alpha: float
) -> dict[str, np.ndarray] | str:
    """A twin's meta-gradient in ``cfg.dtype`` (precision "highest": the contract's calls run under it),
    or its reason for not computing that dtype."""
    twin: Twin = load(name, None, device)
    reason = twin.supports(cfg)
    if reason is not None:
        return f"{name}: {reason}"
    tasks = tuple(sample_batch(cfg, 10_000_000)[:4])  # a step the training run never reached
    return meta_results(twin, cfg, params, np.asarray(alpha), tasks)


def _printer():  # type: ignore[no-untyped-def]
    def say(line: str = "") -> None:
        print(line, file=sys.stdout, flush=True)

    return say


def _notes(enabled: bool):  # type: ignore[no-untyped-def]
    """Progress lines on standard error (the results stay alone on standard output)."""
    t0 = time.perf_counter()

    def note(line: str) -> None:
        if enabled:
            print(f"demo [{time.perf_counter() - t0:6.1f} s] {line}", file=sys.stderr, flush=True)

    return note

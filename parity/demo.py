"""``maml-parity demo``: the seed's learned-α experiment in JAX, checked against PyTorch, then
evaluated on held-out and phase-shifted tasks against random and pretrained inits, with a report."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

from parity.checkpoint import meta_results
from parity.compare import compare_trees
from parity.config import SEED_ALPHA
from parity.run import train_run
from parity.tasks import sample_batch
from parity.twins import Twin, enable_jax_x64, load

# What the seed printed for α (part 4): a stochastic run, so the shape, not the digits.
SEED_ALPHA_SEEN = {500: 0.08678, 1000: 0.07558, 2000: 0.04408, 3000: 0.01924, 4000: 0.01521, 4500: 0.01537}
# The seed's part 2 shifted by pi; the steps in between show how fast the meta-learned init degrades.
DEMO_PHASE_SHIFTS = (0.0, np.pi / 4, np.pi / 2, 3 * np.pi / 4, np.pi)


def run_demo(
    out: Path,
    iterations: int = 5000,
    progress: bool = True,
    eval_tasks: int = 200,
    device: str | None = None,
    precision: str = "default",
) -> int:
    """Both twins train seed-alpha on ``device``; ``precision`` applies to the training runs and the
    evaluation (the float64 / float32 parity lines always use full float32 matmuls)."""
    for name in ("jax", "torch"):
        load(name, None, device)  # a device either twin cannot see: one line, before any work
    enable_jax_x64()
    cfg = SEED_ALPHA.replace(iterations=iterations)
    say = _printer()
    say(
        f"seed-alpha: T={cfg.inner_steps}, alpha init {cfg.alpha_init} (Adam {cfg.alpha_lr}), "
        f"SGD {cfg.outer_lr}, {iterations} steps, one task per step, {cfg.dtype}"
    )
    runs = {}
    for name in ("jax", "torch"):
        t0 = time.perf_counter()
        twin = load(name, None, device)
        with twin.precision_scope(precision):
            _, rows = train_run(twin, cfg, out / name, progress=progress, precision=precision)
        runs[name] = rows
        say(f"{name}: trained in {time.perf_counter() - t0:.1f} s -> {out / name}")

    say("\nalpha over training (the seed saw 0.087 at step 500, falling to about 0.015 by 4500):")
    say(f"{'step':>6} {'jax':>9} {'torch':>9} {'seed':>9}")
    for step in range(0, iterations, 500):
        seen = SEED_ALPHA_SEEN.get(step)
        say(
            f"{step:>6} {runs['jax'][step]['alpha']:>9.5f} {runs['torch'][step]['alpha']:>9.5f} "
            f"{'' if seen is None else f'{seen:.5f}':>9}"
        )

    say("\nparity at the JAX-learned initialisation (a fresh meta-batch of 25 tasks):")
    ok = True
    final = dict(np.load(out / "jax" / "final.npz"))
    params = {k.split("/", 1)[1]: v for k, v in final.items() if k.startswith("params/")}
    for dtype in ("float64", "float32"):
        results = {}
        for name in ("jax", "torch"):
            twin = load(name, dtype, device)
            with twin.precision_scope("highest"):
                batch = cfg.replace(dtype=dtype, meta_batch=25)
                results[name] = _meta_grads(twin, batch, params, float(final["alpha"]))
        leaves = compare_trees(results["jax"], results["torch"], dtype)
        worst = max(leaves, key=lambda leaf: leaf.max_rel_err)
        ok &= all(leaf.ok for leaf in leaves)
        say(
            f"  {dtype}: {len(leaves)} quantities, worst {worst.name} relative error {worst.max_rel_err:.2e} "
            f"(tolerance {worst.tol.rtol:g}) -> {'ok' if all(leaf.ok for leaf in leaves) else 'MISMATCH'}"
        )
    report = evaluate_and_report(out / "jax", eval_tasks, say, device, precision)
    say(f"\nfull matrix: maml-parity check   |   outputs: {out}/jax, {out}/torch")
    say(f"report: {report}")
    return 0 if ok else 1


def evaluate_and_report(  # type: ignore[no-untyped-def]
    run_dir: Path, tasks: int, say, device: str | None = None, precision: str = "default"
) -> Path:
    """The seed's parts 2 and 3 on the JAX run: held-out tasks, phase shifts, random and pretrained
    baselines; then the figures and report.md. Returns the report's path."""
    from parity.eval import EvalSpec, evaluate_run, summary_lines
    from parity.report import write_report

    spec = EvalSpec(tasks=tasks, max_steps=10, phase_shifts=DEMO_PHASE_SHIFTS, pretrain_steps=1000)
    say(f"\nevaluation (JAX): {tasks} held-out tasks, adapted from the meta-learned, a random and a pretrained init:")
    t0 = time.perf_counter()
    result = evaluate_run(run_dir, framework="jax", spec=spec, device=device, precision=precision)
    for line in summary_lines(result):
        say("  " + line)
    T = SEED_ALPHA.inner_steps
    meta, rand = result["meta"][0]["mse_mean"][T], result["random"][0]["mse_mean"][T]
    shifted = result["meta"][-1]["mse_mean"][T]
    say(
        f"  after T={T} steps: meta MSE {meta:.4f} vs random {rand:.4f} ({rand / meta:.1f}x lower; the seed's claim "
        f"needs >= 3x: {'ok' if rand >= 3 * meta else 'NOT MET'}); shifted by pi: {shifted:.4f} "
        f"({'worse' if shifted > meta else 'NOT worse'} than unshifted)"
    )
    report = write_report(run_dir)
    say(f"  evaluated and plotted in {time.perf_counter() - t0:.1f} s")
    return report


def _meta_grads(twin: Twin, cfg, params: dict[str, np.ndarray], alpha: float) -> dict[str, np.ndarray]:  # type: ignore[no-untyped-def]
    tasks = tuple(sample_batch(cfg, 10_000_000)[:4])  # a step the training run never reached
    return meta_results(twin, cfg, params, np.asarray(alpha), tasks)


def _printer():  # type: ignore[no-untyped-def]
    def say(line: str = "") -> None:
        print(line, file=sys.stdout, flush=True)

    return say

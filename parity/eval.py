"""``maml-parity eval``: how well a meta-trained initialisation adapts to new tasks.

A fixed held-out task set (stream ``EVAL_STREAM``, disjoint from training): ``tasks`` sinusoids
from the run's task family, each with ``shots`` support points drawn from the config's x range and
``QUERY_POINTS`` evenly spaced query points over that range. Three starting points are adapted the
same way on the same tasks — ``S`` steps of the run's inner optimiser (the twin's
``optimizer_step``: SGD, momentum or Adam with its state) on the support points, with the run's
learned α — and scored on the query points after every step (MSE and L1, mean and 95%
confidence interval over tasks):

- ``meta``: the checkpoint's parameters;
- ``random``: fresh parameters from ``init_params`` with another seed (``cfg.seed + 1``);
- ``pretrained``: the run's initial parameters trained by plain regression — the outer optimiser
  on the mean query loss over ``PRETRAIN_BATCH`` training-distribution tasks per step, no inner
  loop (meta-training with ``T = 0``) — for ``pretrain_steps`` steps, in the same twin.

``--phase-shift B`` shifts every task's phase by ``B`` (the seed's part 2: ``π``), keeping its
amplitude, frequency and support inputs: a task family the meta-training never saw.

``eval.json``: ``shots``, ``tasks``, ``max_steps``, ``phase_shifts``, ``query_points``, run facts
(``checkpoint_step``, ``framework``, ``trained_with``, ``dtype``, ``alpha``, ``pretrain_steps``,
``random_seed``, ``device``, ``versions``), then per starting point (``meta``, ``random``,
``pretrained``) a list with one record per phase shift: ``phase_shift``, ``steps`` [S+1],
``mse_mean``, ``mse_ci95``, ``l1_mean``, ``l1_ci95`` (lists over adaptation steps 0..S; ``ci95``
is the half-width 1.96·sd/√n). ``fits`` holds, per phase shift, the first task's curve and every
starting point's prediction after each step (for the fit figure).
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from parity import training
from parity.checkpoint import library_versions
from parity.config import Config, ConfigError
from parity.evals import hardware, keep, read_eval, read_json  # noqa: F401  (read_*: their old home)
from parity.init import alpha_from_variable, init_params
from parity.registry import DEFAULT_TWIN
from parity.rundir import RunDir
from parity.tasks import EVAL_STREAM, sample_batch, sinusoid
from parity.text import alpha_summary, pm, short
from parity.twins import Twin

STARTS = ("meta", "random", "pretrained")
QUERY_POINTS = 100
PRETRAIN_BATCH = 25  # tasks per plain-regression step: the mean over tasks, not one task's curve
Z95 = 1.959963984540054  # two-sided 95% normal quantile
BASELINE_ALPHA_MODES = ("meta", "tuned")
BASELINE_ALPHA_GRID = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3)
TUNING_TASKS = 100  # tasks of their own (sampler step 1 of the held-out stream), never evaluated on


@dataclasses.dataclass(frozen=True)
class EvalSpec:
    """What to evaluate; validated like the config (a bad value raises ConfigError naming it)."""

    tasks: int = 600  # held-out tasks
    shots: int | None = None  # K support points per task; None: the run's k_support
    max_steps: int = 10  # S: scored after 0..S adaptation steps
    phase_shifts: tuple[float, ...] = (0.0, math.pi)  # B: each task's phase + B
    pretrain_steps: int = 2000  # plain-regression steps for the `pretrained` starting point
    # The baselines' (random, pretrained) step size: "meta", the run's α, as the meta init adapts;
    # or "tuned", each its own α from BASELINE_ALPHA_GRID, the one with the lowest query MSE on
    # separate tuning tasks (the MAML paper tuned its pretrained baseline's step size).
    baseline_alpha: str = "meta"

    def __post_init__(self) -> None:
        if self.baseline_alpha not in BASELINE_ALPHA_MODES:
            raise ConfigError(
                "baseline_alpha", f"must be one of {', '.join(BASELINE_ALPHA_MODES)}; got {self.baseline_alpha!r}"
            )
        _check_int("tasks", self.tasks, 2)  # a confidence interval needs two tasks
        if self.shots is not None:
            _check_int("shots", self.shots, 1)
        _check_int("max_steps", self.max_steps, 0)
        _check_int("pretrain_steps", self.pretrain_steps, 0)
        shifts = tuple(self.phase_shifts)
        if not shifts or not all(isinstance(b, (int, float)) and math.isfinite(b) for b in shifts):
            raise ConfigError("phase_shift", f"must be one or more finite numbers (radians), got {list(shifts)!r}")
        object.__setattr__(self, "phase_shifts", tuple(float(b) for b in shifts))


class EvalTasks(NamedTuple):
    """A held-out task set; support inputs drawn, query inputs a fixed grid."""

    x_support: np.ndarray  # [N, K, 1]
    y_support: np.ndarray  # [N, K, 1]
    x_query: np.ndarray  # [N, P, 1], P = QUERY_POINTS evenly spaced over x_range
    y_query: np.ndarray  # [N, P, 1]
    amplitude: np.ndarray  # [N]
    frequency: np.ndarray  # [N]
    phase: np.ndarray  # [N], shift included


def eval_tasks(cfg: Config, n: int, shots: int, phase_shift: float = 0.0, step: int = 0) -> EvalTasks:
    """``n`` held-out tasks with ``shots`` support points, phases shifted by ``phase_shift``.

    A pure function of ``(cfg.seed, n, shots)`` apart from the shift: every shift, starting point
    and framework sees the same amplitudes, frequencies, base phases and support inputs. ``step``
    1 gives the tuning tasks of ``--baseline-alpha tuned``, apart from the evaluation's (step 0).
    """
    batch = sample_batch(cfg.replace(k_support=shots, dtype="float64"), step, stream=EVAL_STREAM, batch_size=n)
    phase = batch.phase + phase_shift  # [N]
    low, high = cfg.x_range
    grid = np.linspace(low, high, QUERY_POINTS)  # [P]
    x_query = np.broadcast_to(grid[None, :, None], (n, QUERY_POINTS, 1))  # [N, P, 1]
    tasks = EvalTasks(
        x_support=batch.x_support,
        y_support=sinusoid(batch.x_support, batch.amplitude, batch.frequency, phase),
        x_query=x_query,
        y_query=sinusoid(x_query, batch.amplitude, batch.frequency, phase),
        amplitude=batch.amplitude,
        frequency=batch.frequency,
        phase=phase,
    )
    # np.array copies: torch warns on (and must never write through) read-only broadcast views.
    return EvalTasks(*(np.array(field, dtype=cfg.dtype) for field in tasks))


def adaptation_curves(
    twin: Twin, params: dict[str, np.ndarray], alpha: Any, tasks: EvalTasks, cfg: Config, max_steps: int
) -> np.ndarray:
    """Predictions on the query points after 0..S steps of the run's inner optimiser: [S+1, N, P].

    ``params`` and ``alpha`` are NumPy; each task adapts its own copy on its support points. The
    steps are the twin's ``optimizer_step`` from its ``INNER_OPTIMIZERS[cfg.inner_optimizer]``
    state, the loop the meta-objective runs (SGD, momentum's buffer, Adam's m, v and step count).
    """
    model, meta = twin.model, twin.meta
    # Evaluation never differentiates through the steps: first order spares torch the
    # second-order graph (and JAX a no-op stop_gradient); the step itself is the same.
    step_cfg = cfg.replace(first_order=True)
    x_s, y_s, x_q = twin.to_arrays((tasks.x_support, tasks.y_support, tasks.x_query), cfg.dtype)
    n = tasks.x_support.shape[0]
    if isinstance(alpha, dict) and cfg.alpha_mode == "per_parameter":  # α gets the task axis too (no rank promotion)
        alpha = {k: np.array(np.broadcast_to(v, (n, *np.shape(v)))) for k, v in alpha.items()}
    alpha_t = twin.to_arrays(alpha, cfg.dtype)
    adapted = meta.broadcast_to_tasks(twin.to_arrays(params, cfg.dtype), y_s)  # leaves [N, ...]
    state = meta.INNER_OPTIMIZERS[cfg.inner_optimizer][0](adapted)
    preds = []
    for step in range(max_steps + 1):
        if step > 0:
            # t = step as the twin's own loop passes it (Adam's bias correction counts from 1)
            t = twin.to_arrays(np.asarray(step, dtype=cfg.dtype), cfg.dtype)
            carry = (twin.differentiable(adapted), state)
            (adapted, state), _ = meta.optimizer_step(carry, t, alpha_t, x_s, y_s, step_cfg)
        preds.append(twin.to_numpy(model.forward(adapted, x_q, cfg))[..., 0])  # [N, P]
    return np.stack(preds)  # [S+1, N, P]


# Query MSE above this is a diverged fit (sinusoid amplitudes here are at most a few units).
DIVERGED_MSE = 1e6


def error_summary(preds: np.ndarray, y: np.ndarray) -> dict[str, list[Any]]:
    """MSE and L1 per task on the query points, then mean and 95% CI over tasks, per step.

    ``preds`` [S+1, N, P], ``y`` [N, P]; statistics in float64 whatever the run's dtype. A task
    whose prediction is no longer finite has diverged: ``diverged`` counts them per step, the
    statistics are over the other tasks, and a step where every task diverged has ``None``
    (JSON null) rather than a NaN passed along. A fit with MSE above ``DIVERGED_MSE`` counts as
    diverged too: its prediction is already off by a thousand times the largest amplitude, and one
    such number would otherwise be the whole mean.
    """
    err = preds.astype(np.float64) - y.astype(np.float64)[None]  # [S+1, N, P]
    with np.errstate(over="ignore", invalid="ignore"):  # diverged tasks are dropped just below
        per_point = {"mse": err**2, "l1": np.abs(err)}
        finite = np.all(np.isfinite(err), axis=-1) & (np.mean(per_point["mse"], axis=-1) <= DIVERGED_MSE)  # [S+1, N]
    out: dict[str, list[Any]] = {"steps": list(range(preds.shape[0]))}
    out["diverged"] = [int(finite.shape[1] - f.sum()) for f in finite]
    for name, values in per_point.items():
        per_task = np.mean(values, axis=-1)  # [S+1, N]
        means: list[float | None] = []
        cis: list[float | None] = []
        for k in range(per_task.shape[0]):
            kept = per_task[k][finite[k]]
            means.append(float(kept.mean()) if kept.size else None)
            cis.append(
                float(Z95 * kept.std(ddof=1) / math.sqrt(kept.size)) if kept.size > 1 else (0.0 if kept.size else None)
            )
        out[f"{name}_mean"], out[f"{name}_ci95"] = means, cis
    return out


def pretrain(twin: Twin, cfg: Config, steps: int) -> dict[str, np.ndarray]:
    """Plain regression from the run's initial parameters: the outer optimiser on the mean query
    loss over ``PRETRAIN_BATCH`` training tasks per step, no inner loop. Returns NumPy params."""
    # T = 0 makes the meta-objective the plain regression loss at the parameters themselves.
    plain = cfg.replace(inner_steps=0, alpha_mode="fixed", meta_batch=PRETRAIN_BATCH, iterations=steps)
    state = training.run(twin, plain)
    values = training.final_values(twin, state)
    return {name: values[f"params/{name}"] for name in cfg.param_names}


def starting_points(
    twin: Twin, cfg: Config, meta_params: dict[str, np.ndarray], pretrain_steps: int
) -> dict[str, dict[str, np.ndarray]]:
    """The three initialisations, as NumPy params in ``cfg.dtype``."""
    return {
        "meta": {k: np.array(v, dtype=cfg.dtype) for k, v in meta_params.items()},
        "random": init_params(cfg, seed=cfg.seed + 1),
        "pretrained": pretrain(twin, cfg, pretrain_steps),
    }


Progress = Callable[[str], None]


def evaluate(
    twin: Twin,
    cfg: Config,
    meta_params: dict[str, np.ndarray],
    alpha: Any,
    spec: EvalSpec,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """The body of ``eval.json`` by the run's task family (:data:`EVALUATORS`). ``progress`` receives
    a line before each stretch of work (pretraining, each phase shift or episode set)."""
    from parity.parts import lookup

    say = progress or (lambda line: None)
    return lookup(EVALUATORS, "family", cfg.family.name)(twin, cfg, meta_params, alpha, spec, say)  # type: ignore[no-any-return]


def evaluate_sinusoid(
    twin: Twin, cfg: Config, meta_params: dict[str, np.ndarray], alpha: Any, spec: EvalSpec, say: Progress
) -> dict[str, Any]:
    """Adapt every starting point on every phase shift's tasks (the module docstring)."""
    shots = cfg.k_support if spec.shots is None else spec.shots
    say(f"pretraining the baseline: {spec.pretrain_steps} steps of plain regression")
    starts = starting_points(twin, cfg, meta_params, spec.pretrain_steps)
    alphas = {name: alpha for name in STARTS}
    baseline: dict[str, Any] = {"mode": spec.baseline_alpha}
    if spec.baseline_alpha == "tuned":
        say(f"tuning the baselines' alpha on {TUNING_TASKS} separate tasks ({len(BASELINE_ALPHA_GRID)} values)")
        baseline = tune_baseline_alpha(twin, cfg, starts, shots, max(1, min(cfg.inner_steps, spec.max_steps)))
        for name, value in baseline["chosen"].items():
            alphas[name] = np.array(value, dtype=cfg.dtype)
    result: dict[str, Any] = {name: [] for name in STARTS}
    fits = []
    for number, shift in enumerate(spec.phase_shifts, 1):
        say(
            f"phase shift {shift:.4g} ({number} of {len(spec.phase_shifts)}): "
            f"{spec.tasks} tasks, {spec.max_steps} steps"
        )
        tasks = eval_tasks(cfg, spec.tasks, shots, shift)
        fit: dict[str, Any] = {
            "phase_shift": shift,
            "amplitude": float(tasks.amplitude[0]),
            "frequency": float(tasks.frequency[0]),
            "phase": float(tasks.phase[0]),
            "x": _rounded(tasks.x_query[0, :, 0]),
            "y": _rounded(tasks.y_query[0, :, 0]),
            "x_support": _rounded(tasks.x_support[0, :, 0]),
            "y_support": _rounded(tasks.y_support[0, :, 0]),
        }
        for name in STARTS:
            preds = adaptation_curves(twin, starts[name], alphas[name], tasks, cfg, spec.max_steps)  # [S+1, N, P]
            result[name].append({"phase_shift": shift, **error_summary(preds, tasks.y_query[..., 0])})
            fit[name] = [_rounded(p) for p in preds[:, 0]]  # [S+1][P], the first task
        fits.append(fit)
    return {
        "shots": shots,
        "tasks": spec.tasks,
        "max_steps": spec.max_steps,
        "phase_shifts": list(spec.phase_shifts),
        "query_points": QUERY_POINTS,
        "inner_loss": cfg.loss,
        "pretrain_steps": spec.pretrain_steps,
        "random_seed": cfg.seed + 1,
        "baseline_alpha": baseline,
        **result,
        "fits": fits,
    }


def tune_baseline_alpha(
    twin: Twin, cfg: Config, starts: dict[str, dict[str, np.ndarray]], shots: int, steps: int
) -> dict[str, Any]:
    """Each baseline's α from ``BASELINE_ALPHA_GRID``: the lowest mean query MSE after ``steps``
    steps on ``TUNING_TASKS`` tasks of their own. A grid value under which any tuning task
    diverges scores null and is never chosen."""
    tasks = eval_tasks(cfg, TUNING_TASKS, shots, 0.0, step=1)
    chosen, scores = {}, {}
    for name in ("random", "pretrained"):
        mses: list[float | None] = []
        for value in BASELINE_ALPHA_GRID:
            preds = adaptation_curves(twin, starts[name], np.array(value, dtype=cfg.dtype), tasks, cfg, steps)
            summary = error_summary(preds[[steps]], tasks.y_query[..., 0])
            mses.append(summary["mse_mean"][0] if summary["diverged"][0] == 0 else None)
        finite = [(m, a) for m, a in zip(mses, BASELINE_ALPHA_GRID) if m is not None]
        chosen[name] = min(finite)[1] if finite else BASELINE_ALPHA_GRID[0]
        scores[name] = mses
    return {
        "mode": "tuned",
        "grid": list(BASELINE_ALPHA_GRID),
        "steps": steps,
        "tuning_tasks": TUNING_TASKS,
        "tuning_mse": scores,
        "chosen": chosen,
    }


def evaluate_run(
    run_dir: Path,
    framework: str = DEFAULT_TWIN,
    dtype: str | None = None,
    spec: EvalSpec | None = None,
    write: bool = True,
    device: str | None = None,
    precision: str = "default",
    progress: bool | Progress = True,
    ckpt: Any = None,
    twin: Twin | None = None,
) -> dict[str, Any]:
    """Evaluate the checkpoint in ``run_dir`` in one twin on ``device`` (cpu | gpu | cuda:N | tpu; None:
    the framework's default), whichever device trained it; writes ``run_dir/eval.json`` and keeps a
    copy no later evaluation replaces, ``run_dir/evals/<framework>-<n>.json`` (``parity.evals``).
    ``progress``: True prints a line on standard error before each stretch of work (a callable gets
    the lines instead; False: silent). ``ckpt`` and ``twin``: the run's checkpoint and the twin, where
    the caller has them already."""
    from parity.twins import load

    spec = spec or EvalSpec()
    ckpt = ckpt if ckpt is not None else RunDir(run_dir).read_checkpoint()
    cfg = ckpt.config if dtype is None else ckpt.config.replace(dtype=dtype)
    twin = twin if twin is not None else load(framework, cfg.dtype, device)
    alpha = _cast(alpha_from_variable(ckpt.state["alpha"], ckpt.config), cfg.dtype)  # α, whatever was learned
    t0 = time.perf_counter()
    say = _progress_printer(framework) if progress is True else (progress or None)
    with twin.precision_scope(precision):
        body = evaluate(twin, cfg, ckpt.state["params"], alpha, spec, say)
    out = {
        "format": "maml-parity-eval/1",
        "run": str(run_dir),
        "checkpoint_step": ckpt.step,
        "framework": framework,
        "trained_with": ckpt.manifest["framework"],
        "dtype": cfg.dtype,
        "precision": precision,
        "alpha": alpha_summary(alpha),
        **body,
        "wall_s": round(time.perf_counter() - t0, 3),
        "device": twin.device_description(),
        "hardware": hardware(),
        "versions": library_versions(),
    }
    if write:
        kept = keep(run_dir, out)
        if say is not None:
            say(f"kept as {kept} (eval.json is the latest)")
    return out


def _progress_printer(framework: str) -> Progress:
    t0 = time.perf_counter()

    def say(line: str) -> None:
        print(f"eval {framework} [{time.perf_counter() - t0:5.1f} s] {line}", file=sys.stderr, flush=True)

    return say


def summary_lines(result: dict[str, Any], steps: tuple[int, ...] | None = None) -> list[str]:
    """The evaluation's plain-text table, by the family that made it (eval.json's ``family``;
    sinusoid files carry none)."""
    from parity import eval_classification

    summaries = {"sinusoid": sinusoid_summary_lines, "classification": eval_classification.summary_lines}
    return summaries[result.get("family", "sinusoid")](result, steps)


def sinusoid_summary_lines(result: dict[str, Any], steps: tuple[int, ...] | None = None) -> list[str]:
    """A plain-text table: MSE ± 95% CI per starting point at a few adaptation steps."""
    S = result["max_steps"]
    steps = steps or tuple(sorted({0, 1, min(5, S), S} & set(range(S + 1))))
    lines = [
        f"{result['tasks']} held-out tasks, {result['shots']} shots, {result['framework']} {result['dtype']}, "
        f"alpha {short(result['alpha'])}; query MSE (mean ± 95% CI) after k adaptation steps"
    ]
    notes = []
    for i, shift in enumerate(result["phase_shifts"]):
        table = [[f"phase shift {shift:.4g}:", *(f"k={k}" for k in steps)]]
        for name in STARTS:
            rec = result[name][i]
            table.append([f"  {name}", *(pm(rec["mse_mean"][k], rec["mse_ci95"][k]) for k in steps)])
            diverged = rec.get("diverged", [0] * (S + 1))
            if any(diverged[k] for k in steps):
                counts = ", ".join(f"k={k}: {diverged[k]}" for k in steps if diverged[k])
                notes.append(
                    f"  {name}, phase shift {shift:.4g}: tasks diverged "
                    f"(non-finite or MSE > {DIVERGED_MSE:g}; left out) {counts}"
                )
        # Column widths from the widest cell, two spaces apart: cells never run together.
        widths = [max(len(row[c]) for row in table) for c in range(len(table[0]))]
        for row in table:
            lines.append(row[0].ljust(widths[0]) + "".join(f"  {cell:>{w}}" for cell, w in zip(row[1:], widths[1:])))
    tuned = result.get("baseline_alpha") or {}
    if tuned.get("mode") == "tuned":
        lines.append(
            "baselines adapted with their own tuned alpha: "
            + ", ".join(f"{name} {value:g}" for name, value in tuned["chosen"].items())
            + f" (grid {', '.join(f'{a:g}' for a in tuned['grid'])}; {tuned['tuning_tasks']} separate tasks)"
        )
    if notes:
        lines.append(f"diverged tasks, of {result['tasks']}:")
        lines.extend(notes)
    return lines


def _evaluate_classification(*args: Any) -> dict[str, Any]:
    from parity import eval_classification

    return eval_classification.evaluate(*args)


# Each task family's evaluation (parity.families.FAMILIES' names).
EVALUATORS: dict[str, Callable[..., dict[str, Any]]] = {
    "sinusoid": evaluate_sinusoid,
    "classification": _evaluate_classification,
}


# --- helpers --------------------------------------------------------------------------------------


def _cast(tree: Any, dtype: str) -> Any:
    if isinstance(tree, dict):
        return {k: np.array(v, dtype=dtype) for k, v in tree.items()}
    return np.array(tree, dtype=dtype)


def _rounded(values: np.ndarray) -> list[float | None]:
    # Six significant digits: enough to draw a curve, and eval.json stays readable. A diverged
    # prediction is null: JSON has no NaN or infinity, and none is passed along.
    return [float(f"{v:.6g}") if np.isfinite(v) else None for v in np.asarray(values, dtype=np.float64)]


def _check_int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(name, f"must be an integer >= {minimum}, got {value!r}")

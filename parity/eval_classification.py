"""``maml-parity eval`` for the classification family: N-way K-shot episodes of held-out classes.

The episodes: ``tasks`` episodes from the meta-TEST class split (stream ``EVAL_STREAM``, never
trained on), each with the run's N and Q and ``shots`` (default: the run's K) support images per
class. Three starting points adapt the same way on the same episodes — ``S`` steps of the twin's
``inner_step`` on the support set with the run's α (batch norm on the batch it is applied to, as in
training) — and are scored on the query set after every step 0..S:

- ``meta``: the checkpoint's parameters;
- ``random``: fresh parameters from ``init_params`` with another seed (``cfg.seed + 1``);
- ``pretrained``: the run's initial conv trained as an ordinary classifier of all the meta-train
  classes at once (one fixed label per class, a head with one row per class), outer optimiser on
  the cross-entropy of ``PRETRAIN_BATCH`` × ``PRETRAIN_PER_CLASS`` images per class a step, for
  ``pretrain_steps`` steps; its body (every block) is kept and the head is the ``random`` start's N-way
  head — a classifier head cannot carry over to new classes, the features can.

Scores, per episode then mean and 95% CI (1.96·sd/√n) over episodes, in float64 from the logits:
``accuracy`` (argmax of the logits against the label) and ``cross_entropy`` (−log softmax of the
label's logit, the max subtracted, mean over query images). Episodes whose logits are not finite are
counted in ``diverged`` and left out of the statistics (null where all diverged).

``eval.json`` keys beyond the run facts ``evaluate_run`` adds: ``family`` ("classification"),
``shots``, ``tasks``, ``max_steps``, ``n_way``, ``query_per_class``, ``split`` ("test"),
``pretrain_steps``, ``pretrain_classes``, ``random_seed``, ``baseline_alpha`` ({"mode": "meta"}),
``inner_loss``, then per starting point one record: ``steps``, ``accuracy_mean``, ``accuracy_ci95``,
``cross_entropy_mean``, ``cross_entropy_ci95``, ``diverged`` (lists over steps 0..S).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import numpy as np

from parity.config import Config, ConfigError
from parity.families.classification import Classification
from parity.init import init_params
from parity.tasks import EVAL_STREAM, sample_batch
from parity.text import pm, short
from parity.twins import Twin

STARTS = ("meta", "random", "pretrained")
Z95 = 1.959963984540054
PRETRAIN_BATCH = 4  # independent batches (the twins' task axis) per pretraining step
PRETRAIN_PER_CLASS = 2  # images of every meta-train class in each batch
SCORES = ("accuracy", "cross_entropy")
PRETRAIN_STREAM = 7  # the pretraining's own sampler stream (parity.tasks: train 0, eval 1, init 2, val 3)

Progress = Callable[[str], None]


def episodes(cfg: Config, n: int, shots: int, step: int = 0) -> Any:
    """``n`` held-out episodes (meta-test classes) with ``shots`` support images per class, in
    ``cfg.dtype``: a pure function of ``(cfg.seed, n, shots)``."""
    return sample_batch(cfg.replace(k_support=shots), step, stream=EVAL_STREAM, batch_size=n)


def logit_curves(
    twin: Twin, params: dict[str, np.ndarray], alpha: Any, batch: Any, cfg: Config, max_steps: int
) -> np.ndarray:
    """Query logits after 0..S steps of the twin's ``inner_step``: [S+1, n, N·Q, N] (NumPy)."""
    meta = twin.meta
    step_cfg = cfg.replace(first_order=True)  # evaluation never differentiates through the steps
    x_s, y_s, x_q = twin.to_arrays((batch.x_support, batch.y_support, batch.x_query), cfg.dtype)
    n = batch.x_support.shape[0]
    if isinstance(alpha, dict):  # per-parameter α gets the task axis too (no implicit rank promotion)
        alpha = {k: np.array(np.broadcast_to(v, (n, *np.shape(v)))) for k, v in alpha.items()}
    alpha_t = twin.to_arrays(alpha, cfg.dtype)
    adapted = meta.broadcast_to_tasks(twin.to_arrays(params, cfg.dtype), y_s)  # leaves [n, ...]
    out = []
    for step in range(max_steps + 1):
        if step > 0:
            adapted, _ = meta.inner_step(twin.differentiable(adapted), alpha_t, x_s, y_s, step_cfg)
        out.append(np.asarray(twin.to_numpy(twin.model.predict(adapted, x_q, cfg)), dtype=np.float64))
    return np.stack(out)


def per_episode(logits: np.ndarray, y: np.ndarray) -> dict[str, np.ndarray]:
    """Accuracy and cross-entropy of every episode: logits [..., P, N], one-hot y [..., P, N] → [...]."""
    y = np.asarray(y, dtype=np.float64)
    with np.errstate(over="ignore", invalid="ignore"):  # non-finite episodes are dropped by the caller
        shifted = logits - np.max(logits, axis=-1, keepdims=True)
        log_softmax = shifted - np.log(np.sum(np.exp(shifted), axis=-1, keepdims=True))
        nll = -np.sum(y * log_softmax, axis=-1)
    hits = np.argmax(logits, axis=-1) == np.argmax(y, axis=-1)
    return {"accuracy": hits.mean(axis=-1), "cross_entropy": nll.mean(axis=-1)}


def score_summary(curves: np.ndarray, y: np.ndarray) -> dict[str, list[Any]]:
    """Mean and 95% CI over episodes of each score, per adaptation step; ``curves`` [S+1, n, P, N]."""
    finite = np.all(np.isfinite(curves), axis=(-2, -1))  # [S+1, n]
    scores = per_episode(curves, y[None])
    out: dict[str, list[Any]] = {"steps": list(range(curves.shape[0]))}
    out["diverged"] = [int(finite.shape[1] - f.sum()) for f in finite]
    for name in SCORES:
        means: list[float | None] = []
        cis: list[float | None] = []
        for k in range(curves.shape[0]):
            kept = scores[name][k][finite[k]]
            means.append(float(kept.mean()) if kept.size else None)
            cis.append(ci95(kept))
        out[f"{name}_mean"], out[f"{name}_ci95"] = means, cis
    return out


def ci95(values: np.ndarray) -> float | None:
    """Half-width of the normal 95% interval of the mean (0 for one value, None for none)."""
    if values.size > 1:
        return float(Z95 * values.std(ddof=1) / math.sqrt(values.size))
    return 0.0 if values.size else None


class _ClassifierFamily(Classification):
    """The run's family part for pretraining: the same fields, without the split-size check (every split
    must hold ``n_way`` classes). That check is for episodes; the pretraining config is never sampled
    from (:func:`classifier_batches` makes its batches) and its ``n_way`` counts meta-train classes only."""

    def check_config(self, cfg: Any) -> None:
        return None


def classifier_config(cfg: Config, n_classes: int) -> Config:
    """The run's config with one output per meta-train class and no inner loop (T = 0: the
    meta-objective is then the plain loss at the parameters)."""
    fields = {f.name: getattr(cfg.family, f.name) for f in dataclasses.fields(cfg.family)}
    fields.update(n_way=n_classes, k_support=1, k_query=PRETRAIN_PER_CLASS)
    return cfg.replace(family=_ClassifierFamily(**fields), inner_steps=0, alpha_mode="fixed", meta_batch=PRETRAIN_BATCH)


def classifier_batches(cfg: Config, start: int, count: int) -> tuple[np.ndarray, ...]:
    """Pretraining steps ``start..start+count-1``: every meta-train class, fixed labels; 4 × [count, B, ...].

    A pure function of ``(cfg.seed, step)``; stream 7 is the pretraining's own, apart from training's.
    """
    from parity.data import load, split_classes
    from parity.tasks import rng_for

    fam = cfg.family
    data = load(fam.dataset, fam.data_dir, fam.image_size)
    classes = split_classes(data, "train", fam.rotations)
    C, S, per = len(classes), fam.image_size, PRETRAIN_PER_CLASS + 1  # one support image, unused at T = 0
    x = np.empty((count, PRETRAIN_BATCH, C, per, 1, S, S))
    for i in range(count):
        rng = rng_for(cfg.seed, PRETRAIN_STREAM, start + i)
        for b in range(PRETRAIN_BATCH):
            for label, (base, turns) in enumerate(classes):
                images = data.images[base]
                chosen = images[rng.choice(len(images), size=per, replace=False)]
                x[i, b, label, :, 0] = np.rot90(chosen, turns, axes=(1, 2))
    eye = np.eye(C)
    y = lambda k: np.broadcast_to(eye[:, None, :], (count, PRETRAIN_BATCH, C, k, C)).reshape(  # noqa: E731
        count, PRETRAIN_BATCH, C * k, C
    )
    shape = (count, PRETRAIN_BATCH, -1, 1, S, S)
    x_s, x_q = x[:, :, :, :1].reshape(shape), x[:, :, :, 1:].reshape(shape)
    return tuple(np.asarray(a, dtype=cfg.dtype) for a in (x_s, y(1), x_q, y(PRETRAIN_PER_CLASS)))


def pretrain(twin: Twin, cfg: Config, steps: int, chunk: int = 50) -> dict[str, np.ndarray]:
    """The conv trained as an ordinary classifier of every meta-train class; NumPy params whose head
    is the ``random`` start's (module docstring). Stops with TrainingDiverged like training does."""
    from parity import training

    plain = classifier_config(cfg, len(_train_classes(cfg.family)))
    state = training.initial_state(twin, plain)
    for start in range(0, steps, chunk):
        n = min(chunk, steps - start)
        tasks = twin.to_arrays(classifier_batches(plain, start, n), plain.dtype)
        state, metrics = twin.train.train_chunk(state, tasks, plain, unroll=0)
        bad = training.first_nonfinite(twin.to_numpy(metrics))
        if bad is not None:
            raise training.diverged(start, bad, twin.to_numpy(metrics), None, plain)
    trained = training.final_values(twin, state)
    fresh = init_params(cfg, seed=cfg.seed + 1)
    return {
        name: fresh[name] if name.endswith("_head") else np.array(trained[f"params/{name}"], dtype=cfg.dtype)
        for name in cfg.param_names
    }


def evaluate(
    twin: Twin, cfg: Config, meta_params: dict[str, np.ndarray], alpha: Any, spec: Any, say: Progress
) -> dict[str, Any]:
    """Adapt the three starting points on the held-out episodes; the body of ``eval.json``."""
    from parity.eval import EvalSpec

    if spec.baseline_alpha != "meta":
        raise ConfigError("baseline_alpha", "classification evaluates with the run's alpha only (meta)")
    if spec.phase_shifts != EvalSpec().phase_shifts:
        raise ConfigError("phase_shift", "classification episodes have no phase; leave --phase-shift out")
    shots = cfg.k_support if spec.shots is None else spec.shots
    say(f"pretraining the baseline: {spec.pretrain_steps} steps as an ordinary classifier of the meta-train classes")
    starts = {
        "meta": {k: np.array(v, dtype=cfg.dtype) for k, v in meta_params.items()},
        "random": init_params(cfg, seed=cfg.seed + 1),
        "pretrained": pretrain(twin, cfg, spec.pretrain_steps),
    }
    say(f"{spec.tasks} held-out episodes ({cfg.n_way}-way {shots}-shot, meta-test classes), {spec.max_steps} steps")
    batch = episodes(cfg, spec.tasks, shots)
    result: dict[str, Any] = {}
    for name in STARTS:
        curves = logit_curves(twin, starts[name], alpha, batch, cfg, spec.max_steps)
        result[name] = [score_summary(curves, batch.y_query)]
    fam = cfg.family
    return {
        "family": "classification",
        "shots": shots,
        "tasks": spec.tasks,
        "max_steps": spec.max_steps,
        "n_way": cfg.n_way,
        "query_per_class": cfg.k_query,
        "split": "test",
        "inner_loss": cfg.loss,
        "pretrain_steps": spec.pretrain_steps,
        "pretrain_classes": len(_train_classes(fam)),
        "random_seed": cfg.seed + 1,
        "baseline_alpha": {"mode": "meta"},
        **result,
    }


def _train_classes(fam: Any) -> tuple[Any, ...]:
    from parity.data import load, split_classes

    return split_classes(load(fam.dataset, fam.data_dir, fam.image_size), "train", fam.rotations)


def summary_lines(result: dict[str, Any], steps: tuple[int, ...] | None = None) -> list[str]:
    """A plain-text table: query accuracy and cross-entropy ± 95% CI per starting point."""
    S = result["max_steps"]
    steps = steps or tuple(sorted({0, 1, min(5, S), S} & set(range(S + 1))))
    lines = [
        f"{result['tasks']} held-out episodes ({result['n_way']}-way {result['shots']}-shot, meta-test classes), "
        f"{result['framework']} {result['dtype']}, alpha {short(result['alpha'])}; "
        "query accuracy and cross-entropy (mean ± 95% CI) after k adaptation steps"
    ]
    for score in SCORES:
        table = [[f"{score}:", *(f"k={k}" for k in steps)]]
        for name in STARTS:
            rec = result[name][0]
            table.append([f"  {name}", *(pm(rec[f"{score}_mean"][k], rec[f"{score}_ci95"][k]) for k in steps)])
        widths = [max(len(row[c]) for row in table) for c in range(len(table[0]))]
        for row in table:
            lines.append(row[0].ljust(widths[0]) + "".join(f"  {cell:>{w}}" for cell, w in zip(row[1:], widths[1:])))
    for name in STARTS:
        diverged = result[name][0]["diverged"]
        if any(diverged):
            lines.append(f"  {name}: episodes with non-finite logits (left out), per step: {diverged}")
    return lines


def eval_problem(result: dict[str, Any]) -> str | None:
    """What is wrong with a classification ``eval.json``'s shape and types (what ``report`` reads),
    or None (``parity.readers.eval_problem`` checks the format and the run facts first)."""
    for key in ("tasks", "shots", "max_steps", "n_way", "query_per_class", "pretrain_steps", "random_seed"):
        value = result.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            return f"{key!r} must be an integer >= 0"
    n = result["max_steps"] + 1
    for start in STARTS:
        records = result.get(start)
        if not isinstance(records, list) or len(records) != 1 or not isinstance(records[0], dict):
            return f"{start!r} must be a list of one record"
        for key in (f"{score}_{stat}" for score in SCORES for stat in ("mean", "ci95")):
            values = records[0].get(key)
            if not isinstance(values, list) or len(values) != n or not all(_number_or_null(v) for v in values):
                return f"{start}.{key} must be a list of {n} numbers (or null)"
        diverged = records[0].get("diverged")
        if not (isinstance(diverged, list) and all(isinstance(v, int) for v in diverged)):
            return f"{start}.diverged must be a list of integers"
    return None


def _number_or_null(value: Any) -> bool:
    return value is None or (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value))

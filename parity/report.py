"""``maml-parity report DIR``: figures and ``DIR/report.md`` from a run and its ``eval.json``;
``demo``'s one report for the whole job (:func:`write_demo_report`).

A run's report holds a summary, one table per phase shift (starting point × adaptation steps,
query MSE mean ± 95% CI), the tasks that diverged, the baselines' step sizes, the figures, the
meta-training, the config, the library versions and the hardware. It reads files only
(``config.json``, ``metrics.jsonl``, ``checkpoint.json``, ``eval.json``); it trains and evaluates
nothing.

Written atomically: the figures and ``report.md`` go to a temporary folder beside the report, then
each is moved into place (``os.replace``), ``report.md`` last; a full disk or a kill part way
leaves the previous report whole and names the file that could not be written.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from parity import report_classification
from parity.checkpoint import library_versions
from parity.config import Config, ConfigError
from parity.eval import STARTS
from parity.evals import KEPT_DIR, comparable, read_eval, read_json
from parity.plots import LABELS, write_figures
from parity.run import read_metrics
from parity.rundir import CONFIG_FILE, REPORT_FILE, RunDir
from parity.text import pm

FIGURE_CAPTIONS = {
    "fit.png": "One held-out task: the true curve, the K examples, and each starting point before and after "
    "T adaptation steps.",
    "adaptation.png": "Query MSE against adaptation steps (mean over held-out tasks, band: 95% CI).",
    "phase_shift.png": "Query MSE after T steps against the phase shift of the held-out tasks.",
    "alpha.png": "The inner learning rate α and its meta-gradient over meta-training "
    "(dL/dα: running mean over a faint band of the per-step values).",
    "training_loss.png": "The outer (query) loss over meta-training.",
}


def write_report(run_dir: Path) -> Path:
    """Write the figures and ``run_dir/report.md`` (atomically); returns the report's path."""
    if not RunDir(run_dir).config.exists():
        raise ConfigError("dir", f"{str(run_dir)!r} is not a training run (no {CONFIG_FILE}); train with --out DIR")
    cfg, result, rows, manifest = read_run(run_dir)
    family = result.get("family", "sinusoid")  # sinusoid eval.json files carry no family
    with _staging(run_dir) as stage:
        figures = write_figures(stage.folder, result, rows, cfg)
        text = RENDERERS[family](run_dir, cfg, result, rows, manifest, [f.name for f in figures])
        return stage.publish([f.name for f in figures], text)


def read_run(run_dir: Path) -> tuple[Config, dict[str, Any], list[dict[str, Any]], dict[str, Any]]:
    """A run's config, eval.json, metrics rows and checkpoint manifest."""
    run = RunDir(run_dir)
    cfg = Config.from_dict(read_json(run.config, "dir"))
    result = read_eval(run_dir)
    try:
        rows = read_metrics(run.metrics) if run.metrics.exists() else []
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(
            "dir", f"{str(run.metrics)!r} is not JSON lines ({err}); resume the run with train --resume"
        ) from None
    manifest = read_json(run.manifest, "dir") if run.manifest.exists() else {}
    return cfg, result, rows, manifest


class _Stage:
    """A temporary folder beside the report; :meth:`publish` moves its files into place, report.md last."""

    def __init__(self, target: Path, folder: Path):
        self.target, self.folder = target, folder

    def publish(self, files: list[str], text: str) -> Path:
        _write_named(self.folder / REPORT_FILE, text.encode())
        for name in [*files, REPORT_FILE]:
            try:
                os.replace(self.folder / name, self.target / name)
            except OSError as err:
                raise OSError(err.errno, err.strerror, str(self.target / name)) from None
        return self.target / REPORT_FILE


@contextlib.contextmanager
def _staging(target: Path) -> Iterator[_Stage]:
    """A temporary folder inside ``target``, removed afterwards whatever happened."""
    target.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=".report-", dir=target))
    try:
        yield _Stage(target, folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _write_named(path: Path, data: bytes) -> None:
    """Write a file; an error names it (a full disk, permissions)."""
    try:
        with open(path, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except OSError as err:
        raise OSError(err.errno, err.strerror, str(path)) from None


def render(
    run_dir: Path,
    cfg: Config,
    result: dict[str, Any],
    rows: list[dict[str, Any]],
    manifest: dict[str, Any],
    figures: list[str],
) -> str:
    """The report's Markdown text."""
    T = min(cfg.inner_steps, result["max_steps"])
    out = [f"# maml-parity run: `{run_dir}`", ""]
    trained = manifest.get("framework", "?")
    out += [
        f"Meta-trained for {manifest.get('step', len(rows))} outer steps in **{trained}** ({cfg.dtype}); "
        f"evaluated in **{result['framework']}** ({result['dtype']}) on {result['tasks']} held-out tasks "
        f"(sampler stream disjoint from training), {result['shots']} support points each, "
        f"{result['query_points']} evenly spaced query points over x ∈ [{cfg.x_range[0]:.4g}, {cfg.x_range[1]:.4g}], "
        f"α = {_alpha_text(result['alpha'])}.",
        "",
    ]
    out += _headline(result, T)
    out += evaluation_section(result, cfg)
    out += frameworks_section(comparable(run_dir, result), T)
    out += figures_section(figures)
    out += training_section(rows)
    out += config_section(cfg)
    out += versions_section(result, manifest)
    return "\n".join(out)


def evaluation_section(result: dict[str, Any], cfg: Config, level: str = "##") -> list[str]:
    """One table per phase shift (starting point × adaptation steps), diverged tasks, baselines' α."""
    T = min(cfg.inner_steps, result["max_steps"])
    tuned = result.get("baseline_alpha") or {}
    how = {name: f"α = {_alpha_text(result['alpha'])} (the run's)" for name in STARTS}
    if tuned.get("mode") == "tuned":
        for name, value in tuned["chosen"].items():
            how[name] = f"α = {value:g} (tuned on {tuned['tuning_tasks']} separate tasks)"
    out = [f"{level} Evaluation", ""]
    out += [
        f"Every starting point takes k gradient steps w ← w − α·∇L on the support points (inner loss: "
        f"{result['inner_loss']}). Starting points: **meta** = the meta-learned parameters, {how['meta']}; "
        f"**random** = a fresh initialisation (seed {result['random_seed']}), {how['random']}; "
        f"**pretrained** = the run's initialisation trained by plain regression for {result['pretrain_steps']} steps "
        f"(no inner loop), {how['pretrained']}. Cells: query MSE, mean ± 95% CI half-width over tasks "
        "(L1 is in eval.json).",
        "",
    ]
    steps = sorted({0, 1, T, min(5, result["max_steps"]), result["max_steps"]})
    for i, shift in enumerate(result["phase_shifts"]):
        out += [f"**{shift_name(shift)}**: query MSE after k adaptation steps", ""]
        out.append("| starting point | " + " | ".join(f"k = {k}" for k in steps) + " |")
        out.append("|---|" + "---:|" * len(steps))
        for name in STARTS:
            rec = result[name][i]
            cells = [pm(rec["mse_mean"][k], rec["mse_ci95"][k]) for k in steps]
            out.append(f"| {LABELS[name]} | " + " | ".join(cells) + " |")
        out.append("")
    out += _diverged_section(result, steps)
    if tuned.get("mode") == "tuned":
        out += _tuning_section(result, tuned, T)
    out += _baseline_note(result, T)
    return out


def frameworks_section(evaluations: dict[str, dict[str, Any]], T: int) -> list[str]:
    """The same checkpoint evaluated the same way in several frameworks (the latest kept evaluation of
    each, ``parity.evals``): query MSE after T steps side by side, each minus the first's, and the largest
    such difference over every step k and statistic. Empty with fewer than two frameworks."""
    if len(evaluations) < 2:
        return []
    names = list(evaluations)
    first = evaluations[names[0]]
    others = names[1:]
    out = [
        "## The same run evaluated in each framework",
        "",
        f"The latest evaluation of each framework kept in `{KEPT_DIR}/` that adapted the same checkpoint on the same "
        f"tasks the same way ({first['dtype']}); {names[0]}'s is the report's. Cells: query MSE after "
        f"{_steps(T)}; *largest difference*: over k = 0..{first['max_steps']} and the MSE and L1 means and CIs.",
        "",
        "| phase shift | starting point | "
        + " | ".join(names)
        + " | "
        + " | ".join(f"{n} − {names[0]} | largest difference" for n in others)
        + " |",
        "|---|---|" + "---:|" * (len(names) + 2 * len(others)),
    ]
    for shift in first["phase_shifts"]:
        matched = {n: _record_at(evaluations[n], shift) for n in names}
        for start in STARTS:
            recs = {n: r[start] for n, r in matched.items() if r is not None}
            if len(recs) < 2:
                continue
            cells = [_num(recs[n]["mse_mean"][T]) if n in recs else "not evaluated" for n in names]
            for n in others:
                cells += _difference(recs[names[0]], recs.get(n), T)
            out.append(f"| {shift_name(shift)} | {LABELS[start]} | " + " | ".join(cells) + " |")
    return [*out, ""]


def _record_at(result: dict[str, Any], shift: float) -> dict[str, Any] | None:
    """Each starting point's record at ``shift`` (None where this evaluation has no such shift)."""
    for i, b in enumerate(result["phase_shifts"]):
        if b == shift:
            return {start: result[start][i] for start in STARTS}
    return None


def _difference(ref: dict[str, Any], rec: dict[str, Any] | None, T: int) -> list[str]:
    if rec is None:
        return ["", ""]
    keys = ("mse_mean", "mse_ci95", "l1_mean", "l1_ci95")
    pairs = [(a, b) for key in keys for a, b in zip(ref[key], rec[key]) if a is not None and b is not None]
    at_t = (ref["mse_mean"][T], rec["mse_mean"][T])
    diff = "n/a" if None in at_t else f"{at_t[1] - at_t[0]:.2g}"  # type: ignore[operator]
    return [diff, f"{max(abs(b - a) for a, b in pairs):.2g}" if pairs else "n/a"]


def shift_name(shift: float) -> str:
    """``phase shift 3.142 (π)``: the number and, for multiples of π/4, the fraction."""
    if shift == 0:
        return "phase shift 0 (the training distribution)"
    quarters = shift / (math.pi / 4)
    if abs(quarters - round(quarters)) < 1e-9:
        q = round(quarters)
        frac = {1: "π/4", 2: "π/2", 3: "3π/4", 4: "π", -4: "−π", -2: "−π/2", 6: "3π/2", 8: "2π"}.get(q, f"{q}π/4")
        return f"phase shift {shift:.4g} ({frac})"
    return f"phase shift {shift:.4g} rad"


def _diverged_section(result: dict[str, Any], steps: list[int]) -> list[str]:
    lines = []
    for i, shift in enumerate(result["phase_shifts"]):
        for name in STARTS:
            counts = result[name][i].get("diverged") or []
            if any(counts):
                cells = ", ".join(f"k = {k}: {counts[k]}" for k in range(len(counts)) if counts[k])
                lines.append(f"| {shift_name(shift)} | {LABELS[name]} | {cells} |")
    if not lines:
        return [f"No task diverged (of {result['tasks']}, at any step).", ""]
    return [
        f"**Diverged tasks** (of {result['tasks']}; a fit that is non-finite or has query MSE above 1e6 is left "
        "out of the statistics above):",
        "",
        "| phase shift | starting point | tasks left out after k steps |",
        "|---|---|---|",
        *lines,
        "",
    ]


def _tuning_section(result: dict[str, Any], tuned: dict[str, Any], T: int) -> list[str]:
    grid = tuned["grid"]
    out = [
        f"**Baseline step sizes** (`--baseline-alpha tuned`): each baseline adapts with the α from the grid that gives "
        f"the lowest mean query MSE after {tuned['steps']} steps on {tuned['tuning_tasks']} tuning tasks drawn apart "
        "from the evaluation tasks, as the MAML paper tuned its pretrained baseline's step size.",
        "",
        "| starting point | " + " | ".join(f"α = {a:g}" for a in grid) + " | chosen |",
        "|---|" + "---:|" * (len(grid) + 1),
    ]
    for name, mses in tuned["tuning_mse"].items():
        cells = [_num(v) for v in mses]
        out.append(f"| {LABELS[name]} | " + " | ".join(cells) + f" | {tuned['chosen'][name]:g} |")
    return [*out, ""]


def _baseline_note(result: dict[str, Any], T: int) -> list[str]:
    """Say when a baseline gets worse with adaptation, and what that means."""
    worse = []
    for name in ("random", "pretrained"):
        rec = result[name][0]
        before, after = rec["mse_mean"][0], rec["mse_mean"][result["max_steps"]]
        if before is not None and after is not None and after > before:
            worse.append(f"{LABELS[name]} {before:.4g} → {after:.4g}")
    if not worse:
        return []
    where = f"on the tasks with {shift_name(result['phase_shifts'][0])}"
    head = f"Adapting makes some baselines worse {where} ({'; '.join(worse)} after {result['max_steps']} steps)."
    if (result.get("baseline_alpha") or {}).get("mode") == "tuned":
        why = (
            "They adapt with their own tuned α, so no step size of the grid helps them here: a few support "
            "points pull the fit away from the rest of the curve."
        )
    else:
        why = BASELINE_FINDING
    return [f"{head} {why}", ""]


# What the seed-alpha measurements showed (docs/lab.md, "Why the baselines get worse", has the commands).
BASELINE_FINDING = (
    "The usual cause is the step size, not a bug: the baselines adapt with the meta-learned α, which "
    "meta-training sized for the meta-learned initialisation, and it can be too large for them. On "
    "seed-alpha (α = 0.0147 after 5000 steps, eval's defaults) the pretrained init went 0.120 → 0.194 "
    "after 5 steps with that α, and 0.120 → 0.077 with α = 0.003, the best of a grid on separate tuning "
    "tasks; the random init 0.520 → 0.562 after 10 steps against 0.520 → 0.500. `maml-parity eval DIR "
    "--baseline-alpha tuned` adapts each baseline with its own tuned α, as the MAML paper did for its "
    "pretrained baseline."
)


def figures_section(figures: list[str], prefix: str = "") -> list[str]:
    if not figures:
        return []
    out = ["## Figures", ""]
    for name in figures:
        caption = {**FIGURE_CAPTIONS, **report_classification.CAPTIONS}.get(name, name)
        out += [f"![{caption}]({prefix}{name})", "", f"*{caption}*", ""]
    return out


def training_section(rows: list[dict[str, Any]]) -> list[str]:
    if not rows:
        return []
    tail = rows[-min(100, len(rows)) :]
    mean_loss = sum(r["outer_loss"] for r in tail) / len(tail)
    return [
        "## Meta-training",
        "",
        f"{len(rows)} logged steps; mean outer loss over the last {len(tail)}: {mean_loss:.4f}; "
        f"α used at the first step {_alpha_text(rows[0]['alpha'])}, at the last {_alpha_text(rows[-1]['alpha'])} "
        "(the checkpoint holds the α after that step's update).",
        "",
    ]


def config_section(cfg: Config) -> list[str]:
    out = ["## Config", "", "| field | value |", "|---|---|"]
    return [*out, *(f"| {k} | `{json.dumps(v)}` |" for k, v in cfg.flat().items()), ""]


def versions_section(result: dict[str, Any], manifest: dict[str, Any]) -> list[str]:
    out = ["## Versions and hardware", "", "| | |", "|---|---|"]
    versions = result.get("versions") or library_versions()
    out += [f"| {k} | {v} |" for k, v in versions.items()]
    if manifest.get("versions") and manifest["versions"] != versions:
        out.append(f"| versions at training | {', '.join(f'{k} {v}' for k, v in manifest['versions'].items())} |")
    hw = result.get("hardware") or {"platform": platform.platform(), "cpu_count": os.cpu_count()}
    out += [
        f"| platform | {hw['platform']} |",
        f"| CPU count | {hw['cpu_count']} |",
        f"| evaluation device | {result.get('device', '?')} |",
        f"| evaluation wall time | {result.get('wall_s', '?')} s |",
        "",
    ]
    return out


# The report's text by eval.json's family (its figures: parity.plots.write_figures).
RENDERERS = {"sinusoid": render, "classification": report_classification.render}


def _headline(result: dict[str, Any], T: int) -> list[str]:
    """The seed's three questions, answered with this run's numbers."""
    meta0, rand0, pre0 = (result[name][0]["mse_mean"][T] for name in STARTS)
    lines = [
        "## Summary",
        "",
        f"- After {_steps(T)} (T of meta-training), query MSE on the tasks with "
        f"{shift_name(result['phase_shifts'][0])}: "
        f"meta **{_num(meta0)}**, random **{_num(rand0)}** ({_ratio(rand0, meta0)} the meta init's), "
        f"pretrained **{_num(pre0)}** ({_ratio(pre0, meta0)}).",
    ]
    if len(result["phase_shifts"]) > 1:
        i = max(range(len(result["phase_shifts"])), key=lambda j: abs(result["phase_shifts"][j]))
        shifted, shifted_random = result["meta"][i]["mse_mean"][T], result["random"][i]["mse_mean"][T]
        lines.append(
            f"- Tasks with their {shift_name(result['phase_shifts'][i])}: meta MSE after {_steps(T)} "
            f"**{_num(shifted)}**, {_ratio(shifted, meta0)} the {_num(meta0)} above; "
            f"random init {_num(shifted_random)}."
        )
    lines.append("")
    return lines


# eval.json holds null where every task diverged (see parity.eval.error_summary).


def _steps(k: int) -> str:
    return f"{k} adaptation step{'s' if k != 1 else ''}"


def _num(value: float | None) -> str:
    return "all diverged" if value is None else f"{value:.4g}"


def _ratio(a: float | None, b: float | None) -> str:
    return "n/a" if a is None or b is None or b == 0 else f"{a / b:.1f}×"


def _alpha_text(alpha: Any) -> str:
    if isinstance(alpha, dict):
        return "mean {mean:.4g} (min {min:.4g}, max {max:.4g})".format(**alpha)
    return f"{alpha:.4g}"

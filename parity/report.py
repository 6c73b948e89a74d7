"""``maml-parity report DIR``: figures and ``DIR/report.md`` from a run and its ``eval.json``.

The report holds the config, the evaluation tables (query MSE and L1, mean ± 95% CI, at a few
adaptation steps, per phase shift), the figures, the library versions and the hardware. It reads
files only (``config.json``, ``metrics.jsonl``, ``checkpoint.json``, ``eval.json``); it trains and
evaluates nothing.
"""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Any

from parity.checkpoint import MANIFEST_FILE, library_versions
from parity.config import Config, ConfigError
from parity.eval import STARTS, read_eval, read_json
from parity.plots import LABELS, write_figures
from parity.run import read_metrics

FIGURE_CAPTIONS = {
    "fit.png": "One held-out task: the true curve, the K examples, and each starting point before and after "
    "T adaptation steps.",
    "adaptation.png": "Query MSE against adaptation steps (mean over held-out tasks, band: 95% CI).",
    "phase_shift.png": "Query MSE after T steps against the phase shift of the held-out tasks.",
    "alpha.png": "The inner learning rate α and its meta-gradient over meta-training.",
    "training_loss.png": "The outer (query) loss over meta-training.",
}


def write_report(run_dir: Path) -> Path:
    """Write the figures and ``run_dir/report.md``; returns the report's path."""
    if not (run_dir / "config.json").exists():
        raise ConfigError("dir", f"{str(run_dir)!r} is not a training run (no config.json); train with --out DIR")
    cfg = Config.from_dict(read_json(run_dir / "config.json", "dir"))
    result = read_eval(run_dir)
    try:
        rows = read_metrics(run_dir / "metrics.jsonl") if (run_dir / "metrics.jsonl").exists() else []
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(
            "dir", f"{str(run_dir / 'metrics.jsonl')!r} is not JSON lines ({err}); resume the run with train --resume"
        ) from None
    manifest = read_json(run_dir / MANIFEST_FILE, "dir") if (run_dir / MANIFEST_FILE).exists() else {}
    figures = write_figures(run_dir, result, rows, cfg)
    path = run_dir / "report.md"
    path.write_text(render(run_dir, cfg, result, rows, manifest, [f.name for f in figures]))
    return path


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
    out += ["## Evaluation", ""]
    out += [
        "Every starting point is adapted the same way: k steps of w ← w − α·∇L on the support points "
        f"(inner loss: {result['inner_loss']}, the run's learned α). Starting points: "
        "**meta** = the meta-learned parameters; "
        f"**random** = a fresh initialisation (seed {result['random_seed']}); "
        f"**pretrained** = the run's initialisation trained by plain regression for {result['pretrain_steps']} steps "
        "(no inner loop). Cells: mean ± 95% CI half-width over tasks.",
        "",
    ]
    steps = sorted({0, 1, T, result["max_steps"]})
    for i, shift in enumerate(result["phase_shifts"]):
        for metric, title in (("mse", "query MSE"), ("l1", "query L1 (mean absolute error)")):
            out += [f"**{title}, phase shift {shift:.4g} rad**", ""]
            out.append("| starting point | " + " | ".join(f"k = {k}" for k in steps) + " |")
            out.append("|---|" + "---:|" * len(steps))
            for name in STARTS:
                rec = result[name][i]
                cells = [_pm(rec[f"{metric}_mean"][k], rec[f"{metric}_ci95"][k]) for k in steps]
                out.append(f"| {LABELS[name]} | " + " | ".join(cells) + " |")
            out.append("")
    if figures:
        out += ["## Figures", ""]
        for name in figures:
            out += [f"![{FIGURE_CAPTIONS.get(name, name)}]({name})", "", f"*{FIGURE_CAPTIONS.get(name, name)}*", ""]
    if rows:
        out += ["## Meta-training", ""]
        tail = rows[-min(100, len(rows)) :]
        mean_loss = sum(r["outer_loss"] for r in tail) / len(tail)
        out += [
            f"{len(rows)} logged steps; mean outer loss over the last {len(tail)}: {mean_loss:.4f}; "
            f"α at the first step {_alpha_text(rows[0]['alpha'])}, at the last {_alpha_text(rows[-1]['alpha'])}.",
            "",
        ]
    out += ["## Config", "", "| field | value |", "|---|---|"]
    out += [f"| {k} | `{json.dumps(v)}` |" for k, v in cfg.to_dict().items()]
    out += ["", "## Versions and hardware", "", "| | |", "|---|---|"]
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
    return "\n".join(out)


def _headline(result: dict[str, Any], T: int) -> list[str]:
    """The seed's three questions, answered with this run's numbers."""
    meta0, rand0, pre0 = (result[name][0]["mse_mean"][T] for name in STARTS)
    lines = [
        "## Summary",
        "",
        f"- After {T} adaptation steps (T of meta-training), query MSE: meta **{_num(meta0)}**, "
        f"random **{_num(rand0)}** ({_ratio(rand0, meta0)} the meta init's), pretrained **{_num(pre0)}** "
        f"({_ratio(pre0, meta0)}).",
    ]
    if len(result["phase_shifts"]) > 1:
        i = max(range(len(result["phase_shifts"])), key=lambda j: abs(result["phase_shifts"][j]))
        shifted, shifted_random = result["meta"][i]["mse_mean"][T], result["random"][i]["mse_mean"][T]
        lines.append(
            f"- Phase-shifted tasks (B = {result['phase_shifts'][i]:.4g}): meta MSE after {T} steps "
            f"**{_num(shifted)}**, {_ratio(shifted, meta0)} the unshifted {_num(meta0)}; "
            f"random init {_num(shifted_random)}."
        )
    lines.append("")
    return lines


# eval.json holds null where every task diverged (see parity.eval.error_summary).


def _num(value: float | None) -> str:
    return "all diverged" if value is None else f"{value:.4f}"


def _ratio(a: float | None, b: float | None) -> str:
    return "n/a" if a is None or b is None or b == 0 else f"{a / b:.1f}×"


def _pm(mean: float | None, ci: float | None) -> str:
    return "all diverged" if mean is None or ci is None else f"{mean:.4f} ± {ci:.4f}"


def _alpha_text(alpha: Any) -> str:
    if isinstance(alpha, dict):
        return "mean {mean:.4g} (min {min:.4g}, max {max:.4g})".format(**alpha)
    return f"{alpha:.4g}"

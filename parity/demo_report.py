"""``demo``'s one report for the whole job, ``DIR/report.md``: the α table of every twin beside the
seed's, the side-by-side figure of the twins' training (``twins.png``), the parity of each twin with
the first at the learned initialisation, and the evaluation of the first twin's run with its figures.

Written like a run's report (``parity.report``): figures and text staged, then moved into place.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from parity.plots import write_figures
from parity.registry import label as registry_label
from parity.report import (
    _headline,
    _staging,
    config_section,
    evaluation_section,
    figures_section,
    read_run,
    render,
    training_section,
    versions_section,
)
from parity.run import read_metrics
from parity.rundir import RunDir

TWINS_FIGURE = "twins.png"
TWINS_CAPTION = (
    "Every twin's α and outer loss over meta-training (left) and each twin's difference from the first, "
    "step by step (right): same tasks, same start."
)


def label(name: str) -> str:
    return registry_label(name)


def write_demo_report(out: Path, demo: dict[str, Any], runs: dict[str, Path]) -> Path:
    """``out/report.md`` for ``demo``; ``runs``: each twin's run directory, the first the reference
    (its evaluation and figures are the report's; they are drawn into its run directory)."""
    from parity.twin_plots import twins_figure

    run_dir = next(iter(runs.values()))
    cfg, result, rows, manifest = read_run(run_dir)
    with _staging(run_dir) as stage:
        figures = [f.name for f in write_figures(stage.folder, result, rows, cfg)]
        stage.publish(figures, render(run_dir, cfg, result, rows, manifest, figures))
    prefix = f"{os.path.relpath(run_dir, out)}/"
    T = min(cfg.inner_steps, result["max_steps"])
    twins = " and ".join(", ".join(label(n) for n in runs).rsplit(", ", 1))
    text = [
        f"# maml-parity demo: the seed's learned-α experiment in {twins}",
        "",
        f"`seed-alpha` ({demo['iterations']} outer steps, one task per step, T = {cfg.inner_steps}, α learned from "
        f"{cfg.alpha_init} with {cfg.alpha_optimizer} {cfg.alpha_lr:g}, outer {cfg.outer_optimizer} "
        f"{cfg.outer_lr:g}, {cfg.dtype}) trained in {'both' if len(runs) == 2 else 'every'} twin"
        f"{'s' if len(runs) != 2 else ''} from the same initial parameters on the same task "
        f"stream; trained in {', '.join(f'{k} {v:.1f} s' for k, v in demo['train_s'].items())}.",
        "",
    ]
    text += _headline(result, T)
    text += alpha_section(demo, list(runs))
    text += parity_section(demo, list(runs))
    text += evaluation_section(result, cfg)
    text += figures_section(figures, prefix)
    text += training_section(rows)
    text += config_section(cfg)
    text += versions_section(result, manifest)
    with _staging(out) as stage:
        twins_figure(
            {name: read_metrics(RunDir(path).metrics) for name, path in runs.items()},
            {name: label(name) for name in runs},
            stage.folder / TWINS_FIGURE,
        )
        return stage.publish([TWINS_FIGURE], "\n".join(text))


def alpha_section(demo: dict[str, Any], names: list[str]) -> list[str]:
    reference = names[0]
    others = ", ".join(f"{label(n)} {demo['alpha_max_diff_by_twin'][n]:.2g}" for n in names[1:])
    text = [
        "## α over meta-training: the twins and the seed",
        "",
        "α used at each step (`metrics.jsonl`); the seed's run drew other random tasks, so its shape, not its "
        f"digits, should match. Largest difference between the twins over the run: {demo['alpha_max_diff']:.2g}"
        + (f" (from the {label(reference)} twin: {others})" if len(names) > 2 else "")
        + ".",
        "",
        "| step | " + " | ".join(f"α, {label(n)} twin" for n in names) + " | α, the seed's run |",
        "|---:|" + "---:|" * (len(names) + 1),
    ]
    for row in demo["alpha_rows"]:
        seen = "" if row["seed"] is None else f"{row['seed']:.5f}"
        text.append(f"| {row['step']} | " + " | ".join(f"{row[n]:.5f}" for n in names) + f" | {seen} |")
    text += ["", f"![{TWINS_CAPTION}]({TWINS_FIGURE})", "", f"*{TWINS_CAPTION}*", ""]
    return text


def parity_section(demo: dict[str, Any], names: list[str]) -> list[str]:
    reference = names[0]
    text = [
        "## Parity at the learned initialisation",
        "",
        f"Every twin's meta-gradients against the {label(reference)} twin's, at the {label(reference)}-learned "
        f"parameters and α on a fresh meta-batch of {demo['parity_batch']} tasks (a step the training never "
        "reached). A quantity passes when max|a − b| ≤ atol + rtol·max|ref|; *decided by* names the larger of the "
        "two terms. The whole matrix of cases: `maml-parity check`.",
        "",
    ]
    for other in names[1:]:
        pair = f"{reference}~{other}"
        rows = [r for r in demo["parity"] if r.get("pair", pair) == pair]
        if len(names) > 2:
            text += [f"**{label(reference)} ~ {label(other)}**", ""]
        text += [
            "| dtype | quantity | max abs err | max rel err | max abs value | rtol | atol | decided by | verdict |",
            "|---|---|---:|---:|---:|---:|---:|---|---|",
        ]
        for r in rows:
            text.append(
                f"| {r['dtype']} | {r['quantity']} | {r['max_abs_err']:.2g} | {r['max_rel_err']:.2g} | "
                f"{r['ref_scale']:.2g} | {r['rtol']:g} | {r['atol']:g} | {r['decided_by']} | "
                f"{'ok' if r['ok'] else 'MISMATCH'} |"
            )
        text.append("")
    text += [f"- {key}: {line}" for key, line in demo["parity_summary"].items()]
    return [*text, ""]

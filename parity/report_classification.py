"""The report and figures of a classification run (``parity.report`` dispatches here by eval.json's
``family``): accuracy and cross-entropy against adaptation steps for the meta-learned, random and
pretrained starting points (mean and 95% CI over held-out episodes), a table, and the training figures
shared with every family (``alpha.png``, ``training_loss.png``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from parity.config import Config
from parity.eval_classification import SCORES, STARTS
from parity.text import pm

LABELS = {
    "meta": "meta-learned init",
    "random": "random init",
    "pretrained": "pretrained (ordinary classifier, fresh head)",
}
COLORS = {"meta": "tab:blue", "random": "tab:red", "pretrained": "tab:green"}
TITLES = {"accuracy": "query accuracy", "cross_entropy": "query cross-entropy"}
CAPTIONS = {
    "accuracy.png": "Query accuracy and cross-entropy against adaptation steps on held-out (meta-test) classes: "
    "mean over episodes, band: 95% CI; dotted: chance 1/N.",
}


def adaptation_figure(result: dict[str, Any], cfg: Config, path: Path) -> Path:
    """Two panels, accuracy and cross-entropy, against adaptation steps 0..S (mean, 95% CI band)."""
    from parity.plots import _figure, _save, _title

    fig = _figure(12.0, 4.4)
    axes = fig.subplots(1, len(SCORES), squeeze=False)[0]
    for ax, score in zip(axes, SCORES, strict=True):
        for name in STARTS:
            rec = result[name][0]
            steps = np.array(rec["steps"])
            mean, ci = _nan(rec[f"{score}_mean"]), _nan(rec[f"{score}_ci95"])
            ax.plot(steps, mean, marker="o", ms=4, color=COLORS[name], label=LABELS[name])
            ax.fill_between(steps, mean - ci, mean + ci, color=COLORS[name], alpha=0.2, lw=0)
        if score == "accuracy":
            ax.axhline(1 / result["n_way"], color="grey", ls=":", lw=1.2, label=f"chance 1/{result['n_way']}")
        if cfg.inner_steps <= result["max_steps"]:
            ax.axvline(cfg.inner_steps, color="grey", ls="--", lw=1.0, label=f"T = {cfg.inner_steps} (meta-training)")
        ax.set_xlabel(f"gradient steps on the {result['n_way']}×{result['shots']} support images")
        ax.set_ylabel(TITLES[score])
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=8, ncol=len(labels), loc="outside lower center")
    fig.suptitle(
        _title(
            f"{result['n_way']}-way {result['shots']}-shot, {result['tasks']} episodes of held-out classes "
            "(mean, band = 95% CI)",
            120,
        )
    )
    return _save(fig, path)


def evaluation_figures(result: dict[str, Any], cfg: Config, folder: Path) -> list[Path]:
    return [adaptation_figure(result, cfg, folder / "accuracy.png")]


def summary_section(result: dict[str, Any], T: int) -> list[str]:
    """The headline: each starting point's accuracy after T steps, and whether meta beats random with
    95% intervals that do not overlap."""
    rec = {name: result[name][0] for name in STARTS}
    acc = {name: (rec[name]["accuracy_mean"][T], rec[name]["accuracy_ci95"][T]) for name in STARTS}
    cells = ", ".join(f"{name} **{pm(*acc[name])}**" for name in STARTS)
    (m, mc), (r, rc) = acc["meta"], acc["random"]
    if m is None or r is None:
        verdict = "no verdict: every episode of a starting point diverged"
    elif m - mc > r + rc:
        verdict = "the meta-learned init beats the random init, the 95% intervals do not overlap"
    else:
        verdict = "the meta-learned init does **not** beat the random init with non-overlapping 95% intervals"
    return [
        "## Summary",
        "",
        f"- Query accuracy after {T} adaptation step{'s' if T != 1 else ''} (T of meta-training) on "
        f"{result['tasks']} {result['n_way']}-way {result['shots']}-shot episodes of held-out classes: {cells} "
        f"(chance {1 / result['n_way']:.3g}); {verdict}.",
        "",
    ]


def evaluation_section(result: dict[str, Any], cfg: Config, T: int) -> list[str]:
    S = result["max_steps"]
    steps = sorted({0, 1, T, min(5, S), S} & set(range(S + 1)))
    out = [
        "## Evaluation",
        "",
        f"Episodes from the meta-test classes (never trained on), {result['n_way']} classes, {result['shots']} "
        f"support and {result['query_per_class']} query images per class. Every starting point takes k steps "
        f"w ← w − α·∇L on the support set (cross-entropy, α = the run's), batch norm on the batch it is applied "
        f"to. **meta** = the meta-learned parameters; **random** = a fresh initialisation (seed "
        f"{result['random_seed']}); **pretrained** = the run's initialisation trained for {result['pretrain_steps']} "
        f"steps as an ordinary classifier of all {result.get('pretrain_classes', '?')} meta-train classes, then "
        "its head replaced by the random init's N-way head. Cells: mean ± 95% CI half-width over episodes.",
        "",
    ]
    for score in SCORES:
        out += [f"**{TITLES[score]}** after k adaptation steps", ""]
        out.append("| starting point | " + " | ".join(f"k = {k}" for k in steps) + " |")
        out.append("|---|" + "---:|" * len(steps))
        for name in STARTS:
            rec = result[name][0]
            cells = [pm(rec[f"{score}_mean"][k], rec[f"{score}_ci95"][k]) for k in steps]
            out.append(f"| {LABELS[name]} | " + " | ".join(cells) + " |")
        out.append("")
    diverged = {name: result[name][0]["diverged"] for name in STARTS if any(result[name][0]["diverged"])}
    if diverged:
        out += ["Episodes with non-finite logits, left out of the statistics (per step 0..S):", ""]
        out += [f"- {name}: {counts}" for name, counts in diverged.items()] + [""]
    return out


def render(
    run_dir: Path, cfg: Config, result: dict[str, Any], rows: list[dict[str, Any]], manifest: dict[str, Any],
    figures: list[str],
) -> str:  # fmt: skip
    """The report's Markdown text for a classification run."""
    from parity.report import config_section, figures_section, training_section, versions_section

    T = min(cfg.inner_steps, result["max_steps"])
    out = [f"# maml-parity run: `{run_dir}`", ""]
    out += [
        f"Meta-trained for {manifest.get('step', len(rows))} outer steps in **{manifest.get('framework', '?')}** "
        f"({cfg.dtype}) on {cfg.dataset} ({cfg.n_way}-way {cfg.k_support}-shot episodes of meta-train classes); "
        f"evaluated in **{result['framework']}** ({result['dtype']}), α = {_alpha_text(result['alpha'])}.",
        "",
    ]
    out += summary_section(result, T)
    out += evaluation_section(result, cfg, T)
    out += figures_section(figures)
    out += training_section(rows)
    out += config_section(cfg)
    out += versions_section(result, manifest)
    return "\n".join(out)


def _alpha_text(alpha: Any) -> str:
    if isinstance(alpha, dict):
        return "mean {mean:.4g} (min {min:.4g}, max {max:.4g})".format(**alpha)
    return f"{alpha:.4g}"


def _nan(values: list[float | None]) -> np.ndarray:
    return np.array([np.nan if v is None else v for v in values], dtype=np.float64)

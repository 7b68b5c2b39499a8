"""Figures 3-5 of the FIRP paper, from the analysis JSON of `spec-harness analyze firp`
(harness/analysis/analyses.py): top-k accuracy per draft step, pseudo-vs-real cosine per layer, and
first-step accuracy per prediction layer. Drawn and saved like every figure (harness/analysis/plotting.py).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from harness.analysis.plotting import MARKERS, note, pyplot, save


def _percent_axis(ax) -> None:
    from matplotlib.ticker import PercentFormatter

    ax.yaxis.set_major_formatter(PercentFormatter(xmax=1))


def _integer_x(ax) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def topk_accuracy(analysis: dict, out_dir: Path, steps=("2", "3", "4")) -> list[Path]:
    """Fig 3: top-1..top-5 accuracy of draft token N (N = 2 is the first draft token), per predictor."""
    acc = analysis["topk_accuracy"]
    budgets = analysis.get("training_budget", {})
    rows = [{"predictor": p, "label": _with_budget(p, budgets.get(p)), "N": int(n), "k": k + 1, "accuracy": v}
            for p, by_n in acc.items() for n, vals in by_n.items() if n in steps for k, v in enumerate(vals)]
    data = pd.DataFrame(rows, columns=["predictor", "label", "N", "k", "accuracy"])
    present = [int(n) for n in steps if n in set(data["N"].astype(str))]
    if not present:
        note(f"fig3 skipped: topk_accuracy has none of N = {', '.join(steps)}")
        return []
    plt = pyplot()
    fig, axes = plt.subplots(1, len(present), figsize=(4.2 * len(present) + 1, 4.2), sharey=True, squeeze=False)
    cmap = plt.get_cmap("tab10")
    for ax, n in zip(axes[0], present):
        for i, p in enumerate(acc):
            sub = data[(data["predictor"] == p) & (data["N"] == n)]
            if len(sub):
                ax.plot(sub["k"], sub["accuracy"], "-" + MARKERS[i % len(MARKERS)], color=cmap(i % 10),
                        label=sub["label"].iloc[0])
        ax.set_title(f"N = {n}" + (" (first draft token)" if n == 2 else ""))
        ax.set_xlabel("k (top-k)")
        ax.set_xticks(range(1, 6))
        _percent_axis(ax)
    axes[0][0].set_ylabel("top-k accuracy (held-out positions)")
    title = "predictor" + (" [steps x batch x positions]" if budgets else "")
    axes[0][-1].legend(title=title, loc="upper left", bbox_to_anchor=(1.02, 1))
    fig.suptitle(f"Fig 3. Top-k accuracy of draft token N\n{_analysis_title(analysis)}", fontsize=12)
    fig.tight_layout()
    return save(fig, out_dir, "fig3_topk_accuracy", data)


def _with_budget(name: str, budget: dict | None) -> str:
    """Legend entry: the predictor and its training budget, so unequal budgets are visible."""
    if not budget or None in (budget.get("steps"), budget.get("batch"), budget.get("positions")):
        return name
    return f"{name} [{budget['steps']} x {budget['batch']} x {budget['positions']}]"


def cosine_similarity(analysis: dict, out_dir: Path) -> list[Path]:
    """Fig 4: mean cosine of pseudo vs real hidden states, per layer after insertion."""
    data = pd.DataFrame([{"variant": v, "layer": int(layer), "cosine": c}
                         for v, by_layer in analysis["cosine"].items() for layer, c in by_layer.items()],
                        columns=["variant", "layer", "cosine"])
    if data.empty:
        note("fig4 skipped: cosine is empty")
        return []
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, (v, sub) in enumerate(data.groupby("variant", sort=False)):
        sub = sub.sort_values("layer")
        ax.plot(sub["layer"], sub["cosine"], "-" + MARKERS[i % len(MARKERS)], label=v)
    ax.set_xlabel("layer j (hidden state after j decoder layers)")
    _integer_x(ax)
    ax.set_ylabel("mean cosine similarity,\npseudo vs real hidden state")
    ax.legend(title="pseudo token")
    ax.set_title(f"Fig 4. Pseudo vs real hidden states after insertion\n{_analysis_title(analysis)}")
    return save(fig, out_dir, "fig4_cosine_by_layer", data)


def layer_sweep(analysis: dict, out_dir: Path) -> list[Path]:
    """Fig 5: first-step (N = 2) top-1 accuracy vs the layer the prediction is inserted at."""
    data = pd.DataFrame([{"layer": int(k), "top1_accuracy": v} for k, v in analysis["layer_sweep"].items()],
                        columns=["layer", "top1_accuracy"]).sort_values("layer").reset_index(drop=True)
    if data.empty:
        note("fig5 skipped: layer_sweep is empty")
        return []
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot(data["layer"], data["top1_accuracy"], "-o", color="tab:blue")
    best = data.loc[data["top1_accuracy"].idxmax()]
    ax.annotate(f"best: layer {int(best.layer)}, {best.top1_accuracy:.1%}", (best.layer, best.top1_accuracy),
                textcoords="offset points", xytext=(0, 10), ha="center", fontsize=9)
    ax.set_ylim(0, data["top1_accuracy"].max() * 1.2)
    ax.set_xlabel("prediction layer l (pseudo state inserted before layer l)")
    _integer_x(ax)
    ax.set_ylabel("first-step top-1 accuracy")
    _percent_axis(ax)
    ax.set_title(f"Fig 5. First-step accuracy vs prediction layer\n{_analysis_title(analysis)}")
    return save(fig, out_dir, "fig5_layer_sweep", data)


def _analysis_title(analysis: dict) -> str:
    return f"{analysis.get('model', '?')}, held-out training-split sequences"


ANALYSIS_FIGURES = {"topk_accuracy": topk_accuracy, "cosine": cosine_similarity, "layer_sweep": layer_sweep}

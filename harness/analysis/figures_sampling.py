"""The run figure of sampled runs: speedup at each temperature, per method and dataset (the table
HASS and EAGLE report: how much of a method's speedup survives sampling). Drawn from a run with
more than one temperature; the CSV beside it holds the numbers."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from harness.analysis.plotting import grouped_bars, note, order, pyplot, save, setting

COLUMNS = ["method", "dataset", "temperature", "speedup", "speedup_ci_low", "speedup_ci_high", "tau", "accept_len"]


def speedup_by_temperature(summary: pd.DataFrame, manifest: dict, out_dir: Path) -> list[Path]:
    """One panel per dataset: per method, one bar per temperature with its 95% interval."""
    if "temperature" not in summary or summary["temperature"].nunique() < 2:
        note("speedup by temperature skipped: the run has one temperature")
        return []
    if "batch_size" in summary:  # a run at several batch sizes: this figure at the lowest
        summary = summary[summary["batch_size"] == summary["batch_size"].min()]
    data = summary[summary["method"] != manifest.get("baseline", "ar")][COLUMNS].dropna(subset=["speedup"])
    datasets = list(dict.fromkeys(data["dataset"]))
    temps = sorted(data["temperature"].unique())
    plt = pyplot()
    cmap = plt.get_cmap("viridis")
    colors = {t: cmap(i / max(len(temps) - 1, 1) * 0.8) for i, t in enumerate(temps)}
    fig, axes = plt.subplots(1, len(datasets), figsize=(max(6.0, 0.9 * data["method"].nunique()) * len(datasets), 4.6),
                             squeeze=False)
    every = order(data["method"], manifest.get("methods", []))  # the same order in every panel
    for ax, dataset in zip(axes[0], datasets):
        sub = data[data["dataset"] == dataset]
        methods = [m for m in every if m in set(sub["method"])]
        grouped_bars(ax, sub, methods, temps, "speedup", colors, member_col="temperature", group_col="method",
                     err=True)
        ax.axhline(1.0, color="0.4", ls="--", lw=1)
        ax.set_xticks(range(len(methods)), methods, rotation=45, ha="right")
        ax.set_title(dataset)
        ax.set_ylabel("speedup over ar at the same temperature\n(ratio of mean tokens/s, 95% CI)")
    axes[0][-1].legend(title="temperature", loc="upper left", bbox_to_anchor=(1.02, 1),
                       handles=[plt.Rectangle((0, 0), 1, 1, color=colors[t], label=f"T = {t:g}") for t in temps])
    fig.suptitle(f"Speedup by sampling temperature\n{setting(manifest)}", y=1.06)
    return save(fig, out_dir, "speedup_by_temperature", data)

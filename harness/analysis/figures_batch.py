"""The run figures of batched runs (--batch-size with several values): speedup over `ar` at the
same batch size against the batch size, one line per method with its 95% interval, one panel per
dataset (the figure of "Performance or Illusion?", arXiv 2601.11580); and throughput (tokens
per second over all sequences of a batch) against the batch size. Drawn at the run's lowest
temperature; the CSVs beside them hold the numbers."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from harness.analysis.plotting import note, pyplot, save, setting, styles, yerr

COLUMNS = ["method", "dataset", "batch_size", "speedup", "speedup_ci_low", "speedup_ci_high", "throughput",
           "tpot_ms", "tpot_p90_ms", "tau", "n"]


def by_batch_size(summary: pd.DataFrame, manifest: dict, out_dir: Path) -> list[Path]:
    """speedup_by_batch_size and throughput_by_batch_size, or nothing for a run at one batch size."""
    if "batch_size" not in summary or summary["batch_size"].nunique() < 2:
        note("speedup and throughput by batch size skipped: the run has one batch size")
        return []
    if "temperature" in summary:
        summary = summary[summary["temperature"] == summary["temperature"].min()]
    data = summary[COLUMNS].astype({"batch_size": int}).sort_values(["method", "dataset", "batch_size"])
    colors, _, methods, datasets = styles(manifest, summary, data)
    baseline = manifest.get("baseline", "ar")
    return (_panels(data[data["method"] != baseline], colors, datasets, manifest, out_dir, "speedup")
            + _panels(data, colors, datasets, manifest, out_dir, "throughput"))


def _panels(data: pd.DataFrame, colors: dict, datasets: list, manifest: dict, out_dir: Path, value: str) -> list[Path]:
    """One panel per dataset: `value` against the batch size, one line per method."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(datasets), figsize=(5.2 * len(datasets), 4.4), squeeze=False)
    sizes = sorted(data["batch_size"].unique())
    for ax, dataset in zip(axes[0], datasets):
        for method, g in data[data["dataset"] == dataset].groupby("method", sort=False):
            g = g.dropna(subset=[value])
            if g.empty:
                continue
            err = yerr(g) if value == "speedup" else None
            ax.errorbar(g["batch_size"], g[value], yerr=err, color=colors.get(method), marker="o", capsize=3,
                        label=method)
        if value == "speedup":
            ax.axhline(1.0, color="0.4", ls="--", lw=1)
        ax.set_xscale("log", base=2)
        ax.set_xticks(sizes, [str(int(b)) for b in sizes])
        ax.set_xlabel("batch size")
        ax.set_title(dataset)
        ax.set_ylabel("speedup over ar at the same batch size\n(ratio of mean batch tokens/s, 95% CI)"
                      if value == "speedup" else "throughput (tokens/s, all sequences)")
    axes[0][-1].legend(title="method", loc="upper left", bbox_to_anchor=(1.02, 1))
    title = "Speedup by batch size" if value == "speedup" else "Throughput by batch size"
    fig.suptitle(f"{title}\n{setting(manifest)}", y=1.06)
    return save(fig, out_dir, f"{value}_by_batch_size", data)

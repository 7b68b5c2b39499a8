"""Plotting helpers shared by every figure: style, colours per method and markers per dataset
(the same in every figure of a run), legends, error bars, bar labels, and saving a figure as PNG
with the numbers it shows as CSV beside it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

STYLE = {"font.size": 11, "axes.titlesize": 12, "axes.labelsize": 11, "legend.fontsize": 9,
         "xtick.labelsize": 10, "ytick.labelsize": 10, "figure.dpi": 100, "axes.grid": True,
         "grid.alpha": 0.3}
MARKERS = "osD^vP*Xh"


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update(STYLE)
    return plt


def note(msg: str) -> None:
    print(f"figures: {msg}")


def setting(manifest: dict) -> str:
    """'<model> on <GPU or CPU>, <dtype>' for titles."""
    hw = manifest.get("hardware", {})
    where = hw.get("gpu") or hw.get("cpu") or manifest.get("device", "?")
    dtype = manifest.get("dtype")
    return f"{manifest.get('model_key') or manifest.get('model', '?')} on {where}" + (f", {dtype}" if dtype else "")


def save(fig, out_dir: Path, stem: str, data: pd.DataFrame, extra: dict[str, pd.DataFrame] | None = None) -> list[Path]:
    plt = pyplot()
    out_dir.mkdir(parents=True, exist_ok=True)
    png = out_dir / f"{stem}.png"
    fig.savefig(png, dpi=150, bbox_inches="tight")
    plt.close(fig)
    written = [png]
    for name, table in {stem: data, **(extra or {})}.items():
        table.to_csv(out_dir / f"{name}.csv", index=False)
        written.append(out_dir / f"{name}.csv")
    return written


def order(values, preferred) -> list:
    """Distinct values, in the preferred order first (the manifest's), then as they come."""
    values = list(dict.fromkeys(values))
    return [v for v in preferred if v in values] + [v for v in values if v not in preferred]


def styles(manifest: dict, summary: pd.DataFrame, shown: pd.DataFrame):
    """Colour per method and marker per dataset, the same in every figure of a run (assigned
    over the whole summary), restricted to what `shown` holds; then its methods and datasets."""
    plt = pyplot()
    cmap = plt.get_cmap("tab10")
    colors = {m: cmap(i % 10) for i, m in enumerate(order(summary["method"], manifest.get("methods", [])))}
    markers = {d: MARKERS[i % len(MARKERS)] for i, d in enumerate(order(summary["dataset"], manifest.get("datasets", [])))}
    methods = [m for m in colors if m in set(shown["method"])]
    datasets = [d for d in markers if d in set(shown["dataset"])]
    return {m: colors[m] for m in methods}, {d: markers[d] for d in datasets}, methods, datasets


def legends(ax, colors: dict, markers: dict) -> None:
    """Method (colour) and dataset (marker) legends, outside the axes on the right."""
    from matplotlib.lines import Line2D

    first = ax.legend(handles=[Line2D([], [], color=c, marker="o", ls="", label=m) for m, c in colors.items()],
                      title="method", loc="upper left", bbox_to_anchor=(1.02, 1))
    ax.add_artist(first)
    ax.legend(handles=[Line2D([], [], color="0.3", marker=mk, ls="", label=d) for d, mk in markers.items()],
              title="dataset", loc="lower left", bbox_to_anchor=(1.02, 0))


def yerr(df: pd.DataFrame) -> np.ndarray:
    mid = df["speedup"].to_numpy()  # the headline speedup and its cluster-bootstrap interval
    return np.vstack([mid - df["speedup_ci_low"].to_numpy(), df["speedup_ci_high"].to_numpy() - mid])


def bar_labels(ax, bars, spec: str = ".2f", inside: bool = False) -> None:
    """Value labels: on top of the bars, or inside them (bars with error bars)."""
    heights = [b.get_height() for b in bars]
    ax.bar_label(bars, labels=["" if np.isnan(h) else format(h, spec) for h in heights], fontsize=8,
                 **({"label_type": "center", "bbox": {"fc": "white", "ec": "none", "alpha": 0.8, "pad": 1}}
                    if inside else {"padding": 2}))


def grouped_bars(ax, data: pd.DataFrame, groups: list, members: list, value: str, colors: dict,
                  member_col: str = "method", group_col: str = "dataset", err: bool = False) -> None:
    """Bars of data[value] grouped by group_col, one bar per member in each group."""
    width = 0.8 / max(len(members), 1)
    for j, m in enumerate(members):
        sub = data[data[member_col] == m].set_index(group_col).reindex(groups)
        xs = np.arange(len(groups)) + (j - (len(members) - 1) / 2) * width
        errors = yerr(sub) if err else None
        bars = ax.bar(xs, sub[value].to_numpy(), width * 0.95, yerr=errors, capsize=3, color=colors[m], label=m)
        bar_labels(ax, bars, inside=err)
    ax.set_xticks(np.arange(len(groups)), groups)

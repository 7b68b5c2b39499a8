"""Figures drawn from results files only (no model): a run directory, a cost-model JSON
(harness/analysis/costmodel.py) and an analysis JSON (harness/analysis/analyses.py). Every figure
is written as PNG with the numbers it shows as CSV next to it (same name).

Speedups in every figure are the headline speedup (ratio of mean tokens/s over the pairs) with its
95% cluster-bootstrap interval (`speedup`, `speedup_ci_*` of metrics.summarize; the median paired
ratio is in the CSVs too).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from harness.analysis.costmodel import ratio_at
from harness.analysis.plotting import (
    bar_labels,
    grouped_bars,
    legends,
    note,
    pyplot,
    save,
    setting,
    styles,
    yerr,
)
from harness.bench.records_io import load_run
from harness.bench.runner import summary_of

SPEEDUP_COLS = ["speedup", "speedup_ci_low", "speedup_ci_high", "speedup_median"]
SPEEDUP_LABEL = "speedup over baseline\n(ratio of mean tokens/s, 95% CI)"


def _non_baseline(summary: pd.DataFrame, manifest: dict) -> pd.DataFrame:
    return summary[summary["method"] != manifest.get("baseline", "ar")]


# -- run figures ---------------------------------------------------------------------------
def speedup_vs_draft(summary: pd.DataFrame, manifest: dict, out_dir: Path) -> list[Path]:
    """Fig 1a: one point per (method, dataset): draft size vs median paired speedup, 95% CI."""
    data = _non_baseline(summary, manifest)[["method", "dataset", "draft_size", *SPEEDUP_COLS]]
    dropped = data[data[["draft_size", "speedup"]].isna().any(axis=1)]
    if len(dropped):
        note(f"fig1a: no draft size or speedup for {sorted(set(dropped['method']))}: left out")
    data = data.drop(dropped.index).reset_index(drop=True)
    if data.empty:
        note("fig1a skipped: no method besides the baseline has a draft size and a speedup")
        return []
    plt = pyplot()
    colors, markers, _, datasets = styles(manifest, summary, data)
    fig, ax = plt.subplots(figsize=(8, 4.8))
    span = max(float(data["draft_size"].max() - data["draft_size"].min()), 1.0)
    dodge = {d: (i - (len(datasets) - 1) / 2) * 0.025 * span for i, d in enumerate(datasets)}
    for i, r in data.iterrows():
        ax.errorbar(r.draft_size + dodge[r.dataset], r.speedup, yerr=yerr(data.iloc[[i]]),
                    fmt=markers[r.dataset], color=colors[r.method], ms=8, capsize=4, lw=1.5)
    ax.axhline(1.0, color="0.4", ls="--", lw=1)
    ax.text(ax.get_xlim()[0], 1.0, f" baseline ({manifest.get('baseline', 'ar')})", va="bottom", fontsize=9, color="0.3")
    ax.set_xlabel("draft size (draft tokens verified per forward, mean)"
                  + ("\n(points dodged slightly by dataset)" if len(datasets) > 1 else ""))
    ax.set_ylabel(SPEEDUP_LABEL)
    ax.set_title(f"Fig 1a. Speedup vs draft size\n{setting(manifest)}")
    legends(ax, colors, markers)
    return save(fig, out_dir, "fig1a_speedup_vs_draft_size", data)


def tau_per_method(summary: pd.DataFrame, manifest: dict, out_dir: Path) -> list[Path]:
    """Fig 1b: mean accepted tokens per target forward, per method, grouped by dataset."""
    data = summary[["method", "dataset", "tau"]].dropna().reset_index(drop=True)
    if data.empty:
        note("fig1b skipped: no tau in the run")
        return []
    plt = pyplot()
    colors, _, methods, datasets = styles(manifest, summary, data)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.7 * len(datasets) * len(methods) + 2.5), 4.5))
    grouped_bars(ax, data, datasets, methods, "tau", colors)
    ax.set_ylabel("tau (accepted tokens per target forward)")
    ax.set_xlabel("dataset")
    ax.set_ylim(0, data["tau"].max() * 1.18)
    ax.legend(title="method", loc="upper left", bbox_to_anchor=(1.01, 1))
    ax.set_title(f"Fig 1b. Mean accepted tokens per forward (tau)\n{setting(manifest)}")
    return save(fig, out_dir, "fig1b_tau", data)


def _cost_points(summary: pd.DataFrame, manifest: dict, cost: dict) -> pd.DataFrame:
    """Each method's (dataset's) rows per forward, c(n)/c(1) there and its bound tau * c(1) / c(n)."""
    data = _non_baseline(summary, manifest)[["method", "dataset", "tau", "positions", *SPEEDUP_COLS]]
    data = data.dropna(subset=["tau", "positions", "speedup"]).reset_index(drop=True)
    if data.empty:
        return data
    top = max(cost["n"])
    if (data["positions"] > top).any():
        note(f"costmodel: positions beyond the measured n <= {top}: c(n) extrapolated linearly")
    data["ratio"] = [ratio_at(cost, n) for n in data["positions"]]
    data["bound"] = data["tau"] / data["ratio"]
    return data


def _curve_panel(ax, curve: pd.DataFrame, data: pd.DataFrame, cost: dict, colors: dict, markers: dict) -> None:
    """Left panel: the measured c(n)/c(1) curve with every method's operating point on it."""
    ax.plot(curve["n"], curve["ratio"], "-o", color="0.2", ms=4, label="measured c(n)/c(1)")
    for r in data.itertuples():
        ax.plot(r.positions, r.ratio, markers[r.dataset], color=colors[r.method], ms=9, mec="k")
    ax.set_xlabel("rows processed per target forward, n")
    ax.set_ylabel("forward latency c(n) / c(1)")
    ax.set_title(f"Forward cost (prefix {cost.get('prefix', '?')} tokens, c(1) = {1000 * cost['seconds'][0]:.1f} ms)")
    legends(ax, colors, markers)


def _bound_panel(ax, data: pd.DataFrame, colors: dict) -> None:
    """Right panel: measured speedup (with its interval) next to the cost-model bound, per method."""
    from matplotlib.patches import Patch

    xs = np.arange(len(data))
    bars = ax.bar(xs - 0.2, data["speedup"], 0.4, yerr=yerr(data), capsize=3,
                  color=[colors[m] for m in data["method"]], label="measured (ratio of means, 95% CI)")
    bar_labels(ax, bars, inside=True)
    bounds = ax.bar(xs + 0.2, data["bound"], 0.4, color="white", edgecolor=[colors[m] for m in data["method"]],
                    hatch="//", label="bound tau * c(1) / c(n)")
    bar_labels(ax, bounds)
    ax.axhline(1.0, color="0.4", ls="--", lw=1)
    ax.set_xticks(xs, [f"{m} ({d})" for m, d in zip(data["method"], data["dataset"])], rotation=60, ha="right",
                  rotation_mode="anchor", fontsize=8)
    ax.set_ylabel(SPEEDUP_LABEL)
    ax.set_ylim(0, max(data["bound"].max(), data["speedup_ci_high"].max()) * 1.25)
    ax.legend(handles=[Patch(facecolor="0.55", label=bars.get_label()),
                       Patch(facecolor="white", edgecolor="0.3", hatch="//", label=bounds.get_label())],
              loc="upper left")
    ax.set_title("Measured speedup vs cost-model bound")


def cost_model(summary: pd.DataFrame, manifest: dict, cost: dict, out_dir: Path) -> list[Path]:
    """Measured c(n)/c(1), each method's operating point on it, and per method the measured
    speedup next to its bound tau * c(1) / c(n_method)."""
    data = _cost_points(summary, manifest, cost)
    if data.empty:
        note("costmodel skipped: no method besides the baseline has positions per forward and a speedup")
        return []
    curve = pd.DataFrame({"n": cost["n"], "seconds": cost["seconds"], "ratio": cost["ratio"]})
    if cost.get("model") != manifest.get("model_key"):
        note(f"costmodel: measured on model {cost.get('model')!r}, the run used {manifest.get('model_key')!r}")
    colors, markers, methods, datasets = styles(manifest, summary, data)
    data = data.assign(order=[(datasets.index(d), methods.index(m)) for m, d in zip(data["method"], data["dataset"])])
    data = data.sort_values("order").drop(columns="order").reset_index(drop=True)
    width = max(14.0, 6.0 + 0.3 * len(data))  # room for every method x dataset pair's label
    fig, (left, right) = pyplot().subplots(1, 2, figsize=(width, 5.5), gridspec_kw={"width_ratios": [1, 1.4]},
                                           layout="constrained")
    _curve_panel(left, curve, data, cost, colors, markers)
    _bound_panel(right, data, colors)
    fig.suptitle(f"Cost model: {setting({**cost, 'model_key': cost.get('model')})}\nrun: {setting(manifest)}",
                 fontsize=12)
    return save(fig, out_dir, "costmodel", data, {"costmodel_curve": curve})


ABLATION_PAIRS = (("firp:serial", "firp:parallel"), ("firp", "firp:parallel"))


def serial_vs_parallel(summary: pd.DataFrame, manifest: dict, out_dir: Path,
                       methods: tuple[str, str] | None = None) -> list[Path]:
    """The mask ablation: tau and speedup per dataset, the two configurations side by side.
    Default pair: firp:serial vs firp:parallel if the run has both, else firp vs firp:parallel."""
    present = set(summary["method"])
    methods = methods or next((p for p in ABLATION_PAIRS if set(p) <= present), ABLATION_PAIRS[-1])
    data = summary[summary["method"].isin(methods)][["method", "dataset", "tau", *SPEEDUP_COLS]]
    missing = [m for m in methods if m not in set(data["method"])]
    if missing:
        note(f"ablation skipped: method(s) {', '.join(missing)} not in the run")
        return []
    data = data.reset_index(drop=True)
    plt = pyplot()
    colors, _, _, datasets = styles(manifest, summary, data)
    fig, (a, b) = plt.subplots(1, 2, figsize=(max(9, 2.4 * len(datasets) + 4), 4.5))
    grouped_bars(a, data, datasets, list(methods), "tau", colors)
    a.set_ylabel("tau (accepted tokens per target forward)")
    a.set_ylim(0, data["tau"].max() * 1.35)
    a.set_title("Mean accepted tokens per forward")
    grouped_bars(b, data, datasets, list(methods), "speedup", colors, err=True)
    b.axhline(1.0, color="0.4", ls="--", lw=1)
    b.set_ylabel(SPEEDUP_LABEL)
    b.set_ylim(0, data["speedup_ci_high"].max() * 1.35)
    b.set_title("Speedup")
    for ax in (a, b):
        ax.set_xlabel("dataset")
        ax.legend(loc="upper center", ncol=2)
    fig.suptitle(f"Serial vs parallel pseudo-token mask ({methods[0]} vs {methods[1]})"
                 f"{_checkpoints_line(manifest, methods)}\n{setting(manifest)}", fontsize=12)
    fig.tight_layout()
    return save(fig, out_dir, "ablation_serial_vs_parallel", data)


def _checkpoints_line(manifest: dict, methods) -> str:
    """'\ncheckpoints: a vs b' when the run named the methods' checkpoints, else ''."""
    configs = manifest.get("method_configs", {})
    names = [configs.get(m, {}).get("options", {}).get("checkpoint") for m in methods]
    return f"\ncheckpoints: {' vs '.join(names)}" if all(names) else ""


# -- everything ----------------------------------------------------------------------------
def one_setting(summary: pd.DataFrame) -> pd.DataFrame:
    """The rows of the run's lowest temperature and batch size, for the figures drawn per
    (method, dataset)."""
    for column, figure in (("temperature", "speedup_by_temperature"), ("batch_size", "speedup_by_batch_size")):
        if column in summary and summary[column].nunique() > 1:
            lowest = summary[column].min()
            note(f"a run at several values of {column}: figures other than {figure} show {column} = {lowest:g}")
            summary = summary[summary[column] == lowest].reset_index(drop=True)
    return summary


def make_all(run_dir: Path | None, out_dir: Path, costmodel_json: Path | None = None,
             analysis_json: Path | None = None) -> list[Path]:
    """Every figure the inputs allow; returns the files written. A figure whose data is
    missing is skipped with a printed note."""
    from harness.analysis.figures_analysis import ANALYSIS_FIGURES
    from harness.analysis.figures_batch import by_batch_size
    from harness.analysis.figures_sampling import speedup_by_temperature

    out_dir = Path(out_dir)
    written: list[Path] = []
    if run_dir is not None:
        manifest, _ = load_run(Path(run_dir))
        summary, _ = summary_of(Path(run_dir))
        if summary.empty:
            note(f"{run_dir} holds no decoded records: run figures skipped")
        else:
            written += speedup_by_temperature(summary, manifest, out_dir)
            written += by_batch_size(summary, manifest, out_dir)
            summary = one_setting(summary)
            written += speedup_vs_draft(summary, manifest, out_dir)
            written += tau_per_method(summary, manifest, out_dir)
            written += serial_vs_parallel(summary, manifest, out_dir)
            if costmodel_json is not None:
                written += cost_model(summary, manifest, json.loads(Path(costmodel_json).read_text()), out_dir)
    elif costmodel_json is not None:
        note("costmodel skipped: it needs a run directory (the methods' tau, positions and speedups)")
    if analysis_json is not None:
        analysis = json.loads(Path(analysis_json).read_text())
        for key, draw in ANALYSIS_FIGURES.items():
            if key in analysis:
                written += draw(analysis, out_dir)
            else:
                note(f"{draw.__name__} skipped: no {key!r} in {analysis_json}")
    return written


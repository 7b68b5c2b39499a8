"""The method x dataset table of a run, printed and written as Markdown and CSV, with the A/A
control's verdict and resolution: a run whose control interval reaches further from 1.00 than
the declared resolution (metrics.CONTROL_RESOLUTION) cannot time the methods, and speedups of one
dataset closer together than its control's reach are not told apart (column `A/A ±`)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from harness.bench.metrics import (
    CONTROL_RESOLUTION,
    MIN_CLUSTERS,
    NO_GROUP,
    control_holds,
    control_reach,
)
from harness.bench.records_io import SETTINGS
from harness.bench.results import hardware_id
from harness.bench.runner import summary_of
from harness.bench.validate import CONTROL


def _fmt(x, spec: str) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def _interval(value, lo, hi) -> str:
    return f"{_fmt(value, '.2f')} [{_fmt(lo, '.2f')}, {_fmt(hi, '.2f')}]"


def _rates(rates) -> str:
    return "/".join(f"{r:.2f}" for r in rates[:4]) + ("/..." if len(rates) > 4 else "") if rates else "-"


def resolutions(summary: pd.DataFrame, by: tuple[str, ...] = ()) -> dict[tuple, float]:
    """(dataset, *by) -> the reach of that group's A/A control interval from 1.00."""
    if summary.empty:
        return {}
    rows = summary[summary["method"] == CONTROL]
    return {tuple(r[k] for k in ("dataset", *by)): control_reach(r["speedup_ci_low"], r["speedup_ci_high"])
            for r in rows.to_dict("records")}


def table(summary: pd.DataFrame, by: tuple[str, ...] = ()) -> pd.DataFrame:
    """Human-readable table from metrics.summarize() output."""
    rows, reach = [], resolutions(summary, by)
    for r in summary.to_dict("records"):
        quality = r["rouge2"] if not math.isnan(r["rouge2"]) else r["accuracy"]
        rows.append({
            "method": r["method"], "dataset": r["dataset"], **{k: r[k] for k in by}, "n": r["n"],
            "speedup [95% CI]": _interval(r["speedup"], r["speedup_ci_low"], r["speedup_ci_high"]),
            "A/A ±": _fmt(reach.get(tuple(r[k] for k in ("dataset", *by))), ".2f"),
            **({"predicted": _fmt(r["predicted_speedup"], ".2f")} if "predicted_speedup" in r else {}),
            "median paired [95% CI]": _interval(r["speedup_median"], r["median_ci_low"], r["median_ci_high"]),
            "tau": _fmt(r["tau"], ".2f"), "accept_len": _fmt(r["accept_len"], ".2f"),
            "accepted at 1/2/3/4": _rates(r["accept_rate"]), "draft": _fmt(r["draft_size"], ".1f"),
            "positions/fwd": _fmt(r["positions"], ".1f"), "syncs/step": _fmt(r.get("syncs_per_step"), ".2f"),
            "tok/s": _fmt(r["tokens_per_s"], ".1f"),
            **({"throughput": _fmt(r["throughput"], ".1f"),
                "TPOT ms (p90)": f"{_fmt(r['tpot_ms'], '.1f')} ({_fmt(r['tpot_p90_ms'], '.1f')})",
                "idle rows": _fmt(100 * r["idle_share"], ".0f") + ("%" if not math.isnan(r["idle_share"]) else "")}
               if "batch_size" in by else {}),
            "Rouge-2 / acc": _fmt(quality, ".3f"),
            "lossless": "-" if math.isnan(r["lossless_rate"]) else f"{100 * r['lossless_rate']:.0f}%",
            "ties / mismatches": f"{r['ties']} / {r['mismatches']}",
            "J/token": _fmt(r["joules_per_token"], ".3f"),
        })
    return pd.DataFrame(rows)


def control_verdicts(summary: pd.DataFrame, by: tuple[str, ...] = ()) -> list[str]:
    """One line per dataset (and `by` group) with an A/A control: its speedup, interval, and
    whether the interval lies within 1.00 +- the declared resolution."""
    lines = []
    for r in summary[summary["method"] == CONTROL].to_dict("records") if not summary.empty else []:
        holds = control_holds(r["speedup_ci_low"], r["speedup_ci_high"])
        verdict = "ok" if holds else (f"FLAGGED: the interval reaches beyond 1.00 +- {CONTROL_RESOLUTION:g}, this run "
                                      "cannot time the methods")
        if r.get("clusters", MIN_CLUSTERS) < MIN_CLUSTERS:
            verdict = (f"FLAGGED: {r['clusters']} cluster(s) (samples, or batches of samples): fewer than "
                       f"{MIN_CLUSTERS}, the interval is not one to judge by")
        where = " / ".join(str(r[k]) for k in ("dataset", *by))
        lines.append(f"A/A control {where}: {_interval(r['speedup'], r['speedup_ci_low'], r['speedup_ci_high'])}"
                     f" ({verdict})")
    return lines


def ungrouped(summary: pd.DataFrame, by: tuple[str, ...]) -> list[str]:
    """A notice per dataset none of whose records has a value of a `by` column."""
    lines = []
    for column in by if not summary.empty else ():
        for dataset, g in summary.groupby("dataset", sort=False):
            if (g[column] == NO_GROUP).all():
                lines.append(f"--by {column}: {dataset} has no {column}; its records are shown as {NO_GROUP}")
    return lines


def predicted_speedups(run_dir: Path) -> dict[str, dict]:
    """method -> the plan of its auto draft shape (manifest: method_configs), for those that planned."""
    configs = json.loads((Path(run_dir) / "manifest.json").read_text()).get("method_configs") or {}
    return {m: c["plan"] for m, c in configs.items() if "predicted_speedup" in c.get("plan", {})}


# The tuning set of each evaluation set's kind of text (and of Spec-Bench's and MT-bench's
# categories): what a plan's prediction for it is read from, when the profile measured that set.
TUNING_KIND = {"gsm8k": "gsm8k-train", "xsum": "xsum-train", "mt-bench": "chat-train",
               "coding": "code-train", "math": "gsm8k-train", "math_reasoning": "gsm8k-train",
               "summarization": "xsum-train", **{c: "chat-train" for c in (
                   "writing", "roleplay", "reasoning", "extraction", "stem", "humanities", "translation", "qa", "rag")}}


def predicted_for(plan: dict | None, dataset: str, category: str | None = None) -> float | None:
    """The speedup planned for `dataset` (a category of it, when the table is by category or the
    dataset is one category, spec-bench#coding): on the tuning set of its kind of text
    (TUNING_KIND) when the profile had one, else over all tuning sets."""
    if not plan:
        return None
    category = category if category and category != NO_GROUP else dataset.partition("#")[2]
    kind = TUNING_KIND.get(category)
    kind = kind or TUNING_KIND.get(dataset, f"{dataset}-train")
    return plan.get("predicted_by_source", {}).get(kind, plan["predicted_speedup"])


def shard_notes(run_dir: Path) -> list[str]:
    """A sweep's grid point: whether its shards were pooled (all on identical hardware) or are
    shown per hardware (a speedup is never paired across machines)."""
    manifest = json.loads((Path(run_dir) / "manifest.json").read_text())
    shards = ((manifest.get("sweep") or {}).get("shards")) or {}
    kinds = sorted({hardware_id(s.get("hardware") or {}) for s in shards.values()})
    if not kinds:
        return []
    if len(kinds) == 1:
        return [f"{len(shards)} shard(s) of a sweep, pooled: all on identical hardware ({kinds[0]})"]
    return [f"{len(shards)} shard(s) of a sweep on {len(kinds)} kinds of hardware ({'; '.join(kinds)}): reported per "
            "hardware (column `hardware`); speedups are paired within a shard, never across machines"]


def report(run_dir: Path, write: bool = True, by: tuple[str, ...] = ()) -> str:
    """Summarise a run directory; writes summary.csv (raw numbers) and summary.md (by category:
    summary-<by>.csv/.md). A method that planned its draft shape shows its predicted speedup (on
    the tuning set of the dataset's kind when its profile has one)."""
    run_dir = Path(run_dir)
    summary, skipped = summary_of(run_dir, by=by)
    predicted = predicted_speedups(run_dir)
    if predicted and not summary.empty:
        categories = summary["category"] if "category" in summary else [None] * len(summary)
        summary = summary.assign(predicted_speedup=[predicted_for(predicted.get(m), d, c) for m, d, c
                                                    in zip(summary["method"], summary["dataset"], categories)])
    shown = by + tuple(c for c in SETTINGS if c in summary and c not in by)  # never across settings (or hardware)
    text = table(summary, shown).to_markdown(index=False) if not summary.empty else "(no decoded records)"
    notes = control_verdicts(summary, shown) + ungrouped(summary, by) + shard_notes(run_dir)
    if skipped:
        notes.append(f"{len(skipped)} record(s) skipped, e.g. {skipped[0]['dataset']} #{skipped[0]['sample_id']}: "
                     f"{skipped[0]['skipped']}")
    text = "\n\n".join([text, *notes])
    if write:
        stem = "summary" + "".join(f"-{b}" for b in by)
        csv = summary.assign(accept_rate=summary["accept_rate"].map(json.dumps)) if not summary.empty else summary
        csv.to_csv(run_dir / f"{stem}.csv", index=False)
        (run_dir / f"{stem}.md").write_text(text + "\n")
    return text

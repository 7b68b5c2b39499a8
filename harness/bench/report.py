"""The method x dataset table of a run, printed and written as Markdown and CSV."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from harness.bench.runner import summary_of

COLUMNS = {
    "method": "method", "dataset": "dataset", "n": "n", "speedup": "speedup",
    "speedup_ci": "median paired speedup [95% CI]", "tau": "tau", "draft_size": "draft",
    "positions": "positions/fwd", "tokens_per_s": "tok/s", "quality": "Rouge-2 / acc",
    "lossless_rate": "lossless", "joules_per_token": "J/token",
}


def _fmt(x: float, spec: str) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def table(summary: pd.DataFrame) -> pd.DataFrame:
    """Human-readable table from metrics.summarize() output."""
    if summary.empty:
        return pd.DataFrame(columns=list(COLUMNS.values()))
    rows = []
    for r in summary.itertuples(index=False):
        quality = r.rouge2 if not math.isnan(r.rouge2) else r.accuracy
        rows.append({
            "method": r.method, "dataset": r.dataset, "n": r.n,
            "speedup": _fmt(r.speedup, ".2f") + ("x" if not math.isnan(r.speedup) else ""),
            "speedup_ci": f"{_fmt(r.speedup_median, '.2f')} [{_fmt(r.speedup_ci_low, '.2f')}, {_fmt(r.speedup_ci_high, '.2f')}]",
            "tau": _fmt(r.tau, ".2f"), "draft_size": _fmt(r.draft_size, ".1f"),
            "positions": _fmt(r.positions, ".1f"), "tokens_per_s": _fmt(r.tokens_per_s, ".1f"),
            "quality": _fmt(quality, ".3f"), "lossless_rate": _fmt(100 * r.lossless_rate, ".0f") + "%"
            if not math.isnan(r.lossless_rate) else "-",
            "joules_per_token": _fmt(r.joules_per_token, ".3f"),
        })
    return pd.DataFrame(rows).rename(columns=COLUMNS)


def report(run_dir: Path, write: bool = True) -> str:
    """Summarise a run directory; writes summary.csv (raw numbers) and summary.md."""
    run_dir = Path(run_dir)
    summary, skipped = summary_of(run_dir)
    text = table(summary).to_markdown(index=False) if not summary.empty else "(no decoded records)"
    if skipped:
        text += f"\n\n{len(skipped)} record(s) skipped, e.g. {skipped[0]['dataset']} #{skipped[0]['sample_id']}: {skipped[0]['skipped']}"
    if write:
        summary.to_csv(run_dir / "summary.csv", index=False)
        (run_dir / "summary.md").write_text(text + "\n")
    return text

"""`report SWEEP`: one table per grid dimension (each method's speedup at each value of the
dimension, the geometric mean over the points that share it), then every point's own rows. A
point's speedups are paired within its shards, and a point whose shards ran on different hardware
is reported per hardware (`report` on the point says so)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from harness.bench import rundir
from harness.bench.report import _interval
from harness.bench.results import ResultsError
from harness.bench.runner import summary_of
from harness.bench.validate import CONTROL
from harness.sweep.spec import SWEEP_FILE


def is_sweep(path: Path) -> bool:
    return (Path(path) / SWEEP_FILE).exists()


def point_rows(out: Path, spec: dict) -> pd.DataFrame:
    """Every point's summary rows, with the point's name and grid values as columns."""
    frames = []
    for name, values in spec["points"].items():
        if not rundir.holds_run(out / name):
            continue
        summary, _ = summary_of(out / name)
        if not summary.empty:
            frames.append(summary.assign(point=name, **{k: _shown(v) for k, v in values.items()}))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _shown(value) -> str:
    return ",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)


def _geomean(values: pd.Series) -> float:
    values = values.dropna()
    return float(np.exp(np.log(values).mean())) if len(values) and (values > 0).all() else math.nan


def by_dimension(rows: pd.DataFrame, dim: str) -> str:
    """method x dataset rows, one column per value of `dim`: the geometric mean speedup of the
    points at that value (n points in brackets)."""
    data = rows[rows["method"] != "ar"]
    table = data.groupby(["method", "dataset", dim], sort=False)["speedup"].agg([_geomean, "count"]).reset_index()
    table["cell"] = [f"{_fmt(g)} ({n})" for g, n in zip(table["_geomean"], table["count"])]
    wide = table.pivot(index=["method", "dataset"], columns=dim, values="cell").reset_index()
    return wide.to_markdown(index=False)


def _fmt(x: float) -> str:
    return "-" if math.isnan(x) else f"{x:.2f}"


def sweep_report(out: Path) -> str:
    """The sweep's tables (by dimension, then per point) as Markdown; a ResultsError when the
    directory holds no sweep."""
    out = Path(out)
    try:
        spec = json.loads((out / SWEEP_FILE).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise ResultsError(f"{out}: not a sweep directory ({err})") from None
    rows = point_rows(out, spec)
    done = rows["point"].nunique() if not rows.empty else 0
    head = f"sweep {spec.get('file')}: {done} of {len(spec['points'])} grid points hold records"
    if rows.empty:
        return head
    parts = [head]
    for dim in spec.get("dimensions") or []:
        parts.append(f"## speedup by {dim} (geometric mean over the points at each value; points in brackets)\n\n"
                     + by_dimension(rows, dim))
    points = rows[rows["method"] != "ar"]
    shown = pd.DataFrame({"point": points["point"], "method": points["method"], "dataset": points["dataset"],
                          **{c: points[c] for c in ("temperature", "batch_size", "hardware") if c in points},
                          "n": points["n"],
                          "speedup [95% CI]": [_interval(r["speedup"], r["speedup_ci_low"], r["speedup_ci_high"])
                                               for r in points.to_dict("records")],
                          "tau": points["tau"].map(lambda x: _fmt(float(x)))})
    parts.append("## every point (A/A control: " + CONTROL + ")\n\n" + shown.to_markdown(index=False))
    return "\n\n".join(parts)

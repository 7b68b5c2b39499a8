"""Every metric the harness reports, defined once (see the README's "Metrics" section).

Per record: tokens/s, Rouge-2, GSM8K correctness. Per (method, dataset[, category]):
- speedup: ratio of mean tokens/s over the pairs (Spec-Bench's definition), and the median of
  per-turn paired ratios; each with a 95% cluster-bootstrap interval that resamples samples
  (all turns of a sample together); n = number of (method, baseline) pairs;
- tau: generated tokens / target forwards, the prefill forward included (ours; CI regresses on it);
- accept_len: 1 + accepted drafts / decoding steps (the field's decode-only convention, EAGLE
  and vLLM), and per-position acceptance: the share of decoding steps whose draft position i
  was accepted, i = 1..deepest;
- draft size and positions per decoding forward, draft forwards per decoding step, device waits
  (syncs: host reads and blocking copies) per decoding step;
- quality, lossless rate (records with a baseline to compare with), ties and mismatches among
  the divergences (harness/bench/divergence.py), joules per token;
- the A/A control's rule and the run's resolution (control_holds, control_reach).
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import pandas as pd

from harness.bench.data import extract_number
from harness.bench.records_io import SETTINGS

BOOTSTRAP_ROUNDS = 2000
NO_GROUP = "(none)"  # the `by` group of records without a value (report --by category on data without categories)
CONTROL_RESOLUTION = 0.03  # an A/A control holds when its 95% interval lies inside 1 +- this
MIN_CLUSTERS = 5  # fewer clusters (samples, or groups of a batch) give no interval worth judging


def control_reach(low: float, high: float) -> float:
    """How far an A/A control's 95% interval reaches from 1.00: the run's resolution (speedups
    closer together than this are not told apart by the run)."""
    return max(abs(1.0 - low), abs(high - 1.0))


def control_holds(low: float, high: float) -> bool:
    """The A/A control rule: the baseline timed against itself is 1.00 within the declared
    resolution. (Asking its interval to hold 1.00 exactly fails a correct run by chance about once
    in twenty datasets; a declared tolerance does not, and still flags a run that drifts.)"""
    return control_reach(low, high) <= CONTROL_RESOLUTION


@lru_cache(maxsize=1)
def _rouge():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rouge2"], use_stemmer=True)


def rouge2(prediction: str, reference: str | list[str]) -> float:
    """Rouge-2 F1 with Porter stemming (Google's rouge_score); several references: the best."""
    refs = [reference] if isinstance(reference, str) else reference
    return max(float(_rouge().score(r, prediction)["rouge2"].fmeasure) for r in refs)


def gsm8k_correct(output: str, reference: str) -> bool:
    """Exact numeric match of the response's final number with the reference answer."""
    got = extract_number(output)
    if got is None:
        return False
    try:
        return math.isclose(float(got), float(reference), rel_tol=0, abs_tol=1e-6)
    except ValueError:
        return False


def first_divergence(a: list[int], b: list[int]) -> int | None:
    """First index where two token sequences differ (length difference counts), else None."""
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def cluster_bootstrap(pairs: pd.DataFrame, seed: int = 0, rounds: int = BOOTSTRAP_ROUNDS) -> dict:
    """Speedup statistics of paired turns with 95% percentile intervals from a bootstrap over
    clusters (column `cluster`, e.g. the sample: its turns are resampled together).

    pairs: columns cluster, tps (method tokens/s), tps_base. Returns speedup (ratio of mean
    tokens/s) and speedup_median (median of per-turn ratios), each with ci_low / ci_high."""
    nan = {k: math.nan for k in ("speedup", "speedup_ci_low", "speedup_ci_high", "speedup_median",
                                 "median_ci_low", "median_ci_high")} | {"clusters": 0}
    if pairs.empty:
        return nan
    codes, clusters = pd.factorize(pairs["cluster"])
    tps, base = pairs["tps"].to_numpy(float), pairs["tps_base"].to_numpy(float)
    ratio = tps / base
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(clusters), size=(rounds, len(clusters)))  # clusters per round
    weight = np.stack([np.bincount(d, minlength=len(clusters)) for d in draws])  # [rounds, clusters]
    rows_w = weight[:, codes]  # [rounds, rows]: how often each row is drawn
    means = (rows_w @ tps) / (rows_w @ base)
    order = np.argsort(ratio)
    cum = np.cumsum(rows_w[:, order], axis=1)  # weighted median per round
    medians = ratio[order][np.argmax(cum >= cum[:, -1:] / 2, axis=1)]
    lo, hi = np.percentile(means, [2.5, 97.5])
    mlo, mhi = np.percentile(medians, [2.5, 97.5])
    return {"speedup": float(tps.mean() / base.mean()), "speedup_ci_low": float(lo), "speedup_ci_high": float(hi),
            "speedup_median": float(np.median(ratio)), "median_ci_low": float(mlo), "median_ci_high": float(mhi),
            "clusters": len(clusters)}


def records_frame(records: list[dict]) -> pd.DataFrame:
    """Records as a table with tokens/s; skipped records (no output) are left out."""
    df = pd.DataFrame(records)
    if df.empty:
        return df
    if "skipped" in df:
        df = df[df["skipped"].isna()].copy()
    if df.empty:
        return df
    df["tokens_per_s"] = df["new_tokens"] / df["wall_time"]
    for column, default in SETTINGS.items():
        df[column] = df[column].fillna(default) if column in df else default
    df["group"] = df["group"].fillna(df["sample_id"]) if "group" in df else df["sample_id"]
    if "category" not in df:
        df["category"] = None
    return df


def decode_steps(values: list) -> list:
    """A record's per-forward list without its prefill entry: the decoding steps' values. Every
    list holds one entry per target forward, the prefill first (records before schema 3 left the
    prefill out of `accepted` only: such a list is one entry short and is returned whole)."""
    return values[1:]


def _decode_steps(lists: pd.Series, forwards: pd.Series | None = None) -> list:
    """Per-forward values of decoding forwards over a group's records."""
    out = []
    for i, row in lists.items() if isinstance(lists, pd.Series) else enumerate(lists):
        if isinstance(row, list):
            short = forwards is not None and len(row) == _int(forwards.get(i)) - 1  # an old `accepted`
            out += row if short else decode_steps(row)
    return out


def _int(value) -> int:
    return int(value) if value is not None and not pd.isna(value) else -1


def _mean(values) -> float:
    return float(np.mean(values)) if len(values) else math.nan


def acceptance(g: pd.DataFrame) -> dict:
    """tau, accept_len and per-position acceptance rates of one group of records."""
    forwards = g["forwards"].dropna() if "forwards" in g else pd.Series(dtype=float)
    tau = float(g.loc[forwards.index, "new_tokens"].sum() / forwards.sum()) if len(forwards) else math.nan
    steps = _decode_steps(g["accepted"], g.get("forwards")) if "accepted" in g else []
    if not steps:
        return {"tau": tau, "accept_len": math.nan, "accept_rate": []}
    acc = np.array(steps)
    rates = [round(float((acc >= i).mean()), 4) for i in range(1, int(acc.max()) + 1)]
    return {"tau": tau, "accept_len": float(1 + acc.mean()), "accept_rate": rates}


def _divergences(g: pd.DataFrame) -> dict:
    kinds = [d.get("kind") for d in g.get("divergence", []) if isinstance(d, dict)]
    lossless = g["lossless"].dropna() if "lossless" in g else pd.Series(dtype=object)
    return {"lossless_rate": float(lossless.astype(float).mean()) if len(lossless) else math.nan,
            "ties": kinds.count("tie"), "mismatches": kinds.count("mismatch")}


def _per_step(g: pd.DataFrame, column: str) -> float:
    """A per-turn total divided by the turn's decoding steps, over the group."""
    if column not in g or "forwards" not in g:
        return math.nan
    ok = g[column].notna() & g["forwards"].notna()
    steps = (g.loc[ok, "forwards"] - 1).sum()
    return float(g.loc[ok, column].sum() / steps) if steps > 0 else math.nan


def _equals(column: pd.Series, value) -> np.ndarray:
    """column == value, where a missing value (no category) equals a missing value."""
    return column.isna().to_numpy() if value is None or (isinstance(value, float) and math.isnan(value)) \
        else (column == value).to_numpy()


def _syncs_per_step(g: pd.DataFrame) -> float:
    """Device waits per decoding step, the prefill's left out (records before schema 3: host
    reads per step, the prefill's read included)."""
    if "syncs" not in g or "prefill_syncs" not in g:
        return _per_step(g, "host_reads")
    ok = g["syncs"].notna() & g["prefill_syncs"].notna() & g["forwards"].notna()
    steps = (g.loc[ok, "forwards"] - 1).sum()
    return float((g.loc[ok, "syncs"] - g.loc[ok, "prefill_syncs"]).sum() / steps) if steps > 0 else math.nan


def pairs_of(df: pd.DataFrame, method: str, keys: dict, baseline: str) -> pd.DataFrame:
    """The (method, baseline) turn pairs of one group of records: cluster = the batch's group of
    samples (the sample itself at batch size 1), tps = the batch's tokens/s (all its sequences'
    tokens over its one wall time), tps_base the same of the baseline. A pair is two decodes of
    one session (one process): a method is never paired with a baseline timed by another process."""
    sel = np.logical_and.reduce([_equals(df[k], v) for k, v in keys.items()] + [np.ones(len(df), bool)])
    on = ["group", "turn", *SETTINGS] + (["session"] if "session" in df else [])
    m, b = (_batches(df[sel & (df.method == name)], on) for name in (method, baseline))
    joined = m.merge(b, on=on, suffixes=("", "_base"))
    return pd.DataFrame({"cluster": joined["group"], "tps": joined["tokens_per_s"],
                         "tps_base": joined["tokens_per_s_base"]})


def _batches(df: pd.DataFrame, on: list[str]) -> pd.DataFrame:
    """One row per decoded batch: its tokens/s (summed tokens over the batch's wall time)."""
    if df.empty:
        return pd.DataFrame(columns=[*on, "tokens_per_s"])
    g = df.groupby(on, sort=False, dropna=False).agg(tokens=("new_tokens", "sum"), wall=("wall_time", "max"))
    return g.assign(tokens_per_s=g["tokens"] / g["wall"])[["tokens_per_s"]].reset_index()


def latency(g: pd.DataFrame) -> dict:
    """Throughput (committed tokens per second over all sequences of a batch: the ratio of sums
    over the group's batches) and time per output token of each sequence (TPOT: from its first
    token to its last, per token after the first; mean and p90 over sequences)."""
    on = ["group", "turn", *SETTINGS] + (["session"] if "session" in g else [])
    batches = g.groupby(on, sort=False, dropna=False).agg(tokens=("new_tokens", "sum"), wall=("wall_time", "max"))
    throughput = float(batches["tokens"].sum() / batches["wall"].sum()) if len(batches) else math.nan
    if "finish_time" not in g or "prefill_time" not in g:
        return {"throughput": throughput, "tpot_ms": math.nan, "tpot_p90_ms": math.nan, "idle_share": math.nan}
    ok = g["finish_time"].notna() & g["prefill_time"].notna() & (g["new_tokens"] > 1)
    tpot = 1000 * (g.loc[ok, "finish_time"] - g.loc[ok, "prefill_time"]) / (g.loc[ok, "new_tokens"] - 1)
    return {"throughput": throughput, "tpot_ms": _mean(tpot),
            "tpot_p90_ms": float(np.percentile(tpot, 90)) if len(tpot) else math.nan, "idle_share": _idle_share(g)}


def _idle_share(g: pd.DataFrame) -> float:
    """The share of decoding rows spent on sequences that had already finished (a batch steps
    on until its last sequence stops)."""
    if "idle_rows" not in g:
        return math.nan
    ok = g["idle_rows"].notna()
    idle = g.loc[ok, "idle_rows"].sum()
    busy = sum(sum(decode_steps(p)) for p in g.loc[ok, "positions"] if isinstance(p, list))
    return float(idle / (idle + busy)) if idle + busy > 0 else math.nan


def grouping(df: pd.DataFrame, by: tuple[str, ...]) -> tuple[str, ...]:
    """The `by` columns, with each run setting (temperature, batch size) added when the records
    hold more than one value of it (a run is never summarised across them)."""
    several = [c for c in SETTINGS if c in df and df[c].nunique() > 1 and c not in by]
    return (*by, *several)


def summarize(records: list[dict], baseline: str = "ar", seed: int = 0, by: tuple[str, ...] = ()) -> pd.DataFrame:
    """One row per (method, dataset, *by) with every reported metric; records without a value of
    a `by` column (a dataset without categories) form its group NO_GROUP."""
    df = records_frame(records)
    if df.empty:
        return pd.DataFrame()
    by = grouping(df, by)
    for column in by:
        df[column] = df[column].astype(object).where(df[column].notna(), NO_GROUP) if column in df else NO_GROUP
    keys = ["dataset", *by]
    rows = []
    for (method, *group), g in df.groupby(["method", *keys], sort=False, dropna=False):
        where = dict(zip(keys, group))
        pairs = pairs_of(df, method, where, baseline)
        rows.append({"method": method, **where, "n": len(pairs), "records": len(g),
                     "tokens_per_s": float(g["tokens_per_s"].mean()), **latency(g),
                     **cluster_bootstrap(pairs, seed), **acceptance(g),
                     "draft_size": _mean(_decode_steps(g.get("draft_sizes", []))),
                     "positions": _mean(_decode_steps(g.get("positions", []))),
                     "draft_forwards_per_step": _per_step(g, "draft_forwards"),
                     "syncs_per_step": _syncs_per_step(g),
                     "rouge2": _quality(g, "rouge2"), "accuracy": _quality(g, "correct"),
                     **_divergences(g), "joules_per_token": _joules_per_token(g)})
    return pd.DataFrame(rows)


def _quality(g: pd.DataFrame, column: str) -> float:
    if column not in g or not g[column].notna().any():
        return math.nan
    return float(g[column].dropna().astype(float).mean())


def _joules_per_token(g: pd.DataFrame) -> float:
    energy = [t.get("energy_j") for t in g.get("telemetry", []) if isinstance(t, dict)]
    if not energy or any(e is None for e in energy):
        return math.nan
    return float(sum(energy) / g["new_tokens"].sum())

"""Every metric the harness reports, defined once (see the README's "Metrics" section).

Per record: tokens/s, Rouge-2, GSM8K correctness. Per (method, dataset): speedup (ratio of mean
tokens/s, and median of paired per-record ratios with a bootstrap 95% interval), tau (generated
tokens / target forwards, prefill included), draft size and positions per decoding forward,
quality, lossless rate, joules per token.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import pandas as pd

from harness.bench.data import extract_number


@lru_cache(maxsize=1)
def _rouge():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rouge2"], use_stemmer=True)


def rouge2(prediction: str, reference: str) -> float:
    """Rouge-2 F1 with Porter stemming (Google's rouge_score, the reference implementation)."""
    return float(_rouge().score(reference, prediction)["rouge2"].fmeasure)


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


def bootstrap_median_ci(values: np.ndarray, seed: int = 0, rounds: int = 2000) -> tuple[float, float]:
    """95% percentile-bootstrap interval of the median."""
    if len(values) == 0:
        return (math.nan, math.nan)
    rng = np.random.default_rng(seed)
    draws = rng.choice(values, size=(rounds, len(values)), replace=True)
    medians = np.median(draws, axis=1)
    return float(np.percentile(medians, 2.5)), float(np.percentile(medians, 97.5))


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
    return df


def _mean_decode(lists: pd.Series) -> float:
    """Mean over decoding forwards (the prefill, element 0, excluded)."""
    vals = [v for row in lists if isinstance(row, list) for v in row[1:]]
    return float(np.mean(vals)) if vals else math.nan


def _paired(df: pd.DataFrame, method: str, dataset: str, baseline: str) -> pd.DataFrame:
    keys = ["sample_id", "turn"]
    m = df[(df.method == method) & (df.dataset == dataset)]
    b = df[(df.method == baseline) & (df.dataset == dataset)][keys + ["tokens_per_s"]]
    return m.merge(b, on=keys, suffixes=("", "_base"), how="inner")


def summarize(records: list[dict], baseline: str = "ar", seed: int = 0) -> pd.DataFrame:
    """One row per (method, dataset) with every reported metric."""
    df = records_frame(records)
    rows = []
    if df.empty:
        return pd.DataFrame()
    for (method, dataset), g in df.groupby(["method", "dataset"], sort=False):
        pair = _paired(df, method, dataset, baseline)
        ratios = (pair["tokens_per_s"] / pair["tokens_per_s_base"]).to_numpy()
        lo, hi = bootstrap_median_ci(ratios, seed)
        forwards = g["forwards"].dropna()
        row = {
            "method": method, "dataset": dataset, "n": len(g),
            "tokens_per_s": float(g["tokens_per_s"].mean()),
            "speedup": float(pair["tokens_per_s"].mean() / pair["tokens_per_s_base"].mean()) if len(pair) else math.nan,
            "speedup_median": float(np.median(ratios)) if len(ratios) else math.nan,
            "speedup_ci_low": lo, "speedup_ci_high": hi,
            "tau": float(g.loc[forwards.index, "new_tokens"].sum() / forwards.sum()) if len(forwards) else math.nan,
            "draft_size": _mean_decode(g["draft_sizes"]) if "draft_sizes" in g else math.nan,
            "positions": _mean_decode(g["positions"]) if "positions" in g else math.nan,
            "rouge2": float(g["rouge2"].dropna().mean()) if "rouge2" in g and g["rouge2"].notna().any() else math.nan,
            "accuracy": float(g["correct"].dropna().astype(float).mean()) if "correct" in g and g["correct"].notna().any() else math.nan,
            "lossless_rate": float(g["lossless"].dropna().astype(float).mean()) if g["lossless"].notna().any() else math.nan,
            "joules_per_token": _joules_per_token(g),
        }
        rows.append(row)
    return pd.DataFrame(rows)


def _joules_per_token(g: pd.DataFrame) -> float:
    energy = [t.get("energy_j") for t in g.get("telemetry", []) if isinstance(t, dict)]
    if not energy or any(e is None for e in energy):
        return math.nan
    return float(sum(energy) / g["new_tokens"].sum())

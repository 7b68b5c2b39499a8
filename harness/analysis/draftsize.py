"""Choosing the size of the embedded SpS draft (`spec-harness analyze sps-draft`): for each draft
checkpoint, its forward cost c_d(1) next to the target's c(1) (the cost model's one-row forward,
harness/analysis/costmodel.py), and the acceptance it buys when `sps` decodes the tuning sets
(training splits read from the end: never a test set, never the drafter's training prompts),
measured as a tuning sweep through the benchmark runner (harness/train/tuning.py: paired,
permuted, warmed up). Timing only means something on an otherwise idle machine.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch

import methods as registry
from harness.analysis.costmodel import measure
from harness.bench import results
from harness.core.engine import Engine
from harness.core.modelload import load_model
from harness.train.tuning import SweepConfig, sweep

RESULTS_DIR = results.RESULTS_ROOT / "sps-draft-size"


@dataclass(frozen=True)
class SizeConfig:
    num_prompts: int = 8  # per tuning set
    max_new_tokens: int = 64
    k: int = 4  # sps.k for every draft
    prefix: int = 256  # committed positions before the timed one-row forwards
    repeats: int = 15


def one_row_cost(engine: Engine, cfg: SizeConfig) -> float:
    """c(1): median seconds of a one-row forward after `prefix` committed positions."""
    with torch.inference_mode():
        return measure(engine, (1,), cfg.prefix, cfg.repeats)["seconds"][0]


def draft_costs(model: str, device: str, dtype: str | None, drafts: list[str], cfg: SizeConfig) -> tuple[dict, float]:
    """(draft -> {layers, c_d(1)}, the target's c(1)), each draft built as `sps` builds it."""
    lm = load_model(model, device, dtype)
    engine = Engine(lm.model)
    target = one_row_cost(engine, cfg)
    out = {}
    for spec in drafts:
        method = registry.get("sps")(engine, lm.key, draft=spec, k=cfg.k)
        out[spec] = {"layers": method.draft_info["layers"], "c_d_ms": round(one_row_cost(method.draft, cfg) * 1e3, 3)}
    return out, target


def measure_drafts(model: str, device: str, dtype: str | None, drafts: list[str], cfg: SizeConfig,
                   out_dir: Path | None = None) -> dict:
    """Per draft: its layers, c_d(1) against c(1), and `sps` with it on the tuning sets next to
    the baseline (tau, accept_len, speedup with its interval, lossless rate)."""
    t0 = time.time()
    costs, target = draft_costs(model, device, dtype, drafts, cfg)
    table = sweep("sps", [{"draft": d, "k": cfg.k} for d in drafts],
                  SweepConfig(2 * cfg.num_prompts, cfg.max_new_tokens), model, device, dtype,
                  out_dir or RESULTS_DIR / "sweep")  # the sweep's run directory and table
    rows = [{**row, **costs[row["draft"]], "cost_ratio": round(costs[row["draft"]]["c_d_ms"] / (target * 1e3), 4)}
            for row in table["rows"]]
    return {**{k: table[k] for k in ("model", "device", "dtype", "ar", "budget", "run")}, "k": cfg.k,
            "c_ms": round(target * 1e3, 3), "rows": rows, "best": max(rows, key=lambda r: r["speedup"])["draft"],
            "seconds": round(time.time() - t0, 1), **results.base_manifest(table["device"])}

"""The target's forward latency c(n) as a function of the rows one forward processes (measured by
harness/core/planning/costmodel.py, which methods also use to plan their drafts; re-exported here).

A speculative method that processes n rows per forward and commits tau tokens per forward can
at best be tau * c(1) / c(n) times faster than the baseline (one row per forward); reporting the
measured speedup next to that bound shows what a method loses to its own overhead (drafting,
tree building, bookkeeping) on the machine at hand.
"""

from __future__ import annotations

import time
from pathlib import Path

from harness.core.engine import Engine
from harness.core.planning.costmodel import (
    DEFAULT_NS,
    DEFAULT_PREFIX,
    measure,
    ratio_at,
)

__all__ = ["DEFAULT_NS", "DEFAULT_PREFIX", "measure", "ratio_at", "run", "default_out"]
COSTMODEL_ROOT = Path(__file__).resolve().parents[2] / "results" / "costmodel"


def run(model: str, device: str = "auto", dtype: str | None = None, prefix: int = DEFAULT_PREFIX,
        repeats: int = 7, ns=DEFAULT_NS) -> dict:
    """Load a model and measure its cost model; the JSON-ready result."""
    from harness.bench.results import hardware
    from harness.core.modelload import load_model

    lm = load_model(model, device, dtype)
    result = measure(Engine(lm.model), ns, prefix, repeats)
    return {"model": lm.key, "device": lm.device, "dtype": lm.dtype, "hardware": hardware(lm.device),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **result}


def default_out(result: dict) -> Path:
    return COSTMODEL_ROOT / f"{result['model']}-{result['device'].split(':')[0]}-{result['dtype']}.json"

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
from harness.core.linear import roofline
from harness.core.planning.costmodel import (
    DEFAULT_NS,
    DEFAULT_PREFIX,
    computed_with,
    measure,
    ratio_at,
)

__all__ = ["DEFAULT_NS", "DEFAULT_PREFIX", "measure", "ratio_at", "run", "default_out"]
COSTMODEL_ROOT = Path(__file__).resolve().parents[2] / "results" / "costmodel"


def run(model: str, device: str = "auto", dtype: str | None = None, prefix: int = DEFAULT_PREFIX,
        repeats: int = 7, ns=DEFAULT_NS, linear: str = "auto") -> dict:
    """Load a model (with the linear formulations `linear`: harness/core/linear.py) and measure its
    cost model, and its roofline: one row through every linear layer and the LM head, nothing
    else; the JSON-ready result."""
    from harness.bench.results import hardware
    from harness.core.modelload import load_model

    lm = load_model(model, device, dtype, linear)
    engine = Engine(lm.model)
    result = measure(engine, ns, prefix, repeats)
    return {"model": lm.key, "device": lm.device, "dtype": lm.dtype, "hardware": hardware(lm.device),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **computed_with(engine),
            "linear_formulations": lm.linear["not_f_linear"],
            "roofline_s": roofline(lm.model), **result}


def default_out(result: dict) -> Path:
    return COSTMODEL_ROOT / f"{result['model']}-{result['device'].split(':')[0]}-{result['dtype']}.json"

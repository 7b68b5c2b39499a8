"""The target's forward latency c(n) as a function of the rows one forward processes.

A speculative method that processes n rows per forward and commits tau tokens per forward can
at best be tau * c(1) / c(n) times faster than the baseline (one row per forward); reporting the
measured speedup next to that bound shows what a method loses to its own overhead (drafting,
tree building, bookkeeping) on the machine at hand.

Each c(n) is one verification-shaped target forward: n new rows after a committed prefix of P
positions in the KV cache, a causal (tril) tree mask among them (none for n = 1, as a one-row
verification runs), final norm + LM head and argmax on all n rows. Warm-up passes first; the
n values are then timed round-robin (so a drifting machine affects them alike), each forward
device-synchronised, and the median of the repeats is kept.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from harness.core.decoding import synchronize
from harness.core.engine import Engine

DEFAULT_NS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64)
DEFAULT_PREFIX = 256
COSTMODEL_ROOT = Path(__file__).resolve().parents[2] / "results" / "costmodel"


def _forward_seconds(engine: Engine, cache, ids: torch.Tensor, prefix: int) -> float:
    n = ids.numel()
    positions = torch.arange(prefix, prefix + n, device=engine.device)
    mask = torch.ones(n, n, dtype=torch.bool, device=engine.device).tril_() if n > 1 else None
    synchronize(engine.device)
    t0 = time.perf_counter()
    hidden = engine.forward(ids, positions, mask, cache)[0]
    engine.logits(hidden).argmax(dim=-1)
    synchronize(engine.device)
    return time.perf_counter() - t0


@torch.inference_mode()
def measure(engine: Engine, ns=DEFAULT_NS, prefix: int = DEFAULT_PREFIX, repeats: int = 7,
            warmup: int = 2, seed: int = 0) -> dict:
    """{"prefix", "n", "seconds", "ratio"}: median seconds of one forward of n rows, and
    c(n)/c(1) (c(1) measured even when 1 is not in ns)."""
    ns = sorted(set(int(n) for n in ns) | {1})
    if ns[0] < 1 or repeats < 1:
        raise ValueError("n values and repeats must be >= 1")
    limit = engine.config.max_position_embeddings
    if prefix + ns[-1] > limit:
        raise ValueError(f"prefix {prefix} + {ns[-1]} rows exceeds the model's context of {limit}")
    gen = torch.Generator().manual_seed(seed)
    vocab = engine.config.vocab_size
    cache = engine.new_cache(prefix + ns[-1])
    prompt = torch.randint(0, vocab, (prefix,), generator=gen).to(engine.device)
    engine.forward(prompt, torch.arange(prefix, device=engine.device), None, cache)
    cache.truncate(prefix)  # the prefix is committed; every timed forward attends to it
    rows = {n: torch.randint(0, vocab, (n,), generator=gen).to(engine.device) for n in ns}
    times: dict[int, list[float]] = {n: [] for n in ns}
    for rep in range(warmup + repeats):
        for n in ns:
            took = _forward_seconds(engine, cache, rows[n], prefix)
            if rep >= warmup:
                times[n].append(took)
    seconds = [float(np.median(times[n])) for n in ns]
    return {"prefix": prefix, "repeats": repeats, "n": ns, "seconds": seconds,
            "ratio": [s / seconds[0] for s in seconds]}


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


def ratio_at(cost: dict, n: float) -> float:
    """c(n)/c(1) at any n >= 1: linear between measured points, linear extrapolation from the
    last two beyond the largest measured n."""
    xs, ys = cost["n"], cost["ratio"]
    if n <= xs[-1] or len(xs) < 2:
        return float(np.interp(n, xs, ys))
    slope = (ys[-1] - ys[-2]) / (xs[-1] - xs[-2])
    return float(ys[-1] + slope * (n - xs[-1]))

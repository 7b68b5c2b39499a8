"""The target's forward latency c(n) as a function of the rows one forward processes, and what a
method planning its draft shape needs of it: measured here (so a method can measure it on first
use), cached per model, device, dtype and machine, or read from a given JSON (another machine's).

Each c(n) is one verification-shaped target forward: n new rows after a committed prefix of P
positions in the KV cache, a causal (tril) tree mask among them (none for n = 1, as a one-row
verification runs), final norm + LM head and argmax on all n rows. Warm-up passes first; the
n values are then timed round-robin (so a drifting machine affects them alike), each forward
device-synchronised, and the median of the repeats is kept.

Draft costs (a head's or a draft model's forward, which c(n) does not cover) are stored beside
c(n) under "drafts", in units of c(1): each is timed round-robin with a one-row target forward.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from tqdm import tqdm

from harness.core.checkpoint import shown_path
from harness.core.decoding import synchronize
from harness.core.engine import Engine
from harness.core.modelload import cache_root

# Every n up to 16, then every 4th: c(n) is not smooth in n (on a 2-core CPU with MKL, c(3) = 1.9 c(1)
# but c(4) = 1.4 c(1): the BLAS kernel chosen per row count), so small trees need their own points.
DEFAULT_NS = (*range(1, 17), *range(20, 65, 4))
DEFAULT_PREFIX = 256


class CostModelError(ValueError):
    """A cost-model JSON that cannot be used; the message says why."""


def _timed(fn: Callable[[], object], device) -> float:
    synchronize(device)
    t0 = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - t0


def _prefixed_cache(engine: Engine, prefix: int, extra: int, gen: torch.Generator):
    """A cache holding `prefix` committed positions of random tokens, room for `extra` more."""
    cache = engine.new_cache(prefix + extra)
    prompt = torch.randint(0, engine.config.vocab_size, (prefix,), generator=gen).to(engine.device)
    engine.forward(prompt, torch.arange(prefix, device=engine.device), None, cache)
    cache.truncate(prefix)  # the prefix is committed; every timed forward attends to it
    return cache


def _verify_forward(engine: Engine, cache, ids: torch.Tensor, prefix: int) -> Callable[[], object]:
    """One verification-shaped forward of ids [n] after the prefix, logits and argmax included."""
    n = ids.numel()
    positions = torch.arange(prefix, prefix + n, device=engine.device)
    mask = torch.ones(n, n, dtype=torch.bool, device=engine.device).tril_() if n > 1 else None
    return lambda: engine.logits(engine.forward(ids, positions, mask, cache)[0]).argmax(dim=-1)


def _round_robin(ops: dict, device, repeats: int, warmup: int, desc: str | None) -> dict:
    """Median seconds of each op, timed in turns (warm-up rounds dropped)."""
    times: dict = {key: [] for key in ops}
    for rep in tqdm(range(warmup + repeats), desc=desc, unit="round", disable=desc is None, leave=False):
        for key, op in ops.items():
            took = _timed(op, device)
            if rep >= warmup:
                times[key].append(took)
    return {key: float(np.median(t)) for key, t in times.items()}


@torch.inference_mode()
def measure(engine: Engine, ns=DEFAULT_NS, prefix: int = DEFAULT_PREFIX, repeats: int = 7,
            warmup: int = 2, seed: int = 0, progress: bool = False) -> dict:
    """{"prefix", "n", "seconds", "ratio"}: median seconds of one forward of n rows, and
    c(n)/c(1) (c(1) measured even when 1 is not in ns)."""
    ns = sorted(set(int(n) for n in ns) | {1})
    if ns[0] < 1 or repeats < 1:
        raise ValueError("n values and repeats must be >= 1")
    limit = engine.config.max_position_embeddings
    if prefix + ns[-1] > limit:
        raise ValueError(f"prefix {prefix} + {ns[-1]} rows exceeds the model's context of {limit}")
    gen = torch.Generator().manual_seed(seed)
    cache = _prefixed_cache(engine, prefix, ns[-1], gen)
    vocab = engine.config.vocab_size
    ops = {n: _verify_forward(engine, cache, torch.randint(0, vocab, (n,), generator=gen).to(engine.device), prefix)
           for n in ns}
    median = _round_robin(ops, engine.device, repeats, warmup, "cost model c(n)" if progress else None)
    seconds = [median[n] for n in ns]
    return {"prefix": prefix, "repeats": repeats, "n": ns, "seconds": seconds,
            "ratio": [s / seconds[0] for s in seconds]}


@torch.inference_mode()
def one_row_forward(engine: Engine, prefix: int = DEFAULT_PREFIX) -> Callable[[], object]:
    """The operation c(1) times: a one-row verification forward after `prefix` positions."""
    cache = _prefixed_cache(engine, prefix, 1, torch.Generator().manual_seed(0))
    return _verify_forward(engine, cache, torch.ones(1, dtype=torch.long, device=engine.device), prefix)


@torch.inference_mode()
def draft_ratio(engine: Engine, op: Callable[[], object], prefix: int = DEFAULT_PREFIX, repeats: int = 9) -> float:
    """Seconds of one draft operation `op` over seconds of a one-row target forward c(1), timed
    round-robin on the same device."""
    median = _round_robin({"c1": one_row_forward(engine, prefix), "draft": op}, engine.device, repeats, 2, None)
    return median["draft"] / median["c1"]


def ratio_at(cost: dict, n: float) -> float:
    """c(n)/c(1) at any n >= 1: linear between measured points, linear extrapolation from the
    last two beyond the largest measured n."""
    xs, ys = cost["n"], cost["ratio"]
    if n <= xs[-1] or len(xs) < 2:
        return float(np.interp(n, xs, ys))
    slope = (ys[-1] - ys[-2]) / (xs[-1] - xs[-2])
    return float(ys[-1] + slope * (n - xs[-1]))


def machine(engine: Engine) -> dict:
    """What a cached cost model is valid for besides the model: device kind, dtype, and the CPU
    threads torch uses or the GPU's name."""
    kind = engine.device.type
    where = (torch.cuda.get_device_name(engine.device) if kind == "cuda" else f"threads={torch.get_num_threads()}")
    return {"device": kind, "dtype": str(engine.dtype).removeprefix("torch."), "where": where}


def cache_file(model_key: str, engine: Engine) -> Path:
    """$SPEC_HARNESS_CACHE/costmodel/<model>-<device>-<dtype>-<threads or GPU>.json"""
    m = machine(engine)
    where = re.sub(r"[^A-Za-z0-9._-]+", "-", m["where"]).strip("-")
    return cache_root() / "costmodel" / f"{model_key}-{m['device']}-{m['dtype']}-{where}.json"


def read(path: Path) -> dict:
    """A cost-model JSON, checked: increasing n from 1, one ratio per n."""
    try:
        data = json.loads(Path(path).read_text())
        ns, ratios = data["n"], data["ratio"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise CostModelError(f"{path} is not a cost-model JSON (`spec-harness costmodel` writes one): {err}") from None
    if not ns or ns[0] != 1 or len(ns) != len(ratios) or list(ns) != sorted(set(ns)):
        raise CostModelError(f"{path}: n must rise from 1, with one ratio per n")
    return data


@dataclass
class CostModel:
    """A cost model in use: its data, where it came from, and whether it is this machine's cache
    (then missing draft costs are measured into it) or a given file (never written). Planning
    reads c(n)/c(1) as measured: where more rows cost less (a faster kernel for that row count),
    a plan may use it."""

    data: dict
    path: Path
    given: bool
    engine: Engine | None = None

    def ratio(self, n: float) -> float:
        return ratio_at(self.data, n)

    def draft(self, key: str, probe: Callable[[], Callable[[], object]]) -> float | None:
        """The cost of the draft operation `key` in units of c(1); measured with `probe()` (which
        returns the operation) and cached when this is the machine's cache; None when a given
        file lacks it."""
        drafts = self.data.setdefault("drafts", {})
        if key not in drafts:
            if self.given or self.engine is None:
                return None
            drafts[key] = draft_ratio(self.engine, probe())
            write(self.path, self.data)
        return float(drafts[key])

    def overhead(self, key: str) -> float | None:
        """Method `key`'s time per decoding step beyond what this model charges for its shape
        (target forward + drafting), in units of c(1): the decode loop's own work (building trees
        and masks, accepting, compacting the cache), measured by `spec-harness costmodel --drafts`
        on this hardware ("ar": the baseline's). None when the file has none."""
        value = self.data.get("overheads", {}).get(key)
        return None if value is None else float(value)

    def describe(self) -> dict:
        keep = ("model", "device", "dtype", "hardware", "created")
        return {"path": shown_path(self.path), "source": "given" if self.given else "cache",
                **{k: self.data[k] for k in keep if k in self.data}}


def write(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def for_engine(engine: Engine, model_key: str, given: str | Path = "", purpose: str = "") -> CostModel:
    """The cost model a method plans with: the JSON at `given`, else this machine's cached one,
    measured (with a progress bar) and cached on first use."""
    if given:
        return CostModel(read(Path(given)), Path(given), True)
    path = cache_file(model_key, engine)
    if path.exists():
        return CostModel(read(path), path, False, engine)
    m = machine(engine)
    tqdm.write(f"spec-harness: no cost model of {model_key} on {m['device']} {m['dtype']} ({m['where']}) at {path}; "
               f"measuring it once{' for ' + purpose if purpose else ''} (about 10 forwards per row count; delete "
               "the file to measure again, on an idle machine)",
               file=sys.stderr)
    data = {"model": model_key, **m, "hardware": m["where"], "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            **measure(engine, progress=True)}
    write(path, data)
    return CostModel(data, path, False, engine)

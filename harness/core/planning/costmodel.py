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

Every cost model in use passes one validator (`validate`: n rising from 1, every ratio finite and
positive, c(1)/c(1) = 1, drafts and overheads finite), whether read from a file, from the cache or
just measured; planning refuses one of another model, warns of one of another device or dtype (a
feature: planning for another machine), and charges nothing it did not measure: c(n) beyond the
largest measured n is unknown (CostModel.ratio), so no shape needing more rows is planned.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from tqdm import tqdm

from harness.core import linear, timing
from harness.core.checkpoint import shown_path
from harness.core.engine import Engine
from harness.core.modelload import cache_root
from harness.core.timing import DEFAULT_NS, round_robin

DEFAULT_PREFIX = 256


class CostModelError(ValueError):
    """A cost-model JSON that cannot be used; the message says why."""


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


@torch.inference_mode()
def forward_ops(engine: Engine, ns: list[int], prefix: int = DEFAULT_PREFIX, seed: int = 0) -> dict:
    """{n: the operation c(n) times}: one verification-shaped forward of n random rows after the
    same `prefix` committed positions (one cache, room for the largest n)."""
    gen = torch.Generator().manual_seed(seed)
    cache = _prefixed_cache(engine, prefix, max(ns), gen)
    vocab = engine.config.vocab_size
    return {n: _verify_forward(engine, cache, torch.randint(0, vocab, (n,), generator=gen).to(engine.device), prefix)
            for n in ns}


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
    ops = forward_ops(engine, ns, prefix, seed)
    median = round_robin(ops, engine.device, repeats, warmup, "cost model c(n)" if progress else None)
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
    median = round_robin({"c1": one_row_forward(engine, prefix), "draft": op}, engine.device, repeats, 2, None)
    return median["draft"] / median["c1"]


def ratio_at(cost: dict, n: float) -> float:
    """c(n)/c(1) at any n >= 1: linear between measured points, linear extrapolation from the
    last two beyond the largest measured n (for figures, which say so; planning never goes past
    the measured range: CostModel.ratio)."""
    xs, ys = cost["n"], cost["ratio"]
    if n <= xs[-1] or len(xs) < 2:
        return float(np.interp(n, xs, ys))
    slope = (ys[-1] - ys[-2]) / (xs[-1] - xs[-2])
    return float(ys[-1] + slope * (n - xs[-1]))


def machine(engine: Engine) -> dict:
    """The machine the engine runs on (timing.machine)."""
    return timing.machine(engine.device, engine.dtype)


def cache_file(model_key: str, engine: Engine) -> Path:
    """$SPEC_HARNESS_CACHE/costmodel/<model>-<device>-<dtype>-<threads or GPU>.json"""
    return cache_root() / "costmodel" / f"{timing.cache_name(model_key, engine.device, engine.dtype)}.json"


def read(path: Path) -> dict:
    """A cost-model JSON, validated (CostModelError naming the file and the field otherwise)."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:
        raise CostModelError(f"{path} is not a cost-model JSON (`spec-harness costmodel` writes one): {err}") from None
    if not isinstance(data, dict):
        raise CostModelError(f"{path} is not a cost-model JSON (`spec-harness costmodel` writes one): not an object")
    return validate(data, path)


def _number(value, low: float, strict: bool) -> bool:
    """A finite int or float (not a bool) above `low` (or at least `low` when not strict)."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return ok and (value > low if strict else value >= low)


def validate(data: dict, path: Path | str) -> dict:
    """The one check of a cost model: n strictly rising from 1 (integers), one finite positive
    ratio per n with c(1)/c(1) = 1, seconds (when present) finite and positive, draft costs finite
    and >= 0, overheads finite, model/device/dtype strings. Returns `data`; CostModelError
    naming `path` and the field otherwise."""
    def bad(field: str, why: str) -> CostModelError:
        return CostModelError(f"{path}: {field} {why} (`spec-harness costmodel` writes a valid one)")

    ns = data.get("n")
    if not isinstance(ns, list) or not ns or not all(isinstance(n, int) and not isinstance(n, bool) for n in ns):
        raise bad("n", f"= {ns!r}: must be a non-empty list of row counts")
    if ns[0] != 1 or any(b <= a for a, b in itertools.pairwise(ns)):
        raise bad("n", f"= {ns[:8]!r}{'...' if len(ns) > 8 else ''}: n must rise from 1, strictly")
    for field in ("ratio", "seconds") if "seconds" in data else ("ratio",):
        values = data.get(field)
        if not isinstance(values, list) or len(values) != len(ns):
            raise bad(field, f"must hold one value per n ({len(ns)} of them)")
        for n, value in zip(ns, values):
            if not _number(value, 0.0, strict=True):
                raise bad(f"{field} at n={n}", f"= {value!r}: must be a finite number > 0")
    if abs(data["ratio"][0] - 1.0) > 1e-6:
        raise bad("ratio at n=1", f"= {data['ratio'][0]!r}: must be 1 (ratios are c(n)/c(1))")
    _validate_extras(data, bad)
    return data


def _validate_extras(data: dict, bad: Callable[[str, str], CostModelError]) -> None:
    """What a cost model holds besides c(n): draft costs, overheads, and what it was measured on."""
    for field, low in (("drafts", 0.0), ("overheads", -math.inf)):
        table = data.get(field, {})
        if not isinstance(table, dict):
            raise bad(field, "must be an object of numbers")
        for key, value in table.items():
            if not _number(value, low, strict=False):
                raise bad(f"{field}[{key!r}]", f"= {value!r}: must be a finite number" + (" >= 0" if low == 0.0 else ""))
    for field in ("model", "device", "dtype", "linear"):
        if field in data and not isinstance(data[field], str):
            raise bad(field, f"= {data[field]!r}: must be a string")


def check_model(data: dict, path: Path | str, model_key: str) -> None:
    """Refuse (CostModelError) a cost model of another model than `model_key`; one that names no
    model (a hand-made curve) is taken as it is."""
    model = data.get("model")
    if model is not None and model != model_key:
        raise CostModelError(f"{path} is a cost model of {model}, not of {model_key}: use one measured on "
                             f"{model_key} (`spec-harness costmodel --model ...`)")


@dataclass
class CostModel:
    """A cost model in use: its data (validated when built), where it came from, and whether it
    is this machine's cache (then missing draft costs are measured into it) or a given file (never
    written). Planning reads c(n)/c(1) as measured: where more rows cost less (a faster kernel for
    that row count), a plan may use it; beyond the largest measured n the cost is not known, and
    `ratio` is infinite there, so no shape needing more rows is ever chosen (shapes.plan_shape
    drops such shapes and says so in the plan record). `machine_note`: set when it was measured
    on another device or dtype than the engine's."""

    data: dict
    path: Path
    given: bool
    engine: Engine | None = None
    machine_note: str = ""

    def __post_init__(self) -> None:
        validate(self.data, self.path)

    @property
    def max_n(self) -> int:
        """The largest row count measured."""
        return int(self.data["n"][-1])

    def ratio(self, n: float) -> float:
        """c(n)/c(1), interpolated between measured n; math.inf past the largest one (unknown)."""
        return math.inf if n > self.max_n else ratio_at(self.data, n)

    def check_fits(self, engine: Engine, model_key: str, purpose: str = "") -> None:
        """Refuse a cost model of another model (CostModelError); warn of (once per `purpose`: a
        method's plan), and note, one measured on another device kind or dtype: planning for
        another machine is allowed."""
        check_model(self.data, self.path, model_key)
        here = machine(engine)
        there = {k: str(self.data[k]).split(":")[0] for k in ("device", "dtype") if k in self.data}
        differs = [f"{k} {v} (here {here[k]})" for k, v in there.items() if v != here[k]]
        if differs:
            self.machine_note = "measured on another machine: " + ", ".join(differs)
            tqdm.write(f"spec-harness: warning: {purpose or 'planning'}: the cost model {shown_path(self.path)} was "
                       f"{self.machine_note}; planned for that machine", file=sys.stderr)

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

    def at_batch(self, batch: int) -> "CostModel | BatchCost":
        """The costs of a step of `batch` sequences in units of the baseline's step at that batch
        size (itself when batch is 1): BatchCost."""
        return self if batch == 1 else BatchCost(self, batch)

    def describe(self) -> dict:
        keep = ("model", "device", "dtype", "hardware", "created", "linear")
        note = {"machine_note": self.machine_note} if self.machine_note else {}
        return {"path": shown_path(self.path), "source": "given" if self.given else "cache",
                **{k: self.data[k] for k in keep if k in self.data}, "max_n": self.max_n, **note}


class BatchCost:
    """A cost model seen from a batch of B sequences: a step of n rows per sequence costs
    c(B n) / c(B), the baseline's step at batch B being the unit (so shapes are planned against
    `ar` at the same batch size). Draft operations are taken to grow with B as the target does
    (their cost in units of the step is kept); a loop's per-step overhead is a fixed time, so in
    units of c(B) it shrinks by c(1)/c(B). Shapes past the measured rows (B n > n_max) are unknown."""

    def __init__(self, cost: CostModel, batch: int):
        self.cost, self.batch, self.path = cost, batch, cost.path
        self.unit = cost.ratio(batch)  # c(B)/c(1)
        if not math.isfinite(self.unit):
            raise CostModelError(f"{shown_path(cost.path)}: batch size {batch} is past the {cost.max_n} rows it "
                                 "measured (`spec-harness costmodel --n` measures more)")

    @property
    def max_n(self) -> int:
        return self.cost.max_n // self.batch

    def ratio(self, n: float) -> float:
        return self.cost.ratio(self.batch * n) / self.unit

    def draft(self, key: str, probe: Callable[[], Callable[[], object]]) -> float | None:
        return self.cost.draft(key, probe)

    def overhead(self, key: str) -> float | None:
        value = self.cost.overhead(key)
        return None if value is None else value / self.unit

    def describe(self) -> dict:
        return {**self.cost.describe(), "batch_size": self.batch, "max_n": self.max_n}


def write(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def for_engine(engine: Engine, model_key: str, given: str | Path = "", purpose: str = "") -> CostModel:
    """The cost model a method plans with: the JSON at `given`, else this machine's cached one,
    measured (with a progress bar) and cached on first use; refused when of another model."""
    cost = _given_or_cached(engine, model_key, given)
    if cost is None:
        path = cache_file(model_key, engine)
        m = machine(engine)
        why = (f"the cached one at {path} was measured with other linear formulations or decoder layers" if path.exists()
               else f"no cost model of {model_key} on {m['device']} {m['dtype']} ({m['where']}) at {path}")
        tqdm.write(f"spec-harness: {why}; measuring it once{' for ' + purpose if purpose else ''} (about 10 forwards "
                   "per row count; delete the file to measure again, on an idle machine)", file=sys.stderr)
        data = {"model": model_key, **m, "hardware": m["where"], "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                **computed_with(engine), **measure(engine, progress=True)}
        cost = CostModel(data, path, False, engine)
        write(path, data)
    cost.check_fits(engine, model_key, purpose)
    return cost


def _given_or_cached(engine: Engine, model_key: str, given: str | Path) -> CostModel | None:
    """The given file's cost model, else the cached one of this machine (if measured as the engine
    computes now: computed_with; an older file without `layers` was measured with the modules),
    else None."""
    if given:
        return CostModel(read(Path(given)), Path(given), True)
    path = cache_file(model_key, engine)
    if not path.exists():
        return None
    data = read(path)  # measured as the engine computes now, else measured again
    now = computed_with(engine)
    same = all(data.get(key, default) == now[key] for key, default in (("linear", linear.PLAIN), ("layers", "modules")))
    return CostModel(data, path, False, engine) if same else None


def computed_with(engine: Engine) -> dict:
    """How the engine computes a forward, which a cost model of it records: its linear
    formulations' digest and its decoder-layer path."""
    return {"linear": linear.digest(engine.model), "layers": engine.layer_path}

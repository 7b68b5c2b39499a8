"""Planned draft shapes without decoding (`spec-harness plan`), and what a cost model holds besides
c(n) (`spec-harness costmodel --drafts`): draft costs and each method's per-step loop overhead.

Each method is built as a run would build it (its `auto` shape planned from its acceptance profile
and the cost model given, or this machine's); what it chose, or why it fell back, is its plan
record (harness/core/planning/shapes.py).
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import torch
from tqdm import tqdm

import methods as registry
from harness.bench.request import with_costmodel  # noqa: F401 (callers import it from here)
from harness.core.decoding import decode, synchronize
from harness.core.engine import Engine
from harness.core.planning.costmodel import draft_ratio, one_row_forward, read, write
from harness.train.profile import Decoder, ProfileConfig


def planners(model_key: str) -> list[str]:
    """Registered methods that plan a draft shape and whose weights (if any) exist."""
    return [n for n in registry.runnable(model_key) if registry.get(n).profile_family]


def at_batch(names: list[str], method_args: dict, size: int) -> dict:
    """METHOD.batch=size for every method that plans for a batch size, unless given for it."""
    out = {k: dict(v) for k, v in method_args.items()}
    for name in names:
        if size != 1 and any(o.name == "batch" for o in registry.get(name).options):
            out.setdefault(name, {}).setdefault("batch", str(size))
    return out


def plan_rows(engine: Engine, model_key: str, names: list[str], method_args: dict, costmodel: str = "") -> list[dict]:
    """One row per method: its plan record (its options' values when nothing was auto)."""
    rows = []
    method_args = with_costmodel(names, {k: dict(v) for k, v in method_args.items()}, costmodel)
    for name in names:
        method = registry.get(name)(engine, model_key, **method_args.get(name, {}))
        record = method.planned.record if method.planned is not None else {"chosen": "(given) " + ", ".join(
            f"{k}={v}" for k, v in method.describe()["options"].items() if k not in ("costmodel", "profile"))}
        rows.append({"method": name, **record})
    return rows


def render(rows: list[dict]) -> str:
    """The rows as text: shape, predicted speedup, tokens and cost per step, and any note."""
    lines = []
    for r in rows:
        if "predicted_speedup" in r:
            unit = "baseline steps" if "overhead_per_step" in r else f"c({r['costmodel'].get('batch_size', 1)})"
            lines.append(f"{r['method']:<12} predicted {r['predicted_speedup']:.2f}x  "
                         f"({r['tokens_per_step']:.2f} tokens/step at {r['cost_per_step']:.2f} {unit})  {r['chosen']}")
            if r.get("note"):
                lines.append(f"{'':<12} note: {r['note']}")
        else:
            lines.append(f"{r['method']:<12} {r['chosen']}" + (f"  [{r['fallback']}]" if r.get("fallback") else ""))
    cost = next((r["costmodel"] for r in rows if "costmodel" in r), None)
    if cost:
        lines.append(f"cost model: {cost['path']} ({', '.join([cost['source'], *machine_words(cost)])})")
    return "\n".join(lines)


def machine_words(cost: dict) -> list[str]:
    """What a cost model says of its machine: device, dtype, and the CPU or GPU it ran on."""
    hw = cost.get("hardware")
    if isinstance(hw, dict):
        hw = ", ".join([str(hw[k]) for k in ("gpu", "cpu") if k in hw] +
                       ([f"{hw['torch_threads']} threads"] if "torch_threads" in hw else []))
    where = [hw] if hw else []
    return [str(cost[k]) for k in ("device", "dtype") if k in cost] + where


def draft_costs(engine: Engine, model_key: str, names: list[str], method_args: dict) -> dict[str, float]:
    """Each method's draft operations (a head or draft-model forward) in units of c(1), timed here.
    Methods are built with the shape their profiles are measured with, so none plans."""
    out = {}
    for name in names:
        cls = registry.get(name)
        shape = {"tree": {"tree": "chain"}, "chain": {"k": 1}}.get(cls.profile_family or "", {})
        if cls.profile_family == "grid":
            shape = dict(cls.profile_grid[0])
        method = cls(engine, model_key, **{**method_args.get(name, {}), **shape})
        for key, probe in method.draft_operations().items():
            out[key] = round(draft_ratio(engine, probe()), 4)
    return out


def step_overheads(lm, names: list[str], method_args: dict, costmodel_path: str, prompts: int = 4,
                   max_new_tokens: int = 128, rounds: int = 3, progress: bool = True) -> dict[str, float]:
    """Per method (and "ar"), its measured time per decoding step minus what the cost model at
    `costmodel_path` charges for the shape it plans (target forward + drafting), in units of c(1):
    the decode loop's own work, which the planner then adds to every shape. That work depends on
    the shape (FIRP's insertion layers, a tree's rows), so a method is measured at the shape it
    plans once the overheads are known: one whose plan changes with its measured overhead is
    measured again at the new shape (at most `rounds` measurements; a warning if it still moves).

    A machine's speed drifts by several percent over minutes, so nothing is compared with a time
    taken earlier: "ar" is timed against one-row forwards c(1), and every method against "ar",
    alternating on each prompt. Decoded greedily on `prompts` tuning-set prompts (training
    splits) after one untimed warm-up turn each, on this machine; the file at `costmodel_path` is
    not changed. Methods that cannot plan (no profile, a draft cost missing) are left out."""
    dec = Decoder(lm, ProfileConfig(num_prompts=prompts, max_new_tokens=max_new_tokens), progress=False)
    data = read(Path(costmodel_path))
    baseline = dec.method("ar", {})
    per_step = _alternating(dec, {"c1": None, "ar": baseline})
    out: dict[str, float] = {"ar": round(per_step["ar"] / per_step["c1"] - 1.0, 4)}
    at: dict[str, str] = {}  # the shape each overhead was measured at
    with tempfile.TemporaryDirectory() as tmp:
        working = Path(tmp) / "costmodel.json"
        for final in [False] * rounds + [True]:
            write(working, {**data, "overheads": out})  # what the plans see: the overheads so far
            moved = []
            for name in tqdm(names, desc="step overheads", unit="method", disable=not progress or final, leave=False):
                method, label, charged = _planned(dec, name, method_args, working)
                if charged is None or at.get(name) == label:
                    continue
                moved.append(name)
                if not final:
                    per_step = _alternating(dec, {"ar": baseline, name: method})
                    out[name] = round(per_step[name] / per_step["ar"] * (1.0 + out["ar"]) - charged, 4)
                    at[name] = label
            if not moved:
                break
    for name in moved:
        tqdm.write(f"spec-harness: {name}'s planned shape still changes with its measured overhead; "
                   f"kept the overhead measured at {at[name]}", file=sys.stderr)
    return out


def _planned(dec, name: str, method_args: dict, costmodel: Path):
    """`name` built (its shape planned with the cost model at `costmodel`): (method, the chosen
    shape's label, what the plan charges per step in c(1); None when it did not plan)."""
    method = dec.method(name, {**method_args.get(name, {}), "costmodel": str(costmodel)})
    record = method.planned.record if method.planned is not None else {}
    return method, record.get("chosen", name), record.get("forward_and_draft_cost")


def _alternating(dec, subjects: dict) -> dict[str, float]:
    """Mean seconds per step of each subject (a method, or None: one-row target forwards), timed in
    turn on every prompt so that a drifting machine affects them alike; one untimed warm-up each."""
    ops = {key: _stepper(dec, subject) for key, subject in subjects.items()}
    for op in ops.values():
        op(dec.prompts[0])
    totals = {key: [0.0, 0] for key in ops}
    for prompt in dec.prompts:
        for key, op in ops.items():
            seconds, steps = op(prompt)
            totals[key][0] += seconds
            totals[key][1] += steps
    return {key: seconds / max(1, steps) for key, (seconds, steps) in totals.items()}


def _stepper(dec, subject):
    """prompt -> (seconds, steps): a decode with the method `subject` (prefill excluded), or for
    None as many one-row forwards as a decode has steps at most."""
    engine, budget = dec.engine, dec.cfg.max_new_tokens
    one = one_row_forward(engine) if subject is None else None

    @torch.inference_mode()
    def op(prompt: list[int]) -> tuple[float, int]:
        t0 = time.perf_counter()
        if one is not None:
            for _ in range(budget):
                one()
            synchronize(engine.device)
            return time.perf_counter() - t0, budget
        out = decode(subject, prompt, budget, dec.eos, dec.cache)
        synchronize(engine.device)
        return time.perf_counter() - t0 - out.prefill_time, out.steps
    return op

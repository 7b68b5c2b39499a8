"""Planned draft shapes without decoding (`spec-harness plan`), and the draft costs a cost model
holds besides c(n) (`spec-harness costmodel --drafts`).

Each method is built as a run would build it (its `auto` shape planned from its acceptance profile
and the cost model given, or this machine's); what it chose, or why it fell back, is its plan
record (harness/core/planning.py).
"""

from __future__ import annotations

import methods as registry
from harness.core.costmodel import draft_ratio
from harness.core.engine import Engine


def planners(model_key: str) -> list[str]:
    """Registered methods that plan a draft shape and whose weights (if any) exist."""
    return [n for n in registry.runnable(model_key) if registry.get(n).profile_family]


def with_costmodel(names: list[str], method_args: dict, costmodel: str | None) -> dict:
    """A run-level `--costmodel PATH` as METHOD.costmodel=PATH for every method that plans, unless
    given for it; method_args, updated."""
    for name in names if costmodel else []:
        if any(o.name == "costmodel" for o in registry.get(name).options):
            method_args.setdefault(name, {}).setdefault("costmodel", str(costmodel))
    return method_args


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
            lines.append(f"{r['method']:<12} predicted {r['predicted_speedup']:.2f}x  "
                         f"({r['tokens_per_step']:.2f} tokens/step at {r['cost_per_step']:.2f} c(1))  {r['chosen']}")
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
    """Each method's draft operation (a head or draft-model forward) in units of c(1), timed here.
    Methods are built with the shape their profiles are measured with, so none plans."""
    out = {}
    for name in names:
        cls = registry.get(name)
        shape = {"tree": {"tree": "chain"}, "chain": {"k": 1}}.get(cls.profile_family or "", {})
        if cls.profile_family == "grid":
            shape = dict(cls.profile_grid[0])
        method = cls(engine, model_key, **{**method_args.get(name, {}), **shape})
        key = method.draft_cost_key()
        if key is not None:
            out[key] = round(draft_ratio(engine, method.draft_probe()), 4)
    return out

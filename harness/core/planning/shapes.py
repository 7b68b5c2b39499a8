"""What a drafting method needs to choose its draft shape when asked for `auto` (the default): its
acceptance profile (measured on the tuning sets by `spec-harness tune profile METHOD`), the cost
model of the hardware (harness/core/planning/costmodel.py), and the planner (harness/core/planning/planner.py).

No profile, or a given cost model without a draft cost the method needs: the method's static
default is used and the reason recorded; a run never fails for it. A cost model of another model
is refused (MethodError). Shapes needing more rows than the cost model measured (c(n) beyond its
largest n is not known) are never chosen: they are left out and the plan record says how many
(`beyond_costmodel`); when no shape is left, the static default is used with that reason.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

from harness.core.checkpoint import shown_path
from harness.core.method import AUTO, MethodError, Option
from harness.core.planning import costmodel
from harness.core.planning.planner import (
    Choice,
    best,
    chain_choices,
    expected_ratio,
    grid_choices,
    path_probability,
)

PLANNING_OPTIONS = (
    Option("costmodel", "file", "", "cost-model JSON to plan `auto` shapes for (another machine's, e.g. "
                                   "results/costmodel/*.json); empty = this machine's, measured once and cached"),
    Option("profile", "file", "", "acceptance profile JSON for `auto` (default: the method's own, "
                                 "from `spec-harness tune profile`)"),
    Option("batch", "int", 1, "sequences per batch `auto` plans for: a step of n rows each costs c(B n)/c(B) "
                              "(run --batch-size sets it per batch size)", low=1),
)
FAMILIES = {"tree": ("paths", "p"), "chain": ("drafted_at_least", "accepted_at_least"), "grid": ("points",)}


class NoDraftCost(LookupError):
    """A given cost model lacks a draft cost the method needs (raised by a method's cost function)."""


@dataclass
class Planned:
    """The shape a method uses and the record describe() adds to the manifest."""

    shape: Any
    record: dict


def read_profile(path: Path, family: str) -> dict | None:
    """The profile at `path` if it exists and is of `family`; None when absent; MethodError when
    it is not a profile of that family."""
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise MethodError(f"{path} is not an acceptance profile: {err}") from None
    if data.get("family") != family or not any(k in data for k in FAMILIES[family]):
        raise MethodError(f"{path} is not a {family} acceptance profile (family {data.get('family')!r})")
    return data


def static(shape: Any, label: str, why: str) -> Planned:
    return Planned(shape, {"auto": True, "chosen": label, "fallback": why})


def plan_shape(method, family: str, fallback: tuple[Any, str],
               choices: Callable[[dict, costmodel.CostModel], list[Choice]]) -> Planned:
    """The shape `method` uses for `auto`: the best of `choices(profile, cost model)`, or
    `fallback` (shape, label) with the reason when it cannot plan."""
    path = Path(method.config.get("profile") or method.profile_file())
    profile = read_profile(path, family)
    if profile is None:
        return static(*fallback, f"no acceptance profile at {shown_path(path)} (measure one with `spec-harness tune profile "
                                 f"{method.name}`): static default")
    try:
        cost = costmodel.for_engine(method.engine, method.model_key, method.config.get("costmodel", ""),
                                    f"{method.name}'s auto draft shape").at_batch(method.config.get("batch", 1))
    except costmodel.CostModelError as err:
        raise MethodError(f"{method.name}.costmodel: {err}") from None
    try:
        offered = choices(profile, cost)
    except NoDraftCost as err:
        return static(*fallback, f"{err}: static default")
    options, beyond = within_range(offered, cost)
    if not options:
        what = "for these options" if not offered else f"within the {cost.max_n} rows the cost model measured"
        return static(*fallback, f"the profile at {shown_path(path)} offers no shape {what}: static default")
    adjusted, overheads = with_overheads(options, cost, method.name)
    chosen = best(adjusted)
    charged = options[adjusted.index(chosen)].cost  # forward + drafting of the chosen shape, in c(1)
    record = {"auto": True, "chosen": chosen.label, "predicted_speedup": round(chosen.speedup, 4),
              "tokens_per_step": round(chosen.expected, 4), "cost_per_step": round(chosen.cost, 4),
              "forward_and_draft_cost": round(charged, 4), **overheads, **beyond,
              "profile": shown_path(path), "costmodel": cost.describe()}
    sources = by_source(profile, family, choices, cost, method.name, chosen, charged)
    if sources:
        record["predicted_by_source"] = sources
    if chosen.speedup < 1.0:
        record["note"] = "no draft shape is predicted faster than autoregressive decoding on this cost model"
    return Planned(chosen.shape, record)


def within_range(options: list[Choice], cost: costmodel.CostModel) -> tuple[list[Choice], dict]:
    """The choices whose rows the cost model measured (CostModel.ratio is infinite past its
    largest n), and the record's note on those left out (none: {})."""
    kept = [c for c in options if math.isfinite(c.cost)]
    if len(kept) == len(options):
        return kept, {}
    return kept, {"beyond_costmodel": f"{len(options) - len(kept)} shape(s) needing more than the {cost.max_n} rows "
                                      "the cost model measured left out (`spec-harness costmodel --n` measures more)"}


def by_source(profile: dict, family: str, choices: Callable[[dict, costmodel.CostModel], list[Choice]],
              cost: costmodel.CostModel, name: str, chosen: Choice, charged: float) -> dict[str, float]:
    """The chosen shape's predicted speedup on each tuning set alone (a profile's `by_source`):
    what a dataset of that kind should measure. A tree keeps its rows (same cost) and sums its
    paths' probabilities there; chains and grids are re-costed, since rows drafted differ."""
    out = {}
    for source, sub in profile.get("by_source", {}).items():
        part = {**profile, **sub}
        if family == "tree":
            prob = path_probability(part)
            same = [Choice(chosen.shape, chosen.label, 1.0 + sum(prob(p) for p in chosen.shape), charged)]
        else:
            same = [c for c in choices(part, cost) if c.shape == chosen.shape]
        if same and math.isfinite(same[0].cost):
            out[source] = round(with_overheads(same, cost, name)[0][0].speedup, 4)
    return out


def with_overheads(options: list[Choice], cost: costmodel.CostModel, name: str) -> tuple[list[Choice], dict]:
    """The choices with each step's loop overhead added and costs put in units of the baseline's
    step (c(1) + its own overhead), when the cost model holds both overheads; the record's fields.
    A constant per-step overhead favours shapes that commit more tokens per step."""
    own, base = cost.overhead(name), cost.overhead("ar")
    if own is None or base is None:
        return options, {"overhead": f"not in the cost model (`spec-harness costmodel --drafts {name}` measures it)"}
    scale = 1.0 + base
    return ([replace(c, cost=max(c.cost + own, 1e-6) / scale) for c in options],
            {"overhead_per_step": round(own, 4), "baseline_overhead": round(base, 4)})


def draft_cost(cost: costmodel.CostModel, key: str, probe: Callable[[], Callable[[], object]]) -> float:
    """The draft cost `key` from the cost model (measured into this machine's cache if missing);
    NoDraftCost when a given file lacks it."""
    value = cost.draft(key, probe)
    if value is None:
        raise NoDraftCost(f"the cost model {shown_path(cost.path)} has no draft cost {key!r} (add it with "
                          f"`spec-harness costmodel --drafts` on that machine)")
    return value


def chain_k(method, static_k: int, per_token: Callable[[costmodel.CostModel], float] = lambda cost: 0.0) -> int:
    """A chain drafter's k: the option's value, or, when it is auto, the k whose expected tokens
    per step over E[c(1 + drafted)] + k * per_token (a draft forward per token) is highest."""
    if method.config["k"] != AUTO:
        return method.config["k"]

    def choices(profile: dict, cost: costmodel.CostModel) -> list[Choice]:
        each = per_token(cost)
        return chain_choices(profile, lambda k, rows: expected_ratio(cost.ratio, rows) + k * each)

    method.planned = plan_shape(method, "chain", (static_k, f"k={static_k}"), choices)
    return method.planned.shape


def grid_point(method, fixed: dict, fallback: dict,
               per_draft: Callable[[costmodel.CostModel], float] = lambda cost: 0.0) -> dict:
    """Option values from a grid profile: of the measured points agreeing with `fixed` (the
    options given explicitly), the one with the highest tokens per step over c(rows per forward)
    + draft forwards per step * per_draft; `fallback` (with `fixed`) when it cannot plan."""
    static_point = {**fallback, **fixed}

    def choices(profile: dict, cost: costmodel.CostModel) -> list[Choice]:
        each = per_draft(cost)
        return grid_choices(profile, lambda p: cost.ratio(p["positions"]) + p.get("draft_forwards", 0.0) * each, fixed)

    label = " ".join(f"{k}={v}" for k, v in static_point.items())
    method.planned = plan_shape(method, "grid", (static_point, label), choices)
    return {**static_point, **method.planned.shape}

"""Acceptance profiles (`spec-harness tune profile METHOD`): what a method's drafts are worth, the
half of planning an `auto` draft shape that does not depend on the hardware (harness/core/planning/planner.py
has the other half, the cost model).

Measured by decoding the tuning sets (GSM8K train and XSum validation read from their end: never a
test set, never the drafters' training prompts) with the shared loop. Only decoding statistics are
kept, no timing, so a profile can be measured on any machine, busy or not. Per family:

- tree (FIRP, Medusa): decoded with a chain as deep as the drafter drafts; at every step the
  drafter's top-R candidates of each draft step are kept (they do not depend on the tree: they
  come from the accepted node's own state), and after the turn compared with the tokens the
  target produced. `paths` = the share of steps whose true tokens are candidates (a, b, ...) of
  steps 1, 2, ...: the measured acceptance probability of that tree node, no independence
  assumed. `p[d][r]` (Sequoia's positional acceptance, for reading) = P(the true token of step
  d + 1 is its rank-r candidate | the true tokens of the earlier steps were all among their top R).
- chain (pld, sps): decoded with k = profile_k_max; P(drafted >= i) and P(accepted >= i) per
  step. A chain of k < k_max drafts the first min(k, drafted) of these tokens (prefix drafters),
  so its acceptance follows; the steps land where the k_max run put them.
- grid (lookahead, eagle): every point of the method's profile_grid decoded; tokens committed per
  step (1 + accepted), rows per forward and draft forwards per step.

The same numbers per tuning set are kept under `by_source` (GSM8K train, XSum validation): what a
shape is predicted to do on each kind of text, for comparing with a dataset's measured speedup.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

import methods as registry
from harness.bench import results
from harness.bench.data import TUNING_SETS, chat_prompt, load_samples
from harness.core.decoding import Decoded, decode
from harness.core.drafter import PROFILE_RANKS
from harness.core.engine import Engine
from harness.core.planning.planner import path_key

ROOM = 256  # KV slots past prompt + budget (the runner's slack)


@dataclass(frozen=True)
class ProfileConfig:
    num_prompts: int = 16  # split evenly over the tuning sets (rounded up)
    max_new_tokens: int = 128


def tuning_prompts(lm, per_set: int) -> list[tuple[str, list[int]]]:
    """(tuning set, chat-template ids) of the first `per_set` prompts of each set, alternately."""
    sets = [[(name, chat_prompt(lm.tokenizer, s.turns[:1], [])) for s in load_samples(name, per_set)]
            for name in TUNING_SETS]
    return [p for group in zip(*sets) for p in group]


class Decoder:
    """Decodes the tuning prompts with one method after another (one cache, the model's EOS)."""

    def __init__(self, lm, cfg: ProfileConfig, progress: bool = True):
        self.lm, self.cfg, self.progress = lm, cfg, progress
        self.engine = Engine(lm.model)
        self.tuning = tuning_prompts(lm, max(1, -(-cfg.num_prompts // len(TUNING_SETS))))  # (tuning set, ids) pairs
        self.cache = self.engine.new_cache(max(map(len, self.prompts)) + cfg.max_new_tokens + ROOM)
        eos = lm.model.generation_config.eos_token_id
        self.eos = set(eos if isinstance(eos, list) else [eos]) | {lm.tokenizer.eos_token_id} - {None}

    @property
    def prompts(self) -> list[list[int]]:
        """The tuning prompts' ids, without their tuning set."""
        return [ids for _, ids in self.tuning]

    def method(self, name: str, options: dict):
        self.last = registry.get(name)(self.engine, self.lm.key, **options)
        return self.last

    def turns(self, method, label: str = ""):
        """(tuning set, Decoded) per tuning prompt."""
        from tqdm import tqdm

        for source, prompt in tqdm(self.tuning, desc=f"profile {method.name} {label}".strip(),
                                   unit="prompt", disable=not self.progress, leave=False):
            yield source, decode(method, prompt, self.cfg.max_new_tokens, self.eos, self.cache)


def step_ranks(candidates: list[list[int]], future: list[int]) -> list[int | None]:
    """Rank of each true future token among its step's candidates (None: not among them)."""
    return [row.index(tok) if tok in row else None for row, tok in zip(candidates, future)]


def count_tree_steps(recorded: list, out: Decoded, paths: Counter, reach: Counter, hits: Counter) -> int:
    """Add one turn's steps to the counters (paths: path -> steps; reach[d]: steps whose first d
    true tokens were candidates; hits[(d, r)]); returns the steps counted (those with all K future
    tokens produced)."""
    output, counted, pending = out.output_ids, 0, -1
    for cands, committed in zip(recorded, out.accept_lengths):
        pending += committed  # index of the pending token the candidates continue
        K = len(cands)
        if pending + K >= len(output):
            break
        counted += 1
        prefix: tuple[int, ...] = ()
        for d, rank in enumerate(step_ranks(cands, output[pending + 1:pending + 1 + K])):
            reach[d] += 1
            if rank is None:
                break
            hits[(d, rank)] += 1
            prefix += (rank,)
            paths[prefix] += 1
    return counted


def tree_profile(dec: Decoder, name: str, options: dict) -> dict:
    method = dec.method(name, {**options, "tree": "chain"})
    counts: dict[str, tuple[Counter, Counter, Counter]] = {src: (Counter(), Counter(), Counter()) for src in TUNING_SETS}
    steps = Counter()
    method.recorded = []
    for source, out in dec.turns(method):
        recorded, method.recorded = method.recorded, []
        if recorded:
            host = dec.engine.host(torch.stack(recorded)[:, 0])  # [steps, K, R] of the one sequence: one read per turn
            steps[source] += count_tree_steps(host, out, *counts[source])
    if not sum(steps.values()):
        raise ValueError("no decoding step had all its future tokens: raise --max-new-tokens")
    depth = method.module.steps
    pooled = [sum((c[i] for c in counts.values()), Counter()) for i in range(3)]
    return {**tree_stats(*pooled, sum(steps.values()), depth),
            "by_source": {src: tree_stats(*counts[src], steps[src], depth) for src in TUNING_SETS if steps[src]},
            "measured_with": method.describe()}


def tree_stats(paths: Counter, reach: Counter, hits: Counter, steps: int, depth: int) -> dict:
    """A tree profile's numbers from count_tree_steps' counters."""
    p = [[round(hits[(d, r)] / reach[d], 5) if reach[d] else 0.0 for r in range(PROFILE_RANKS)] for d in range(depth)]
    return {"depth": depth, "ranks": PROFILE_RANKS, "steps": steps, "p": p,
            "paths": {path_key(q): round(c / steps, 6) for q, c in sorted(paths.items())}}


def chain_profile(dec: Decoder, name: str, options: dict) -> dict:
    k_max = registry.get(name).profile_k_max
    method = dec.method(name, {**options, "k": k_max})
    drafted, accepted = {src: [] for src in TUNING_SETS}, {src: [] for src in TUNING_SETS}
    for source, out in dec.turns(method):
        drafted[source] += out.draft_sizes[1:]  # decoding steps: the prefill drafts nothing
        accepted[source] += out.accepted[1:]
    pooled = chain_stats(sum(drafted.values(), []), sum(accepted.values(), []), k_max)
    return {**pooled, "by_source": {src: chain_stats(drafted[src], accepted[src], k_max)
                                    for src in TUNING_SETS if accepted[src]},
            "measured_with": method.describe()}


def chain_stats(drafted: list[int], accepted: list[int], k_max: int) -> dict:
    """P(at least i drafted) and P(at least i accepted), i = 1..k_max, over the steps given."""
    steps = len(accepted)
    if not steps:
        raise ValueError("no decoding step: raise --max-new-tokens")
    share = lambda values, i: round(sum(v >= i for v in values) / steps, 6)  # noqa: E731
    return {"k_max": k_max, "steps": steps,
            "drafted_at_least": [share(drafted, i) for i in range(1, k_max + 1)],
            "accepted_at_least": [share(accepted, i) for i in range(1, k_max + 1)]}


def grid_profile(dec: Decoder, name: str, options: dict) -> dict:
    points = {src: [] for src in ("all", *TUNING_SETS)}
    for point in registry.get(name).profile_grid:
        method = dec.method(name, {**options, **point})
        sums = {src: Counter() for src in points}
        for source, out in dec.turns(method, " ".join(f"{k}={v}" for k, v in point.items())):
            for src in ("all", source):
                sums[src].update(steps=out.steps, accepted=sum(out.accepted[1:]), drafts=out.draft_forwards,
                                 positions=sum(out.positions[1:]))  # the prefill's rows excluded
        for src, n in sums.items():
            if n["steps"]:
                points[src].append({"options": dict(point), "steps": n["steps"],
                                    "tokens_per_step": round(1 + n["accepted"] / n["steps"], 5),
                                    "positions": round(n["positions"] / n["steps"], 4),
                                    "draft_forwards": round(n["drafts"] / n["steps"], 4)})
    if not points["all"]:
        raise ValueError("no decoding step: raise --max-new-tokens")
    return {"points": points["all"], "by_source": {src: {"points": points[src]} for src in TUNING_SETS if points[src]}}


FAMILIES = {"tree": tree_profile, "chain": chain_profile, "grid": grid_profile}


def check_profiled(name: str, options: dict | None = None):
    """The class of method `name`, checked before any model is loaded: it plans a draft shape
    (ValueError naming those that do otherwise) and `options` are valid for it (MethodError)."""
    cls = registry.get(name)
    if cls.profile_family not in FAMILIES:
        planners = ", ".join(n for n in registry.names() if registry.get(n).profile_family)
        raise ValueError(f"{name} has no draft shape to plan; methods with profiles: {planners}")
    cls.resolve_options(dict(options or {}))
    return cls


def measure_profile(name: str, lm, cfg: ProfileConfig, options: dict | None = None,
                    progress: bool = True) -> tuple[dict, Path]:
    """The acceptance profile of method `name` (with these options besides the shape) on the
    tuning sets, JSON-ready, with what it was measured on; and where the method looks for it."""
    cls = check_profiled(name, options)
    dec, t0 = Decoder(lm, cfg, progress), time.time()
    data = FAMILIES[cls.profile_family](dec, name, dict(options or {}))
    profile = {"method": name, "family": cls.profile_family, "model": lm.key, **data,
               "budget": {**asdict(cfg), "prompts": len(dec.prompts), "sources": list(TUNING_SETS)},
               "seconds": round(time.time() - t0, 1), **results.base_manifest(lm.device)}
    return profile, dec.last.profile_file()

"""Choosing the size of the embedded SpS draft (`spec-harness analyze sps-draft`): for each draft
checkpoint, its forward cost c_d(1) next to the target's c(1), and the acceptance it buys when
`sps` decodes the tuning sets (training splits read from the end: never a test set, never the
drafter's training prompts).

Each prompt is decoded by the baseline and then by `sps` with every draft, back to back, after
an untimed warm-up, so speedups are paired per-prompt ratios. Timing only means something on an
otherwise idle machine.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass

import torch

import methods as registry
from harness.bench import results
from harness.bench.data import TUNING_SETS
from harness.core.decoding import decode, synchronize
from harness.core.engine import Engine
from harness.train.profile import tuning_prompts

RESULTS_DIR = results.RESULTS_ROOT / "sps-draft-size"
ROOM = 256  # KV slots past prompt + budget (the runner's slack)


@dataclass(frozen=True)
class SizeConfig:
    num_prompts: int = 8  # per tuning set
    max_new_tokens: int = 64
    k: int = 4  # sps.k for every draft
    reps: int = 30  # timed one-token forwards per latency


@torch.inference_mode()
def forward_latency(engine: Engine, prompt: list[int], reps: int) -> float:
    """Median seconds of a one-token forward after `prompt`: the cost of a decoding step, c(1)."""
    n = len(prompt)
    cache = engine.new_cache(n + 1)
    engine.forward(torch.tensor(prompt, device=engine.device), torch.arange(n, device=engine.device), None, cache)
    cache.truncate(n)
    one, at = torch.tensor(prompt[-1:], device=engine.device), torch.tensor([n], device=engine.device)
    times = []
    for _ in range(reps + 3):  # the first three untimed
        synchronize(engine.device)
        t0 = time.perf_counter()
        engine.forward(one, at, None, cache)
        synchronize(engine.device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times[3:])


def timed(method, prompt: list[int], max_new: int, eos: set[int], cache) -> tuple[object, float]:
    synchronize(method.engine.device)
    t0 = time.perf_counter()
    out = decode(method, prompt, max_new, eos, cache)
    synchronize(method.engine.device)
    return out, time.perf_counter() - t0


def decode_paired(methods: dict, prompts: list[list[int]], cfg: SizeConfig, eos: set[int], cache) -> dict:
    """label -> per-prompt (output ids, wall seconds, target forwards, drafted, accepted)."""
    runs = {label: [] for label in methods}
    for label, method in methods.items():  # warm-up, untimed
        decode(method, prompts[0], min(16, cfg.max_new_tokens), eos, cache)
    for prompt in prompts:
        for label, method in methods.items():
            out, wall = timed(method, prompt, cfg.max_new_tokens, eos, cache)
            runs[label].append((out.output_ids, wall, len(out.accept_lengths), sum(out.draft_sizes), sum(out.accepted)))
    return runs


def summarize(run: list[tuple], ar: list[tuple]) -> dict:
    """tau (tokens per target forward), acceptance, tokens/s, paired speedup, lossless rate."""
    tokens = sum(len(r[0]) for r in run)
    drafted, accepted = sum(r[3] for r in run), sum(r[4] for r in run)
    return {"tau": round(tokens / sum(r[2] for r in run), 4),
            "acceptance": round(accepted / drafted, 4) if drafted else None,
            "tokens_per_s": round(tokens / sum(r[1] for r in run), 2),
            "speedup_median": round(statistics.median(a[1] / r[1] for r, a in zip(run, ar)), 4),
            "lossless_rate": sum(r[0] == a[0] for r, a in zip(run, ar)) / len(run)}


def measure_drafts(lm, drafts: dict[str, str], cfg: SizeConfig) -> dict:
    """Per draft (label -> `sps.draft` value): layers, c_d(1) against c(1), and how `sps` with it
    decodes the tuning prompts next to the baseline."""
    engine = Engine(lm.model)
    sps = registry.get("sps")
    methods = {"ar": registry.get(registry.BASELINE)(engine, lm.key),
               **{label: sps(engine, lm.key, draft=spec, k=cfg.k) for label, spec in drafts.items()}}
    prompts = tuning_prompts(lm, cfg.num_prompts)
    cache = engine.new_cache(max(map(len, prompts)) + cfg.max_new_tokens + ROOM)
    eos = {lm.tokenizer.eos_token_id} - {None}
    t0 = time.time()
    target_cost = forward_latency(engine, prompts[0], cfg.reps)
    runs = decode_paired(methods, prompts, cfg, eos, cache)
    rows = []
    for label in drafts:
        draft = methods[label]
        cost = forward_latency(draft.draft, prompts[0], cfg.reps)
        rows.append({"draft": label, "layers": draft.draft_info["layers"], "c_d_ms": round(cost * 1e3, 3),
                     "cost_ratio": round(cost / target_cost, 4), **summarize(runs[label], runs["ar"])})
    return {"model": lm.key, "device": lm.device, "dtype": lm.dtype, "k": cfg.k, "c_ms": round(target_cost * 1e3, 3),
            "ar": summarize(runs["ar"], runs["ar"]), "rows": rows,
            "best": max(rows, key=lambda r: r["speedup_median"])["draft"],
            "budget": {**asdict(cfg), "prompts": len(prompts), "sources": list(TUNING_SETS)},
            "seconds": round(time.time() - t0, 1), **results.base_manifest(lm.device)}

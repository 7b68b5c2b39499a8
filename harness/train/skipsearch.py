"""Search of the skip set of self-speculative decoding (`spec-harness train self-spec`).

Bayesian optimisation as in Draft & Verify, here with optuna's TPE sampler (seeded,
multivariate, so interactions between sublayers are modelled) over one binary variable per
sublayer: a<i> (skip the attention of layer i) and m<i> (skip its MLP), 2 x num_layers in all.

Objective (maximised): decoding speed of self-speculative decoding with the candidate skip set,
measured by decoding the search prompts for real: tokens committed by the decoding steps
divided by the wall seconds of those steps (drafting + verification + the loop), the prefill
and its token excluded (the skip set does not change them). A skip set that drafts fast but is
rarely accepted and one that is accepted but drafts slowly both score low; the product of the
two is what the number measures. Prompts: training splits only (GSM8K train, XSum validation).

Trial 0 is the empty set (draft = target: every draft accepted, drafting at full cost), the
reference point; it is never the result, since a draft that skips nothing is not self-speculative
decoding. A few structured starting points follow (every other MLP or attention of the back half,
a block of whole layers near 3/4 depth), because with 2 x num_layers binary variables a short
search from random points rarely reaches a skip set large enough to pay. A skip set TPE
proposes again is not decoded again (its first value is reused).
The best value among many noisy trials is biased upwards, so the best few distinct skip sets are
measured again at the end, next to the empty set and the autoregressive baseline (same metric),
and the best re-measured one is written with all of these numbers. Timing is only meaningful on
an otherwise idle machine (or with as many threads as are free: OMP_NUM_THREADS).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

import methods as registry
from harness.bench.data import chat_prompt, training_prompts
from harness.bench.results import git_info
from harness.core.decoding import decode, synchronize
from harness.core.engine import Engine, KVCache
from harness.core.method import Method

NAME = "self-spec"  # the method whose skip set is searched, and the artifact's default name


@dataclass(frozen=True)
class SearchConfig:
    trials: int = 200
    num_prompts: int = 8
    max_new_tokens: int = 64
    seed: int = 0
    confirm: int = 3  # best distinct skip sets measured again at the end


@dataclass
class Measurement:
    """Totals of one method over the search prompts, decoding steps only (no prefill)."""

    tokens: int = 0  # tokens committed by decoding steps
    seconds: float = 0.0  # their wall time: drafting + verification + the loop
    forwards: int = 0  # target forwards of those steps
    drafted: int = 0  # draft tokens verified
    accepted: int = 0  # draft tokens accepted

    @property
    def value(self) -> float:
        """The objective: tokens per second of decoding steps."""
        return self.tokens / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> dict:
        return {"tokens_per_s": round(self.value, 3), "tau": round(self.tokens / max(1, self.forwards), 4),
                "acceptance": round(self.accepted / self.drafted, 4) if self.drafted else None,
                "mean_draft": round(self.drafted / max(1, self.forwards), 3),
                "tokens": self.tokens, "seconds": round(self.seconds, 3)}


def measure(method: Method, prompts: list[list[int]], max_new: int, eos: set[int], cache: KVCache) -> Measurement:
    """Decode every prompt with `method` (a fresh instance: its threshold starts anew)."""
    m = Measurement()
    for ids in prompts:
        synchronize(method.engine.device)
        t0 = time.perf_counter()
        out = decode(method, ids, max_new, eos, cache)
        synchronize(method.engine.device)
        m.seconds += time.perf_counter() - t0 - out.prefill_time
        m.tokens += len(out.output_ids) - 1
        m.forwards += out.steps
    m.drafted, m.accepted = getattr(method, "drafted", 0), getattr(method, "accepted", 0)
    return m


def search_prompts(lm, cfg: SearchConfig, room: int) -> list[list[int]]:
    """The first num_prompts training-split prompts, GSM8K and XSum alternately, that fit the
    model's context with `room` positions to spare, as chat-template token ids."""
    pairs = training_prompts(limit_per_source=cfg.num_prompts)
    gsm = [p for s, p in pairs if s.startswith("gsm8k")]
    xsum = [p for s, p in pairs if not s.startswith("gsm8k")]
    limit = getattr(lm.model.config, "max_position_embeddings", None) or 1 << 30
    out = []
    for text in (t for pair in zip(gsm, xsum) for t in pair):
        ids = chat_prompt(lm.tokenizer, [text], [])
        if len(ids) + room <= limit:
            out.append(ids)
        if len(out) == cfg.num_prompts:
            break
    if not out:
        raise ValueError(f"no training prompt fits the model's context of {limit} positions")
    return out


def skip_of(trial, num_layers: int) -> str:
    """The trial's point, one binary choice per sublayer, as a self-spec `skip` option value."""
    attn = [f"a{i}" for i in range(num_layers) if trial.suggest_categorical(f"a{i}", (0, 1))]
    mlp = [f"m{i}" for i in range(num_layers) if trial.suggest_categorical(f"m{i}", (0, 1))]
    return ",".join(attn + mlp) or "none"


def self_spec(engine: Engine, key: str, skip: str) -> Method:
    return registry.get(NAME)(engine, key, skip=skip)


def baseline(engine: Engine, key: str) -> Method:
    return registry.get(registry.BASELINE)(engine, key)


def starting_points(num_layers: int) -> list[dict[str, int]]:
    """Trials enqueued before TPE samples: the empty set (reference), then structured skip sets."""
    L, half = num_layers, num_layers // 2
    back_other = set(range(half, L - 1, 2))  # every other layer of the back half, the last kept
    start = half + L // 8
    block = set(range(start, start + L // 4))  # L/4 whole layers near 3/4 depth
    sets = [(set(), set()), (set(), back_other), (back_other, set()), (back_other, back_other), (block, block)]
    return [{**{f"a{i}": int(i in a) for i in range(L)}, **{f"m{i}": int(i in m) for i in range(L)}}
            for a, m in sets]


def search_skip_set(lm, cfg: SearchConfig, progress: bool = True) -> dict:
    """Run the search on the loaded model `lm`; returns the artifact's content."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    engine = Engine(lm.model)
    defaults = registry.get(NAME).resolve_options({"skip": "none"})
    prompts = search_prompts(lm, cfg, cfg.max_new_tokens + defaults["max_draft"] + 2)
    cache = engine.new_cache(max(map(len, prompts)) + cfg.max_new_tokens + defaults["max_draft"] + 2)
    eos = {lm.tokenizer.eos_token_id} - {None}
    L = engine.num_layers

    def run(method: Method) -> Measurement:
        return measure(method, prompts, cfg.max_new_tokens, eos, cache)

    measured: dict[str, float] = {}  # TPE repeats points of a binary space: measure each skip set once

    def objective(trial) -> float:
        spec = skip_of(trial, L)
        trial.set_user_attr("skip", spec)
        if spec not in measured:
            measured[spec] = run(self_spec(engine, lm.key, spec)).value
        return measured[spec]

    t0 = time.time()
    run(baseline(engine, lm.key))  # warm-up, untimed
    sampler = optuna.samplers.TPESampler(seed=cfg.seed, multivariate=True)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    for point in starting_points(L):
        study.enqueue_trial(point)
    study.optimize(objective, n_trials=cfg.trials, show_progress_bar=progress)
    record = confirm(study, run, engine, lm.key, cfg.confirm)
    record.update(model=lm.key, num_layers=L,
                  threshold={k: defaults[k] for k in ("threshold", "adaptive", "max_draft")},
                  budget={**asdict(cfg), "prompts": len(prompts), "distinct_sets": len(measured),
                          "sources": ["gsm8k-train", "xsum-validation"]},
                  seconds=round(time.time() - t0, 1), device=str(engine.device),
                  dtype=str(engine.dtype).removeprefix("torch."), commit=git_info()["commit"])
    return record


def confirm(study, run, engine: Engine, key: str, top: int) -> dict:
    """Measure the best `top` distinct skip sets again, with the empty set and the baseline."""
    done = sorted((t for t in study.trials if t.value is not None), key=lambda t: -t.value)
    search_value: dict[str, float] = {}
    for t in done:
        if t.user_attrs["skip"] != "none":  # the reference point, not a candidate
            search_value.setdefault(t.user_attrs["skip"], t.value)
    reference = next((t.value for t in done if t.user_attrs["skip"] == "none"), None)
    if not search_value:
        raise ValueError("no skip set besides the empty reference was tried: use more than one trial")
    candidates = list(search_value)[:max(1, top)]
    remeasured = {s: run(self_spec(engine, key, s)).summary() for s in candidates}
    best = max(candidates, key=lambda s: remeasured[s]["tokens_per_s"])
    skip = self_spec(engine, key, best).skip
    ar = run(baseline(engine, key)).summary()
    empty = run(self_spec(engine, key, "none")).summary()
    return {"method": "self-spec", "skip": skip.spec(), "skip_attn": sorted(skip.attn),
            "skip_mlp": sorted(skip.mlp),
            "objective": "tokens per second of decoding steps (drafting + verification), prefill excluded",
            "best": {**remeasured[best], "search_tokens_per_s": round(search_value[best], 3)},
            "speedup_over_ar": round(remeasured[best]["tokens_per_s"] / max(1e-9, ar["tokens_per_s"]), 3),
            "empty_set": {**empty, "search_tokens_per_s": _rounded(reference)},
            "ar": ar, "confirmed": remeasured,
            "trials": [[round(t.value, 3), t.user_attrs["skip"]] for t in study.trials if t.value is not None]}


def _rounded(x: float | None) -> float | None:
    return None if x is None else round(x, 3)


def run_search(lm, cfg: SearchConfig, name: str = NAME, path: Path | None = None,
               progress: bool = True) -> tuple[Path, dict]:
    """Search and write `path` (default methods/checkpoints/<model>/<name>.json); returns the
    path and the artifact's content."""
    torch.manual_seed(cfg.seed)
    record = search_skip_set(lm, cfg, progress)
    path = path or registry.get(NAME).artifact_path(lm.key, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2) + "\n")
    return path, record

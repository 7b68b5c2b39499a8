"""Choosing Lookahead decoding's defaults (W, N, G) by measurement (`spec-harness tune lookahead`).

Prompts come from the training splits only (GSM8K train, XSum validation, alternately, through
the chat template): never a test file. Each prompt is decoded by the autoregressive baseline and
then by every (W, N, G) of the grid, back to back, after an untimed warm-up, so each speedup is a
set of paired per-prompt ratios, summarised exactly as benchmark runs are (harness.bench.metrics):
tau, draft size, positions per forward, tokens/s, speedup (ratio of means; median of paired
ratios with a 95% bootstrap interval), lossless rate. Timing only means something on an
otherwise idle machine.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import methods as registry
from harness.bench import metrics, results
from harness.bench.data import Sample
from harness.bench.records import make_record
from harness.core.decoding import Decoded, decode, synchronize
from harness.core.engine import Engine, KVCache
from harness.core.method import Method

Triple = tuple[int, int, int]  # (W, N, G)
DEFAULT_GRID: tuple[Triple, ...] = tuple(itertools.product((3, 5, 7), (3, 4, 5), (3, 5, 7)))
SWEEP_DIR = results.RESULTS_ROOT / "lookahead-sweep"
ROOM = 256  # KV slots past prompt + budget for tree and window rows (the runner's slack)
COLUMNS = ("window", "ngram", "guess", "tau", "draft_size", "positions", "tokens_per_s", "speedup",
           "speedup_median", "speedup_ci_low", "speedup_ci_high", "lossless_rate", "n")


@dataclass(frozen=True)
class SweepConfig:
    grid: tuple[Triple, ...] = DEFAULT_GRID
    num_prompts: int = 8
    max_new_tokens: int = 64
    seed: int = 0  # of the bootstrap


def parse_grid(text: str) -> tuple[Triple, ...]:
    """'3x3x3,5x4x5' (W x N x G triples) or 'published' -> ((3, 3, 3), (5, 4, 5)); each checked."""
    lookahead = registry.get("lookahead")
    grid = []
    for item in (x.strip().lower() for x in text.split(",") if x.strip()):
        if item in lookahead.PRESETS:
            grid.append(lookahead.sizes({"preset": item}))
            continue
        try:
            w, n, g = (int(p) for p in item.split("x"))
        except ValueError:
            raise ValueError(f"grid item {item!r}: expected WxNxG, e.g. 5x4x5, "
                             f"or one of {', '.join(lookahead.PRESETS)}") from None
        grid.append(lookahead.sizes({"window": w, "ngram": n, "guess": g}))
    if not grid:
        raise ValueError("empty grid")
    return tuple(dict.fromkeys(grid))


def label(triple: Triple) -> str:
    return "lookahead:w{}-n{}-g{}".format(*triple)


def timed_decode(method: Method, prompt: list[int], max_new: int, eos: set[int],
                 cache: KVCache) -> tuple[Decoded, float]:
    """One decode, wall seconds with the device synchronised around it (prefill included)."""
    synchronize(method.engine.device)
    t0 = time.perf_counter()
    out = decode(method, prompt, max_new, eos, cache)
    synchronize(method.engine.device)
    return out, time.perf_counter() - t0


def sweep_methods(engine: Engine, key: str, grid: tuple[Triple, ...]) -> dict[str, Method]:
    """The baseline first, then one Lookahead per (W, N, G); bad triples fail before any decode."""
    out: dict[str, Method] = {registry.BASELINE: registry.get(registry.BASELINE)(engine, key)}
    for w, n, g in grid:
        out[label((w, n, g))] = registry.get("lookahead")(engine, key, window=w, ngram=n, guess=g)
    return out


def decode_all(lm, methods: dict[str, Method], prompts: list[list[int]], max_new: int, eos: set[int],
               cache: KVCache, progress: bool = True) -> list[dict]:
    """Every prompt with every method back to back, the baseline first; results-schema records."""
    from tqdm import tqdm

    records = []
    with tqdm(total=len(prompts) * len(methods), desc="tuning", unit="decode", disable=not progress) as bar:
        for i, prompt in enumerate(prompts):
            sample = Sample("training-splits", str(i), [""])
            reference = None
            for name, method in methods.items():
                out, wall = timed_decode(method, prompt, max_new, eos, cache)
                rec = make_record((name, sample.dataset, sample.sample_id, 0), sample, out, wall, {},
                                  lm.tokenizer, reference, len(prompt))
                reference = reference if reference is not None else rec["output_ids"]
                records.append(rec)
                bar.update(1)
    return records


def sweep_lookahead(lm, cfg: SweepConfig, progress: bool = True) -> dict:
    """Measure every (W, N, G) of cfg.grid against the baseline on the loaded model `lm`."""
    from harness.train.skipsearch import SearchConfig, search_prompts

    engine = Engine(lm.model)
    methods = sweep_methods(engine, lm.key, cfg.grid)
    prompts = search_prompts(lm, SearchConfig(num_prompts=cfg.num_prompts), cfg.max_new_tokens + ROOM)
    cache = engine.new_cache(max(map(len, prompts)) + cfg.max_new_tokens + ROOM)
    eos = {lm.tokenizer.eos_token_id} - {None}
    t0 = time.time()
    for method in methods.values():  # warm-up, untimed
        decode(method, prompts[0], min(16, cfg.max_new_tokens), eos, cache)
    records = decode_all(lm, methods, prompts, cfg.max_new_tokens, eos, cache, progress)
    table = metrics.summarize(records, baseline="ar", seed=cfg.seed).set_index("method")
    rows = [{"window": w, "ngram": n, "guess": g, **_numbers(table.loc[label((w, n, g))])} for w, n, g in cfg.grid]
    best = max(rows, key=lambda r: r["speedup_median"])
    return {"method": "lookahead", "model": lm.key, "device": lm.device, "dtype": lm.dtype,
            "objective": "median paired speedup over ar (tokens/s of a decode, prefill included)",
            "best": best, "ar": _numbers(table.loc["ar"]), "rows": rows,
            "budget": {**asdict(cfg), "grid": [list(t) for t in cfg.grid], "prompts": len(prompts),
                       "sources": ["gsm8k-train", "xsum-validation"]},
            "seconds": round(time.time() - t0, 1), **results.base_manifest(lm.device)}


def _numbers(row) -> dict:
    return {k: round(float(row[k]), 4) if k != "n" else int(row[k]) for k in COLUMNS[3:]}


def write_sweep(result: dict, out_dir: Path | None = None) -> tuple[Path, Path]:
    """<out_dir>/<model>-<device>.csv (one row per (W, N, G)) and .json (everything)."""
    import pandas as pd

    out_dir = Path(out_dir) if out_dir else SWEEP_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"{result['model']}-{result['device']}"
    csv, js = out_dir / f"{stem}.csv", out_dir / f"{stem}.json"
    pd.DataFrame(result["rows"], columns=list(COLUMNS)).to_csv(csv, index=False)
    results.write_json(js, result)
    return csv, js

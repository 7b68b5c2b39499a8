"""Choosing a training-free method's defaults by measurement (`spec-harness tune ...`).

A sweep is a benchmark run (harness/bench/runner.py, the same paired, permuted loop with its
warm-up) of the baseline and one configuration of the method per grid point, on the tuning
sets only (GSM8K train and XSum validation read from their end: never a test file). Its records
are pooled over the two sets and summarised exactly as benchmark runs are (harness.bench.metrics):
tau, accept_len, draft size, positions per forward, tokens/s, speedup (ratio of mean tokens/s
with its cluster-bootstrap interval; median paired ratio), lossless rate. The best point is the
one with the highest speedup. Timing only means something on an otherwise idle machine.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import methods as registry
from harness.bench import metrics, records_io, results
from harness.bench.data import TUNING_SETS
from harness.bench.runner import RunConfig, Runner

Triple = tuple[int, int, int]  # (W, N, G)
Point = dict[str, object]  # option values of one grid point
DEFAULT_GRID: tuple[Triple, ...] = tuple(itertools.product((3, 5, 7), (3, 4, 5), (3, 5, 7)))
METRICS = ("tau", "accept_len", "draft_size", "positions", "tokens_per_s", "speedup", "speedup_ci_low",
           "speedup_ci_high", "speedup_median", "lossless_rate", "n")


@dataclass(frozen=True)
class SweepConfig:
    num_prompts: int = 8  # split evenly over the tuning sets (rounded up)
    max_new_tokens: int = 64
    seed: int = 0  # of the method order and the bootstrap


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


def product_grid(values: dict[str, list]) -> list[Point]:
    """Every combination of the given option values, in order."""
    keys = list(values)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(values[k] for k in keys))]


def label(method: str, point: Point) -> str:
    """The method label of one grid point, e.g. lookahead:window3-ngram3-guess3."""
    return f"{method}:" + "-".join(f"{k}{v}" for k, v in point.items())


def sweep(method: str, grid: list[Point], cfg: SweepConfig, model: str, device: str = "auto",
          dtype: str | None = None, out_dir: Path | None = None, progress: bool = True) -> dict:
    """Benchmark the baseline and every grid point of `method` on the tuning sets; the table."""
    labels = {label(method, p): p for p in grid}
    for point in grid:  # bad values fail here, before any model is loaded
        registry.get(method).resolve_options(dict(point))
    out_dir = Path(out_dir) if out_dir else results.RESULTS_ROOT / "tuning" / method
    run = RunConfig(methods=list(labels), datasets=list(TUNING_SETS), model=model, device=device, dtype=dtype,
                    num_samples=max(1, -(-cfg.num_prompts // len(TUNING_SETS))), max_new_tokens=cfg.max_new_tokens,
                    seed=cfg.seed,
                    method_args={lab: {k: str(v) for k, v in p.items()} for lab, p in labels.items()},
                    out=out_dir / "run", overwrite=(out_dir / "run").exists(), telemetry=False)
    t0 = time.time()
    runner = Runner(run, progress)
    runner.run()
    table = pooled_summary(runner.out, cfg.seed).set_index("method")
    rows = [{**point, **_numbers(table.loc[lab])} for lab, point in labels.items()]
    return {"method": method, "model": runner.lm.key, "device": runner.lm.device, "dtype": runner.lm.dtype,
            "objective": "speedup over ar: ratio of mean tokens/s per decode (prefill included), tuning sets",
            "best": max(rows, key=lambda r: r["speedup"]), "ar": _numbers(table.loc[registry.BASELINE]),
            "rows": rows, "run": str(runner.out),
            "budget": {**asdict(cfg), "prompts": sum(len(v) for v in runner.valid.samples.values()),
                       "sources": list(TUNING_SETS)},
            "seconds": round(time.time() - t0, 1), **results.base_manifest(runner.lm.device)}


def pooled_summary(run_dir: Path, seed: int):
    """metrics.summarize over the tuning sets together (samples kept apart by dataset)."""
    _, records = records_io.load_run(run_dir)
    pooled = [{**r, "sample_id": f"{r['dataset']}/{r['sample_id']}", "dataset": "tuning-sets"} for r in records]
    return metrics.summarize(pooled, baseline=registry.BASELINE, seed=seed)


def _numbers(row) -> dict:
    return {k: (int(row[k]) if k == "n" else round(float(row[k]), 4)) for k in METRICS}


def write_sweep(result: dict, out_dir: Path) -> tuple[Path, Path]:
    """<out_dir>/<model>-<device>.csv (one row per grid point) and .json (everything)."""
    import pandas as pd

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"{result['model']}-{result['device'].split(':')[0]}"
    csv, js = out_dir / f"{stem}.csv", out_dir / f"{stem}.json"
    pd.DataFrame(result["rows"]).to_csv(csv, index=False)
    results.write_json(js, result)
    return csv, js

"""Benchmark runs: methods x datasets x samples, paired timing, one record per turn.

Each sample is decoded by the autoregressive baseline and then by every other method, back to
back, after a warm-up, so that speedups are paired ratios that survive a drifting machine.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

import methods as registry
from harness.bench import metrics, results
from harness.bench.data import Sample, chat_prompt, load_samples
from harness.bench.records import make_record, skipped_record
from harness.bench.telemetry import Telemetry, telemetry_kind
from harness.core.decoding import Decoded, decode, synchronize
from harness.core.engine import Engine, KVCache
from harness.core.method import Method, MethodError
from harness.core.modelload import LoadedModel, load_model

CACHE_SLACK = 256  # room for draft rows beyond prompt + budget


@dataclass
class RunConfig:
    methods: list[str]
    datasets: list[str]
    model: str = "smollm2"
    device: str = "auto"
    dtype: str | None = None
    num_samples: int | None = 10
    max_new_tokens: int = 128
    seed: int = 0
    data_source: str = "local"
    method_args: dict[str, dict[str, str]] = field(default_factory=dict)
    out: Path | None = None
    resume: bool = False
    overwrite: bool = False
    telemetry: bool = True
    warmup: bool = True


def method_order(requested: list[str]) -> list[str]:
    """The baseline first (added when not requested), then the others in the order given."""
    return [registry.BASELINE] + [m for m in dict.fromkeys(requested) if m != registry.BASELINE]


def validate(cfg: RunConfig) -> None:
    """Fail fast, before loading any model, on unknown methods, datasets or options."""
    for name in cfg.methods:
        registry.get(name)
    unknown = set(cfg.method_args) - set(cfg.methods) - {registry.BASELINE}
    if unknown:
        raise MethodError(f"--method-arg names method(s) not in --methods: {', '.join(sorted(unknown))}")
    for name, values in cfg.method_args.items():
        registry.get(name).resolve_options(values)


def build_methods(lm: LoadedModel, engine: Engine, names: list[str], args: dict) -> dict[str, Method]:
    return {name: registry.get(name)(engine, lm.key, **args.get(name, {})) for name in names}


class Runner:
    """Holds the model, methods and output files of one run."""

    def __init__(self, cfg: RunConfig, progress: bool = True):
        validate(cfg)
        self.cfg, self.progress = cfg, progress
        self.out = Path(cfg.out) if cfg.out else results.new_run_dir()
        results.check_dir(self.out, cfg.resume, cfg.overwrite)
        torch.manual_seed(cfg.seed)
        self.lm = load_model(cfg.model, cfg.device, cfg.dtype)
        self.engine = Engine(self.lm.model)
        self.names = method_order(cfg.methods)
        self.methods = build_methods(self.lm, self.engine, self.names, cfg.method_args)
        results.prepare_dir(self.out, cfg.resume, cfg.overwrite)  # only once everything could be built
        self.eos = self._eos_ids()
        self.kind = telemetry_kind(self.lm.device) if cfg.telemetry else "off"
        self.cache: KVCache | None = None

    def _eos_ids(self) -> set[int]:
        ids = self.lm.model.generation_config.eos_token_id
        ids = set(ids if isinstance(ids, list) else [ids]) if ids is not None else set()
        if self.lm.tokenizer.eos_token_id is not None:
            ids.add(self.lm.tokenizer.eos_token_id)
        return ids

    def manifest(self) -> dict:
        m = results.base_manifest(self.lm.device)
        m.update({"model": self.cfg.model, "model_key": self.lm.key, "model_source": self.lm.source,
                  "dtype": self.lm.dtype, "device": self.lm.device, "methods": self.names,
                  "method_configs": {n: self.methods[n].describe() for n in self.names},
                  "datasets": self.cfg.datasets, "num_samples": self.cfg.num_samples,
                  "max_new_tokens": self.cfg.max_new_tokens, "seed": self.cfg.seed,
                  "data_source": self.cfg.data_source, "telemetry": self.kind, "eos_ids": sorted(self.eos),
                  "baseline": registry.BASELINE})
        return m

    def _cache_for(self, length: int) -> KVCache:
        need = length + self.cfg.max_new_tokens + CACHE_SLACK
        if self.cache is None or self.cache.max_len < need:
            self.cache = self.engine.new_cache(-(-need // 512) * 512)
        return self.cache

    def decode_turn(self, method: Method, prompt: list[int], max_new: int) -> tuple[Decoded, float, dict]:
        cache = self._cache_for(len(prompt))
        probe = Telemetry(self.kind, self.lm.device) if self.kind != "off" else None
        synchronize(self.lm.device)
        if probe:
            probe.__enter__()
        t0 = time.perf_counter()
        if getattr(method, "external", False):
            out = method.generate(prompt, max_new, self.eos)
        else:
            out = decode(method, prompt, max_new, self.eos, cache)
        synchronize(self.lm.device)
        wall = time.perf_counter() - t0
        if probe:
            probe.__exit__(None, None, None)
        return out, wall, (probe.result if probe else {})

    def warmup(self, sample: Sample) -> None:
        prompt = chat_prompt(self.lm.tokenizer, sample.turns[:1], [])
        for name in self.names:
            self.decode_turn(self.methods[name], prompt, min(16, self.cfg.max_new_tokens))

    def run(self) -> Path:
        samples = {d: load_samples(d, self.cfg.num_samples, self.cfg.data_source) for d in self.cfg.datasets}
        manifest = self.manifest()
        if self.cfg.resume:
            results.check_resumable(self.out, manifest)
            manifest["resumed"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        results.write_json(self.out / "manifest.json", manifest)
        writer = results.RecordWriter(self.out / "records.jsonl")
        try:
            if self.cfg.warmup and any(samples.values()):
                self.warmup(next(s for v in samples.values() for s in v))
            total = sum(len(v) for v in samples.values()) * len(self.names)
            with tqdm(total=total, desc="decoding", unit="run", disable=not self.progress) as bar:
                for dataset, items in samples.items():
                    for sample in items:
                        self._run_sample(sample, writer, bar)
        finally:
            writer.close()
        return self.out

    def _run_sample(self, sample: Sample, writer: results.RecordWriter, bar) -> None:
        reference: dict[int, list[int]] = {}
        for name in self.names:
            answers: list[str] = []
            for turn in range(len(sample.turns)):
                key = (name, sample.dataset, sample.sample_id, turn)
                if key in writer.done:  # resumed: reuse what was written
                    rec = writer.done[key]
                else:
                    prompt = chat_prompt(self.lm.tokenizer, sample.turns[: turn + 1], answers)
                    limit = self.engine.config.max_position_embeddings
                    if len(prompt) + self.cfg.max_new_tokens + CACHE_SLACK > limit:
                        rec = skipped_record(key, f"prompt of {len(prompt)} tokens + budget exceeds context {limit}")
                    else:
                        out, wall, tel = self.decode_turn(self.methods[name], prompt, self.cfg.max_new_tokens)
                        rec = make_record(key, sample, out, wall, tel, self.lm.tokenizer, reference.get(turn), len(prompt))
                    writer.write(rec)
                if rec.get("skipped"):
                    break
                if name == registry.BASELINE:
                    reference[turn] = rec["output_ids"]
                answers.append(rec["output_text"])
            bar.update(1)
            bar.set_postfix_str(f"{sample.dataset} #{sample.sample_id} {name}")


def summary_of(out: Path):
    """(metrics table, skipped records) of a run directory."""
    manifest, records = results.load_run(out)
    skipped = [r for r in records if r.get("skipped")]
    table = metrics.summarize(records, baseline=manifest.get("baseline", registry.BASELINE), seed=manifest.get("seed", 0))
    return table, skipped

"""Benchmark runs: methods x datasets x samples (x temperatures x batch sizes), paired timing,
one record per sequence and turn.

The protocol (README "How a run works"): per group of samples (one sample at batch size 1,
harness/bench/batches.py), every method (the baseline, the A/A control when asked for, every
other method) decodes each turn back to back, in a seeded permutation of the methods recorded in
each record (`order`), after an untimed warm-up of every method on an unmeasured item of each
dataset at the full budget and each batch size. The turns themselves: harness/bench/turns.py.
"""

from __future__ import annotations

import itertools
import time
import uuid
from pathlib import Path

import torch
from tqdm import tqdm

import methods as registry
from harness.bench import batches, metrics, rundir
from harness.bench.batches import batchable
from harness.bench.data import Sample, chat_prompt
from harness.bench.records_io import RecordWriter, load_run
from harness.bench.results import base_manifest, write_json
from harness.bench.telemetry import (
    Telemetry,
    TelemetrySource,
    telemetry_info,
    telemetry_kind,
)
from harness.bench.turns import Turns, permutation
from harness.bench.validate import CACHE_SLACK, RunConfig, ValidRun, validate
from harness.core.cache import KVCache
from harness.core.decoding import Decoded, decode_batch, synchronize
from harness.core.engine import Engine
from harness.core.method import Method
from harness.core.modelload import load_model
from harness.core.options import Options

__all__ = ["RunConfig", "Runner", "permutation", "summary_of"]

ANSWER_SLACK = 16  # tokens an answer may gain when its text is tokenised again inside the next prompt


class Runner:
    """Holds the model, methods and output files of one run."""

    def __init__(self, cfg: RunConfig, progress: bool = True, lm=None):
        """lm: the model, already loaded by load_model with cfg's model, device and dtype (a sweep
        worker loads it once for all its shards); else loaded here."""
        self.valid: ValidRun = validate(cfg)  # nothing loaded or written before this passes
        self.cfg, self.progress = cfg, progress
        torch.manual_seed(cfg.seed)
        self.lm = lm or load_model(cfg.model, cfg.device, cfg.dtype, cfg.linear)
        self.engine = Engine(self.lm.model, cfg.layers)
        self.names = self.valid.names
        self.by_size: dict[int, dict[str, Method]] = {}  # per batch size: shapes planned for it
        for size in cfg.batch_sizes:
            self.by_size[size] = {n: self._build(n, size) for n in self.names}
        self.methods = self.by_size[cfg.batch_sizes[0]]
        self.out, self.lock = rundir.create(cfg.out, cfg.overwrite)  # only once everything could be built
        self.session = uuid.uuid4().hex[:12]  # this process's records: a pair is never split across sessions
        self.eos = self._eos_ids()
        self.kind = telemetry_kind(self.lm.device) if cfg.telemetry else "off"
        self.telemetry = TelemetrySource(self.kind, self.lm.device) if self.kind != "off" else None  # NVML once per run
        self.caches: dict[int, KVCache] = {}  # per batch size
        for size in cfg.batch_sizes:
            self._cache_for(self.longest_prompt(), size)  # every cache sized before any timing
        self.turns = Turns(self)

    def _build(self, name: str, size: int) -> Method:
        """A method for batch size `size`, from its validated options (resolved once): one that
        plans an `auto` draft shape plans it for that many sequences (its `batch` option, unless
        given); the others are one object for every batch size."""
        options, cls = self.valid.options[name], registry.get(name)
        plans = "batch" in options and "batch" not in options.given and cls.batchable
        if not plans:
            first = next(iter(self.by_size.values()), {}).get(name)
            return first or cls(self.engine, self.lm.key, options=options)
        values = Options({**options, "batch": size})
        values.given = options.given
        return cls(self.engine, self.lm.key, options=values)

    def longest_prompt(self) -> int:
        """The longest prompt any turn of the run can have within the model's context: its turns,
        every earlier answer at the full budget (plus re-tokenisation slack)."""
        longest = 0
        for items in self.valid.samples.values():
            for sample in items:
                earlier = len(sample.turns) - 1
                prompt = len(chat_prompt(self.lm.tokenizer, sample.turns, [""] * earlier))
                longest = max(longest, prompt + earlier * (self.cfg.max_new_tokens + ANSWER_SLACK))
        return min(longest, self.valid.context - self.cfg.max_new_tokens - CACHE_SLACK)

    def _eos_ids(self) -> set[int]:
        ids = self.lm.model.generation_config.eos_token_id
        ids = set(ids if isinstance(ids, list) else [ids]) if ids is not None else set()
        if self.lm.tokenizer.eos_token_id is not None:
            ids.add(self.lm.tokenizer.eos_token_id)
        return ids

    def manifest(self) -> dict:
        """A new run's manifest; a resumed run keeps its own and gains one entry per resume."""
        now = base_manifest(self.lm.device)
        samples = {d: [s.sample_id for s in v] for d, v in self.valid.samples.items()}
        if self.valid.resumed is not None:
            old = dict(self.valid.resumed)
            resume = {k: now[k] for k in ("created", "command", "hardware", "git", "libraries")} | {"session": self.session}
            if old.get("num_samples") != self.cfg.num_samples:
                resume["num_samples"] = [old.get("num_samples"), self.cfg.num_samples]
            old.update(resumes=old.get("resumes", []) + [resume], num_samples=self.cfg.num_samples, samples=samples)
            return old
        now.update({"request": self.valid.request, "model": self.cfg.model, "model_key": self.lm.key,
                    "model_source": self.lm.source, "dtype": self.lm.dtype, "device": self.lm.device,
                    "methods": self.names, "method_configs": {n: self.methods[n].describe() for n in self.names},
                    "batch_sizes": list(self.cfg.batch_sizes), "method_configs_by_batch": self.planned_by_size(),
                    "datasets": list(self.valid.samples), "num_samples": self.cfg.num_samples,
                    **({"dataset_counts": self.valid.counts} if self.valid.counts else {}),
                    "samples": samples,
                    "warmup_items": {d: (s.sample_id if s else None) for d, s in self.valid.warmup.items()},
                    "max_new_tokens": self.cfg.max_new_tokens, "seed": self.cfg.seed,
                    "data_source": self.cfg.data_source, "linear": self.lm.linear,
                    "layers": self.engine.layer_path, "telemetry": self.kind,
                    "telemetry_info": telemetry_info(self.lm.device) if self.kind != "off" else None,
                    "eos_ids": sorted(self.eos),
                    "baseline": registry.BASELINE, "control": self.cfg.control,
                    "order": "seeded permutation per sample (record field `order`)",
                    "warmup": self.cfg.warmup, "session": self.session})
        return now

    def planned_by_size(self) -> dict[str, dict]:
        """batch size -> method -> describe(), for the methods whose shape was planned for it
        (those built anew for a batch size after the first)."""
        first = self.methods
        return {str(size): {n: m.describe() for n, m in made.items() if m is not first[n]}
                for size, made in self.by_size.items() if made is not first}

    def _cache_for(self, length: int, batch: int = 1) -> KVCache:
        """A target cache of `batch` sequences for prompts of up to `length` tokens, and every
        method's own caches and graphs sized for it (made once per batch size for the run's
        longest prompt; only a prompt longer than that foresaw makes new ones, and never inside a
        timed turn)."""
        need = length + self.cfg.max_new_tokens + CACHE_SLACK
        cache = self.caches.get(batch)
        if cache is None or cache.max_len < need:
            cache = self.caches[batch] = self.engine.new_cache(-(-need // 512) * 512, batch)
        for method in self.by_size.get(batch, self.methods).values():
            if not getattr(method, "external", False) and (batch == 1 or method.batchable):
                method.prepare(cache)  # a no-op once sized for this cache
        return cache

    def fits(self, prompt: list[int]) -> str | None:
        """None, or why a prompt cannot be decoded within the model's context."""
        limit = self.valid.context
        if len(prompt) + self.cfg.max_new_tokens + CACHE_SLACK > limit:
            return f"prompt of {len(prompt)} tokens + budget {self.cfg.max_new_tokens} exceeds context {limit}"
        return None

    def decode_turn(self, method: Method, prompts: list[list[int]], rule=None) -> tuple[list[Decoded], float, dict]:
        """One timed decode of a batch of prompts (device synchronised around it), with telemetry
        over exactly the timed window when enabled. Nothing is allocated or captured inside it."""
        external = getattr(method, "external", False)
        if not external:
            cache = self._cache_for(max(map(len, prompts)), len(prompts))
            method.prepare(cache)  # untimed: graphs made over this cache if another one was used last
        probe = Telemetry(source=self.telemetry) if self.telemetry else None
        synchronize(self.lm.device)
        t0 = probe.start() if probe else time.perf_counter()
        if external and len(prompts) > 1:
            outs = method.generate_batch(prompts, self.cfg.max_new_tokens, self.eos, rule)
        elif external:
            outs = [method.generate(prompts[0], self.cfg.max_new_tokens, self.eos, rule)]
        else:
            outs = decode_batch(method, prompts, self.cfg.max_new_tokens, self.eos, cache, rule)
        synchronize(self.lm.device)
        t1 = probe.stop() if probe else time.perf_counter()
        return outs, t1 - t0, (probe.result if probe else {})

    def pending(self, items: list[Sample], done: dict, size: int) -> bool:
        """Whether any turn of these samples at batch size `size` still lacks a record (a resumed
        run warms up only what it still decodes). Turns after a skipped first turn are never decoded."""
        for sample in items:
            for temp in self.cfg.sampling.temperatures:
                first = done.get((registry.BASELINE, sample.dataset, sample.sample_id, 0, temp, size))
                turns = 1 if first and first.get("skipped") else len(sample.turns)
                if any((name, sample.dataset, sample.sample_id, turn, temp, size) not in done
                       for name in self.names for turn in range(turns)):
                    return True
        return False

    def warm_up(self, bar, done: dict, size: int) -> None:
        """Every method once per dataset with turns to decode at batch size `size`, at the full
        budget, on `size` copies of an unmeasured item that fits (the first measured one when the
        dataset has no other), untimed."""
        for dataset, items in self.valid.samples.items():
            if not self.pending(items, done, size):
                continue
            spare = self.valid.warmup[dataset]
            for sample in ([spare] if spare else []) + items:
                prompt = chat_prompt(self.lm.tokenizer, sample.turns[:1], [])
                if self.fits(prompt) is None:
                    for name, temp in itertools.product(self.names, self.cfg.sampling.temperatures):
                        if size == 1 or batchable(self.by_size[size][name]):
                            bar.set_postfix_str(f"warm-up {dataset} B={size} {name} T={temp:g}")
                            self.decode_turn(self.by_size[size][name], [prompt] * size,
                                             self.rule(name, temp, [sample] * size, 0))
                    break

    def run(self) -> Path:
        """Decode everything still to decode, holding the run directory's lock throughout."""
        try:
            self._run()
        finally:
            self.lock.release()
        return self.out

    def _run(self) -> None:
        write_json(self.out / "manifest.json", self.manifest())
        writer = RecordWriter(self.out / "records.jsonl", self.names)
        try:
            total = sum(len(s.turns) for v in self.valid.samples.values() for s in v) * len(self.names) \
                * len(self.cfg.sampling.temperatures) * len(self.cfg.batch_sizes)
            with tqdm(total=total, desc="decoding", unit="turn", disable=not self.progress) as bar:
                for size in self.cfg.batch_sizes:
                    if self.cfg.warmup:
                        self.warm_up(bar, writer.done, size)
                    for items in self.valid.samples.values():
                        for group in batches.groups(items, size):
                            self.turns.run_group(group, size, writer, bar)
        finally:
            writer.close()

    def rule(self, name: str, temperature: float, samples: list[Sample], turn: int):
        """The acceptance rule of one method's turn of a batch at one temperature (made before timing)."""
        method = self.methods[name]
        drafts = method.drafts and not getattr(method, "external", False)
        return self.cfg.sampling.rule(temperature, self.cfg.seed, [s.sample_id for s in samples], turn,
                                      self.lm.device, drafts, typical=method.config.get("acceptance") == "typical")


def summary_of(out: Path, by: tuple[str, ...] = ()):
    """(metrics table, skipped records, manifest) of a run directory."""
    manifest, records = load_run(out)
    skipped = [r for r in records if r.get("skipped")]
    table = metrics.summarize(records, baseline=manifest.get("baseline", registry.BASELINE),
                              seed=manifest.get("seed", 0), by=by)
    return table, skipped

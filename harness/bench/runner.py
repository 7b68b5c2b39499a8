"""Benchmark runs: methods x datasets x samples, paired timing, one record per turn.

The protocol (README "How a run works"): per sample, every method (the baseline, the A/A
control when asked for, every other method) decodes each turn back to back, in a seeded
permutation of the methods recorded in each record (`order`), after an untimed warm-up of
every method on an unmeasured item of each dataset at the full budget. Turn t of every method
is asked after the baseline's answers to turns < t, so each pair times the same prompt. A
turn's records are written once every method has decoded it: then losslessness is known, and
a divergence is diagnosed (harness/bench/divergence.py).
"""

from __future__ import annotations

import itertools
import random
import time
import uuid
from pathlib import Path

import torch
from tqdm import tqdm

import methods as registry
from harness.bench import metrics, rundir
from harness.bench.data import Sample, chat_prompt
from harness.bench.divergence import diagnose
from harness.bench.records import make_record, skipped_record
from harness.bench.records_io import RecordWriter, load_run
from harness.bench.results import base_manifest, write_json
from harness.bench.telemetry import (
    Telemetry,
    TelemetrySource,
    telemetry_info,
    telemetry_kind,
)
from harness.bench.validate import CACHE_SLACK, RunConfig, ValidRun, validate
from harness.core.cache import KVCache
from harness.core.decoding import Decoded, decode, synchronize
from harness.core.engine import Engine
from harness.core.method import Method
from harness.core.modelload import load_model

__all__ = ["RunConfig", "Runner", "summary_of", "permutation"]

ANSWER_SLACK = 16  # tokens an answer may gain when its text is tokenised again inside the next prompt


def permutation(names: list[str], seed: int, dataset: str, sample_id: str) -> list[str]:
    """The seeded order in which a sample's methods decode (the same for every turn)."""
    return random.Random(f"{seed}:{dataset}:{sample_id}").sample(names, len(names))


class Runner:
    """Holds the model, methods and output files of one run."""

    def __init__(self, cfg: RunConfig, progress: bool = True):
        self.valid: ValidRun = validate(cfg)  # nothing loaded or written before this passes
        self.cfg, self.progress = cfg, progress
        torch.manual_seed(cfg.seed)
        self.lm = load_model(cfg.model, cfg.device, cfg.dtype)
        self.engine = Engine(self.lm.model)
        self.names = self.valid.names
        self.methods: dict[str, Method] = {n: registry.get(n)(self.engine, self.lm.key, options=self.valid.options[n])
                                           for n in self.names}  # options as validated: resolved once
        self.out, self.lock = rundir.create(cfg.out, cfg.overwrite)  # only once everything could be built
        self.session = uuid.uuid4().hex[:12]  # this process's records: a pair is never split across sessions
        self.eos = self._eos_ids()
        self.kind = telemetry_kind(self.lm.device) if cfg.telemetry else "off"
        self.telemetry = TelemetrySource(self.kind, self.lm.device) if self.kind != "off" else None  # NVML once per run
        self.cache: KVCache = self._cache_for(self.longest_prompt())  # every cache sized before any timing

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
                    "datasets": list(self.valid.samples), "num_samples": self.cfg.num_samples,
                    "samples": samples,
                    "warmup_items": {d: (s.sample_id if s else None) for d, s in self.valid.warmup.items()},
                    "max_new_tokens": self.cfg.max_new_tokens, "seed": self.cfg.seed,
                    "data_source": self.cfg.data_source, "telemetry": self.kind,
                    "telemetry_info": telemetry_info(self.lm.device) if self.kind != "off" else None,
                    "eos_ids": sorted(self.eos),
                    "baseline": registry.BASELINE, "control": self.cfg.control,
                    "order": "seeded permutation per sample (record field `order`)",
                    "warmup": self.cfg.warmup, "session": self.session})
        return now

    def _cache_for(self, length: int) -> KVCache:
        """A target cache for a prompt of `length` tokens, and every method's own caches and
        graphs sized for it (made once for the run's longest prompt; only a prompt longer than
        that foresaw makes new ones, and never inside a timed turn)."""
        need = length + self.cfg.max_new_tokens + CACHE_SLACK
        cache = getattr(self, "cache", None)
        if cache is None or cache.max_len < need:
            cache = self.engine.new_cache(-(-need // 512) * 512)
            for method in self.methods.values():
                if not getattr(method, "external", False):
                    method.prepare(cache)
        return cache

    def fits(self, prompt: list[int]) -> str | None:
        """None, or why a prompt cannot be decoded within the model's context."""
        limit = self.valid.context
        if len(prompt) + self.cfg.max_new_tokens + CACHE_SLACK > limit:
            return f"prompt of {len(prompt)} tokens + budget {self.cfg.max_new_tokens} exceeds context {limit}"
        return None

    def decode_turn(self, method: Method, prompt: list[int], rule=None) -> tuple[Decoded, float, dict]:
        """One timed decode (device synchronised around it), with telemetry over exactly the
        timed window when enabled. Nothing is allocated or captured inside it."""
        self.cache = self._cache_for(len(prompt))
        probe = Telemetry(source=self.telemetry) if self.telemetry else None
        synchronize(self.lm.device)
        t0 = probe.start() if probe else time.perf_counter()
        if getattr(method, "external", False):
            out = method.generate(prompt, self.cfg.max_new_tokens, self.eos, rule)
        else:
            out = decode(method, prompt, self.cfg.max_new_tokens, self.eos, self.cache, rule)
        synchronize(self.lm.device)
        t1 = probe.stop() if probe else time.perf_counter()
        return out, t1 - t0, (probe.result if probe else {})

    def pending(self, items: list[Sample], done: dict) -> bool:
        """Whether any turn of these samples still lacks a record (a resumed run warms up only
        the datasets it still decodes). Turns after a skipped first turn are never decoded."""
        for sample in items:
            for temp in self.cfg.sampling.temperatures:
                first = done.get((registry.BASELINE, sample.dataset, sample.sample_id, 0, temp))
                turns = 1 if first and first.get("skipped") else len(sample.turns)
                if any((name, sample.dataset, sample.sample_id, turn, temp) not in done
                       for name in self.names for turn in range(turns)):
                    return True
        return False

    def warm_up(self, bar, done: dict) -> None:
        """Every method once per dataset with turns to decode, at the full budget, on an
        unmeasured item that fits (the first measured one when the dataset has no other), untimed."""
        for dataset, items in self.valid.samples.items():
            if not self.pending(items, done):
                continue
            spare = self.valid.warmup[dataset]
            for sample in ([spare] if spare else []) + items:
                prompt = chat_prompt(self.lm.tokenizer, sample.turns[:1], [])
                if self.fits(prompt) is None:
                    for name, temp in itertools.product(self.names, self.cfg.sampling.temperatures):
                        bar.set_postfix_str(f"warm-up {dataset} {name} T={temp:g}")
                        self.decode_turn(self.methods[name], prompt, self.rule(name, temp, sample, 0))
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
                * len(self.cfg.sampling.temperatures)
            with tqdm(total=total, desc="decoding", unit="turn", disable=not self.progress) as bar:
                if self.cfg.warmup:
                    self.warm_up(bar, writer.done)
                for items in self.valid.samples.values():
                    for sample in items:
                        self._run_sample(sample, writer, bar)
        finally:
            writer.close()

    def rule(self, name: str, temperature: float, sample: Sample, turn: int):
        """The acceptance rule of one method's turn at one temperature (made before timing)."""
        method = self.methods[name]
        drafts = method.drafts and not getattr(method, "external", False)
        return self.cfg.sampling.rule(temperature, self.cfg.seed, sample.sample_id, turn, self.lm.device, drafts,
                                      typical=method.config.get("acceptance") == "typical")

    def acceptance_of(self, name: str, rule) -> str:
        """What decided a record's tokens: greedy, exact, rejection, typical, or generate() (a peer's own)."""
        sampled = getattr(rule, "params", None) is not None
        return "generate" if sampled and getattr(self.methods[name], "external", False) else rule.name

    def _run_sample(self, sample: Sample, writer: RecordWriter, bar) -> None:
        """The sample's turns at every temperature; turn t asked after the baseline's answers (at
        that temperature) to the earlier turns."""
        order = permutation(self.names, self.cfg.seed, sample.dataset, sample.sample_id)
        for temp in self.cfg.sampling.temperatures:
            answers: list[str] = []
            for turn in range(len(sample.turns)):
                prompt = chat_prompt(self.lm.tokenizer, sample.turns[: turn + 1], answers)
                done = self._run_turn(sample, turn, temp, prompt, order, writer, bar)
                base = done[registry.BASELINE]
                if base.get("skipped"):
                    bar.update(len(self.names) * (len(sample.turns) - turn - 1))
                    break
                answers.append(base["output_text"])

    def _run_turn(self, sample: Sample, turn: int, temp: float, prompt: list[int], order: list[str],
                  writer: RecordWriter, bar) -> dict[str, dict]:
        """Every method on one turn, in `order`; new records written once all are known."""
        done, fresh = {}, []
        reason = self.fits(prompt)
        for position, name in enumerate(order):
            key = (name, sample.dataset, sample.sample_id, turn, temp)
            if key in writer.done:  # resumed: reuse what was written
                done[name] = writer.done[key]
            elif reason:
                done[name] = {**skipped_record(key[:4], reason, sample.category), "temperature": temp}
                fresh.append(name)
            else:
                bar.set_postfix_str(f"{sample.dataset} #{sample.sample_id} t{turn} T={temp:g} {name}")
                rule = self.rule(name, temp, sample, turn)
                out, wall, tel = self.decode_turn(self.methods[name], prompt, rule)
                done[name] = {**make_record(key[:4], sample, out, wall, tel, self.lm.tokenizer, len(prompt), position),
                              "temperature": temp, "acceptance": self.acceptance_of(name, rule)}
                fresh.append(name)
            bar.update(1)
        self._judge(done, fresh, prompt, temp, self.rule(registry.BASELINE, temp, sample, turn))
        for name in fresh:
            writer.write({**done[name], "session": self.session})
        return done

    def _judge(self, done: dict[str, dict], fresh: list[str], prompt: list[int], temp: float, rule) -> None:
        """Losslessness of the new records against the baseline's output of the same turn (where
        it must hold token for token), and a diagnosis of each divergence under the baseline's
        rule (one extra untimed forward)."""
        reference = done[registry.BASELINE].get("output_ids")
        for name in fresh:
            rec = done[name]
            method = self.methods[name]
            compared = self.cfg.sampling.compared(temp, getattr(method, "external", False), method.drafts,
                                                  method.config.get("acceptance") == "typical")
            if rec.get("skipped") or name == registry.BASELINE or reference is None or not compared:
                continue
            at = metrics.first_divergence(rec["output_ids"], reference)
            rec["lossless"], rec["diverge_at"] = at is None, at
            if at is not None:
                rec["divergence"] = diagnose(self.engine, prompt, reference, rec["output_ids"], at, rule)


def summary_of(out: Path, by: tuple[str, ...] = ()):
    """(metrics table, skipped records, manifest) of a run directory."""
    manifest, records = load_run(out)
    skipped = [r for r in records if r.get("skipped")]
    table = metrics.summarize(records, baseline=manifest.get("baseline", registry.BASELINE),
                              seed=manifest.get("seed", 0), by=by)
    return table, skipped

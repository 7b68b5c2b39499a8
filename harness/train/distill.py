"""Self-distillation corpus for drafter training: prompts from the training splits only (GSM8K
train and XSum validation; with `mix`, also chat instructions and MBPP's training tasks:
harness/bench/sources.py), answered greedily by the target model itself.

The corpus is generated once per (model, settings) and cached as JSONL, since generating it is
the slow part of training on a CPU; an interrupted generation resumes after its last batch.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm import tqdm

import methods as registry
from harness.bench.data import chat_prompt, training_prompts
from harness.bench.sources import HELD_BACK, HOLD_EVERY, ORIGINAL, SOURCE_FILES
from harness.core.cache import KVCache
from harness.core.decoding import decode_batch
from harness.core.engine import Engine
from harness.core.modelload import LoadedModel, cache_root


@dataclass(frozen=True)
class CorpusConfig:
    per_source: int = 800  # prompts taken from each training split (first N, file order)
    answer_tokens: int = 160  # greedy answer budget
    max_prompt_tokens: int = 640  # longer prompts keep their last tokens
    batch: int = 16
    skip: int = 0  # prompts skipped at the start of each split (an analysis corpus disjoint from training)
    mix: tuple[tuple[str, int], ...] | None = None  # (source, prompts) each; None: per_source of GSM8K and XSum

    def sources(self) -> dict[str, int]:
        """Prompts read from each training source."""
        return dict(self.mix) if self.mix else {s: self.per_source for s in ORIGINAL}

    def prompt_range(self) -> range:
        """Row indices read from each training split."""
        return range(self.skip, self.skip + self.per_source)


def trained_rows(sidecar: dict) -> range:
    """The GSM8K train / XSum validation rows a checkpoint trained on (the widest of the two), from
    its sidecar's data summary."""
    data = sidecar.get("data", {})
    counts = [n for s, n in (data.get("mix") or {}).items() if s in ORIGINAL] or [data.get("per_source", 0)]
    return range(data.get("skip", 0), data.get("skip", 0) + max(counts))


@dataclass
class Sequence:
    source: str
    ids: list[int]  # prompt + answer
    answer_start: int  # index of the first answer token


def corpus_path(lm: LoadedModel, cfg: CorpusConfig) -> Path:
    fields = {k: v for k, v in asdict(cfg).items() if k not in ("skip", "mix") or v}  # tags of older caches hold
    tag = hashlib.sha1(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:10]
    return cache_root() / "distill" / lm.key / f"corpus-{tag}.jsonl"


def load_corpus(lm: LoadedModel, cfg: CorpusConfig, progress: bool = True) -> list[Sequence]:
    """The cached corpus, generated first if missing."""
    path = corpus_path(lm, cfg)
    if not path.exists():
        generate_corpus(lm, cfg, path, progress)
    return [Sequence(**json.loads(line)) for line in path.read_text().splitlines()]


@torch.inference_mode()
def generate_corpus(lm: LoadedModel, cfg: CorpusConfig, path: Path, progress: bool = True) -> None:
    """Every training prompt answered by the target, greedily, with the harness's own batched
    decoding (its static KV cache: transformers' generate() grew its cache by concatenation every
    step, about 0.5 s a step at batch 16 on a 2-core CPU). Batches of similar prompt lengths are
    appended to `<path>.partial` as they finish, so an interrupted generation resumes after the
    last batch written; the file becomes `path` when complete."""
    prompts = [(src, chat_prompt(lm.tokenizer, [text], [])[-cfg.max_prompt_tokens:])
               for src, text in training_prompts(skip=cfg.skip, mix=cfg.sources())]
    prompts.sort(key=lambda p: len(p[1]))  # similar lengths per batch: less padding
    partial = path.with_suffix(".partial")
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [line for line in (partial.read_text().splitlines(True) if partial.exists() else []) if line.endswith("\n")]
    done = len(lines) - len(lines) % cfg.batch  # a batch written in part (killed mid-write) is answered again
    partial.write_text("".join(lines[:done]))
    engine = Engine(lm.model)
    method, eos = registry.get(registry.BASELINE)(engine, lm.key), {lm.tokenizer.eos_token_id}
    caches: dict[int, KVCache] = {}
    with partial.open("a") as out:
        starts = range(done, len(prompts), cfg.batch)
        for i in tqdm(starts, desc="self-distillation answers", unit="batch", disable=not progress):
            chunk = prompts[i:i + cfg.batch]
            width = max(len(p) for _, p in chunk) + cfg.answer_tokens
            cache = caches.get(len(chunk))
            if cache is None or cache.max_len < width:
                cache = caches[len(chunk)] = engine.new_cache(max(width, cfg.max_prompt_tokens + cfg.answer_tokens), len(chunk))
            answers = decode_batch(method, [p for _, p in chunk], cfg.answer_tokens, eos, cache)
            out.write("".join(json.dumps(asdict(Sequence(src, p + a.output_ids, len(p)))) + "\n"
                              for (src, p), a in zip(chunk, answers)))
            out.flush()
            os.fsync(out.fileno())
    partial.replace(path)


def corpus_summary(cfg: CorpusConfig, seqs: list[Sequence]) -> dict:
    """What a checkpoint's sidecar says about its training data."""
    mix = cfg.sources()
    return {**asdict(cfg), "sources": {src: SOURCE_FILES[src] for src in mix}, "mix": mix,
            "splits": "training only (" + ", ".join(mix) + "; chat and code without their held-back tuning parts)",
            "held_back": {src: f"item i with i % {HOLD_EVERY} == {HOLD_EVERY - 1} (tuning set {HELD_BACK[src]})"
                          for src in mix if src in HELD_BACK},
            "answers": "target model, greedy", "sequences": len(seqs), "tokens": sum(len(s.ids) for s in seqs)}

"""Checks of decoding on any device, shared by `doctor` and `gpu-check`: a method against the
baseline's outputs (lossless, tau, tokens/s, device waits per step), transformers' generate()
against the baseline, device synchronisations per step counted by torch itself on CUDA, and a
diagnosis of a divergence (harness/bench/divergence.py: a greedy tie in a low-precision dtype
told apart from a bug).
"""

from __future__ import annotations

import time
import warnings

import torch

from harness.bench.divergence import first_divergence_diagnosed as divergence
from harness.core.decoding import Decoded, decode, synchronize
from harness.core.engine import KVCache
from harness.core.method import Method


def eos_ids(model, tokenizer=None) -> set[int]:
    """The model's end-of-sequence ids (generation config and tokenizer)."""
    ids = model.generation_config.eos_token_id
    out = set(ids if isinstance(ids, list) else [ids]) if ids is not None else set()
    if tokenizer is not None and tokenizer.eos_token_id is not None:
        out.add(tokenizer.eos_token_id)
    return out


def timed(fn, device) -> tuple[Decoded, float]:
    synchronize(device)
    t0 = time.perf_counter()
    out = fn()
    synchronize(device)
    return out, time.perf_counter() - t0


def evaluate_method(method: Method, prompts: list[list[int]], refs: list[list[int]], max_new: int,
                    eos: set[int], cache: KVCache) -> dict:
    """Decode every prompt after one short warm-up decode (kernels, graph capture): lossless
    against refs (first divergence diagnosed), tau, tokens/s, host reads per decoding step."""
    engine = method.engine
    decode(method, prompts[0], min(8, max_new), eos, cache)
    tokens = forwards = reads = 0
    seconds, first = 0.0, None
    for prompt, ref in zip(prompts, refs):
        out, took = timed(lambda: decode(method, prompt, max_new, eos, cache), engine.device)
        seconds += took
        tokens, forwards, reads = tokens + len(out.output_ids), forwards + out.forwards, reads + out.syncs - out.prefill_syncs
        if first is None:
            first = divergence(engine, prompt, ref, out.output_ids)
    steps = forwards - len(prompts)  # decoding steps: forwards after the prefill
    return {"lossless": first is None, "divergence": first, "tau": tokens / forwards,
            "tokens_per_s": tokens / seconds, "syncs_per_step": reads / max(1, steps)}


def compare_generate(peer, prompts: list[list[int]], refs: list[list[int]], max_new: int, eos: set[int]) -> dict:
    """transformers' generate() (the hf-generate peer) against the baseline's outputs, timed."""
    engine = peer.engine
    peer.generate(prompts[0], min(8, max_new), eos)
    tokens, seconds, first, equal = 0, 0.0, None, []
    for prompt, ref in zip(prompts, refs):
        out, took = timed(lambda: peer.generate(prompt, max_new, eos), engine.device)
        tokens, seconds = tokens + len(out.output_ids), seconds + took
        equal.append(out.output_ids == ref)
        if first is None:
            first = divergence(engine, prompt, ref, out.output_ids)
    return {"equal": equal, "divergence": first, "tokens_per_s": tokens / seconds}


def cuda_syncs_per_step(method: Method, prompt: list[int], max_new: int, eos: set[int], cache: KVCache) -> float | None:
    """Synchronising CUDA operations per decoding step as torch reports them in its sync debug
    mode (.item(), nonzero, blocking copies either way, each a warning); None off CUDA."""
    if torch.device(method.engine.device).type != "cuda":
        return None
    torch.cuda.set_sync_debug_mode("warn")
    try:
        return warnings_per_step(method, prompt, max_new, eos, cache)
    finally:
        torch.cuda.set_sync_debug_mode("default")


def warnings_per_step(method: Method, prompt: list[int], max_new: int, eos: set[int], cache: KVCache,
                      marker: str = "synchroniz") -> float:
    """Warnings containing `marker` per decoding step of one decode, counted from the first
    propose on, so that the prefill's (prompt upload, first token) are left out."""
    first: list[int] = []
    hook = "propose" if method.drafts else "step"  # the first call after the prefill
    original = getattr(method, hook)  # wrapped on this instance, for this decode only

    def marked(pending, c):
        if not first:
            first.append(sum(marker in str(w.message) for w in caught))
        return original(pending, c)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        setattr(method, hook, marked)
        try:
            out = decode(method, prompt, max_new, eos, cache)
        finally:
            delattr(method, hook)
    counted = sum(marker in str(w.message) for w in caught) - (first[0] if first else 0)
    return counted / max(1, out.steps)

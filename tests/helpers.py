"""Checks shared by the method tests."""

import random

import torch

from harness.decoding import decode
from methods.autoregressive import Autoregressive


def assert_cache_is_committed_sequence(engine, method, prompt, max_new=30):
    """After decoding, the cache holds exactly prompt + output (minus the pending last token),
    equal to a plain prefill of that sequence."""
    cache = engine.new_cache(256)
    out = decode(method, prompt, max_new, set(), cache)
    seq = prompt + out.output_ids[:-1]
    assert cache.length == len(seq)
    ref = engine.new_cache(256)
    engine.forward(torch.tensor(seq), torch.arange(len(seq)), None, ref)
    torch.testing.assert_close(cache.buf[..., : len(seq), :], ref.buf[..., : len(seq), :], atol=1e-4, rtol=1e-4)
    return out


def assert_lossless(engine, method, prompts=3, max_new=40, eos=96):
    """Greedy output equals the autoregressive baseline's; returns the mean tokens per forward."""
    ar = Autoregressive(engine, "tiny")
    cache = engine.new_cache(256)
    taus = []
    for seed in range(prompts):
        prompt = random.Random(seed).sample(range(3, 97), 7)
        ref = decode(ar, prompt, max_new, {eos}, cache).output_ids
        got = decode(method, prompt, max_new, {eos}, cache)
        assert got.output_ids == ref, f"prompt {seed}: diverges"
        assert sum(got.accept_lengths) == len(ref)
        taus.append(len(ref) / len(got.accept_lengths))
    return sum(taus) / len(taus)


def random_sequences(n=24, length=48, vocab=97):
    from harness.distill import Sequence

    return [Sequence("tiny", random.Random(i).choices(range(3, vocab), k=length), 4) for i in range(n)]

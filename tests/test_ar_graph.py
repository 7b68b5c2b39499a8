"""ar-graph: the autoregressive step with static shapes (the path a CUDA graph replays; eager
here) is lossless against ar, keeps the same cache, reads the device once per step, and is
rebuilt when the cache's buffer changes. Its CUDA-graph replay is tested in test_cuda.py."""


import pytest
from helpers import assert_cache_is_committed_sequence, assert_lossless

from harness.core.decoding import decode
from harness.core.engine import Engine
from methods.ar_graph import ARGraph


def test_lossless_against_ar(engine):
    assert assert_lossless(engine, ARGraph(engine, "tiny")) == 1.0


def test_cache_holds_the_committed_sequence(engine):
    assert_cache_is_committed_sequence(engine, ARGraph(engine, "tiny"), [5, 9, 14, 3, 7])


def test_static_step_follows_the_cache(engine):
    method = ARGraph(engine, "tiny")
    small, large = engine.new_cache(64), engine.new_cache(300)
    method.prepare(small)
    first = method._step
    a = decode(method, [5, 6, 7], 20, set(), small).output_ids
    assert decode(method, [5, 6, 7], 20, set(), small).output_ids == a and method._step is first
    assert decode(method, [5, 6, 7], 20, set(), large).output_ids == a and method._step is not first
    assert method._step.cache is large and engine.counters.forwards > 0


def test_attention_covers_the_slots_in_use(engine):
    """The static step attends to a bucket of slots around the cache's length, not its capacity."""
    method = ARGraph(engine, "tiny")
    cache = engine.new_cache(1024)
    method.prepare(cache)
    step = method._step
    assert step.window(0) == 128 and step.window(127) == 128 and step.window(128) == 256
    assert step.window(1023) == 1024


def test_eager_on_the_cpu(engine):
    method = ARGraph(engine, "tiny")
    decode(method, [5, 6, 7], 5, set(), engine.new_cache(32))
    assert not method._step.graphs and not method._step.use_graph


@pytest.mark.integration
def test_lossless_on_real_text(real, real_prompts, ar_reference):
    engine = Engine(real.model)
    graph, eos = ARGraph(engine, real.key), {real.tokenizer.eos_token_id}
    for name, prompt in real_prompts[::2]:  # the first sample of each dataset
        cache = engine.new_cache(len(prompt) + 72)  # the static step attends to every slot: no more than needed
        assert decode(graph, prompt, 64, eos, cache).output_ids == ar_reference(prompt, 64), name


def test_a_full_cache_is_refused_on_the_host(engine):
    with pytest.raises(RuntimeError, match="KV cache overflow"):
        decode(ARGraph(engine, "tiny"), [5, 6, 7], 20, set(), engine.new_cache(8))

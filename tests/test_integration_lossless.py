"""Integration on the embedded model with the committed weights: greedy output of every trained
method equals the autoregressive output, token for token, on real samples of all three datasets."""

import pytest

import methods as registry
from harness.bench.data import chat_prompt, load_samples
from harness.core.decoding import decode
from harness.core.engine import Engine
from methods.autoregressive import Autoregressive

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def prompts(real):
    """First turn of the first 2 samples, and a second turn of MT-bench, per dataset."""
    out = []
    for name in ("gsm8k", "xsum", "mt-bench"):
        for sample in load_samples(name, 2):
            out.append((f"{name}#{sample.sample_id}", chat_prompt(real.tokenizer, sample.turns[:1], [])))
    return out


@pytest.mark.parametrize("method, options", [
    ("firp", {}), ("firp", {"tree": "chain"}), ("medusa", {}), ("medusa", {"tree": "medusa63"}),
])
def test_trained_method_is_lossless_on_real_text(real, prompts, method, options):
    engine = Engine(real.model)
    cache = engine.new_cache(2048)
    eos = {real.tokenizer.eos_token_id}
    ar = Autoregressive(engine, real.key)
    drafter = registry.get(method)(engine, real.key, **options)
    accepted = 0
    for name, prompt in prompts:
        ref = decode(ar, prompt, 64, eos, cache).output_ids
        got = decode(drafter, prompt, 64, eos, cache)
        assert got.output_ids == ref, f"{method} {options} {name}: diverges at {next(i for i, (a, b) in enumerate(zip(got.output_ids, ref)) if a != b)}"
        accepted += len(ref) - len(got.accept_lengths)
    assert accepted > 0  # drafts were accepted: the tree paths were exercised, not only the bonus

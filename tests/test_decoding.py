"""The shared decode loop on the tiny model: baseline == transformers generate(), stop rules."""

import torch

from harness.core.decoding import decode
from methods.autoregressive import Autoregressive


def generate_ids(model, prompt, max_new, eos):
    ids = torch.tensor([prompt])
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new, do_sample=False,
                         eos_token_id=eos, pad_token_id=0)
    return out[0, len(prompt):].tolist()


def test_autoregressive_equals_generate(tiny, engine):
    ar = Autoregressive(engine, "tiny")
    cache = engine.new_cache(128)
    for seed in range(3):
        prompt = torch.randint(3, 97, (5 + seed,), generator=torch.Generator().manual_seed(seed)).tolist()
        out = decode(ar, prompt, 20, {96}, cache)
        assert out.output_ids == generate_ids(tiny, prompt, 20, 96)
        assert sum(out.accept_lengths) == len(out.output_ids) == len(out.accept_lengths)


def test_stops_exactly_at_eos_and_budget(tiny, engine):
    ar = Autoregressive(engine, "tiny")
    cache = engine.new_cache(128)
    prompt = [5, 6, 7, 8]
    free = decode(ar, prompt, 12, set(), cache).output_ids
    eos = free[4]
    stopped = decode(ar, prompt, 12, {eos}, cache)
    assert stopped.output_ids == free[: free.index(eos) + 1] and stopped.stop == "eos"
    short = decode(ar, prompt, 3, set(), cache)
    assert short.output_ids == free[:3] and short.stop == "length"


def test_peers_decode_plain_greedy_whatever_the_model_defaults(tiny, engine):
    """A repetition penalty, suppressed tokens and a minimum length in the model's
    generation_config would change generate()'s greedy output; the peer leaves them out."""
    from methods.peers import HFGenerate

    prompt, eos = [5, 9, 5, 9, 5], {2}
    ref = decode(Autoregressive(engine, "tiny"), prompt, 24, eos, engine.new_cache(64)).output_ids
    tiny.generation_config.repetition_penalty = 3.0
    tiny.generation_config.suppress_tokens = ref[:3]
    tiny.generation_config.min_new_tokens = 20
    peer = HFGenerate(engine, "tiny")
    assert peer.generate(prompt, 24, eos).output_ids == ref
    assert tiny.generation_config.repetition_penalty == 3.0  # restored after the call
    assert peer.describe()["model_generation_config_overridden"]["repetition_penalty"] == 3.0

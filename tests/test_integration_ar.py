"""Integration on the embedded model: the harness baseline equals transformers generate()."""

import pytest
import torch

from harness.bench.data import chat_prompt, load_samples
from harness.core.decoding import decode
from harness.core.engine import Engine
from methods.autoregressive import Autoregressive

pytestmark = pytest.mark.integration


def real_prompts(tokenizer, per_dataset=2):
    for name in ("gsm8k", "xsum", "mt-bench"):
        for sample in load_samples(name, per_dataset):
            yield name, chat_prompt(tokenizer, sample.turns[:1], [])


def ar_references(real, max_new=48):
    """(name, prompt, the baseline's output) for the first 2 samples of each dataset."""
    engine = Engine(real.model)
    ar, cache, eos = Autoregressive(engine, real.key), engine.new_cache(2048), {real.tokenizer.eos_token_id}
    return [(name, prompt, decode(ar, prompt, max_new, eos, cache).output_ids)
            for name, prompt in real_prompts(real.tokenizer)]


def test_autoregressive_equals_generate_on_real_text(real):
    engine = Engine(real.model)
    ar = Autoregressive(engine, real.key)
    cache = engine.new_cache(2048)
    eos = real.tokenizer.eos_token_id
    for name, prompt in real_prompts(real.tokenizer):
        ours = decode(ar, prompt, 48, {eos}, cache).output_ids
        ids = torch.tensor([prompt])
        ref = real.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=48, do_sample=False,
                                  eos_token_id=eos, pad_token_id=eos)[0, len(prompt):].tolist()
        assert ours == ref, f"{name}: diverges at {next(i for i, (a, b) in enumerate(zip(ours, ref)) if a != b)}"

"""Shared fixtures: a tiny random Llama built in code, and the real embedded model."""

from __future__ import annotations

import shutil

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from harness.core.engine import Engine


def tiny_config(vocab: int = 97, layers: int = 4) -> LlamaConfig:
    return LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                       rope_theta=10000.0, tie_word_embeddings=True, bos_token_id=1, eos_token_id=2,
                       pad_token_id=0, attn_implementation="sdpa")


def tiny_model(seed: int = 0, **kw) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    model = LlamaForCausalLM(tiny_config(**kw)).eval()
    with torch.no_grad():  # sharper logits than the default init, so greedy ties are rare
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(4.0)
    model.requires_grad_(False)
    return model


@pytest.fixture
def tiny():
    return tiny_model()


@pytest.fixture
def engine(tiny):
    return Engine(tiny)


@pytest.fixture(scope="session")
def embedded_dir():
    from harness.core.modelload import embedded_dir as conv

    return conv()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, embedded_dir):
    """A tiny random Llama saved as an HF directory, with the embedded model's tokenizer."""
    path = tmp_path_factory.mktemp("tiny-llama")
    model = tiny_model(vocab=49152, layers=3)
    model.save_pretrained(path)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json"):
        if (embedded_dir / name).exists():
            shutil.copy(embedded_dir / name, path / name)
    return path


@pytest.fixture(scope="session")
def real():
    """The embedded SmolLM2-135M-Instruct, fp32 on CPU."""
    from harness.core.modelload import load_model

    return load_model("smollm2", device="cpu", dtype="float32")


@pytest.fixture(scope="session")
def real_prompts(real):
    """(label, prompt ids): the first turn of the first 2 samples of gsm8k, xsum and mt-bench."""
    from harness.bench.data import chat_prompt, load_samples

    return [(f"{name}#{sample.sample_id}", chat_prompt(real.tokenizer, sample.turns[:1], []))
            for name in ("gsm8k", "xsum", "mt-bench") for sample in load_samples(name, 2)]


@pytest.fixture(scope="session")
def ar_reference(real):
    """The baseline's greedy output for (prompt, budget), decoded once for the whole session: most
    integration tests compare a method against it, and decoding it again per test cost minutes."""
    from harness.core.decoding import decode
    from methods.autoregressive import Autoregressive

    engine = Engine(real.model)
    ar, cache, eos = Autoregressive(engine, real.key), engine.new_cache(2048), {real.tokenizer.eos_token_id}
    memo: dict[tuple, list[int]] = {}

    def reference(prompt: list[int], max_new: int) -> list[int]:
        key = (tuple(prompt), max_new)
        if key not in memo:
            memo[key] = decode(ar, prompt, max_new, eos, cache).output_ids
        return memo[key]

    return reference


@pytest.fixture(scope="session")
def references(real_prompts, ar_reference):
    """(label, prompt, the baseline's 48 new tokens) for each of `real_prompts`."""
    return [(name, prompt, ar_reference(prompt, 48)) for name, prompt in real_prompts]

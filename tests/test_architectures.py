"""Supported architectures, verified on tiny random configs: the engine's forwards equal the
model's own and greedy decoding equals generate(); everything else is refused with its reason
before decoding (and, by load_model and doctor, before any weight is read)."""

import random

import pytest
import torch
from click.testing import CliRunner
from conftest import tiny_config
from test_medusa import make_medusa
from transformers import (
    AutoModelForCausalLM,
    Gemma2Config,
    MistralConfig,
    Qwen2Config,
    Qwen3Config,
)

from harness.cli import main
from harness.core.architectures import SUPPORTED
from harness.core.decoding import decode
from harness.core.engine import Engine
from harness.core.modelload import ModelLoadError, load_model
from methods.autoregressive import Autoregressive
from methods.peers import HFGenerate

SMALL = dict(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=512, bos_token_id=1, eos_token_id=2, pad_token_id=0)


def build(config):
    torch.manual_seed(0)
    config._attn_implementation = "sdpa"
    model = AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():  # sharper logits, so greedy ties are rare
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(4.0)
    return model.requires_grad_(False)


VERIFIED = {
    "llama": lambda: tiny_config(layers=3),
    "mistral": lambda: MistralConfig(**SMALL, sliding_window=None),
    "mistral-window-past-context": lambda: MistralConfig(**SMALL, sliding_window=4096),
    "qwen2": lambda: Qwen2Config(**SMALL),
    "qwen3": lambda: Qwen3Config(**SMALL, head_dim=8),
}


def test_every_supported_type_is_verified_here():
    assert {name.split("-")[0] for name in VERIFIED} == set(SUPPORTED)


@pytest.mark.parametrize("name", sorted(VERIFIED))
def test_engine_forward_equals_the_model_and_decoding_equals_generate(name, tmp_path):
    model = build(VERIFIED[name]())
    ids = random.Random(0).sample(range(3, 97), 12)
    full = model(torch.tensor([ids])).logits[0]  # before the engine switches attention
    engine = Engine(model)
    hidden = engine.forward(torch.tensor(ids), torch.arange(12), None, None)[0]
    torch.testing.assert_close(engine.logits(hidden), full, atol=1e-4, rtol=1e-4)
    ar, cache = Autoregressive(engine, "tiny"), engine.new_cache(128)
    ref = decode(ar, ids, 30, {96}, cache).output_ids
    assert HFGenerate(engine, "tiny").generate(ids, 30, {96}).output_ids == ref
    assert decode(make_medusa(engine, tmp_path, perturb=0.3), ids, 30, {96}, cache).output_ids == ref  # tree masks


REFUSED = {
    "gemma2": (lambda: Gemma2Config(**{**SMALL, "max_position_embeddings": 8192}, head_dim=8),
               ["unsupported architecture gemma2", "model type 'gemma2'", "pre_feedforward_layernorm",
                "sliding-window attention (4096", "soft-capped logits"]),
    "mistral-v0.1": (lambda: MistralConfig(**{**SMALL, "max_position_embeddings": 32768}, sliding_window=4096),
                     ["sliding-window attention (4096 positions < context 32768)"]),
    "qwen2-window": (lambda: Qwen2Config(**SMALL, use_sliding_window=True, sliding_window=128, max_window_layers=0),
                     ["sliding-window attention (128"]),
}


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_unsupported_architectures_are_refused_with_the_reason(name):
    make, reasons = REFUSED[name]
    config = make()
    with pytest.raises(ModelLoadError) as err:
        Engine(AutoModelForCausalLM.from_config(config))
    for reason in reasons:
        assert reason in str(err.value), str(err.value)


def test_load_model_and_doctor_refuse_before_reading_weights(tmp_path):
    REFUSED["gemma2"][0]().save_pretrained(tmp_path)  # a config alone: no weights, no tokenizer
    with pytest.raises(ModelLoadError, match="unsupported architecture gemma2"):
        load_model(str(tmp_path), device="cpu")
    res = CliRunner().invoke(main, ["doctor", "--model", str(tmp_path), "--device", "cpu"])
    assert res.exit_code == 2 and "unsupported architecture gemma2" in res.output and "soft-capped" in res.output


def test_doctor_prints_its_figures(tiny_model_dir):
    res = CliRunner().invoke(main, ["doctor", "--model", str(tiny_model_dir), "--device", "cpu", "--max-new-tokens", "12"])
    assert res.exit_code == 0, res.output
    for line in ("dtype float32", "ar == generate() on 2 prompts: yes", "c(1) ", "c(8)/c(1) ", "weights "):
        assert line in res.output, res.output

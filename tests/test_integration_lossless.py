"""Integration on the embedded model with the committed weights: greedy output of every trained
method equals the autoregressive output, token for token, on real samples of all three datasets
(eagle and eagle3: with an untrained head built here, and with the committed checkpoint once trained)."""

import pytest
import torch
from helpers import assert_reproduces

import methods as registry
from harness.core.checkpoint import save_checkpoint
from harness.core.engine import Engine
from methods.eagle import Eagle, EagleHead, target_shapes

pytestmark = pytest.mark.integration


def like_ar(real, reference, prompts, drafter, label: str = "") -> int:
    """Every prompt decoded by `drafter` (64 new tokens) equals the autoregressive output; returns
    the draft tokens accepted over all prompts."""
    refs = [(name, prompt, reference(prompt, 64)) for name, prompt in prompts]
    return assert_reproduces(drafter, refs, 64, {real.tokenizer.eos_token_id}, label)


@pytest.mark.parametrize("method, options", [
    ("firp", {}), ("firp", {"tree": "chain"}), ("medusa", {}), ("medusa", {"tree": "medusa63"}),
    ("eagle", {}), ("eagle", {"depth": 6, "top_k": 8, "total_tokens": 48}), ("eagle3", {}),
])
def test_trained_method_is_lossless_on_real_text(real, real_prompts, ar_reference, method, options):
    cls = registry.get(method)
    if method.startswith("eagle") and not cls.default_weights(real.key).exists():
        pytest.skip(f"no trained {method} checkpoint for the embedded model yet (spec-harness train {method})")
    drafter = cls(Engine(real.model), real.key, **options)
    # drafts were accepted: the tree paths were exercised, not only the bonus
    assert like_ar(real, ar_reference, real_prompts, drafter, f"{method} {options}") > 0


def test_eagle_with_an_untrained_head_is_lossless_on_real_text(real, real_prompts, ar_reference, tmp_path):
    engine = Engine(real.model)
    torch.manual_seed(0)
    head = EagleHead(engine, target_shapes(engine))
    save_checkpoint(tmp_path / "eagle.safetensors", head, {"method": "eagle", "config": head.config()})
    eagle = Eagle(engine, real.key, checkpoint=str(tmp_path / "eagle.safetensors"))
    like_ar(real, ar_reference, real_prompts, eagle, "eagle (untrained)")


def test_eagle3_with_an_untrained_head_is_lossless_on_real_text(real, real_prompts, ar_reference, tmp_path):
    """The fused three-layer input and a reduced draft vocabulary (mapped back through d2t) on real
    gsm8k / xsum / MT-bench prompts: ar's tokens exactly (a trained head: once one is shipped)."""
    from methods.eagle3 import Eagle3, Eagle3Head, head_config
    from methods.eagle3_train import with_vocabulary

    engine = Engine(real.model)
    torch.manual_seed(0)
    head = with_vocabulary(Eagle3Head(engine, head_config(engine, draft_vocab=4096)), engine, torch.arange(4096) * 12)
    save_checkpoint(tmp_path / "eagle3.safetensors", head, {"method": "eagle3", "config": head.config()})
    eagle3 = Eagle3(engine, real.key, checkpoint=str(tmp_path / "eagle3.safetensors"), depth=3, top_k=4, total_tokens=8)
    assert eagle3.head.shapes["layers"] == [2, 15, 27]
    like_ar(real, ar_reference, real_prompts, eagle3, "eagle3 (untrained)")

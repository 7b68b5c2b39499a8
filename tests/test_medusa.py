"""Medusa: zero-initialised heads reproduce the base distribution; cache; losslessness; training."""

import random

import pytest
import torch
from helpers import (
    assert_cache_is_committed_sequence,
    assert_lossless,
    random_sequences,
)

from harness.core.checkpoint import save_checkpoint
from harness.train.training import TrainConfig, make_batch, train
from methods.medusa import Medusa, MedusaHeads


def make_medusa(engine, tmp_path, heads=3, tree="small", perturb=0.0, separate=False):
    module = MedusaHeads(engine.hidden_size, heads, engine.lm_head, separate)
    if perturb:
        torch.manual_seed(1)
        for block in module.blocks:
            block.weight.data.normal_(0, perturb)
    path = tmp_path / "medusa.safetensors"
    save_checkpoint(path, module, {"config": module.config()})
    return Medusa(engine, "tiny", checkpoint=str(path), tree=tree)


@pytest.mark.parametrize("separate", [False, True])
@torch.no_grad()
def test_zero_head_predicts_the_base_distribution_at_its_position(engine, separate):
    heads = MedusaHeads(engine.hidden_size, 3, engine.lm_head, separate)
    h = engine.forward(torch.tensor([5, 6, 7, 8]), torch.arange(4), None, None)[0]  # [4, d]
    base = engine.logits(h)
    for k in range(3):
        torch.testing.assert_close(heads(engine.norm(h))[k], base)


def test_cache_holds_the_accepted_path(engine, tmp_path):
    assert_cache_is_committed_sequence(engine, make_medusa(engine, tmp_path, perturb=0.3), [3, 1, 4, 1, 5, 9])


def test_lossless_on_tiny_model(engine, tmp_path):
    assert_lossless(engine, make_medusa(engine, tmp_path, perturb=0.3))
    tau = assert_lossless(engine, make_medusa(engine, tmp_path, tree="medusa63", heads=4))
    assert tau > 1.0


def test_training_reduces_kl(engine):
    torch.manual_seed(0)
    module = MedusaHeads(engine.hidden_size, 3, engine.lm_head)
    seqs = random_sequences()
    cfg = TrainConfig(steps=30, batch=4, positions=16, max_len=64, lr=1e-2, warmup=5, eval_sequences=4)
    fixed = make_batch(seqs[4:8], cfg, random.Random(0))
    with torch.no_grad():
        before = float(module.loss(engine, fixed)[0])
    train(module, engine, seqs, cfg, progress=False)
    with torch.no_grad():
        after = float(module.loss(engine, fixed)[0])
    assert after < 0.85 * before, (before, after)

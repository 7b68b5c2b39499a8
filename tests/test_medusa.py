"""Medusa: zero-initialised heads reproduce the base distribution; cache; losslessness; training."""

import pytest
import torch
from helpers import (
    assert_cache_is_committed_sequence,
    assert_lossless,
    assert_training_reduces_loss,
)

from harness.core.checkpoint import save_checkpoint
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
    assert_training_reduces_loss(MedusaHeads(engine.hidden_size, 3, engine.lm_head), engine, lr=1e-2)

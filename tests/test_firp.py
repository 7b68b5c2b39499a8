"""FIRP: pseudo-token mask, identity-projection semantics, cache contents, training, losslessness."""


import pytest
import torch
from helpers import (
    assert_cache_is_committed_sequence,
    assert_lossless,
    assert_training_reduces_loss,
)

from harness.core.checkpoint import save_checkpoint
from harness.core.method import Step
from methods.firp import FIRP, PseudoChains


def make_firp(engine, tmp_path, layers=(1, 2, 2), serial=True, tree="small", chains=None):
    chains = chains or PseudoChains(engine.hidden_size, layers, serial)
    path = tmp_path / "firp.safetensors"
    save_checkpoint(path, chains, {"config": chains.config()})
    return FIRP(engine, "tiny", checkpoint=str(path), tree=tree)


def test_pseudo_mask_sees_ancestors_node_and_earlier_chain(engine, tmp_path):
    firp = make_firp(engine, tmp_path, tree="0;1;0.0;0.0.0")
    tree = firp.shape.build(torch.tensor([5]), torch.tensor([[[10, 11], [12, 13], [14, 15]]]))
    mask, offsets = firp._layout(tree)
    mask, offsets, tree_mask, depths = mask[0], offsets[0], tree.mask[0], tree.depths[0]  # the one sequence's
    n, K = tree.size, firp.steps
    assert mask.shape == (n * (K + 1), n * (K + 1))
    for i in range(1, K + 1):
        for node in range(n):
            row = mask[i * n + node]
            real_seen = set(row[:n].nonzero().squeeze(1).tolist())
            assert real_seen == set(tree_mask[node].nonzero().squeeze(1).tolist())  # ancestors + node
            pseudo_seen = {(int(c) // n, int(c) % n) for c in row[n:].nonzero().squeeze(1) + n}
            assert pseudo_seen == {(j, node) for j in range(1, i + 1)}  # own chain, steps 1..i
            assert offsets[i * n + node] == depths[node] + i
    assert not mask[:n, n:].any()  # real rows never see pseudo rows


def test_parallel_mask_drops_earlier_steps(engine, tmp_path):
    firp = make_firp(engine, tmp_path, serial=False, tree="chain")
    tree = firp.shape.build(torch.tensor([5]), torch.tensor([[[1], [2], [3]]]))
    mask, _ = firp._layout(tree)
    mask, n = mask[0], tree.size
    for i in range(1, 4):
        seen = mask[i * n:(i + 1) * n, n:].nonzero()[:, 1] // n + 1
        assert set(seen.tolist()) == {i}


@torch.no_grad()
def test_identity_after_last_layer_drafts_the_nodes_own_prediction(engine, tmp_path):
    L = engine.num_layers
    firp = make_firp(engine, tmp_path, layers=(L, L, L), tree="chain")
    cache = engine.new_cache(128)
    prompt = [5, 9, 17, 33, 2, 8]
    firp.begin([prompt])
    hidden = firp.prefill(torch.tensor([prompt]), cache)
    cache.truncate(len(prompt))
    last = torch.tensor([len(prompt) - 1])
    firp.observe(hidden, None, Step([[len(prompt) - 1]], [[0]], last, last))
    own = engine.logits(hidden[0, -1]).argmax()
    assert firp._candidates[0, :, 0].tolist() == [int(own)] * 3


def test_cache_holds_exactly_the_accepted_positions(engine, tmp_path):
    assert_cache_is_committed_sequence(engine, make_firp(engine, tmp_path, layers=(2, 3, 3)), [4, 8, 15, 16, 23, 42])


def test_lossless_on_tiny_model_with_identity_and_at_last_layer(engine, tmp_path):
    L = engine.num_layers
    assert_lossless(engine, make_firp(engine, tmp_path, layers=(1, 1, 2)))
    tau = assert_lossless(engine, make_firp(engine, tmp_path, layers=(L, L, L)))
    assert tau > 1.0  # copies of the node's state draft repeated tokens, which this model produces


def test_training_reduces_kl(engine):
    torch.manual_seed(0)
    record = assert_training_reduces_loss(PseudoChains(engine.hidden_size, (1, 2, 2)), engine, lr=1e-2)
    assert len(record["heldout_top1"]) == 3 and record["final_loss"] > 0
    assert all(row == sorted(row) and len(row) == 5 for row in record["heldout_topk"])  # top-1 <= ... <= top-5


def test_bad_tree_and_missing_weights_are_clear(engine, tmp_path):
    from harness.core.method import MethodError

    with pytest.raises(MethodError, match="no trained weights"):
        FIRP(engine, "tiny", checkpoint=str(tmp_path / "none.safetensors"))
    with pytest.raises(MethodError, match="deep"):
        make_firp(engine, tmp_path, tree="chain-5")

"""EAGLE-2: dynamic tree construction, head cache rollback, losslessness, training."""

import random

import pytest
import torch
from conftest import tiny_model
from helpers import (
    assert_cache_is_committed_sequence,
    assert_lossless,
    assert_training_reduces_loss,
)

from harness.core.checkpoint import save_checkpoint
from harness.core.decoding import decode
from harness.core.engine import Engine
from harness.core.method import MethodError
from harness.core.tree import Tree
from harness.train.distill import Sequence
from harness.train.training import TrainConfig, train
from methods.autoregressive import Autoregressive
from methods.eagle import Eagle, EagleHead, target_shapes
from methods.eagle_tree import DraftTree, tree_from_parents


def make_eagle(engine, tmp_path, head=None, seed=0, **options):
    torch.manual_seed(seed)
    head = head or EagleHead(engine, target_shapes(engine))
    path = tmp_path / "eagle.safetensors"
    save_checkpoint(path, head, {"method": "eagle", "config": head.config()})
    return Eagle(engine, "tiny", checkpoint=str(path), **options)


def logp(rows):
    return torch.log_softmax(torch.tensor(rows, dtype=torch.float), dim=-1)


def test_expansion_takes_top_k_children_of_the_most_confident_frontier():
    draft = DraftTree(torch.tensor([7]), logp([0.0, 3.0, 2.0, -5.0, 1.0])[None], top_k=2)
    assert draft.frontier_tokens.tolist() == [[1, 2]]  # the root's top-2 children
    first = draft.frontier_scores[0].clone()
    after = logp([[4.0, 0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 9.0, 8.0]])  # row 0 under token 1, row 1 under 2
    rows = draft.grow(after[None])[0]
    children = (first[:, None] + after.topk(2, dim=-1).values).view(-1)  # [4] cumulative, row-major
    best = children.topk(2).indices
    assert rows.tolist() == (best // 2).tolist()
    assert torch.equal(draft.frontier_scores[0], children[best])
    assert draft.frontier_tokens[0].tolist() == [after.topk(2, -1).indices.view(-1)[i] for i in best.tolist()]
    assert draft.count == 1 + 2 + 4 and draft.levels == 2
    assert draft.parents.tolist() == [[-1, 0, 0, 1, 1, 2, 2]]  # every child of both frontier nodes is kept


def grown(roots, gen, k, vocab, levels, certain=False):
    """A DraftTree over len(roots) sequences grown from random draft scores."""
    B = len(roots)
    draft = DraftTree(torch.tensor(roots), torch.log_softmax(torch.randn(B, vocab, generator=gen) * 3, -1), k)
    steps = []
    for _ in range(levels):
        scores = torch.randn(B, k, vocab, generator=gen) * 3
        if certain:  # certain children (probability 1): a child ties with its parent
            scores[:, :, 0] = 60.0
        steps.append(torch.log_softmax(scores, -1))
        draft.grow(steps[-1])
    return draft


@pytest.mark.parametrize("seed", range(6))
def test_rerank_keeps_the_best_total_with_their_parents(seed):
    k, total = 3, 10
    draft = grown([5], torch.Generator().manual_seed(seed), k, 11, 3, certain=bool(seed % 2))
    keep = draft.select(total)[0]
    assert keep.numel() == total + 1 and keep[0] == 0 and bool((keep[1:] > keep[:-1]).all())
    kept = set(keep.tolist())
    parents, scores = draft.parents[0], draft.scores[0]
    assert all(p in kept for p in parents[keep[1:]].tolist())  # every kept node's parent kept
    dropped = sorted(set(range(1, draft.count)) - kept)
    assert scores[keep[1:]].min() >= scores[dropped].max()  # the best `total` by score
    tree = draft.tree(total)
    assert tree.size == total + 1 and tree.tokens[0, 0] == 5
    host = Tree.from_parents(tree.tokens[0], tree.parents[0].tolist())
    assert torch.equal(tree.mask, host.mask) and torch.equal(tree.depths, host.depths)


def test_a_batch_of_draft_trees_is_each_sequence_s_own():
    """Three sequences grown together give the trees each grows alone from the same scores."""
    together = grown([5, 6, 7], torch.Generator().manual_seed(3), 3, 11, 3).tree(8)
    gen = torch.Generator().manual_seed(3)
    first = torch.randn(3, 11, generator=gen) * 3
    levels = [torch.randn(3, 3, 11, generator=gen) * 3 for _ in range(3)]
    for b, root in enumerate([5, 6, 7]):
        alone = DraftTree(torch.tensor([root]), torch.log_softmax(first[b:b + 1], -1), 3)
        for scores in levels:
            alone.grow(torch.log_softmax(scores[b:b + 1], -1))
        tree = alone.tree(8)
        for got, want in zip((together.tokens, together.parents, together.depths, together.mask),
                             (tree.tokens, tree.parents, tree.depths, tree.mask)):
            assert torch.equal(got[b:b + 1], want)


def test_tree_from_parents_on_the_device_matches_the_host_builder():
    rng = random.Random(0)
    for _ in range(20):
        n = rng.randint(1, 12)
        parents = [-1] + [rng.randrange(i) for i in range(1, n)]
        host = Tree.from_parents(torch.arange(n), parents)
        dev = tree_from_parents(torch.arange(n), torch.tensor(parents), depth=n)
        assert torch.equal(dev.mask, host.mask) and torch.equal(dev.depths, host.depths)


def test_options_are_checked(engine, tmp_path):
    with pytest.raises(MethodError, match="total_tokens"):
        make_eagle(engine, tmp_path, depth=2, top_k=2, total_tokens=7)  # 2 + 4 drafted
    make_eagle(engine, tmp_path, depth=2, top_k=2, total_tokens=6)


def test_lossless_with_an_untrained_head(engine, tmp_path):
    assert_lossless(engine, make_eagle(engine, tmp_path))
    assert_lossless(engine, make_eagle(engine, tmp_path, depth=1, top_k=1, total_tokens=1))
    assert_cache_is_committed_sequence(engine, make_eagle(engine, tmp_path, depth=3, top_k=3, total_tokens=9),
                                       [3, 1, 4, 1, 5, 9])


def test_head_forwards_are_booked_and_the_tree_has_total_tokens(engine, tmp_path):
    eagle = make_eagle(engine, tmp_path, depth=3, top_k=2, total_tokens=5)
    out = decode(eagle, [5, 6, 7, 8], 20, set(), engine.new_cache(256))
    steps = out.steps
    assert out.draft_forwards == 3 * steps
    assert out.draft_sizes[1:] == [5] * steps


@pytest.fixture(scope="module")
def trained():
    """(engine, a head trained briefly on the tiny model) shared by the tests that need drafts accepted."""
    engine = Engine(tiny_model())
    return engine, trained_head(engine)


def test_lossless_with_a_trained_head_whose_trees_are_accepted(trained, tmp_path):
    engine, head = trained
    tau = assert_lossless(engine, make_eagle(engine, tmp_path, head=head))
    assert tau > 1.5  # multi-token paths through dynamic trees were accepted
    assert assert_lossless(engine, make_eagle(engine, tmp_path, head=head, depth=5, top_k=2, total_tokens=12)) > 1.5


def test_head_cache_rolled_back_equals_a_fresh_cache_on_the_accepted_prefix(trained, tmp_path):
    """After decoding, the head's committed K/V equal one causal head pass over the committed
    sequence's features: drafted rows never stay, accepted rows hold real features."""
    engine, head = trained
    eagle = make_eagle(engine, tmp_path, head=head, depth=3, top_k=3, total_tokens=8)
    prompt = [3, 1, 4, 1, 5, 9]
    out = decode(eagle, prompt, 30, set(), engine.new_cache(256))
    seq = torch.tensor(prompt + out.output_ids)
    C = eagle._cache.length
    assert C >= len(prompt) and sum(out.accepted) > 0  # drafts were accepted
    with torch.no_grad():
        feats = engine.norm(engine.forward(seq, torch.arange(len(seq)), None, None)[0])  # [S, d]
        fresh = eagle.head.new_cache(256, engine.device, engine.dtype)
        eagle.head(feats[None, :C], seq[None, 1:C + 1], engine.context(torch.arange(C), None, fresh))
    torch.testing.assert_close(eagle._cache.buf[..., :C, :], fresh.buf[..., :C, :], atol=1e-4, rtol=1e-4)


def trained_head(engine, steps=40, seed=0):
    """A head trained briefly on the tiny model's own continuations of random prompts."""
    ar, cache, seqs = Autoregressive(engine, "tiny"), engine.new_cache(128), []
    for i in range(24):
        prompt = random.Random(100 + i).sample(range(3, 97), 6)
        seqs.append(Sequence("tiny", prompt + decode(ar, prompt, 40, set(), cache).output_ids, len(prompt)))
    torch.manual_seed(seed)
    head = EagleHead(engine, target_shapes(engine))
    cfg = TrainConfig(steps=steps, batch=4, positions=16, max_len=64, lr=3e-3, warmup=5, eval_sequences=4)
    train(head, engine, seqs, cfg, progress=False)
    return head


def test_training_reduces_the_loss(engine):
    torch.manual_seed(0)
    head = EagleHead(engine, target_shapes(engine))
    record = assert_training_reduces_loss(head, engine, lr=3e-3)
    assert len(record["heldout_top1"]) == 1
    assert set(head.state_dict()) >= {"fc.weight", "fc.bias", "layers.0.self_attn.q_proj.weight"}
    assert not any(k.startswith(("embed", "lm_head")) or "input_layernorm" in k for k in head.state_dict())


def test_cached_teacher_rows_give_the_same_loss_and_run_the_teacher_once_per_sequence(engine, monkeypatch):
    from helpers import random_sequences

    from harness.train.training import FinalCache, make_batch

    torch.manual_seed(0)
    head, seqs = EagleHead(engine, target_shapes(engine)), random_sequences(8)
    cfg = TrainConfig(batch=4, positions=16, max_len=64)
    cache, calls, capture = FinalCache(engine), [], engine.capture_pass
    monkeypatch.setattr(engine, "capture_pass", lambda ids, *a: calls.append(ids.shape[0]) or capture(ids, *a))
    with torch.no_grad():
        for _ in range(2):  # the second round finds every sequence cached
            for part in (seqs[:4], seqs[2:6]):
                direct = float(head.loss(engine, make_batch(part, cfg, random.Random(1)))[0])
                cached = float(head.loss(engine, cache.fill(make_batch(part, cfg, random.Random(1)), part))[0])
                assert cached == pytest.approx(direct, rel=1e-5)
    uncached_rows = 4 * 4  # the plain batches: 4 batches of 4 sequences
    assert sum(calls) == uncached_rows + 6  # the cache ran the teacher on the 6 distinct sequences, once each

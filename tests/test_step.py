"""The batched step's pieces on the tiny random Llama: a KV cache holding sequences of different
lengths in one buffer (each row sees only its own sequence; one sequence's rollback leaves the
others intact; an accepted tree path kept per sequence), and the greedy rule on a hand-made
batch of trees of different sizes (padding is never accepted)."""

import torch

from harness.core.accept import Greedy
from harness.core.tree import Tree


def plain_last_logits(tiny, seq):
    """The last row's logits of a plain transformers forward over one sequence."""
    return tiny(torch.tensor([seq])).logits[0, -1]


def two_sequences(engine, a, b):
    """A cache of batch 2 holding a and b (different lengths), prefilled in one padded forward."""
    cache = engine.new_cache(64, batch=2)
    T = max(len(a), len(b))
    ids = torch.tensor([a + [0] * (T - len(a)), b + [0] * (T - len(b))])
    engine.forward(ids, torch.arange(T).expand(2, T), None, cache)
    cache.set_length(0, len(a))
    cache.set_length(1, len(b))
    return cache


@torch.no_grad()
def test_each_sequence_sees_only_its_own_slots(tiny, engine):
    a, b = [5, 6, 7, 8, 9, 10, 11], [20, 21, 22, 23]
    cache = two_sequences(engine, a, b)
    nxt = torch.tensor([[30], [40]])
    h = engine.forward(nxt, cache.lengths[:, None], None, cache)  # [2, 1, d]
    logits = engine.logits(h[:, 0])
    torch.testing.assert_close(logits[0], plain_last_logits(tiny, a + [30]), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(logits[1], plain_last_logits(tiny, b + [40]), atol=1e-4, rtol=1e-4)
    cache.advance(1)
    assert cache.seen == [8, 5] and cache.lengths.tolist() == [8, 5]


@torch.no_grad()
def test_rolling_one_sequence_back_leaves_the_other_intact(tiny, engine):
    a, b = [5, 6, 7, 8, 9, 10, 11], [20, 21, 22, 23]
    cache = two_sequences(engine, a, b)
    before = cache.buf[:, :, 1, :, :len(b)].clone()
    cache.set_length(0, 3)  # sequence 0 rolls back to a[:3]
    h = engine.forward(torch.tensor([[50, 51], [60, 61]]), cache.lengths[:, None] + torch.arange(2), None, cache)
    logits = engine.logits(h[:, -1])
    torch.testing.assert_close(logits[0], plain_last_logits(tiny, a[:3] + [50, 51]), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(logits[1], plain_last_logits(tiny, b + [60, 61]), atol=1e-4, rtol=1e-4)
    assert torch.equal(cache.buf[:, :, 1, :, :len(b)], before)  # sequence 1's committed slots untouched


@torch.no_grad()
def test_keep_commits_each_sequences_own_path(tiny, engine):
    a, b = [5, 6, 7, 8, 9], [20, 21, 22]
    cache = two_sequences(engine, a, b)
    one = Tree.from_parents(torch.tensor([30, 31, 32, 33]), [-1, 0, 0, 2])  # path 0 -> 2 -> 3 needs a gather
    two = Tree.from_parents(torch.tensor([40, 41]), [-1, 0])  # a chain: already in place
    trees = Tree.stack([one, two])
    positions = cache.lengths[:, None] + trees.depths
    engine.forward(trees.tokens, positions, trees.mask, cache)
    on_path = torch.tensor([[True, False, True, True], [True, True, False, False]])
    cache.keep([[0, 2, 3], [0, 1]], on_path)
    assert cache.seen == [8, 5]
    for row, seq in ((0, a + [30, 32, 33]), (1, b + [40, 41])):
        ref = engine.new_cache(64)
        engine.forward(torch.tensor(seq), torch.arange(len(seq)), None, ref)
        torch.testing.assert_close(cache.buf[:, :, row, :, :len(seq)], ref.buf[:, :, 0, :, :len(seq)],
                                   atol=1e-5, rtol=1e-5)


def one_hot(rows, vocab=50):
    return torch.nn.functional.one_hot(torch.tensor(rows), vocab).float()


def test_greedy_rule_on_a_batch_of_trees():
    #  sequence 0:   0(9) -> 1(5) -> 3(7);  0 -> 2(6) -> 4(8)      sequence 1: a chain 0(3) -> 1(4) -> 2(5)
    first = Tree.from_parents(torch.tensor([9, 5, 6, 7, 8]), [-1, 0, 0, 1, 2])
    second = Tree.chain(torch.tensor([3, 4, 5]))
    batch = Tree.stack([first, second])
    assert batch.tokens.shape == (2, 5) and batch.valid[1].tolist() == [True, True, True, False, False]
    logits = torch.stack([one_hot([6, 0, 8, 0, 11]),  # root -> 6 (node 2) -> 8 (node 4) -> next 11
                          one_hot([4, 9, 0, 0, 0])])  # root -> 4 (node 1), node 2 (5) rejected: next 9
    acc = Greedy().accept(batch, logits, batch.depths)
    assert acc.on_path.tolist() == [[True, False, True, False, True], [True, True, False, False, False]]
    assert acc.best.tolist() == [4, 1] and acc.next.tolist() == [11, 9]


def test_an_invalid_node_is_never_accepted():
    chain = Tree.chain(torch.tensor([3, 4, 5]))
    logits = one_hot([4, 5, 6])[None]  # the target agrees with every draft token
    assert Greedy().accept(chain, logits, chain.depths).best.tolist() == [2]
    padded = Tree(chain.tokens, chain.parents, chain.depths, chain.mask, valid=torch.tensor([[True, True, False]]))
    acc = Greedy().accept(padded, logits, padded.depths)
    assert acc.best.tolist() == [1] and acc.next.tolist() == [5] and acc.on_path.tolist() == [[True, True, False]]

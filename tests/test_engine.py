"""Engine: tree-masked forwards and cache gathers agree with plain full-sequence forwards."""

import torch

from harness.core.accept import Greedy
from harness.core.tree import Tree


def full_logits(model, ids):
    """Logits of a plain transformers forward over a whole sequence. ids: [T] -> [T, V]"""
    return model(torch.tensor([ids])).logits[0]


def random_tree(n, vocab, seed=0):
    g = torch.Generator().manual_seed(seed)
    parents = [-1] + [int(torch.randint(0, i, (1,), generator=g)) for i in range(1, n)]
    tokens = torch.randint(3, vocab, (n,), generator=g)
    return Tree.from_parents(tokens, parents)


def path_to(tree, node):
    return tree.mask[0, node].nonzero().squeeze(1).tolist()


@torch.no_grad()
def test_tree_forward_matches_full_sequence(tiny, engine):
    prefix = torch.randint(3, 97, (11,)).tolist()
    cache = engine.new_cache(64)
    engine.forward(torch.tensor(prefix), torch.arange(11), None, cache)
    cache.truncate(11)
    tree = random_tree(9, 97)
    hidden = engine.forward(tree.tokens, tree.depths + 11, tree.mask, cache)[0]
    logits = engine.logits(hidden)
    for node in range(tree.size):
        seq = prefix + tree.tokens[0, path_to(tree, node)].tolist()
        torch.testing.assert_close(logits[node], full_logits(tiny, seq)[-1], atol=1e-4, rtol=1e-4)


@torch.no_grad()
def test_cache_after_keep_equals_plain_prefill(tiny, engine):
    prefix = torch.randint(3, 97, (7,)).tolist()
    cache = engine.new_cache(64)
    engine.forward(torch.tensor(prefix), torch.arange(7), None, cache)
    cache.truncate(7)
    tree = random_tree(10, 97, seed=3)
    engine.forward(tree.tokens, tree.depths + 7, tree.mask, cache)
    deepest = int(torch.argmax(tree.depths))
    path = torch.tensor(path_to(tree, deepest))
    assert path[-1] != len(path) - 1 or tree.size == len(path)  # a real gather, not a no-op
    on_path = torch.zeros(1, tree.size, dtype=torch.bool)
    on_path[0, path] = True
    cache.keep([path.tolist()], on_path)
    seq = prefix + tree.tokens[0, path].tolist()
    ref = engine.new_cache(64)
    engine.forward(torch.tensor(seq), torch.arange(len(seq)), None, ref)
    n = len(seq)
    assert cache.length == n
    torch.testing.assert_close(cache.buf[..., :n, :], ref.buf[..., :n, :], atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_skipping_both_sublayers_is_identity(engine):
    ctx = engine.context(torch.arange(5), None, None)
    h = torch.randn(1, 5, 32)
    assert torch.equal(engine.layer(1, h, ctx, attn=False, mlp=False), h)
    full = engine.layer(1, h, ctx)
    split = engine.layer(1, engine.layer(1, h, ctx, mlp=False), ctx, attn=False)
    torch.testing.assert_close(full, split)


@torch.no_grad()
def test_inserted_rows_do_not_change_real_rows(engine):
    ids = torch.randint(3, 97, (6,))
    plain = engine.forward(ids, torch.arange(6), None, None)
    n_extra = 2
    mask = torch.ones(8, 8, dtype=torch.bool).tril()
    inserted = engine.forward(ids, torch.arange(8), mask, None, inserts={2: lambda h: h[:, -n_extra:] * 0.5})
    torch.testing.assert_close(inserted[:, :6], plain)
    assert inserted.shape[1] == 8


def greedy_path(tree, predicted):
    """The greedy rule's accepted path on a one-sequence tree whose target argmax per node is
    `predicted` (one-hot logits)."""
    logits = torch.nn.functional.one_hot(torch.tensor(predicted), 10).float()[None]  # [1, n, V]
    acc = Greedy().accept(tree, logits, tree.depths)
    return acc.on_path[0].nonzero().squeeze(1).tolist(), int(acc.next[0])


def test_greedy_accept_longest_matching_path():
    #        0
    #      /   \
    #     1(5)  2(6)
    #     |      |
    #     3(7)   4(8)
    tree = Tree.from_parents(torch.tensor([9, 5, 6, 7, 8]), [-1, 0, 0, 1, 2])
    assert greedy_path(tree, [6, 0, 8, 0, 4]) == ([0, 2, 4], 4)  # root -> 6 (node 2) -> 8 (node 4), then 4
    assert greedy_path(tree, [5, 1, 0, 0, 0]) == ([0, 1], 1)  # node 1 accepted, node 3 (7) rejected
    assert greedy_path(tree, [3, 0, 0, 0, 0]) == ([0], 3)

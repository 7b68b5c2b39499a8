"""Lookahead decoding: pool rules, window trajectory, the joint mask and positions of the one
forward, Jacobi outputs, losslessness, the cache, options; the hf-prompt-lookup peer."""

import random

import pytest
import torch
from helpers import assert_cache_is_committed_sequence, assert_lossless

import methods as registry
from harness.core.decoding import decode
from harness.core.method import Method, MethodError, Step
from harness.core.tree import Tree
from methods.autoregressive import Autoregressive
from methods.lookahead import Lookahead, NGramPool, Window, trie
from methods.peers import HFPromptLookup

PROMPT = [3, 1, 4, 1, 5, 9, 2, 6]


# -- the n-gram pool ------------------------------------------------------------------------------
def test_pool_keeps_the_most_recent_g_per_key_and_readding_refreshes():
    pool = NGramPool(3)
    for gram in [(1, 2, 3), (1, 4, 5), (1, 6, 7), (7, 7, 7), (1, 8, 9)]:
        pool.add(gram)
    assert pool.lookup(1) == [(8, 9), (6, 7), (4, 5)]  # (2, 3), the oldest, evicted
    assert pool.lookup(7) == [(7, 7)] and pool.lookup(2) == [] and len(pool) == 4
    pool.add((1, 4, 5))  # refresh: now the most recent
    pool.add((1, 10, 11))  # evicts the oldest, which is (6, 7) now, not (4, 5)
    assert pool.lookup(1) == [(10, 11), (4, 5), (8, 9)]


@pytest.mark.parametrize("per_key", [1, 2, 5])
def test_pool_matches_a_recency_list_under_random_adds(per_key):
    rng, pool, ref = random.Random(per_key), NGramPool(per_key), {}
    for _ in range(400):
        gram = tuple(rng.randrange(4) for _ in range(3))
        tails = [t for t in ref.get(gram[0], []) if t != gram[1:]] + [gram[1:]]
        ref[gram[0]] = tails[-per_key:]
        pool.add(gram)
    for key in range(4):
        assert pool.lookup(key) == ref.get(key, [])[::-1]
        assert len(pool.lookup(key)) <= per_key


def build_trie(root, grams, limit):
    return Tree.from_host(*trie(root, grams, limit), torch.tensor)


def test_trie_merges_shared_prefixes_and_respects_the_limit():
    tree = build_trie(50, [(1, 2, 3), (1, 2, 4), (5, 6, 7)], limit=99)
    assert tree.tokens.tolist() == [[50, 1, 2, 3, 4, 5, 6, 7]]
    assert tree.parents.tolist() == [[-1, 0, 1, 2, 2, 0, 5, 6]] and tree.depths.tolist() == [[0, 1, 2, 3, 3, 1, 2, 3]]
    assert tree.mask[0, 4].nonzero().squeeze(1).tolist() == [0, 1, 2, 4]
    small = build_trie(50, [(1, 2, 3), (1, 2, 4), (5, 6, 7)], limit=5)
    assert small.tokens.tolist() == [[50, 1, 2, 3, 4]]  # (5, 6, 7) would need 3 more nodes
    assert build_trie(50, [], limit=5).size == 1


# -- the window's trajectory ----------------------------------------------------------------------
def test_window_warms_up_then_reads_its_columns_as_ngrams():
    win = Window(3, 4, [11, 12, 13, 14])  # W=3, N=4: level 0 over W + N - 2 = 5 columns
    assert not win.full and win.columns == 5
    assert win.advance(0, [20, 21, 22, 23, 24]) == []  # outputs of columns 0..4
    assert win.levels == [[12, 13, 14], [21, 22, 23, 24]] and win.columns == 4
    assert win.advance(0, [30, 31, 32, 33]) == []
    assert win.levels == [[13, 14], [22, 23, 24], [31, 32, 33]] and win.full and win.columns == 3
    grams = win.advance(99, [40, 41, 42])  # root 99 is column 0 of level 0
    assert grams == [[99, 22, 31, 40], [13, 23, 32, 41], [14, 24, 33, 42]]
    assert win.levels == [[23, 24], [31, 32, 33], [40, 41, 42]]  # oldest level dropped, outputs newest


def test_window_with_bigrams_is_full_from_the_start():
    win = Window(3, 2, [7, 8])
    assert win.full and win.advance(5, [1, 2, 3]) == [[5, 1], [7, 2], [8, 3]]
    assert win.levels == [[2, 3]]


# -- the one forward: layout, mask, positions -----------------------------------------------------
def prepared(engine, **options):
    """A method after the prefill of PROMPT, with a full window of known tokens and pooled
    candidates (two sharing a prefix) for root 60."""
    method = Lookahead(engine, "tiny", **options)
    cache = engine.new_cache(256)
    method.begin([PROMPT])
    method.prefill(torch.tensor([PROMPT]), cache)
    cache.truncate(len(PROMPT))
    w, n = method.width, method.ngram
    higher = [[40 + 10 * lv + i for i in range(w)] for lv in range(1, n - 1)]
    method.windows[0].levels = [[45 + i for i in range(1, w)]] + higher
    for gram in [(60, 30, 31, 32), (60, 30, 33, 34), (60, 40, 41, 42), (61, 1, 1, 1)]:
        method.pools[0].add(gram[:n])
    return method, cache


def capture_forward(engine, monkeypatch):
    calls = []
    real = engine.forward

    def spy(ids, positions, tree_mask, cache, **kw):
        calls.append((ids[0].clone(), positions[0].clone(), tree_mask[0].clone()))  # the one sequence's
        return real(ids, positions, tree_mask, cache, **kw)

    monkeypatch.setattr(engine, "forward", spy)
    return calls


def propose(method, cache, root):
    """The trie for pending token `root` (whose host value the loop hands over through observe)."""
    method._roots = [root]
    return method.propose(torch.tensor([root]), cache)


def window_cells(w, n):
    """(level, column) of every window row, in forward order."""
    return [(0, i) for i in range(1, w)] + [(lv, i) for lv in range(1, n - 1) for i in range(w)]


@pytest.mark.parametrize("w, n", [(4, 4), (3, 5), (5, 2)])
def test_one_forward_holds_tree_then_window_with_the_lookahead_mask(engine, monkeypatch, w, n):
    method, cache = prepared(engine, window=w, ngram=n, guess=3)
    calls = capture_forward(engine, monkeypatch)
    tree = propose(method, cache, 60)
    hidden = method.verify(tree, cache)
    (ids, positions, mask), = calls
    t, cells = tree.size, window_cells(w, n)
    assert hidden.shape == (1, t, engine.hidden_size) and ids.numel() == t + len(cells) == mask.shape[0]
    assert ids[:t].tolist() == tree.tokens[0].tolist() and ids[t:].tolist() == method.windows[0].tokens()
    assert not mask[:t, t:].any()  # tree rows never see the window
    grams = method.pools[0].lookup(60)
    for j in range(t):  # a candidate sees the root and its own earlier tokens only
        seen = mask[j, :t].nonzero().squeeze(1).tolist()
        assert seen[0] == 0 and positions[seen].tolist() == list(range(len(PROMPT), len(PROMPT) + len(seen)))
        path = tuple(ids[seen[1:]].tolist())
        assert any(g[: len(path)] == path for g in grams)
    for r, (lv, i) in enumerate(cells):  # window row (level, column) at offset column + level
        row = t + r
        assert positions[row] == len(PROMPT) + i + lv
        expected = {0} | {t + s for s, (lv2, i2) in enumerate(cells)
                          if (lv2 == 0 and i2 <= i) or (1 <= lv2 <= lv and i2 == i)}
        assert set(mask[row].nonzero().squeeze(1).tolist()) == expected
        offsets = sorted((positions[list(expected)] - len(PROMPT)).tolist())
        assert offsets == list(range(i + lv + 1))  # one token at every offset up to its own


def test_window_rows_do_not_change_the_tree_rows(engine):
    method, cache = prepared(engine, window=4, ngram=4, guess=3)
    tree = propose(method, cache, 60)
    with_window = method.verify(tree, cache)
    alone = Method.verify(method, tree, cache)  # the plain tree forward, same slots
    torch.testing.assert_close(with_window, alone, atol=1e-4, rtol=1e-4)


def test_newest_level_outputs_are_greedy_tokens_of_their_own_context(engine):
    """Each output equals a plain causal forward of prompt + root + the row's visible tokens."""
    w, n = 3, 4
    method, cache = prepared(engine, window=w, ngram=n, guess=1)
    levels = [list(x) for x in method.windows[0].levels]
    tree = propose(method, cache, 60)
    hidden = method.verify(tree, cache)
    read = method.extra_read()  # [1, C]: read with the loop's one read per step
    method.observe(hidden, tree, Step([[0]], [[61]], torch.tensor([0]), torch.tensor([61]), extra=read.tolist()))
    newest = method.windows[0].levels[-1]  # the outputs, after the window moved
    for i in range(w):
        context = [60] + levels[0][:i] + [levels[lv][i] for lv in range(1, n - 1)]
        seq = torch.tensor(PROMPT + context)
        h = engine.forward(seq, torch.arange(seq.numel()), None, None)[0, -1]
        assert int(engine.logits(h).argmax()) == newest[i], f"column {i}"


def test_positions_count_the_window_rows(engine):
    w, n = 4, 4
    out = decode(Lookahead(engine, "tiny", window=w, ngram=n, guess=2), PROMPT, 30, set(), engine.new_cache(256))
    rows = [p - d - 1 for p, d in zip(out.positions[1:], out.draft_sizes[1:])]  # forward rows minus the tree
    warmup = [(c - 1) + j * c for j, c in enumerate(range(w + n - 2, w, -1))]  # C = W+N-2 .. W+1 columns
    assert rows[: n - 2] == warmup and set(rows[n - 2:]) == {(n - 1) * w - 1}


# -- decoding ---------------------------------------------------------------------------------
@pytest.mark.parametrize("options", [{}, {"preset": "published"}, {"window": 1, "ngram": 2, "guess": 1},
                                     {"window": 2, "ngram": 3, "guess": 1}, {"window": 5, "ngram": 4, "guess": 5}])
def test_lossless_on_tiny_model(engine, options):
    tau = assert_lossless(engine, Lookahead(engine, "tiny", **options))
    assert tau >= 1.0


def test_drafts_are_accepted_on_a_repetitive_prompt(engine):
    method, ar = Lookahead(engine, "tiny", preset="published"), Autoregressive(engine, "tiny")
    cache = engine.new_cache(256)
    prompt = [5, 6, 7, 8] * 5
    ref = decode(ar, prompt, 48, set(), cache).output_ids
    out = decode(method, prompt, 48, set(), cache)
    assert out.output_ids == ref
    assert len(ref) / len(out.accept_lengths) > 1.5 and max(out.accept_lengths) > 2


def test_cache_holds_the_committed_sequence(engine):
    out = assert_cache_is_committed_sequence(engine, Lookahead(engine, "tiny", preset="published"), PROMPT, 40)
    assert max(out.accept_lengths) > 2  # accepted paths were gathered past the window rows


def test_no_room_for_the_window_falls_back_to_verification_only(engine):
    method, ar = Lookahead(engine, "tiny", preset="published"), Autoregressive(engine, "tiny")
    cache = engine.new_cache(len(PROMPT) + 40 + 2)  # far too small for 27 window rows near the end
    ref = decode(ar, PROMPT, 40, set(), engine.new_cache(256)).output_ids
    out = decode(method, PROMPT, 40, set(), cache)
    assert out.output_ids == ref and out.positions[-1] <= 3


# -- options ----------------------------------------------------------------------------------
def test_preset_and_option_validation(engine):
    assert registry.get("lookahead") is Lookahead
    published = Lookahead(engine, "tiny", preset="published")
    assert (published.width, published.ngram, published.guess) == (7, 5, 7)
    assert published.describe()["options"]["window"] == 7 and published.describe()["window_rows"] == 27
    parsed = Lookahead.resolve_options({"window": "6", "ngram": "3", "guess": "2"})
    assert (parsed["window"], parsed["ngram"], parsed["guess"], parsed["preset"]) == (6, 3, 2, "auto")
    with pytest.raises(MethodError, match="drop window"):
        Lookahead(engine, "tiny", preset="published", window="3")
    with pytest.raises(MethodError, match="not one of"):
        Lookahead(engine, "tiny", preset="paper")
    with pytest.raises(MethodError, match="not a valid int"):
        Lookahead(engine, "tiny", window="wide")
    for key, bad in [("window", "0"), ("ngram", "1"), ("guess", "0")]:
        with pytest.raises(MethodError, match=f"lookahead.{key}: .* must be an integer >= "):
            Lookahead(engine, "tiny", **{key: bad})
    with pytest.raises(MethodError, match="unknown option"):
        Lookahead(engine, "tiny", levels="3")


# -- the outside peer -------------------------------------------------------------------------
def test_hf_prompt_lookup_peer_equals_the_baseline_with_fewer_forwards(engine):
    peer = HFPromptLookup(engine, "tiny")
    assert registry.get("hf-prompt-lookup") is HFPromptLookup
    assert peer.generate_kwargs() == {"prompt_lookup_num_tokens": 10}
    calls = []
    engine.model.register_forward_hook(lambda *_: calls.append(1))
    ar, cache = Autoregressive(engine, "tiny"), engine.new_cache(256)
    ref = decode(ar, PROMPT, 30, {96}, cache).output_ids
    assert peer.generate(PROMPT, 30, {96}).output_ids == ref
    assert len(calls) < len(ref)  # drafts were accepted: fewer model calls than tokens
    with pytest.raises(MethodError, match="at least 1"):
        HFPromptLookup(engine, "tiny", tokens="0")

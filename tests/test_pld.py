"""Prompt lookup decoding: the n-gram index (longest n first, most recent match, no match, a match
at the end of the context, incremental = a rescan), the proposals, losslessness, the cache,
options."""

import random

import pytest
import torch
from helpers import assert_cache_is_committed_sequence, assert_lossless

import methods as registry
from harness.core.decoding import decode
from harness.core.method import MethodError, Step
from methods.pld import NGramIndex, PromptLookup


def index_of(tokens, lo=1, hi=3):
    index = NGramIndex(lo, hi)
    index.extend(tokens)
    return index


def rescan(tokens, k, lo, hi):
    """The reference: scan the whole context for the suffix, longest n first, latest match first."""
    for n in range(min(hi, len(tokens) - 1), lo - 1, -1):
        suffix = tokens[-n:]
        for start in range(len(tokens) - n - 1, -1, -1):  # occurrences ending before the last token
            if tokens[start:start + n] == suffix:
                return tokens[start + n:start + n + k]
    return []


# -- the index ------------------------------------------------------------------------------------
def test_the_longest_suffix_ngram_wins_over_a_more_recent_shorter_one():
    #            a  b  c  X  Y     c  Z     a  b  c
    tokens = [1, 2, 3, 70, 71, 3, 72, 1, 2, 3]
    assert index_of(tokens).lookup(2) == [70, 71]  # (1, 2, 3) matched at 0, not (3,) at 5
    assert index_of(tokens, hi=1).lookup(2) == [72, 1]  # unigrams only: the latest 3 (at 5)


def test_the_most_recent_earlier_occurrence_wins():
    tokens = [5, 6, 10, 11, 5, 6, 20, 21, 9, 5, 6]
    assert index_of(tokens).lookup(2) == [20, 21]


def test_no_match_gives_no_draft():
    assert index_of([1, 2, 3, 4, 5]).lookup(5) == []
    assert index_of([7]).lookup(5) == []
    assert index_of([1, 2, 3, 4, 1], lo=2).lookup(3) == []  # only a unigram matches; min_ngram is 2


def test_a_match_at_the_end_of_the_context_drafts_what_follows_it():
    assert index_of([4, 8, 8]).lookup(5) == [8]  # (8,) ended just before the last token
    assert index_of([1, 2, 1, 2]).lookup(5) == [1, 2]  # (1, 2) at 0: only two tokens follow it
    assert index_of([3, 3, 3, 3]).lookup(5) == [3]  # (3, 3, 3) at 0, overlapping the suffix


def test_the_draft_is_at_most_k_tokens():
    assert index_of([1, 2, 3, 4, 5, 6, 1, 2]).lookup(3) == [3, 4, 5]


@pytest.mark.parametrize("lo,hi", [(1, 1), (1, 3), (2, 4)])
def test_incremental_index_equals_a_rescan_of_the_context(lo, hi):
    rng = random.Random(lo * 10 + hi)
    tokens, index = [], NGramIndex(lo, hi)
    for _ in range(300):
        new = [rng.randrange(5) for _ in range(rng.randrange(1, 4))]
        tokens += new
        index.extend(new)
        assert index.lookup(4) == rescan(tokens, 4, lo, hi)


# -- the method -----------------------------------------------------------------------------------
def test_proposal_is_the_root_and_the_lookup_and_accepted_tokens_extend_the_context(engine):
    method = PromptLookup(engine, "tiny", k=3)
    method.begin([[9, 4, 5, 6, 7, 9]])
    cache = engine.new_cache(64)
    cache.truncate(6)
    method.observe(torch.zeros(1, 6, 8), None, Step([[5]], [[4]], torch.tensor([5]), torch.tensor([4])))  # the prefill's token
    tree = method.propose(torch.tensor([4]), cache)  # context ... 9, 4: (9, 4) matched at 0
    assert tree.tokens.tolist() == [[4, 5, 6, 7]]
    step = Step([[0, 1]], [[5, 8]], torch.tensor([1]), torch.tensor([8]))  # root and 5 accepted, then 8
    method.observe(torch.zeros(1, 4, 8), tree, step)
    assert method.index.tokens == [9, 4, 5, 6, 7, 9, 4, 5, 8]


def test_the_draft_fits_the_cache(engine):
    method = PromptLookup(engine, "tiny", k=10)
    method.begin([[1, 2, 3, 4, 5, 6, 1, 2]])  # the pending 2 already committed to the context
    cache = engine.new_cache(12)
    cache.truncate(8)  # 4 slots left: the root and 3 drafts
    assert method.propose(torch.tensor([2]), cache).tokens.tolist() == [[2, 3, 4, 5]]


@pytest.mark.parametrize("options", [{}, {"k": "1"}, {"k": "4", "max_ngram": "1"}, {"min_ngram": "2", "max_ngram": "4"}])
def test_pld_is_lossless_and_keeps_the_committed_cache(engine, options):
    method = PromptLookup(engine, "tiny", **options)
    assert assert_lossless(engine, method) >= 1.0
    assert_cache_is_committed_sequence(engine, method, [5, 6, 7, 5, 6, 7, 5, 6])


def test_pld_accepts_drafts_on_a_repetitive_continuation(engine):
    method = PromptLookup(engine, "tiny", k=4)
    out = decode(method, [5, 6, 7, 5, 6, 7, 5, 6], 40, set(), engine.new_cache(256))
    assert sum(out.accepted) > 10 and max(out.draft_sizes) >= 1
    assert out.draft_forwards == 0  # no draft model


def test_options_are_checked_before_any_model_load():
    cls = registry.get("pld")
    assert cls is PromptLookup and cls.resolve_options({"k": "5"})["k"] == 5
    for bad, message in [({"k": "0"}, "at least 1"), ({"min_ngram": "3", "max_ngram": "2"}, "min_ngram <= max_ngram"),
                         ({"min_ngram": "0"}, "1 <= min_ngram"), ({"n": "2"}, "unknown option")]:
        with pytest.raises(MethodError, match=message):
            cls.resolve_options(bad)

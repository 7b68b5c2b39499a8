"""Decoding B sequences in one loop: prompts of different lengths, ragged acceptance per step,
each sequence committing exactly its own tokens, a finished sequence taking no more tokens, and
every batchable method equal to its own decodes one at a time (greedy and sampled)."""

import random

import pytest
import torch
from test_eagle import make_eagle, trained_head
from test_eagle3 import make_eagle3, make_head
from test_firp import make_firp
from test_medusa import make_medusa
from test_sps import shallow_checkpoint

from harness.core.decoding import decode, decode_batch
from harness.core.method import Method
from harness.core.sampling import Exact, SamplingParams, device_keys, turn_key
from harness.core.tree import Tree
from methods.ar_graph import ARGraph
from methods.autoregressive import Autoregressive
from methods.lookahead import Lookahead
from methods.pld import PromptLookup
from methods.self_speculative import SelfSpeculative
from methods.sps import SpS

PROMPTS = [random.Random(i).sample(range(3, 97), n) for i, n in enumerate((5, 11, 8))]

BATCHABLE = {
    "ar": lambda engine, tmp: Autoregressive(engine, "tiny"),
    "ar-graph": lambda engine, tmp: ARGraph(engine, "tiny"),
    "lookahead": lambda engine, tmp: Lookahead(engine, "tiny", window=3, ngram=3, guess=3),
    "medusa": lambda engine, tmp: make_medusa(engine, tmp, perturb=0.3),
    "eagle": lambda engine, tmp: make_eagle(engine, tmp, trained_head(engine), depth=3, top_k=4, total_tokens=12),
    "eagle3": lambda engine, tmp: make_eagle3(engine, tmp, make_head(engine, draft_vocab=12), depth=3, top_k=3,
                                              total_tokens=6),
    "firp": lambda engine, tmp: make_firp(engine, tmp, layers=(3, 4, 4)),
    "pld": lambda engine, tmp: PromptLookup(engine, "tiny", k=4),
    "self-spec": lambda engine, tmp: SelfSpeculative(engine, "tiny", skip="a1,m2", threshold=0.5, adaptive=False),
    "sps": lambda engine, tmp: SpS(engine, "tiny", draft=str(shallow_checkpoint(engine, tmp, (0, 1, 2))), k=3),
}


def one_at_a_time(method, prompts, max_new, eos, rules=None):
    cache = method.engine.new_cache(256)
    return [decode(method, p, max_new, eos, cache, rules[i] if rules else None).output_ids
            for i, p in enumerate(prompts)]


def sampled(keys):
    return Exact(SamplingParams(1.0), device_keys(keys, "cpu"))


@pytest.mark.parametrize("name", sorted(BATCHABLE))
def test_a_batch_equals_its_sequences_decoded_one_at_a_time(engine, tmp_path, name):
    method = BATCHABLE[name](engine, tmp_path)
    prompts = PROMPTS + [[5, 6, 7, 8] * 3]  # a repetitive one, so that pld drafts
    eos = {one_at_a_time(Autoregressive(engine, "tiny"), prompts, 30, set())[1][4]}  # sequence 1 stops early
    alone = one_at_a_time(method, prompts, 30, eos)
    together = decode_batch(method, prompts, 30, eos, engine.new_cache(256, batch=len(prompts)))
    assert [o.output_ids for o in together] == alone
    assert [o.output_ids for o in together] == one_at_a_time(Autoregressive(engine, "tiny"), prompts, 30, eos)
    assert together[1].stop == "eos" and "length" in [o.stop for o in together]  # one stopped while others went on
    keys = [turn_key(0, str(i), 0) for i in range(len(prompts))]
    alone = one_at_a_time(method, prompts, 30, eos, [sampled([k]) for k in keys])
    together = decode_batch(method, prompts, 30, eos, engine.new_cache(256, batch=len(prompts)), sampled(keys))
    assert [o.output_ids for o in together] == alone  # each sequence its own key: the same samples


class Oracle(Method):
    """Drafts per sequence: the first `right[b][step]` tokens of its reference continuation, then
    a wrong token, so that every sequence accepts its own number of tokens at every step."""

    def __init__(self, engine, references, right):
        super().__init__(engine, "tiny")
        self.references, self.right = references, right

    def begin(self, prompts):
        self.done, self.steps = [0] * len(prompts), 0

    def observe(self, hidden, tree, step):
        self.done = [d + len(t) for d, t in zip(self.done, step.tokens)]
        self.steps += tree is not None

    def propose(self, pending, cache):
        rows = []
        for b, ref in enumerate(self.references):
            good = self.right[b][self.steps % len(self.right[b])]
            draft = ref[self.done[b]:self.done[b] + good]
            rows.append(draft + [(ref[self.done[b] + len(draft)] + 1) % 97 if self.done[b] + len(draft) < len(ref)
                                 else 0])  # one wrong token after the right ones
        width = max(map(len, rows))
        body = torch.tensor([r + [0] * (width - len(r)) for r in rows])
        tree = Tree.chain(torch.cat([pending[:, None], body], dim=1))
        valid = torch.arange(width + 1)[None, :] <= torch.tensor([len(r) for r in rows])[:, None]
        return Tree(tree.tokens, tree.parents, tree.depths, tree.mask, valid=valid)


def test_ragged_acceptance_commits_each_sequences_own_tokens(engine):
    refs = one_at_a_time(Autoregressive(engine, "tiny"), PROMPTS, 24, set())
    right = [[0, 3, 1], [2, 0, 4, 1], [5]]
    outs = decode_batch(Oracle(engine, refs, right), PROMPTS, 24, set(), engine.new_cache(128, batch=3))
    assert [o.output_ids for o in outs] == refs
    for out, r in zip(outs, right):  # step i of sequence b accepted right[b][i] drafts, or what the budget allowed
        steps = out.accepted[1:]
        assert steps[:-1] == [r[i % len(r)] for i in range(len(steps) - 1)] and steps[-1] <= r[(len(steps) - 1) % len(r)]
        assert out.draft_sizes[1] == r[0] + 1  # its own draft: padding not counted


def test_a_finished_sequence_takes_no_more_tokens(engine):
    refs = one_at_a_time(Autoregressive(engine, "tiny"), PROMPTS, 30, set())
    eos = {refs[1][4]}  # sequence 1 stops after 5 tokens (or where that token first appears)
    cache = engine.new_cache(128, batch=3)
    outs = decode_batch(Autoregressive(engine, "tiny"), PROMPTS, 30, eos, cache)
    stop = [r.index(next(iter(eos))) + 1 if next(iter(eos)) in r else 30 for r in refs]
    assert [o.output_ids for o in outs] == [r[:s] for r, s in zip(refs, stop)]
    assert [o.stop for o in outs][1] == "eos" and len(outs[1].output_ids) < max(map(len, refs))
    assert cache.seen == [len(p) + len(o.output_ids) - 1 for p, o in zip(PROMPTS, outs)]
    assert cache.lengths.tolist() == cache.seen
    longest = max(len(o.output_ids) for o in outs)
    assert [o.idle_rows for o in outs] == [longest - len(o.output_ids) for o in outs]  # one row per step after it stopped


def test_a_method_that_keeps_one_sequences_state_refuses_a_batch(engine):
    class OneAtATime(Method):
        name, batchable = "solo", False

    with pytest.raises(ValueError, match="solo decodes one sequence at a time"):
        decode_batch(OneAtATime(engine, "tiny"), PROMPTS, 8, set(), engine.new_cache(64, batch=3))


def test_hf_generate_batches_left_padded_and_cuts_each_output_at_its_eos(engine):
    from methods.peers import HFGenerate

    alone = one_at_a_time(Autoregressive(engine, "tiny"), PROMPTS, 20, set())
    eos = {alone[1][3]}  # sequence 1 stops early; generate() pads it while the others go on
    expected = one_at_a_time(Autoregressive(engine, "tiny"), PROMPTS, 20, eos)
    outs = HFGenerate(engine, "tiny").generate_batch(PROMPTS, 20, eos)
    assert [o.output_ids for o in outs] == expected
    assert outs[1].stop == "eos" and all(o.stop == "length" for i, o in enumerate(outs) if len(expected[i]) == 20)


def test_sps_rejection_sampling_in_a_batch_draws_each_sequences_own_turn(engine, tmp_path):
    """Draft tokens drawn from q and accepted by speculative sampling's rule: every draw is keyed
    by its own sequence, so a batch gives each sequence what it gets alone."""
    from harness.bench.sampled import Sampling

    draft = str(shallow_checkpoint(engine, tmp_path, (0, 1, 2)))
    method = SpS(engine, "tiny", draft=draft, k=3, sample_drafts=True)
    sampling = Sampling((1.0,), acceptance="rejection")
    ids = [str(i) for i in range(len(PROMPTS))]
    alone = one_at_a_time(method, PROMPTS, 24, set(), [sampling.rule(1.0, 0, [i], 0, "cpu") for i in ids])
    outs = decode_batch(method, PROMPTS, 24, set(), engine.new_cache(256, batch=3), sampling.rule(1.0, 0, ids, 0, "cpu"))
    assert [o.output_ids for o in outs] == alone
    assert any(sum(o.accepted) > 0 for o in outs) and len({sum(o.accepted) for o in outs}) > 1  # ragged acceptance

"""Sampling (T > 0): the position-keyed noise generator, filtering, and the two acceptance rules.

- Exact (Gumbel-max with noise keyed by seed, sample, turn and position): every method emits
  `ar`'s sampled tokens; a deterministic draft node is accepted with probability p(its token),
  what recursive rejection sampling gives it (a hand-made tree, both ways).
- Rejection (drafts drawn from q): distribution-lossless. On a tiny model with a 16-token
  vocabulary the exact law of 3-token continuations is enumerated and 20,000 sampled
  continuations are compared with it by a G-test at alpha = 1e-3; the test must catch three
  planted bugs (an unnormalised residual, p and q swapped, a greedy verifier under T > 0).
"""

import math

import pytest
import torch
from conftest import tiny_model

from harness.core.accept import Greedy
from harness.core.sampling import (
    Exact,
    Rejection,
    SamplingParams,
    device_keys,
    filtered,
    reference_uniform,
    turn_key,
    uniform,
)
from harness.core.tree import Tree

VOCAB, PROMPT, DRAFT_K, TOKENS, RUNS = 16, [3, 5, 7], 2, 3, 20_000


def test_the_noise_is_a_pure_function_of_its_inputs():
    key = turn_key(0, "81", 1)
    t = torch.tensor([0, 5, 1000, 2**40])
    v = torch.tensor([0, 3, 49151, 2**31 - 1])
    got = uniform(device_keys([key], "cpu")[:, None], t[:, None], v)
    assert got.tolist() == [[reference_uniform(key, a, b) for b in v.tolist()] for a in t.tolist()]
    assert turn_key(0, "81", 1) != turn_key(0, "81", 0) != turn_key(1, "81", 1) != turn_key(0, "82", 1)
    assert turn_key(0, "81", 1, stream=1) != key
    # pinned values: the same on any machine and device (tests/test_cuda.py compares CUDA with these)
    assert round(reference_uniform(key, 5, 3), 7) == round(got[1, 1].item(), 7)
    flat = uniform(device_keys([key], "cpu"), torch.arange(20000), torch.zeros(20000, dtype=torch.long))
    assert 0 < flat.min() and flat.max() < 1 and abs(flat.mean().item() - 0.5) < 0.01  # uniform-looking


def test_filtering_keeps_the_top_k_and_the_nucleus():
    logits = torch.tensor([[4.0, 3.0, 2.0, 1.0, 0.0]])
    assert torch.isinf(filtered(logits, 1.0, top_k=2)[0, 2:]).all() and filtered(logits, 1.0, top_k=2)[0, 1] == 3.0
    nucleus = filtered(logits, 1.0, top_p=0.8)[0]  # p = .64 .24 .09 .03 .01: .64 + .24 >= .8
    assert torch.isfinite(nucleus[:2]).all() and torch.isinf(nucleus[2:]).all()
    assert torch.isfinite(filtered(logits, 1.0, top_p=0.1)[0, 0])  # the top token always stays
    assert filtered(logits, 0.5)[0, 0] == 8.0


# -- the law of 3-token continuations on a tiny model -------------------------------------------
def tables(model, longest):
    """Filtered distributions after every continuation of PROMPT up to `longest` tokens:
    {length: [16 ** length, V]}, row = the continuation read as a base-16 number."""
    out = {}
    for length in range(longest + 1):
        conts = torch.cartesian_prod(*[torch.arange(VOCAB)] * length) if length > 1 else \
            torch.arange(VOCAB)[:, None] if length == 1 else torch.zeros(1, 0, dtype=torch.long)
        ids = torch.cat([torch.tensor(PROMPT).expand(conts.shape[0], -1), conts], dim=1)
        with torch.no_grad():
            out[length] = model(ids).logits[:, -1].float()
    return out


def row_of(prefix: torch.Tensor) -> torch.Tensor:
    """[N, l] continuations -> their rows in a table of length l."""
    weights = VOCAB ** torch.arange(prefix.shape[1] - 1, -1, -1)
    return (prefix * weights).sum(dim=1)


def exact_law(target, params):
    """P(x1 x2 x3) for all 4096 continuations, from the target's filtered distributions."""
    p = [filtered(target[i], params.temperature, params.top_k, params.top_p).softmax(-1) for i in range(TOKENS)]
    law = p[0][0][:, None, None] * p[1].view(VOCAB, VOCAB)[:, :, None] * p[2].view(VOCAB, VOCAB, VOCAB)
    return law.reshape(-1)


def simulate(rule_for, target, draft, params, sample_drafts=True, runs=RUNS):
    """`runs` independent speculative decodes of 3 tokens (each its own key), batched by how many
    tokens they hold: the first token chosen by the rule (as the prefill does), then rounds of a
    DRAFT_K-token chain drawn from the draft's filtered distribution q (or its argmax, one-hot),
    verified by `rule_for(keys)`. Returns each run's 3 tokens as a row of the 4096-cell law."""
    keys = device_keys([turn_key(7, str(i), 0) for i in range(runs)], "cpu")
    draft_keys = device_keys([turn_key(7, str(i), 0, stream=9) for i in range(runs)], "cpu")
    start = len(PROMPT) - 1  # the prompt's last row: it chooses the first token
    first = rule_for(keys).choose(target[0].expand(runs, -1), torch.full((runs,), start))
    seqs = [[t] for t in first.tolist()]
    for c in range(1, TOKENS):  # a round adds >= 1 token: runs holding c tokens take one
        idx = [i for i, s in enumerate(seqs) if len(s) == c]
        if idx:
            rows = torch.tensor(idx)
            grown = chain_round(rule_for(keys[rows]), draft_keys[rows], torch.tensor([seqs[i] for i in idx]),
                                target, draft, params, sample_drafts, start + c)
            for i, more in zip(idx, grown):
                seqs[i] += more
    return row_of(torch.tensor([s[:TOKENS] for s in seqs]))


def chain_round(rule, draft_keys, out, target, draft, params, sample_drafts, root_position):
    """One speculative step of the runs holding out [m, c] tokens: the tokens each commits."""
    m, c = out.shape
    tokens, probs = [out[:, -1]], [torch.zeros(m, VOCAB)]
    for j in range(DRAFT_K):
        prefix = torch.cat([out] + [t[:, None] for t in tokens[1:]], 1)
        q = filtered(draft[prefix.shape[1]][row_of(prefix)], params.temperature, params.top_k, params.top_p)
        q = q.softmax(-1)
        if sample_drafts:
            noise = uniform(draft_keys[:, None], torch.full((m, 1), root_position + j + 1), torch.arange(VOCAB))
            tokens.append((q.log() - torch.log(-torch.log(noise))).argmax(-1))  # a draw from q
        else:
            tokens.append(q.argmax(-1))
        probs.append(q if sample_drafts else torch.nn.functional.one_hot(tokens[-1], VOCAB).float())
    chain = Tree.chain(torch.stack(tokens, 1))
    chain = Tree(chain.tokens, chain.parents, chain.depths, chain.mask, probs=torch.stack(probs, 1))
    logits = torch.stack([target[c + i][row_of(torch.cat([out, chain.tokens[:, 1:1 + i]], 1))]
                          for i in range(DRAFT_K + 1)], 1)  # [m, n, V]: the target after each node
    acc = rule.accept(chain, logits, root_position + chain.depths)
    return [toks[1:1 + b] + [nxt] for toks, b, nxt in zip(chain.tokens.tolist(), acc.best.tolist(), acc.next.tolist())]


def g_test(counts: torch.Tensor, law: torch.Tensor) -> float:
    """The G-test's p-value of observed counts against a law, cells pooled (in order of expected
    count) until every pooled cell expects at least 5."""
    expected = law * counts.sum()
    order = expected.argsort()
    pooled_e, pooled_o, acc_e, acc_o = [], [], 0.0, 0.0
    for i in order.tolist():
        acc_e, acc_o = acc_e + expected[i].item(), acc_o + counts[i].item()
        if acc_e >= 5:
            pooled_e.append(acc_e)
            pooled_o.append(acc_o)
            acc_e = acc_o = 0.0
    if acc_e and pooled_e:
        pooled_e[-1] += acc_e
        pooled_o[-1] += acc_o
    e, o = torch.tensor(pooled_e, dtype=torch.float64), torch.tensor(pooled_o, dtype=torch.float64)
    g = 2 * (o * torch.log(torch.where(o > 0, o / e, torch.ones_like(o)))).sum()
    df = len(pooled_e) - 1
    return torch.special.gammaincc(torch.tensor(df / 2, dtype=torch.float64), g / 2).item()


@pytest.fixture(scope="module")
def laws():
    target = tables(tiny_model(seed=3, vocab=VOCAB, layers=2), TOKENS + DRAFT_K - 1)
    draft = tables(tiny_model(seed=4, vocab=VOCAB, layers=1), TOKENS + DRAFT_K - 1)
    return target, draft


PARAMS = SamplingParams(1.0)


def rejection(cls=Rejection):
    def make(keys):
        return cls(PARAMS, keys, keys ^ 0x5151, keys ^ 0x7373)
    return make


class UnnormalisedResidual(Rejection):
    def residual(self, p, q):
        return (p - q).clamp(min=0)


class Swapped(Rejection):
    def accept_test(self, u, p_d, q_d):
        return u * p_d < q_d


class GreedyVerifier(Rejection):
    def accept(self, tree, logits, positions):
        return Greedy().accept(tree, logits, positions)


@pytest.mark.parametrize("rule_for, sample_drafts", [
    (rejection(), True), (rejection(), False), (lambda keys: Exact(PARAMS, keys), False)],
    ids=["rejection, drafts drawn from q", "rejection, argmax drafts", "exact, argmax drafts"])
def test_sampled_continuations_follow_the_targets_law(laws, rule_for, sample_drafts):
    target, draft = laws
    law = exact_law(target, PARAMS)
    counts = torch.bincount(simulate(rule_for, target, draft, PARAMS, sample_drafts), minlength=VOCAB ** TOKENS)
    assert g_test(counts.double(), law) > 1e-3


@pytest.mark.parametrize("bug", [UnnormalisedResidual, Swapped, GreedyVerifier])
def test_the_law_test_catches_planted_bugs(laws, bug):
    target, draft = laws
    law = exact_law(target, PARAMS)
    counts = torch.bincount(simulate(rejection(bug), target, draft, PARAMS), minlength=VOCAB ** TOKENS)
    assert g_test(counts.double(), law) < 1e-3


def test_a_deterministic_tree_is_accepted_with_the_sum_of_its_childrens_probabilities():
    """Root with children 2, 5, 9 (a top-k tree): P(some child accepted) = p(2) + p(5) + p(9) under
    exact acceptance (counted over 40,000 keys) and under recursive rejection sampling with
    one-hot drafts (computed: each child in turn with its residual probability)."""
    torch.manual_seed(0)
    logits = torch.randn(VOCAB) * 1.5
    p = logits.double().softmax(-1)
    children = [2, 5, 9]
    tree = Tree.from_parents(torch.tensor([0, *children]), [-1, 0, 0, 0])
    runs = 40_000
    keys = device_keys([turn_key(1, str(i), 0) for i in range(runs)], "cpu")
    batch = Tree(tree.tokens.expand(runs, -1), tree.parents.expand(runs, -1), tree.depths.expand(runs, -1),
                 tree.mask.expand(runs, -1, -1))
    acc = Exact(SamplingParams(1.0), keys).accept(batch, logits.expand(runs, 4, -1), batch.depths + 10)
    exact = (acc.best > 0).double().mean().item()
    rest, recursive, reach = p.clone().double(), 0.0, 1.0
    for c in children:  # recursive rejection, q one-hot on c: accept with p'(c), else p' <- p' without c
        recursive += reach * rest[c].item()
        reach *= 1 - rest[c].item()
        rest[c] = 0
        rest /= rest.sum()
    expected = p[children].sum().item()
    assert recursive == pytest.approx(expected, abs=1e-9)
    assert exact == pytest.approx(expected, abs=5 * math.sqrt(expected * (1 - expected) / runs))


def test_exact_sampling_is_lossless_for_every_method(engine, tmp_path):
    from helpers import assert_lossless
    from test_sync import BUILDERS

    for temperature in (0.7, 1.0):
        for name, build in BUILDERS.items():
            tau = assert_lossless(engine, build(engine, tmp_path / name), sampling=SamplingParams(temperature))
            assert tau >= 1.0, name


@pytest.mark.parametrize("acceptance", ["exact", "rejection"])
def test_a_draft_equal_to_the_target_is_always_accepted_when_sampling(engine, tmp_path, acceptance):
    """sps with the target as its draft at T = 1: coupled drafts (exact) equal the target's own
    samples, and sampled drafts (rejection, q = p) pass min(1, p/q) = 1: every draft accepted."""
    from test_sps import PROMPT, shallow_checkpoint

    from harness.bench.sampled import Sampling
    from harness.core.decoding import decode
    from methods.sps import SpS

    path = shallow_checkpoint(engine, tmp_path, tuple(range(engine.num_layers)))
    method = SpS(engine, "tiny", draft=str(path), k=4, sample_drafts=True)
    rule = Sampling((1.0,), acceptance=acceptance).rule(1.0, 0, ["s"], 0, "cpu")
    out = decode(method, PROMPT, 41, set(), engine.new_cache(256), rule)
    assert out.accept_lengths == [1] + [5] * 8


def test_typical_acceptance_keeps_tokens_above_the_entropy_threshold():
    """Node 1 (token 4) after a confident target (p = .955, H = .25); node 2 (token 6) after a flat
    one (p = 1/8, H = ln 8). Accepted when p > min(epsilon, alpha * exp(-H))."""
    from harness.core.sampling import Typical

    logits = torch.zeros(1, 3, 8)
    logits[0, 0, 4] = 5.0
    chain = Tree.chain(torch.tensor([1, 4, 6]))
    keys = device_keys([turn_key(0, "x", 0)], "cpu")

    def best(**kw):
        return Typical(SamplingParams(1.0), keys, **kw).accept(chain, logits, chain.depths).best.item()
    assert best() == 2  # Medusa's defaults: thresholds .09 and min(.09, .3 / 8) = .0375
    assert best(alpha=2.0, epsilon=0.2) == 1  # node 2's threshold min(.2, 2 / 8) = .2 > 1/8
    assert best(alpha=5.0, epsilon=0.99) == 0  # node 1's threshold .99 > .955


def test_a_divergence_under_sampling_is_diagnosed_with_the_turns_noise(tiny_model_dir, tmp_path, monkeypatch):
    """A planted verifier bug at T = 1: a mismatch, and the diagnosis, recomputing the baseline's
    perturbed scores at the diverging position, finds the baseline's own token on top."""
    import methods as registry
    from harness.bench.records_io import read_records
    from harness.bench.runner import RunConfig, Runner
    from harness.bench.sampled import Sampling

    monkeypatch.setitem(registry.REGISTRY, "buggy", "test_protocol:PlantedBug")
    cfg = RunConfig(methods=["buggy", "pld"], datasets=["gsm8k"], model=str(tiny_model_dir), device="cpu",
                    num_samples=2, max_new_tokens=8, out=tmp_path / "o", telemetry=False, warmup=False,
                    sampling=Sampling((1.0,)))
    Runner(cfg, progress=False).run()
    records = read_records(tmp_path / "o" / "records.jsonl")
    buggy = [r for r in records if r["method"] == "buggy"]
    assert buggy and all(r["lossless"] is False and r["divergence"]["kind"] == "mismatch" for r in buggy)
    assert all(r["divergence"]["baseline_top2"][0] == r["divergence"]["baseline_token"] for r in buggy)
    assert all(r["lossless"] is True and r["acceptance"] == "exact" for r in records if r["method"] == "pld")

"""Self-speculative decoding: the draft is the target with sublayers skipped; the target cache
stays clean; losslessness; threshold adaptation; options; the skip-set search."""

import json

import pytest
import torch
from click.testing import CliRunner
from helpers import assert_cache_is_committed_sequence, assert_lossless

import methods as registry
from harness.cli import main
from harness.core.decoding import decode
from harness.core.method import MethodError
from harness.train.skipsearch import starting_points
from methods.autoregressive import Autoregressive
from methods.peers import HFEarlyExit
from methods.self_speculative import SelfSpeculative, SkipSet, ThresholdRule

PROMPT = [3, 1, 4, 1, 5, 9]


def make(engine, skip="a1,m2", **kw):
    return SelfSpeculative(engine, "tiny", skip=skip, **kw)


def test_empty_skip_set_drafts_exactly_the_target(engine):
    method = make(engine, "none", threshold=0.0, adaptive=False, max_draft=4)
    out = decode(method, PROMPT, 41, set(), engine.new_cache(256))
    assert method.drafted > 0 and method.accepted == method.drafted
    assert out.accept_lengths[1:] == [5] * 8  # every step: 4 drafts + the bonus token
    assert len(out.output_ids) / len(out.accept_lengths) == pytest.approx(41 / 9)


@torch.no_grad()
def test_empty_skip_set_draft_rows_equal_target_rows(engine):
    """Draft rows at slots cache.length + j see the prefix and the rows before them, like the
    target forward of the whole sequence."""
    method, seq = make(engine, "none"), [3, 1, 4, 1, 5, 9, 2, 6, 5, 3]
    ref = engine.logits(engine.forward(torch.tensor(seq), torch.arange(len(seq)), None, None))[0]  # [10, V]
    cache = engine.new_cache(64)
    method.prefill(torch.tensor([seq[:4]]), cache)
    cache.truncate(4)
    for j in range(4, len(seq)):  # the row at slot j: offset j - 4 past the committed length
        torch.testing.assert_close(method.draft_logits(torch.tensor([[seq[j]]]), j - 4, cache)[0], ref[j])


@pytest.mark.parametrize("skip", ["a1,m2", "a0,a1,a2,a3,m0,m1,m2,m3", "none"])
def test_cache_holds_the_committed_sequence(engine, skip):
    assert_cache_is_committed_sequence(engine, make(engine, skip, threshold=0.3), PROMPT)


@torch.no_grad()
def test_propose_writes_only_draft_slots_and_counts_no_target_forward(engine):
    method = make(engine, "a1,m2", threshold=0.0, max_draft=5)
    cache = engine.new_cache(64)
    method.prefill(torch.tensor([PROMPT]), cache)
    cache.truncate(len(PROMPT))  # as the loop does after the prefill
    committed = cache.buf[..., : len(PROMPT), :].clone()
    forwards = engine.counters.forwards
    tree = method.propose(torch.tensor([7]), cache)
    assert tree.size == 6 and int(tree.tokens[0, 0]) == 7
    assert cache.length == len(PROMPT) and engine.counters.forwards == forwards
    assert torch.equal(cache.buf[..., : len(PROMPT), :], committed)
    drafted = cache.buf[:, :, :, :, len(PROMPT): len(PROMPT) + 5]  # [layers, 2, B, H, 5, D]
    assert drafted[0].abs().sum() > 0 and drafted[1].abs().sum() == 0  # attention 1 skipped: never written


def test_lossless_with_skipped_sublayers(engine):
    for skip in ("a1,m2", "a0,a2,m1,m3"):
        method = make(engine, skip, threshold=0.5)
        tau = assert_lossless(engine, method)
        assert 1.0 < tau and method.accepted < method.drafted, skip  # drafts accepted and rejected


def test_threshold_rule_moves_towards_the_target_acceptance():
    low = ThresholdRule(0.5)
    for _ in range(20):
        low.update(accepted=0, drafted=4, hit_max=False)
    assert low.value > 0.5  # drafts rejected: stop drafting earlier
    high = ThresholdRule(0.5)
    for _ in range(20):
        high.update(accepted=4, drafted=4, hit_max=False)
    assert high.value < 0.5  # drafts accepted: draft longer
    capped = ThresholdRule(0.5)
    capped.update(accepted=4, drafted=4, hit_max=True)
    fixed = ThresholdRule(0.5, adaptive=False)
    fixed.update(accepted=0, drafted=4, hit_max=False)
    assert capped.value == fixed.value == 0.5


def test_threshold_adapts_while_decoding(engine):
    exact = make(engine, "none", threshold=0.99)  # short drafts, all accepted: draft longer
    assert_lossless(engine, exact)
    assert exact.accepted == exact.drafted and exact.exit_rule.value < 0.99
    poor = make(engine, "a3,m3", threshold=0.3)  # most drafts rejected: stop earlier
    assert_lossless(engine, poor)
    assert poor.accepted < poor.drafted / 2 and poor.exit_rule.value > 0.3
    fixed = make(engine, "a3,m3", threshold=0.3, adaptive="false")
    assert_lossless(engine, fixed)
    assert fixed.exit_rule.value == 0.3


def test_skip_set_text_form():
    skip = SkipSet.parse(" m7, a3,A5 ")
    assert (skip.attn, skip.mlp) == ({3, 5}, {7}) and skip.spec() == "a3,a5,m7" and skip.size == 3
    assert SkipSet.parse("none") == SkipSet() and SkipSet().spec() == "none"


@pytest.mark.parametrize("values, message", [
    ({"skip": "x3"}, "is not a sublayer"), ({"skip": "a"}, "is not a sublayer"), ({"skip": "a1;m2"}, "is not a sublayer"),
    ({"threshold": "1.5"}, "not in [0, 1]"), ({"threshold": "high"}, "not a valid float"),
    ({"max_draft": "0"}, "at least 1"), ({"adaptive": "maybe"}, "not a valid bool"), ({"depth": "3"}, "unknown option"),
])
def test_bad_options_fail_before_the_model_loads(values, message):
    with pytest.raises(MethodError, match=message.replace("[", r"\[").replace("]", r"\]")):
        registry.get("self-spec").resolve_options(values)


def test_skip_set_outside_the_model_and_missing_artifact(engine, tmp_path):
    with pytest.raises(MethodError, match=r"layer\(s\) \[4, 9\]"):
        make(engine, "a9,m4,a1")
    with pytest.raises(MethodError, match="spec-harness train self-spec"):
        SelfSpeculative(engine, "tiny", checkpoint=str(tmp_path / "absent.json"))
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"model": "another-model", "skip_attn": [1], "skip_mlp": []}))
    with pytest.raises(MethodError, match="searched for model another-model"):
        SelfSpeculative(engine, "tiny", checkpoint=str(other))
    assert SelfSpeculative.artifact_path("m", "self-spec") == SelfSpeculative.default_weights("m")  # what `list` looks for


def test_search_writes_an_artifact_the_method_runs(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("SPEC_HARNESS_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "self-spec.json"
    res = CliRunner().invoke(main, ["train", "self-spec", "--model", str(tiny_model_dir), "--trials", "5",
                                    "--num-prompts", "2", "--max-new-tokens", "8", "--confirm", "2",
                                    "--device", "cpu", "--out", str(out)])
    assert res.exit_code == 0, res.output
    art = json.loads(out.read_text())
    assert [t[1] for t in art["trials"]][0] == "none" and len(art["trials"]) == 5  # the empty set is trial 0
    assert SkipSet.parse(art["skip"]) == SkipSet(frozenset(art["skip_attn"]), frozenset(art["skip_mlp"]))
    assert art["skip"] != "none" and "none" not in art["confirmed"]  # the reference is never the result
    assert all(0 <= i < art["num_layers"] == 3 for i in art["skip_attn"] + art["skip_mlp"])
    assert art["best"]["tokens_per_s"] > 0 and art["ar"]["tau"] == 1.0 and art["empty_set"]["acceptance"] == 1.0
    assert art["empty_set"]["search_tokens_per_s"] == art["trials"][0][0]
    assert art["budget"]["trials"] == 5 and art["budget"]["prompts"] == 2 and art["seconds"] >= 0
    assert art["budget"]["distinct_sets"] == len({t[1] for t in art["trials"]}) and art["ar"]["acceptance"] is None
    assert set(art["threshold"]) == {"threshold", "adaptive", "max_draft"} and "commit" in art
    run = CliRunner().invoke(main, ["run", "--model", str(tiny_model_dir), "--methods", "self-spec", "--datasets",
                                    "gsm8k", "--num-samples", "1", "--max-new-tokens", "6", "--no-warmup",
                                    "--out", str(tmp_path / "run"), "--method-arg", f"self-spec.checkpoint={out}"])
    assert run.exit_code == 0, run.output
    assert "100%" in run.output  # lossless


def test_starting_points_are_the_empty_set_then_structured_sets():
    points = starting_points(30)
    assert len(points) == 5 and all(len(p) == 60 and set(p.values()) <= {0, 1} for p in points)
    assert sum(points[0].values()) == 0  # the reference
    assert [i for i in range(30) if points[1][f"m{i}"]] == list(range(15, 29, 2)) and not points[1]["a15"]
    assert [i for i in range(30) if points[4][f"a{i}"] and points[4][f"m{i}"]] == list(range(18, 25))


def test_hf_early_exit_peer_equals_the_baseline(engine):
    peer = HFEarlyExit(engine, "tiny")
    assert peer.layer == 2 and peer.generate_kwargs() == {"assistant_early_exit": 2}  # half of 4 layers
    ar, cache = Autoregressive(engine, "tiny"), engine.new_cache(256)
    for prompt in ([3, 1, 4, 1, 5, 9], [10, 20, 30, 40]):
        assert peer.generate(prompt, 20, {96}).output_ids == decode(ar, prompt, 20, {96}, cache).output_ids
    with pytest.raises(MethodError, match="not in 1..4"):
        HFEarlyExit(engine, "tiny", layer="5")


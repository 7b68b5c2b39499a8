"""`auto` draft shapes on the tiny random Llama, with hand-made profiles and cost models: every
planning method builds and decodes losslessly, records its plan, falls back with a note without a
profile (measuring nothing), uses a given cost model or measures this machine's once into the
cache, and plans larger drafts when rows are free."""

import json
import math

import pytest
import torch
from conftest import tiny_model
from helpers import assert_lossless

from harness.core.checkpoint import save_checkpoint
from harness.core.method import MethodError
from harness.core.planning import costmodel
from methods.eagle import Eagle, EagleHead, target_shapes
from methods.firp import FIRP, PseudoChains
from methods.lookahead import Lookahead
from methods.medusa import Medusa, MedusaHeads
from methods.pld import PromptLookup
from methods.sps import SpS

TREE = {"family": "tree", "depth": 3, "ranks": 3, "p": [[0.6, 0.2, 0.1], [0.5, 0.2, 0.1], [0.4, 0.2, 0.1]]}
CHAIN = {"family": "chain", "drafted_at_least": [0.6] * 8, "accepted_at_least": [0.45 * 0.6 ** i for i in range(8)]}
LOOKAHEAD = {"family": "grid", "points": [
    {"options": {"window": 3, "ngram": 3, "guess": 3}, "tokens_per_step": 1.3, "positions": 7.5},
    {"options": {"window": 5, "ngram": 4, "guess": 5}, "tokens_per_step": 1.6, "positions": 20.0}]}
EAGLE = {"family": "grid", "points": [
    {"options": {"depth": 2, "top_k": 2, "total_tokens": 2}, "tokens_per_step": 1.6, "positions": 3, "draft_forwards": 2},
    {"options": {"depth": 3, "top_k": 2, "total_tokens": 6}, "tokens_per_step": 2.2, "positions": 7, "draft_forwards": 3}]}
FIRP_HEAD = {"drafts": {f"firp:chain-logits:{d}": 0.0 for d in (1, 2, 3)}}  # decoding FIRP's chains: free
FLAT = {"n": [1, 64], "ratio": [1.0, 1.0], **FIRP_HEAD}
STEEP = {"n": [1, 2, 64], "ratio": [1.0, 2.0, 64.0], **FIRP_HEAD}


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch):
    """This machine's cost models go to a fresh cache."""
    monkeypatch.setenv("SPEC_HARNESS_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "costmodel"


def write(path, data):
    path.write_text(json.dumps(data))
    return str(path)


def firp(engine, tmp_path, **options):
    chains = PseudoChains(engine.hidden_size, (1, 2, 2))
    save_checkpoint(tmp_path / "firp.safetensors", chains, {"config": chains.config()})
    return FIRP(engine, "tiny", checkpoint=str(tmp_path / "firp.safetensors"), **options)


def medusa(engine, tmp_path, **options):
    heads = MedusaHeads(engine.hidden_size, 3, engine.lm_head)
    save_checkpoint(tmp_path / "medusa.safetensors", heads, {"config": heads.config()})
    return Medusa(engine, "tiny", checkpoint=str(tmp_path / "medusa.safetensors"), **options)


def eagle(engine, tmp_path, **options):
    torch.manual_seed(0)
    head = EagleHead(engine, target_shapes(engine))
    save_checkpoint(tmp_path / "eagle.safetensors", head, {"method": "eagle", "config": head.config()})
    return Eagle(engine, "tiny", checkpoint=str(tmp_path / "eagle.safetensors"), top_k=2, **options)


def sps(engine, tmp_path, **options):
    tiny_model(seed=1, layers=2).save_pretrained(tmp_path / "draft")
    return SpS(engine, "tiny", draft=str(tmp_path / "draft"), **options)


def test_trained_drafters_plan_from_the_profile_beside_their_checkpoint(engine, tmp_path, cache_dir):
    write(tmp_path / "firp.profile.json", TREE)
    method = firp(engine, tmp_path)
    plan = method.describe()["plan"]
    assert plan["profile"] == str(tmp_path / "firp.profile.json") and plan["costmodel"]["source"] == "cache"
    assert len(list(cache_dir.glob("tiny-cpu-float32-*.json"))) == 1  # measured once, cached
    assert method.shape.size - 1 == int(plan["chosen"].split()[0]) and plan["predicted_speedup"] > 0
    assert method.steps == method.shape.depth
    assert_lossless(engine, method)


def test_medusa_measures_its_heads_into_the_cache_and_a_given_file_without_them_falls_back(engine, tmp_path, cache_dir):
    write(tmp_path / "medusa.profile.json", TREE)
    method = medusa(engine, tmp_path)
    assert_lossless(engine, method)
    cached = json.loads(next(cache_dir.glob("*.json")).read_text())
    assert cached["drafts"]["medusa:medusa.safetensors"] > 0
    given = medusa(engine, tmp_path, costmodel=write(tmp_path / "flat.json", FLAT))
    assert given.describe()["plan"]["fallback"].startswith(f"the cost model {tmp_path / 'flat.json'} has no draft cost")
    assert given.shape.size - 1 == 5  # the static tiny tree
    with_heads = medusa(engine, tmp_path, costmodel=write(tmp_path / "heads.json", {**FLAT, "drafts": {
        "medusa:medusa.safetensors": 0.2}}))
    assert with_heads.describe()["plan"]["cost_per_step"] == pytest.approx(1.2)


def test_flat_cost_model_buys_a_larger_tree_than_a_steep_one(engine, tmp_path):
    write(tmp_path / "firp.profile.json", TREE)
    flat = firp(engine, tmp_path, costmodel=write(tmp_path / "flat.json", FLAT))
    steep = firp(engine, tmp_path, costmodel=write(tmp_path / "steep.json", STEEP))
    assert flat.shape.size > steep.shape.size == 2  # steep: one draft node
    assert "note" in steep.describe()["plan"] and "note" not in flat.describe()["plan"]
    assert flat.describe()["plan"]["costmodel"]["source"] == "given"


def test_firp_charges_decoding_its_chains_per_depth_and_falls_back_as_deep_as_it_drafts(engine, tmp_path):
    """The LM head on a chain's pseudo rows is not in c(n): a costly one buys a shallower tree.
    A cost model without it cannot plan FIRP; the static tree is then cut to the checkpoint's depth."""
    write(tmp_path / "firp.profile.json", TREE)
    free = firp(engine, tmp_path, costmodel=write(tmp_path / "free.json", FLAT))
    costly = {"firp:chain-logits:1": 0.2, "firp:chain-logits:2": 0.4, "firp:chain-logits:3": 5.0}
    paid = firp(engine, tmp_path, costmodel=write(tmp_path / "paid.json", {**FLAT, "drafts": costly}))
    assert paid.shape.depth < free.shape.depth == 3
    chosen = [tuple(map(int, q.split("."))) for q in paid.describe()["plan"]["chosen"].split(": ")[1].split(";")]
    assert paid.describe()["plan"]["forward_and_draft_cost"] == pytest.approx(1.0 + costly[
        f"firp:chain-logits:{max(map(len, chosen))}"], abs=1e-3)
    two = PseudoChains(engine.hidden_size, (1, 2))
    save_checkpoint(tmp_path / "two.safetensors", two, {"config": two.config()})
    write(tmp_path / "two.profile.json", TREE)
    bare = FIRP(engine, "tiny", checkpoint=str(tmp_path / "two.safetensors"),
                costmodel=write(tmp_path / "bare.json", {"n": [1, 64], "ratio": [1.0, 1.0]}))
    assert "no draft cost 'firp:chain-logits:" in bare.describe()["plan"]["fallback"]
    assert bare.shape.depth == 2 and bare.shape.size > 2  # tiny, cut to two steps


def test_step_overheads_are_added_in_units_of_the_baseline_step_and_buy_larger_drafts(engine, tmp_path):
    write(tmp_path / "firp.profile.json", TREE)
    curve = {"n": [1, 2, 4, 8, 16, 64], "ratio": [1.0, 1.3, 1.6, 2.2, 3.5, 20.0], **FIRP_HEAD}
    bare = firp(engine, tmp_path, costmodel=write(tmp_path / "bare.json", curve)).describe()["plan"]
    loaded = firp(engine, tmp_path, costmodel=write(tmp_path / "o.json", {**curve, "overheads": {"ar": 0.1, "firp": 2.0}}))
    plan = loaded.describe()["plan"]
    assert "overhead" in bare and "overhead_per_step" not in bare  # says it is missing
    assert (plan["overhead_per_step"], plan["baseline_overhead"]) == (2.0, 0.1)
    assert plan["cost_per_step"] == pytest.approx((plan["forward_and_draft_cost"] + 2.0) / 1.1, abs=1e-3)
    assert plan["predicted_speedup"] == pytest.approx(plan["tokens_per_step"] / plan["cost_per_step"], abs=1e-3)
    assert int(plan["chosen"].split()[0]) > int(bare["chosen"].split()[0])  # a fixed cost per step: more per step pays
    assert plan["predicted_speedup"] < bare["predicted_speedup"]


def test_the_chosen_shape_is_predicted_per_tuning_set_when_the_profile_has_them(engine, tmp_path):
    high = {"p": [[0.9, 0.05, 0.0], [0.9, 0.05, 0.0], [0.9, 0.05, 0.0]]}
    low = {"p": [[0.2, 0.1, 0.0], [0.2, 0.1, 0.0], [0.2, 0.1, 0.0]]}
    write(tmp_path / "firp.profile.json", {**TREE, "by_source": {"gsm8k-train": high, "xsum-train": low}})
    plan = firp(engine, tmp_path, costmodel=write(tmp_path / "c.json", {"n": [1, 64], "ratio": [1.0, 3.0], **FIRP_HEAD})).describe()["plan"]
    got = plan["predicted_by_source"]
    assert got["gsm8k-train"] > plan["predicted_speedup"] > got["xsum-train"]
    paths = [tuple(map(int, q.split("."))) for q in plan["chosen"].split(": ")[1].split(";")]
    expected = 1 + sum(math.prod(low["p"][d][r] for d, r in enumerate(q)) for q in paths)  # same tree, xsum's odds
    assert got["xsum-train"] == pytest.approx(expected / plan["cost_per_step"], abs=1e-3)
    chain = {**CHAIN, "by_source": {"gsm8k-train": CHAIN, "xsum-train": {**CHAIN, "accepted_at_least": [0.0] * 8}}}
    pld = PromptLookup(engine, "tiny", profile=write(tmp_path / "p.json", chain), costmodel=write(tmp_path / "f.json", FLAT))
    by = pld.describe()["plan"]["predicted_by_source"]
    assert by["gsm8k-train"] == pytest.approx(pld.describe()["plan"]["predicted_speedup"]) and by["xsum-train"] == 1.0


@pytest.mark.parametrize("build,profile,check", [
    (lambda e, t, **o: PromptLookup(e, "tiny", profile=write(t / "p.json", CHAIN), **o), CHAIN,
     lambda m: m.k == 8),
    (lambda e, t, **o: sps(e, t, profile=write(t / "p.json", CHAIN), **o), CHAIN, lambda m: 1 <= m.k <= 8),
    (lambda e, t, **o: Lookahead(e, "tiny", profile=write(t / "p.json", LOOKAHEAD), **o), LOOKAHEAD,
     lambda m: (m.width, m.ngram, m.guess) == (5, 4, 5) and m.describe()["options"]["window"] == 5),
    (lambda e, t, **o: eagle(e, t, profile=write(t / "p.json", EAGLE), **o), EAGLE,
     lambda m: (m.config["depth"], m.config["total_tokens"]) == (3, 6)),
], ids=["pld", "sps", "lookahead", "eagle"])
def test_each_method_plans_auto_and_decodes_losslessly(engine, tmp_path, build, profile, check):
    flat = write(tmp_path / "flat.json", {**FLAT, "drafts": {"sps:draft": 0.05, "eagle:eagle.safetensors:top_k2": 0.05}})
    method = build(engine, tmp_path, costmodel=flat)
    plan = method.describe()["plan"]
    assert "predicted_speedup" in plan and "fallback" not in plan, plan
    assert check(method)
    assert_lossless(engine, method)


def test_without_a_profile_methods_fall_back_to_their_static_default_and_measure_nothing(engine, tmp_path, cache_dir):
    built = [firp(engine, tmp_path), PromptLookup(engine, "tiny"), Lookahead(engine, "tiny"),
             eagle(engine, tmp_path), sps(engine, tmp_path)]
    for method in built:
        plan = method.describe()["plan"]
        assert plan["fallback"].startswith("no acceptance profile at") and "tune profile" in plan["fallback"]
    assert built[0].shape.size - 1 == 5 and built[1].k == 10 and built[2].width == 3 and built[4].k == 4
    assert (built[3].config["depth"], built[3].config["total_tokens"]) == (4, 8)
    assert not cache_dir.exists()
    assert_lossless(engine, built[0])


def test_explicit_shapes_work_as_before_and_record_no_plan(engine, tmp_path):
    write(tmp_path / "firp.profile.json", TREE)
    assert "plan" not in firp(engine, tmp_path, tree="chain").describe()
    assert PromptLookup(engine, "tiny", k="3").k == 3
    look = Lookahead(engine, "tiny", window="4", profile=write(tmp_path / "l.json", LOOKAHEAD))
    assert (look.width, look.ngram, look.guess) == (4, 3, 3) and look.planned is None
    fixed_depth = eagle(engine, tmp_path, depth="2", profile=write(tmp_path / "e.json", EAGLE),
                        costmodel=write(tmp_path / "c.json", {**FLAT, "drafts": {"eagle:eagle.safetensors:top_k2": 0.1}}))
    assert (fixed_depth.config["depth"], fixed_depth.config["total_tokens"]) == (2, 2)  # planned among depth 2


def test_bad_planning_options_are_refused_before_loading(engine, tmp_path):
    with pytest.raises(MethodError, match="pld.costmodel: no such file"):
        PromptLookup.resolve_options({"costmodel": str(tmp_path / "missing.json")})
    with pytest.raises(MethodError, match="not a valid int"):
        PromptLookup.resolve_options({"k": "many"})
    write(tmp_path / "wrong.json", CHAIN)
    with pytest.raises(MethodError, match="not a tree acceptance profile"):
        firp(engine, tmp_path, profile=str(tmp_path / "wrong.json"))
    write(tmp_path / "bad.json", {"n": [2], "ratio": [1.0]})
    write(tmp_path / "firp.profile.json", TREE)
    with pytest.raises(MethodError, match="firp.costmodel: .* rise from 1"):
        firp(engine, tmp_path, costmodel=str(tmp_path / "bad.json"))


def test_cached_cost_model_is_reused(engine, tmp_path, cache_dir):
    first = costmodel.for_engine(engine, "tiny")
    again = costmodel.for_engine(engine, "tiny")
    assert again.path == first.path and again.data == first.data and not again.given
    assert first.data["n"][0] == 1 and first.data["ratio"][0] == 1.0


def test_drafts_shrink_with_the_batch_size_on_this_cpu_and_stay_when_rows_are_free(engine, tmp_path):
    """At batch B a step of n rows per sequence costs c(B n)/c(B): on the committed CPU cost model
    FIRP's, EAGLE's and pld's planned drafts at B = 8 are smaller than at B = 1; flat, they stay."""
    from pathlib import Path

    measured = costmodel.read(sorted((Path(__file__).parent.parent / "results" / "costmodel").glob("*-cpu-float32.json"))[0])
    heads = {**FIRP_HEAD["drafts"], "eagle:eagle.safetensors:top_k2": 0.1}
    cpu = write(tmp_path / "cpu.json", {"n": measured["n"], "ratio": measured["ratio"], "drafts": heads})
    flat = write(tmp_path / "flat.json", {"n": [1, 4096], "ratio": [1.0, 1.0], "drafts": heads})  # GPU-like
    write(tmp_path / "firp.profile.json", TREE)
    write(tmp_path / "pld.json", CHAIN)
    write(tmp_path / "eagle.profile.json", EAGLE)

    def sizes(cost, batch):
        return (firp(engine, tmp_path, costmodel=cost, batch=batch).shape.size,
                PromptLookup(engine, "tiny", profile=str(tmp_path / "pld.json"), costmodel=cost, batch=batch).k,
                eagle(engine, tmp_path, costmodel=cost, batch=batch, profile=str(tmp_path / "eagle.profile.json"))
                .config["total_tokens"])

    one, eight = sizes(cpu, 1), sizes(cpu, 8)
    assert all(a > b for a, b in zip(one, eight)), (one, eight)
    assert sizes(flat, 1) == sizes(flat, 8)
    plan = firp(engine, tmp_path, costmodel=cpu, batch=8).describe()["plan"]
    assert plan["costmodel"]["batch_size"] == 8 and plan["costmodel"]["max_n"] == measured["n"][-1] // 8

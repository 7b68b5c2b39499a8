"""The protocol a reviewer checks: stratified subsets, seeded and recorded order, the A/A control,
cluster-bootstrap intervals, acceptance in the field's conventions, diagnosed divergences,
Spec-Bench's format."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner
from helpers import write_synthetic_run

import methods as registry
from harness.bench import metrics
from harness.bench.data import (
    DataError,
    Sample,
    all_samples,
    load_samples,
    parse_entry,
    select,
)
from harness.bench.divergence import diagnose
from harness.bench.records_io import read_records
from harness.bench.report import predicted_for
from harness.bench.runner import RunConfig, Runner, permutation
from harness.cli import main
from harness.core.decoding import decode
from methods.autoregressive import Autoregressive


def items(cats):
    return [Sample("d", str(i), ["q"], None, {"category": c}) for i, c in enumerate(cats)]


def test_stratified_subset_round_robin_in_file_order():
    data = items(["a", "a", "a", "b", "b", "c"])
    assert [s.sample_id for s in select(data, 3)] == ["0", "3", "5"]  # one per category
    assert [s.sample_id for s in select(data, 5)] == ["0", "1", "3", "4", "5"]  # then a second of a and b
    assert [s.sample_id for s in select(data, 2)] == ["0", "3"]  # N < categories: the first categories
    assert select(data, 4) == select(data, 4) and [s.sample_id for s in select(data, 99)] == [str(i) for i in range(6)]
    plain = [Sample("d", str(i), ["q"]) for i in range(5)]
    assert [s.sample_id for s in select(plain, 2)] == ["0", "1"]  # no categories: file order


def test_mt_bench_and_spec_bench_subsets_cover_every_category():
    mt = load_samples("mt-bench", 24)
    assert len(mt) == 24 and {s.category for s in mt} == {s.category for s in all_samples("mt-bench")}
    assert all(sum(s.category == c for s in mt) == 3 for c in {s.category for s in mt})
    sb = load_samples("spec-bench", 39)
    assert len({s.category for s in sb}) == 13 and len(all_samples("spec-bench")) == 480


def test_spec_bench_format_from_a_path(tmp_path):
    path = tmp_path / "q.jsonl"
    rows = [{"question_id": 1, "category": "qa", "turns": ["what?"], "reference": ["a", "b"]},
            {"question_id": 2, "category": "writing", "turns": ["write", "again"]}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    got = all_samples(f"specbench:{path}")
    assert [(s.sample_id, s.category, s.turns) for s in got] == [("1", "qa", ["what?"]), ("2", "writing", ["write", "again"])]
    path.write_text(json.dumps({"question_id": 1, "turns": []}) + "\n")
    with pytest.raises(Exception, match="turns"):
        all_samples(f"specbench:{path}")


def test_one_category_is_a_dataset_of_its_own_and_an_entry_may_carry_its_count(tmp_path):
    coding = all_samples("spec-bench#coding")
    assert len(coding) == 10 and {(s.dataset, s.category) for s in coding} == {("spec-bench#coding", "coding")}
    assert [s.sample_id for s in coding] == [s.sample_id for s in all_samples("spec-bench") if s.category == "coding"]
    with pytest.raises(DataError, match="no category 'cooking'; its categories: writing, roleplay"):
        all_samples("mt-bench#cooking")
    for name in ("gsm8k#x", "spec-bench#"):
        with pytest.raises(DataError, match="unknown dataset"):
            all_samples(name)
    assert parse_entry("spec-bench@39") == ("spec-bench", 39) and parse_entry("mt-bench#coding@3") == ("mt-bench#coding", 3)
    assert parse_entry("gsm8k") == ("gsm8k", None)
    with pytest.raises(DataError, match="at least 1"):
        parse_entry("xsum@0")
    named = tmp_path / "items@2"  # a user's file whose own name ends in @N is read as named
    named.write_text('{"prompt": "hi"}\n')
    assert parse_entry(f"jsonl:{named}") == (f"jsonl:{named}", None)


def test_a_category_dataset_is_predicted_from_its_kind_of_text():
    plan = {"predicted_speedup": 1.1, "predicted_by_source": {"code-train": 0.9, "chat-train": 1.0}}
    assert predicted_for(plan, "spec-bench#coding") == 0.9 and predicted_for(plan, "mt-bench") == 1.0
    assert predicted_for(plan, "spec-bench") == 1.1 and predicted_for(plan, "spec-bench", "coding") == 0.9


def test_a_run_measures_each_datasets_own_count(tiny_model_dir, tmp_path):
    cfg = RunConfig(methods=["ar"], datasets=["mt-bench@1", "spec-bench#coding"], model=str(tiny_model_dir),
                    device="cpu", num_samples=2, max_new_tokens=2, out=tmp_path / "o", telemetry=False)
    Runner(cfg, progress=False).run()
    manifest = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert {d: len(v) for d, v in manifest["samples"].items()} == {"mt-bench": 1, "spec-bench#coding": 2}
    assert manifest["request"]["datasets"] == ["mt-bench", "spec-bench#coding"]
    assert manifest["dataset_counts"] == {"mt-bench": 1}
    assert {r["dataset"] for r in read_records(tmp_path / "o" / "records.jsonl")} == {"mt-bench", "spec-bench#coding"}
    twice = RunConfig(methods=["ar"], datasets=["mt-bench@1", "mt-bench@3"], model=str(tiny_model_dir), device="cpu",
                      out=tmp_path / "p", telemetry=False)
    with pytest.raises(DataError, match="mt-bench is given twice, with 1 and 3 items"):
        Runner(twice, progress=False)


def test_permutation_is_seeded_and_varies_by_sample():
    names = ["ar", "a", "b", "c", "ar:control"]
    assert permutation(names, 0, "gsm8k", "7") == permutation(names, 0, "gsm8k", "7")
    orders = {tuple(permutation(names, 0, "gsm8k", str(i))) for i in range(20)}
    assert len(orders) > 5 and all(sorted(o) == sorted(names) for o in orders)
    assert permutation(names, 1, "gsm8k", "7") != permutation(names, 0, "gsm8k", "7") or \
        permutation(names, 1, "gsm8k", "8") != permutation(names, 0, "gsm8k", "8")


def test_run_records_order_control_and_null_lossless(tiny_model_dir, tmp_path):
    cfg = RunConfig(methods=["ar"], datasets=["mt-bench"], model=str(tiny_model_dir), device="cpu", num_samples=2,
                    max_new_tokens=4, out=tmp_path / "o", telemetry=False, control=True, seed=3)
    Runner(cfg, progress=False).run()
    records = read_records(tmp_path / "o" / "records.jsonl")
    assert {r["method"] for r in records} == {"ar", "ar:control"} and len(records) == 8
    for r in records:
        order = permutation(["ar", "ar:control"], 3, "mt-bench", r["sample_id"])
        assert r["order"] == order.index(r["method"])
        assert r["lossless"] is (None if r["method"] == "ar" else True)
    res = CliRunner().invoke(main, ["report", str(tmp_path / "o"), "--by", "category"])
    assert res.exit_code == 0 and "writing" in res.output
    assert "A/A control mt-bench / writing:" in res.output and "A/A control mt-bench / roleplay:" in res.output


def test_turn_two_is_asked_after_the_baselines_answer(tiny_model_dir, tmp_path, monkeypatch):
    prompts = []
    original = Runner.decode_turn

    def spy(self, method, batch, rule=None):
        prompts.extend(batch)
        return original(self, method, batch, rule)

    monkeypatch.setattr(Runner, "decode_turn", spy)
    monkeypatch.setitem(registry.REGISTRY, "buggy", "test_protocol:PlantedBug")  # its own answers differ
    cfg = RunConfig(methods=["buggy"], datasets=["mt-bench"], model=str(tiny_model_dir), device="cpu",
                    num_samples=1, max_new_tokens=4, out=tmp_path / "o", telemetry=False, warmup=False)
    Runner(cfg, progress=False).run()
    assert len(prompts) == 4 and prompts[0] == prompts[1] and prompts[2] == prompts[3]  # same prompt per turn
    assert len(prompts[2]) > len(prompts[0])  # turn 2 holds the baseline's first answer, not buggy's
    records = read_records(tmp_path / "o" / "records.jsonl")
    assert {r["method"]: r["output_ids"] for r in records if r["turn"] == 0}["buggy"] != \
        {r["method"]: r["output_ids"] for r in records if r["turn"] == 0}["ar"]


def test_cluster_bootstrap_moves_the_turns_of_a_sample_together():
    # sample 0: two turns, both 2x; sample 1: two turns, both 1x. Any resample is all-2x, all-1x or half.
    pairs = pd.DataFrame({"cluster": ["0", "0", "1", "1"], "tps": [2.0, 2.0, 1.0, 1.0], "tps_base": [1.0] * 4})
    out = metrics.cluster_bootstrap(pairs, seed=0, rounds=500)
    assert out["speedup"] == pytest.approx(1.5) and out["speedup_median"] == pytest.approx(1.5)
    assert out["speedup_ci_low"] == pytest.approx(1.0) and out["speedup_ci_high"] == pytest.approx(2.0)
    # treated as 4 independent turns, a resample could hold 3 of one kind: 1.25 or 1.75 would occur
    rng = np.random.default_rng(0)
    means = {float(np.mean(rng.choice(pairs["tps"], 4))) for _ in range(200)}
    assert {1.25, 1.75} & means
    bootstrap_means = set()
    for seed in range(20):
        o = metrics.cluster_bootstrap(pairs, seed=seed, rounds=50)
        bootstrap_means |= {o["speedup_ci_low"], o["speedup_ci_high"]}
    assert bootstrap_means <= {1.0, 1.5, 2.0}


def test_accept_len_and_per_position_rates():
    g = pd.DataFrame([{"forwards": 4, "new_tokens": 7, "accepted": [2, 0, 3]},
                      {"forwards": 3, "new_tokens": 4, "accepted": [1, 1]}])
    out = metrics.acceptance(g)
    assert out["tau"] == pytest.approx(11 / 7)
    assert out["accept_len"] == pytest.approx(1 + 7 / 5)
    assert out["accept_rate"] == [pytest.approx(4 / 5), pytest.approx(2 / 5), pytest.approx(1 / 5)]


def test_regress_fails_a_run_whose_control_excludes_one(tmp_path):
    ok = {"ar": (1, 1.0, 0, 1), "ar:control": (1, 1.0, 0, 1), "medusa": (2, 1.5, 4, 5)}
    ref = write_synthetic_run(tmp_path / "ref", methods=ok, samples=80)
    good = write_synthetic_run(tmp_path / "good", methods=ok, seed=1, samples=80)  # a control within 1.00 +- 0.03
    bad = write_synthetic_run(tmp_path / "bad", methods={**ok, "ar:control": (1, 1.3, 0, 1)}, seed=1, samples=80)
    assert CliRunner().invoke(main, ["regress", str(good), "--baseline", str(ref)]).exit_code == 0
    res = CliRunner().invoke(main, ["regress", str(bad), "--baseline", str(ref), "--speedup-margin", "9"])
    assert res.exit_code == 1 and "reaches beyond 1.00 +- 0.03" in res.output


@torch.no_grad()
def test_divergence_is_a_tie_or_a_mismatch(tiny, engine):
    prompt = [5, 6, 7, 8]
    ref = decode(Autoregressive(engine, "tiny"), prompt, 8, set(), engine.new_cache(64)).output_ids
    at = 3
    unused = next(t for t in range(3, 97) if t not in prompt + ref)
    emb = tiny.get_input_embeddings().weight
    emb[unused] = emb[ref[at]]  # tied LM head: token `unused` now scores exactly like the baseline's token
    tie = diagnose(engine, prompt, ref, ref[:at] + [unused], at)
    assert tie["kind"] == "tie" and tie["gap"] == pytest.approx(0.0, abs=1e-5)
    logits = engine.logits(engine.forward(torch.tensor(prompt + ref[:at]), torch.arange(len(prompt) + at), None,
                                          engine.new_cache(64))[0, -1])
    worst = int(logits.argmin())
    bad = diagnose(engine, prompt, ref, ref[:at] + [worst], at)
    assert bad["kind"] == "mismatch" and bad["gap"] > 1.0 and bad["baseline_top2"][0] in (ref[at], unused)


class PlantedBug(Autoregressive):
    """A verifier with a bug: the hidden state it returns is corrupted (as a wrong mask would)."""

    def step(self, pending, cache):
        h = super().step(pending, cache)
        return h + 3.0 * torch.roll(h, 1, dims=-1)


def test_a_planted_verifier_bug_is_classified_mismatch(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setitem(registry.REGISTRY, "buggy", "test_protocol:PlantedBug")
    cfg = RunConfig(methods=["buggy"], datasets=["gsm8k"], model=str(tiny_model_dir), device="cpu", num_samples=2,
                    max_new_tokens=8, out=tmp_path / "o", telemetry=False, warmup=False)
    Runner(cfg, progress=False).run()
    buggy = [r for r in read_records(tmp_path / "o" / "records.jsonl") if r["method"] == "buggy"]
    assert buggy and all(r["lossless"] is False and r["divergence"]["kind"] == "mismatch" for r in buggy)
    s = metrics.summarize(read_records(tmp_path / "o" / "records.jsonl")).set_index("method")
    assert s.loc["buggy", "mismatches"] == 2 and s.loc["buggy", "ties"] == 0


def test_default_methods_are_those_of_all_worth_timing_on_the_device():
    from harness.bench.request import method_list

    everything = registry.runnable("tiny")
    assert "ar-graph" in everything
    assert registry.for_device("tiny", "cpu") == [n for n in everything if n != "ar-graph"]
    assert registry.for_device("tiny", "cuda") == everything
    assert method_list("pld,default", "tiny", "cpu") == ["pld", *registry.for_device("tiny", "cpu")]

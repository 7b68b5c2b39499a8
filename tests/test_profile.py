"""Acceptance profiles (`spec-harness tune profile`) from the tuning sets only, the `plan` command,
`run --costmodel` (the plan in the manifest, `predicted` next to the measured speedup), and the
draft costs `costmodel --drafts` adds."""

import csv
import json
from collections import Counter

import pytest
from click.testing import CliRunner

import harness.bench.data
from harness.analysis.plans import draft_costs
from harness.bench.data import TUNING_SETS
from harness.cli import main
from harness.core.checkpoint import save_checkpoint
from harness.core.decoding import Decoded
from harness.core.engine import Engine
from harness.core.modelload import load_model
from harness.train.profile import ProfileConfig, count_tree_steps, measure_profile
from methods.firp import PseudoChains
from methods.medusa import MedusaHeads

FLAT = {"n": [1, 64], "ratio": [1.0, 1.0], "drafts": {f"firp:chain-logits:{d}": 0.1 for d in (1, 2)}}


@pytest.fixture
def no_test_files(monkeypatch):
    def refuse(name):
        raise AssertionError(f"profiling read the evaluation file of {name}")

    monkeypatch.setattr(harness.bench.data, "_local_rows", refuse)


@pytest.fixture
def tiny_lm(tiny_model_dir):
    return load_model(str(tiny_model_dir), "cpu", "float32")


def firp_checkpoint(engine, tmp_path):
    chains = PseudoChains(engine.hidden_size, (1, 2))
    path = tmp_path / "firp.safetensors"
    save_checkpoint(path, chains, {"config": chains.config()})
    return path


def test_tree_steps_count_the_ranks_of_the_true_tokens():
    out = Decoded(output_ids=[10, 11, 12, 13, 14, 15, 16], accept_lengths=[1, 2, 1, 1, 1])
    recorded = [[[11, 5, 6], [7, 12, 8]],  # pending index 0: futures 11, 12 -> ranks 0, 1
                [[5, 13, 6], [1, 2, 3]],  # pending 2: 13 is rank 1, 14 missing
                [[14, 1, 2], [15, 3, 4]],  # pending 3: 14, 15 -> 0, 0
                [[9, 9, 9], [9, 9, 9]],  # pending 4: 15, 16 -> nothing
                [[1, 1, 1], [1, 1, 1]]]  # pending 5: 16 and beyond the output -> not counted
    paths, reach, hits = Counter(), Counter(), Counter()
    assert count_tree_steps(recorded, out, paths, reach, hits) == 4
    assert paths == {(0,): 2, (0, 1): 1, (1,): 1, (0, 0): 1}
    assert reach == {0: 4, 1: 3} and hits == {(0, 0): 2, (1, 1): 1, (0, 1): 1, (1, 0): 1}


def test_profiles_are_measured_on_the_tuning_sets_only(tiny_lm, tmp_path, no_test_files):
    ckpt = firp_checkpoint(Engine(tiny_lm.model), tmp_path)
    tree, where = measure_profile("firp", tiny_lm, ProfileConfig(2, 12), {"checkpoint": str(ckpt)}, progress=False)
    assert where == tmp_path / "firp.profile.json" and tree["family"] == "tree" and tree["steps"] > 0
    assert tree["budget"]["sources"] == list(TUNING_SETS) == ["gsm8k-train", "xsum-train", "chat-train", "code-train"]
    assert tree["budget"]["prompts"] == 4  # one per tuning set
    assert set(tree["by_source"]) <= set(tree["budget"]["sources"])
    for key, freq in tree["paths"].items():  # a node is accepted only when its parent is
        parent = key.rpartition(".")[0]
        assert 0 < freq <= (tree["paths"][parent] if parent else 1.0)
    assert len(tree["p"]) == 2 and all(0 <= x <= 1 for row in tree["p"] for x in row)
    chain, where = measure_profile("pld", tiny_lm, ProfileConfig(2, 12), progress=False)
    drafted, accepted = chain["drafted_at_least"], chain["accepted_at_least"]
    assert len(drafted) == len(accepted) == chain["k_max"] == 16 and where.name == "pld.profile.json"
    assert all(a <= d for a, d in zip(accepted, drafted)) and drafted == sorted(drafted, reverse=True)
    for pooled in (tree, chain):  # the same numbers per tuning set: its steps add up to the pooled ones
        assert set(pooled["by_source"]) == set(TUNING_SETS)
        assert sum(part["steps"] for part in pooled["by_source"].values()) == pooled["steps"]
    parts = [chain["by_source"][s] for s in TUNING_SETS]
    assert chain["accepted_at_least"][0] == pytest.approx(
        sum(p["accepted_at_least"][0] * p["steps"] for p in parts) / chain["steps"], abs=1e-5)


def test_grid_profile_has_every_point(tiny_lm, monkeypatch):
    from methods.lookahead import Lookahead

    monkeypatch.setattr(Lookahead, "profile_grid", ({"window": 2, "ngram": 2, "guess": 1},
                                                    {"window": 3, "ngram": 3, "guess": 2}))
    grid, _ = measure_profile("lookahead", tiny_lm, ProfileConfig(2, 8), progress=False)
    assert [p["options"]["window"] for p in grid["points"]] == [2, 3]
    assert all(p["tokens_per_step"] >= 1 and p["positions"] > 1 for p in grid["points"])
    for i, point in enumerate(grid["points"]):
        parts = [grid["by_source"][s]["points"][i] for s in TUNING_SETS]
        assert all(p["options"] == point["options"] for p in parts)
        assert sum(p["steps"] for p in parts) == point["steps"]


def test_tune_profile_plan_and_run_with_a_cost_model(tiny_model_dir, tiny_lm, tmp_path, monkeypatch):
    monkeypatch.setenv("SPEC_HARNESS_CACHE", str(tmp_path / "cache"))
    ckpt = firp_checkpoint(Engine(tiny_lm.model), tmp_path)
    model, arg = ["--model", str(tiny_model_dir)], ["--method-arg", f"firp.checkpoint={ckpt}"]
    res = CliRunner().invoke(main, ["tune", "profile", "firp", *model, "--device", "cpu", *arg,
                                    "--num-prompts", "2", "--max-new-tokens", "12"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "firp.profile.json").exists() and "most accepted tree nodes" in res.output
    flat = tmp_path / "flat.json"
    flat.write_text(json.dumps(FLAT))
    res = CliRunner().invoke(main, ["plan", *model, "--device", "cpu", "--methods", "firp,pld", *arg,
                                    "--costmodel", str(flat)])
    assert res.exit_code == 0, res.output
    lines = res.stdout.splitlines()
    assert lines[0].startswith("firp") and "predicted" in lines[0] and lines[1].startswith("pld")
    assert "no acceptance profile" in lines[1] and lines[2] == f"cost model: {flat} (given)"
    res = CliRunner().invoke(main, ["run", *model, "--methods", "firp", *arg, "--costmodel", str(flat),
                                    "--datasets", "gsm8k", "--num-samples", "1", "--max-new-tokens", "8",
                                    "--no-warmup", "--no-telemetry", "--out", str(tmp_path / "run")])
    assert res.exit_code == 0, res.output
    plan = json.loads((tmp_path / "run" / "manifest.json").read_text())["method_configs"]["firp"]["plan"]
    assert plan["costmodel"]["path"] == str(flat) and plan["predicted_speedup"] > 1
    header = (tmp_path / "run" / "summary.md").read_text().splitlines()[0]
    assert header.index("speedup [95% CI]") < header.index("predicted") < header.index("median paired")
    rows = {r["method"]: r["predicted_speedup"] for r in csv.DictReader((tmp_path / "run" / "summary.csv").open())}
    assert rows == {"ar": "", "firp": str(plan["predicted_by_source"]["gsm8k-train"])}  # GSM8K: its own kind
    cached = {p.name for p in (tmp_path / "cache" / "costmodel").glob("*.json")}
    assert all(name.endswith("-linear.json") for name in cached)  # no c(n) measured: the given model was used


def test_tune_profile_refuses_a_method_without_shape(tiny_model_dir):
    res = CliRunner().invoke(main, ["tune", "profile", "ar", "--model", str(tiny_model_dir), "--device", "cpu"])
    assert res.exit_code == 2 and "no draft shape to plan" in res.output


def test_draft_costs_time_heads_against_a_target_forward(engine, tmp_path):
    heads = MedusaHeads(engine.hidden_size, 2, engine.lm_head)
    save_checkpoint(tmp_path / "m.safetensors", heads, {"config": heads.config()})
    costs = draft_costs(engine, "tiny", ["medusa", "pld"], {"medusa": {"checkpoint": str(tmp_path / "m.safetensors")}})
    assert list(costs) == ["medusa:m.safetensors"] and costs["medusa:m.safetensors"] > 0


def test_step_overheads_are_measured_again_at_the_shape_they_make_the_plan_choose(tiny_lm, tmp_path, monkeypatch):
    """A fixed loop cost per step buys longer chains: pld's first plan (its own overhead unknown)
    is re-planned once the overhead is known, and measured again there, each time against "ar"
    (and "ar" against one-row forwards); the given file is not changed."""
    from harness.analysis import plans

    curve = {"n": [1, 2, 4, 8, 16, 64], "ratio": [1.0, 1.3, 1.6, 2.2, 3.5, 20.0], "seconds": [0.05] * 6}
    cost, profile = tmp_path / "c.json", tmp_path / "pld.profile.json"
    cost.write_text(json.dumps(curve))
    profile.write_text(json.dumps({"family": "chain", "drafted_at_least": [0.6] * 8,
                                   "accepted_at_least": [0.45 * 0.6 ** i for i in range(8)]}))
    measured, pace = [], iter([0.01, 0.01, 0.02, 0.02, 0.03, 0.03])  # c(1) seconds: the machine slows down

    def fake_stepper(dec, subject):  # true overheads: ar 0.1, pld 2.0 c(1) per step at every shape
        c1 = next(pace)
        if subject is not None and subject.name != "ar":
            measured.append(subject.planned.record["chosen"])
        charged = 1.1 if subject is not None and subject.name == "ar" else 1.0
        if subject is not None and subject.planned is not None:
            charged = subject.planned.record["forward_and_draft_cost"] + 2.0
        return lambda prompt: (c1 * charged, 1)

    monkeypatch.setattr(plans, "_stepper", fake_stepper)
    got = plans.step_overheads(tiny_lm, ["pld"], {"pld": {"profile": str(profile)}}, str(cost), prompts=2,
                               max_new_tokens=4, progress=False)
    assert got == pytest.approx({"ar": 0.1, "pld": 2.0})
    assert len(measured) == 2 and measured[0] != measured[1], measured  # measured again at the new shape
    assert json.loads(cost.read_text()) == curve


def test_step_times_alternate_between_subjects_on_every_prompt(tiny_lm, monkeypatch):
    """Each subject (a method, or None: one-row forwards) is run once untimed, then in turn on each prompt."""
    from harness.analysis import plans
    from harness.train.profile import Decoder

    dec = Decoder(tiny_lm, ProfileConfig(num_prompts=2, max_new_tokens=6), progress=False)
    order, real = [], plans._stepper

    def logged(dec, subject):
        op = real(dec, subject)
        return lambda prompt: (order.append("c1" if subject is None else subject.name), op(prompt))[1]

    monkeypatch.setattr(plans, "_stepper", logged)
    got = plans._alternating(dec, {"c1": None, "ar": dec.method("ar", {})})
    assert len(dec.prompts) == 4 and order == ["c1", "ar"] * (1 + len(dec.prompts))  # one untimed round, then each prompt
    assert set(got) == {"c1", "ar"} and min(got.values()) > 0


def test_costmodel_update_needs_drafts_and_the_same_model(tiny_model_dir, tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({**FLAT, "seconds": [0.01, 0.01], "model": "another-model"}))
    res = CliRunner().invoke(main, ["costmodel", "--update", str(path), "--model", str(tiny_model_dir), "--device", "cpu"])
    assert res.exit_code == 2 and "--drafts" in res.output
    res = CliRunner().invoke(main, ["costmodel", "--update", str(path), "--drafts", "pld",
                                    "--model", str(tiny_model_dir), "--device", "cpu"])
    assert res.exit_code != 0 and "another-model" in res.output, res.output
    assert json.loads(path.read_text())["model"] == "another-model"  # untouched

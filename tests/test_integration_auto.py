"""Integration on the embedded model: FIRP's `auto` tree, planned for the committed CPU cost model
from a hand-made profile (the planned tree mixes ranks and depths), decodes exactly as the
autoregressive baseline on real samples of all three datasets."""

import json
from pathlib import Path

import pytest
from test_integration_lossless import like_ar

import methods as registry
from harness.core.checkpoint import shown_path
from harness.core.engine import Engine

pytestmark = pytest.mark.integration

COST = sorted((Path(__file__).resolve().parent.parent / "results" / "costmodel").glob("*-cpu-float32.json"))[0]
TREE = {"family": "tree", "depth": 3, "ranks": 3, "p": [[0.6, 0.2, 0.1], [0.6, 0.25, 0.1], [0.6, 0.2, 0.1]]}


def test_auto_tree_is_lossless_on_real_text(real, real_prompts, ar_reference, tmp_path):
    path = tmp_path / "firp.profile.json"
    path.write_text(json.dumps(TREE))
    drafter = registry.get("firp")(Engine(real.model), real.key, profile=str(path), costmodel=str(COST))
    plan = drafter.describe()["plan"]
    assert plan["costmodel"]["path"] == shown_path(COST) and plan["predicted_speedup"] > 0, plan
    assert {len(p) for p in drafter.shape.paths} == {1, 2, 3} and drafter.shape.topk > 1, plan["chosen"]
    assert like_ar(real, ar_reference, real_prompts, drafter, f"firp auto: {plan['chosen']}") > 0


def test_step_overheads_are_measured_against_what_the_plan_charges(real):
    from harness.analysis.plans import step_overheads

    got = step_overheads(real, ["pld"], {}, str(COST), prompts=2, max_new_tokens=16, progress=False)
    assert set(got) == {"ar", "pld"}
    # the baseline's step is one forward of one row plus the loop: close to c(1), never far below
    assert -0.3 < got["ar"] < 1.0, got
    assert -1.0 < got["pld"] < 3.0, got

"""The draft-shape planner (pure arithmetic): greedy trees keep parents and grow nested, a flat
cost model buys larger drafts than this CPU's measured one, a steep one falls back to the smallest
draft (predicted slower than autoregressive), chains and grids, determinism."""

import json
import re
from pathlib import Path

import pytest

from harness.core.planning import costmodel
from harness.core.planning.planner import (
    best,
    chain_choices,
    expected_ratio,
    greedy_tree,
    grid_choices,
    layered_cost,
    path_probability,
    tree_choices,
)

ROOT = Path(__file__).resolve().parent.parent
CPU = costmodel.read(sorted((ROOT / "results" / "costmodel").glob("*-cpu-float32.json"))[0])  # this CPU's
FLAT = {"n": [1, 64], "ratio": [1.0, 1.0]}
STEEP = {"n": [1, 2, 64], "ratio": [1.0, 2.0, 64.0]}  # c(n) = n c(1): no row is free
TREE = {"family": "tree", "depth": 3, "ranks": 4,
        "p": [[0.7, 0.15, 0.05, 0.02], [0.6, 0.15, 0.05, 0.02], [0.5, 0.15, 0.05, 0.02]]}
CHAIN = {"family": "chain", "drafted_at_least": [0.6] * 12,  # a match 60% of the time, each token 60% likely
         "accepted_at_least": [round(0.45 * 0.6 ** i, 4) for i in range(12)]}


def ratio(cost):
    return lambda n: costmodel.ratio_at(cost, n)


def firp_like(cost):
    """FIRP's rows: n nodes below layer 2 of 4, n more per step from there."""
    return lambda paths: layered_cost(ratio(cost), [(0, len(paths) + 1), (2, 2 * (len(paths) + 1))], 4)


def test_greedy_tree_keeps_parents_grows_nested_and_follows_path_probability():
    prob = path_probability(TREE)
    nodes = greedy_tree(prob, depth=3, ranks=4, max_nodes=30)
    paths = [p for p, _ in nodes]
    assert all(p[:-1] == () or p[:-1] in paths[:i] for i, p in enumerate(paths))  # parent before child
    assert paths[:3] == [(0,), (0, 0), (0, 0, 0)]  # 0.7, 0.42, 0.21 beat (1,) at 0.15
    assert [p for p, _ in greedy_tree(prob, 3, 4, 5)] == paths[:5]  # size s+1 extends size s
    assert max(map(len, paths)) <= 3 and max(max(p) for p in paths) <= 3
    assert nodes[1][1] == pytest.approx(0.7 * 0.6)


def test_measured_path_frequencies_replace_the_factorised_model():
    profile = {"family": "tree", "depth": 2, "ranks": 2, "paths": {"0": 0.5, "1": 0.3, "0.0": 0.1, "1.0": 0.25}}
    paths = [p for p, _ in greedy_tree(path_probability(profile), 2, 2, 10)]
    assert paths == [(0,), (1,), (1, 0), (0, 0)]  # only measured paths, in measured order
    choices = tree_choices(profile, depth=2, cost=lambda paths: 1.0)
    assert [c.expected for c in choices] == pytest.approx([1.5, 1.8, 2.05, 2.15])


def test_flat_cost_model_plans_a_larger_tree_than_this_cpu_and_steep_the_smallest():
    sizes = {}
    for name, cost in (("flat", FLAT), ("cpu", CPU), ("steep", STEEP)):
        sizes[name] = best(tree_choices(TREE, 3, firp_like(cost), max_nodes=32))
    assert len(sizes["flat"].shape) > len(sizes["cpu"].shape) >= 1
    assert len(sizes["flat"].shape) == 32  # every node helps when rows are free
    assert len(sizes["steep"].shape) == 1 and sizes["steep"].speedup < 1.0
    assert sizes["flat"].speedup > sizes["cpu"].speedup


def test_chain_planning_flat_cpu_steep():
    picks = {name: best(chain_choices(CHAIN, lambda k, rows, c=cost: expected_ratio(ratio(c), rows)))
             for name, cost in (("flat", FLAT), ("cpu", CPU), ("steep", STEEP))}
    assert picks["flat"].shape == 12 and picks["steep"].shape == 1
    assert picks["flat"].shape > picks["cpu"].shape
    assert picks["steep"].speedup < 1.0


def test_chain_arithmetic():
    profile = {"drafted_at_least": [0.5, 0.5], "accepted_at_least": [0.4, 0.2]}
    seen = []
    choices = chain_choices(profile, lambda k, rows: seen.append(rows) or 1.0 + k)
    assert seen == [pytest.approx([0.5, 0.5]), pytest.approx([0.5, 0.0, 0.5])]  # P(1 + j rows)
    assert [c.expected for c in choices] == pytest.approx([1.4, 1.6])
    assert expected_ratio(lambda n: n, [0.5, 0.0, 0.5]) == pytest.approx(0.5 * 1 + 0.5 * 3)


def test_grid_planning_filters_fixed_options_and_prefers_the_first_of_equals():
    profile = {"points": [{"options": {"depth": 2, "total": 4}, "tokens_per_step": 2.0, "positions": 5},
                          {"options": {"depth": 3, "total": 4}, "tokens_per_step": 2.0, "positions": 5},
                          {"options": {"depth": 3, "total": 8}, "tokens_per_step": 2.6, "positions": 9,
                           "draft_forwards": 3}]}
    cost = lambda p: p["positions"] / 5 + p.get("draft_forwards", 0) * 0.1  # noqa: E731
    assert best(grid_choices(profile, cost)).shape == {"depth": 2, "total": 4}  # 2.0 vs 2.6 / 2.1
    assert best(grid_choices(profile, lambda p: 1.0)).shape == {"depth": 3, "total": 8}
    assert [c.shape["total"] for c in grid_choices(profile, cost, {"depth": 3})] == [4, 8]


def test_layered_cost_charges_each_layer_range_its_share():
    assert layered_cost(lambda n: n, [(0, 2), (3, 6)], 4) == pytest.approx(0.75 * 2 + 0.25 * 6)
    assert layered_cost(lambda n: n, [(0, 2), (3, 4), (3, 6)], 4) == pytest.approx(0.75 * 2 + 0.25 * 6)


def test_planning_is_deterministic():
    runs = [best(tree_choices(json.loads(json.dumps(TREE)), 3, firp_like(CPU))) for _ in range(3)]
    assert all(r == runs[0] for r in runs)
    tie = {"family": "tree", "depth": 1, "ranks": 3, "p": [[0.3, 0.3, 0.3]]}
    assert [p for p, _ in greedy_tree(path_probability(tie), 1, 3, 2)] == [(0,), (1,)]


def test_cost_model_files_are_checked(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"n": [2, 4], "ratio": [1.0, 1.2]}))
    with pytest.raises(costmodel.CostModelError, match="rise from 1"):
        costmodel.read(bad)
    with pytest.raises(costmodel.CostModelError, match="not a cost-model JSON"):
        costmodel.read(tmp_path / "missing.json")


def test_planning_reads_the_cost_curve_as_measured():
    """More rows can cost less (a faster BLAS kernel for 4 rows than for 3 on a 2-core CPU): the
    plan uses the dip, and between measured points it interpolates."""
    cost = costmodel.CostModel({"n": [1, 2, 3, 4, 8], "ratio": [1.0, 1.5, 1.9, 1.4, 1.8]}, Path("x.json"), True)
    assert cost.ratio(4) == 1.4 < cost.ratio(3) and cost.ratio(6) == pytest.approx(1.6)
    assert costmodel.DEFAULT_NS[:16] == tuple(range(1, 17))  # small trees are measured, not interpolated
    chain = {"family": "chain", "drafted_at_least": [1.0] * 3, "accepted_at_least": [0.9, 0.5, 0.3]}
    best = max(chain_choices(chain, lambda k, rows: expected_ratio(cost.ratio, rows)), key=lambda c: c.speedup)
    assert best.shape == 3  # 4 rows: cheaper than 3, more tokens




@pytest.mark.parametrize("change, field", [
    ({"ratio": [1.0, -0.5, 2.0]}, "ratio at n=2 = -0.5: must be a finite number > 0"),
    ({"ratio": [1.0, float("nan"), 2.0]}, "ratio at n=2 = nan"),
    ({"ratio": [1.0, float("inf"), 2.0]}, "ratio at n=2 = inf"),
    ({"ratio": [2.0, 3.0, 4.0]}, "ratio at n=1 = 2.0: must be 1"),
    ({"ratio": [1.0, 2.0]}, "ratio must hold one value per n"),
    ({"n": [1, 4, 2]}, "n = [1, 4, 2]: n must rise from 1, strictly"),
    ({"n": [1, 2, 2]}, "n must rise from 1"),
    ({"n": [0, 1, 2]}, "n must rise from 1"),
    ({"n": [1, 2.5, 3]}, "must be a non-empty list of row counts"),
    ({"seconds": [0.1, 0.0, 0.3]}, "seconds at n=2 = 0.0"),
    ({"drafts": {"medusa:x": -1.0}}, "drafts['medusa:x'] = -1.0: must be a finite number >= 0"),
    ({"overheads": {"ar": float("nan")}}, "overheads['ar'] = nan"),
    ({"model": 3}, "model = 3: must be a string"),
])
def test_one_validator_names_the_file_and_the_field(tmp_path, change, field):
    good = {"model": "m", "n": [1, 2, 4], "ratio": [1.0, 1.5, 2.0], "seconds": [0.1, 0.15, 0.2]}
    path = tmp_path / "c.json"
    path.write_text(json.dumps({**good, **change}))
    with pytest.raises(costmodel.CostModelError, match=f"^{re.escape(str(path))}: .*{re.escape(field)}"):
        costmodel.read(path)
    with pytest.raises(costmodel.CostModelError, match=re.escape(field)):  # the same check on data in memory
        costmodel.CostModel({**good, **change}, path, True)
    assert costmodel.CostModel(good, path, True).max_n == 4


def test_committed_cost_models_validate():
    paths = sorted((ROOT / "results" / "costmodel").glob("*.json"))
    assert paths and all(costmodel.read(p)["n"][0] == 1 for p in paths)


def test_no_cost_is_charged_past_the_measured_rows():
    cost = costmodel.CostModel({"n": [1, 2, 4], "ratio": [1.0, 1.5, 1.2]}, Path("x.json"), True)
    assert cost.ratio(3) == pytest.approx(1.35) and cost.ratio(4) == 1.2 and cost.max_n == 4
    assert cost.ratio(5) == float("inf")  # not extrapolated along the falling slope
    choices = chain_choices(CHAIN, lambda k, rows: expected_ratio(cost.ratio, rows))
    assert [c.shape for c in choices if c.cost < float("inf")] == [1, 2, 3]  # 1 + k rows <= 4


def plan_pld(engine, tmp_path, cost: dict):
    from methods.pld import PromptLookup

    (tmp_path / "p.json").write_text(json.dumps(CHAIN))
    (tmp_path / "c.json").write_text(json.dumps(cost))
    return PromptLookup(engine, "tiny", profile=str(tmp_path / "p.json"), costmodel=str(tmp_path / "c.json"))


def test_plans_leave_out_shapes_beyond_the_cost_model_and_say_so(engine, tmp_path):
    plan = plan_pld(engine, tmp_path, {"n": [1, 2, 3, 4], "ratio": [1.0, 1.0, 1.0, 0.9]}).describe()["plan"]
    assert plan["chosen"] == "k=3" and plan["costmodel"]["max_n"] == 4  # k=3 verifies up to 4 rows
    assert plan["beyond_costmodel"].startswith("9 shape(s) needing more than the 4 rows the cost model measured")
    assert plan["predicted_speedup"] < 3  # not the 1,956,957x of a falling slope extrapolated
    none = plan_pld(engine, tmp_path, {"n": [1], "ratio": [1.0]})
    assert none.k == 10 and "offers no shape within the 1 rows the cost model measured" in none.describe()["plan"]["fallback"]


def test_planning_refuses_another_models_cost_model_and_warns_of_another_machine(engine, tmp_path, capsys):
    from harness.core.method import MethodError

    with pytest.raises(MethodError, match=r"pld.costmodel: .*c.json is a cost model of other, not of tiny"):
        plan_pld(engine, tmp_path, {"model": "other", "n": [1, 64], "ratio": [1.0, 2.0]})
    method = plan_pld(engine, tmp_path, {"model": "tiny", "device": "cuda:0", "dtype": "bfloat16",
                                         "n": [1, 64], "ratio": [1.0, 2.0]})
    note = method.describe()["plan"]["costmodel"]["machine_note"]
    assert note == "measured on another machine: device cuda (here cpu), dtype bfloat16 (here float32)"
    assert f"warning: pld's auto draft shape: the cost model {tmp_path / 'c.json'} was {note}" in capsys.readouterr().err
    same = plan_pld(engine, tmp_path, {"model": "tiny", "device": "cpu", "dtype": "float32", "n": [1, 64], "ratio": [1.0, 2.0]})
    assert "machine_note" not in same.describe()["plan"]["costmodel"] and "warning" not in capsys.readouterr().err

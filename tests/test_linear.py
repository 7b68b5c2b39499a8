"""The linear-formulation chooser: it keeps the faster of two planted formulations, caches its
table, leaves F.linear everywhere without timing; the chosen layers compute the same products and
decode the same tokens; a model is switched between auto and off, and a cached cost model measured
with other formulations is measured again."""

import json
import time

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_model

from harness.core.decoding import decode
from harness.core.engine import Engine
from harness.core.linear import (
    PLAIN,
    ChosenLinear,
    apply,
    chosen_layers,
    digest,
    engage,
    linear_shapes,
    load_or_choose,
    roofline,
    table_of,
    weights_left,
)
from harness.core.planning import costmodel
from methods.autoregressive import Autoregressive


def slow_linear(x, w):
    time.sleep(0.002)
    return F.linear(x, w)


def test_the_chooser_keeps_the_faster_planted_formulation(tmp_path):
    shapes = {(8, 4)}
    faster = load_or_choose(tmp_path / "a.json", shapes, "cpu", torch.float32, forms={"linear": slow_linear, "left": weights_left})
    assert set(faster["8x4"].values()) == {"left"}
    slower = load_or_choose(tmp_path / "b.json", shapes, "cpu", torch.float32, forms={"linear": F.linear, "left": slow_linear})
    assert set(slower["8x4"].values()) == {"linear"}


def test_the_table_is_cached_and_timing_can_be_turned_off(tmp_path, monkeypatch):
    import harness.core.linear as linear

    path = tmp_path / "table.json"
    first = load_or_choose(path, {(8, 4)}, "cpu", torch.float32)
    monkeypatch.setattr(linear, "choose", lambda *a, **k: (_ for _ in ()).throw(AssertionError("timed again")))
    assert load_or_choose(path, {(8, 4)}, "cpu", torch.float32) == first  # read back, not timed again
    assert load_or_choose(tmp_path / "none.json", {(8, 4)}, "cpu", torch.float32, timing=False) == {}


def test_every_formulation_computes_the_same_product():
    torch.manual_seed(0)
    w = torch.randn(48, 16)
    layer = torch.nn.Linear(16, 48, bias=False)
    layer.weight.data.copy_(w)
    chosen = ChosenLinear(layer, {n: "left" for n in range(1, 9)})
    for rows in (1, 3, 8, 12):
        x = torch.randn(2, rows, 16)[:1]
        torch.testing.assert_close(chosen(x), F.linear(x, w), atol=1e-5, rtol=1e-5)


def test_a_model_with_chosen_layers_decodes_the_same_tokens():
    model = tiny_model()
    ref = decode(Autoregressive(Engine(model), "tiny"), [5, 6, 7, 8], 20, set(), Engine(model).new_cache(64)).output_ids
    table = {f"{o}x{i}": {str(n): "left" for n in range(1, 17)} for o, i in linear_shapes(model)}
    assert apply(model, table) == 4 * 7 + 1  # 4 layers x (q, k, v, o, gate, up, down) + the LM head
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight  # still tied
    engine = Engine(model)
    got = decode(Autoregressive(engine, "tiny"), [5, 6, 7, 8], 20, set(), engine.new_cache(64)).output_ids
    assert got == ref


def hand_table(model, rows=range(1, 17)):
    return {f"{o}x{i}": {str(n): "left" for n in rows} for o, i in linear_shapes(model)}


def test_engage_switches_a_model_between_chosen_and_plain_layers(tmp_path):
    model = tiny_model()
    path = tmp_path / "table.json"
    path.write_text(json.dumps(hand_table(model, (2, 3))))  # cached: nothing timed
    shapes = {f"{o}x{i}" for o, i in linear_shapes(model)}
    entry = engage(model, path, "auto")
    assert entry["layers"] == 29 and entry["digest"] == digest(model) != PLAIN
    assert set(entry["not_f_linear"]) == shapes
    assert all(v == {"2": "left", "3": "left"} for v in table_of(model).values())
    off = engage(model, path, "off")
    assert off == {"mode": "off", "file": None, "layers": 0, "digest": PLAIN, "not_f_linear": {}}
    assert not chosen_layers(model)
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight  # still tied
    assert engage(model, path, "auto")["digest"] == entry["digest"]  # the same table again
    with pytest.raises(ValueError, match="fast"):
        engage(model, path, "fast")


def test_the_roofline_runs_every_linear_layer_once_per_pass(monkeypatch):
    model = tiny_model()
    calls = []
    monkeypatch.setattr(ChosenLinear, "forward", lambda self, x: calls.append(x.shape) or F.linear(x, self.weight))
    apply(model, hand_table(model))
    assert roofline(model, rows=2, repeats=1) > 0
    assert len(calls) == 29 * 3 and {c[0] for c in calls} == {2}  # 2 warm-up rounds + 1 timed


def test_a_cached_cost_model_of_other_formulations_is_measured_again(tmp_path, monkeypatch):
    monkeypatch.setenv("SPEC_HARNESS_CACHE", str(tmp_path))
    model = tiny_model()
    engine = Engine(model)
    measured = []
    monkeypatch.setattr(costmodel, "measure", lambda *a, **k: measured.append(1) or {"n": [1, 2], "ratio": [1.0, 1.5]})
    path = costmodel.cache_file("tiny", engine)
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"model": "tiny", "n": [1, 2], "ratio": [1.0, 1.2], "linear": "chosen-0123456789"}))
    cost = costmodel.for_engine(engine, "tiny")
    assert measured == [1] and cost.data["linear"] == PLAIN and cost.ratio(2) == 1.5
    assert json.loads(path.read_text())["linear"] == PLAIN
    costmodel.for_engine(engine, "tiny")
    assert measured == [1]  # now it matches: read from the cache
    apply(model, hand_table(model))
    costmodel.for_engine(Engine(model), "tiny")
    assert measured == [1, 1]  # the engine's formulations changed
    assert json.loads(path.read_text())["layers"] == "lean"
    costmodel.for_engine(Engine(model, "modules"), "tiny")
    assert measured == [1, 1, 1]  # the engine's decoder layers changed


def test_linear_gain_times_both_formulations_in_one_process(tiny_model_dir, tmp_path, monkeypatch):
    from click.testing import CliRunner

    from harness.cli import main

    monkeypatch.setenv("SPEC_HARNESS_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "gain.json"
    res = CliRunner().invoke(main, ["linear-gain", "--model", str(tiny_model_dir), "--device", "cpu", "--n", "1-3",
                                    "--repeats", "1", "--out", str(out)])
    assert res.exit_code == 0, res.output
    result = json.loads(out.read_text())
    assert result["n"] == [1, 2, 3] and all(len(result["c_ms"][m]) == 3 for m in ("off", "auto", "lean"))
    assert result["layers"] == {"off": "modules", "control": "modules", "auto": "modules", "lean": "lean"}
    assert result["linear"]["mode"] == "auto" and result["linear"]["layers"] == 3 * 7 + 1
    assert "of the roofline's speed" in res.output
    bad = CliRunner().invoke(main, ["linear-gain", "--model", str(tiny_model_dir), "--n", "0-2"])
    assert bad.exit_code == 2 and "at least 1" in bad.output

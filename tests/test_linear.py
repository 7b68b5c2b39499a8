"""The linear-formulation chooser: it keeps the faster of two planted formulations, caches its
table, leaves F.linear everywhere without timing; the chosen layers compute the same products and
decode the same tokens."""

import time

import torch
import torch.nn.functional as F
from conftest import tiny_model

from harness.core.decoding import decode
from harness.core.engine import Engine
from harness.core.linear import (
    ChosenLinear,
    apply,
    linear_shapes,
    load_or_choose,
    weights_left,
)
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

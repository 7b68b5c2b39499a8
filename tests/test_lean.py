"""The lean decoder layers (harness/core/lean.py) compute what transformers' layer modules compute:
each piece against its transformers counterpart, whole forwards (prefill, one row, tree masks,
skipped sublayers) per supported architecture, and greedy decoding token for token."""

import json

import pytest
import torch
from conftest import tiny_model
from test_architectures import VERIFIED, build
from test_medusa import make_medusa
from test_runner import cfg
from transformers.models.llama.modeling_llama import LlamaRMSNorm, apply_rotary_pos_emb

from harness.bench.data import DataError
from harness.bench.runner import Runner
from harness.core.decoding import decode
from harness.core.engine import Engine
from harness.core.lean import bound_product, lean_problem, rms_norm, rotary_pair, rotate
from harness.core.linear import ChosenLinear, weights_left
from methods.autoregressive import Autoregressive


def test_rotate_is_rotate_half_exactly():
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(2, 4, 5, 8, generator=g), torch.randn(2, 2, 5, 8, generator=g)
    cos, sin = torch.randn(2, 5, 8, generator=g), torch.randn(2, 5, 8, generator=g)
    want_q, want_k = apply_rotary_pos_emb(q, k, cos, sin)
    pair = rotary_pair(cos, sin)
    assert torch.equal(rotate(q, *pair), want_q) and torch.equal(rotate(k, *pair), want_k)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rms_norm_matches_the_module(dtype):
    norm = LlamaRMSNorm(16, eps=1e-5).to(dtype)
    with torch.no_grad():
        norm.weight.normal_()
    x = torch.randn(3, 7, 16).to(dtype)
    torch.testing.assert_close(rms_norm(norm, x), norm(x))


def test_bound_products_compute_the_layer_and_a_hooked_layer_stays_a_module():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 3, 8, generator=g)
    biased, plain = torch.nn.Linear(8, 5), torch.nn.Linear(8, 5, bias=False)
    chosen = ChosenLinear(plain, {3: "left"}, {"linear": torch.nn.functional.linear, "left": weights_left})
    with torch.no_grad():
        assert torch.equal(bound_product(biased)(x), biased(x))
        assert torch.equal(bound_product(chosen)(x), weights_left(x, plain.weight))
        assert torch.equal(bound_product(chosen)(x[:, :2]), torch.nn.functional.linear(x[:, :2], plain.weight))
    plain.register_forward_hook(lambda *_: None)
    assert bound_product(plain) is plain


def test_a_hook_on_a_projection_still_fires_on_the_lean_path():
    model = build(VERIFIED["llama"]())
    seen = []
    model.model.layers[0].self_attn.q_proj.register_forward_hook(lambda m, args, out: seen.append(out.shape))
    engine = Engine(model)
    assert engine.layer_path == "lean"
    with torch.no_grad():
        engine.forward(torch.tensor([1, 2, 3]), torch.arange(3), None, engine.new_cache(8))
    assert len(seen) == 1


def forwards(engine: Engine, ids: list[int]) -> list[torch.Tensor]:
    """Hidden states of a prefill, one row after it, a tree-masked block after that (at an offset)
    and a forward with sublayers skipped: the paths a method can take through the engine."""
    cache, n = engine.new_cache(64), len(ids)
    out = [engine.forward(torch.tensor(ids), torch.arange(n), None, cache)]
    cache.advance(n)
    out.append(engine.forward(torch.tensor([5]), torch.tensor([n]), None, cache))
    tree = torch.tensor([[1, 0, 0, 0], [1, 1, 0, 0], [1, 0, 1, 0], [1, 0, 1, 1]], dtype=torch.bool)
    out.append(engine.forward(torch.tensor([7, 8, 9, 10]), torch.tensor([n + 1, n + 2, n + 2, n + 3]), tree, cache,
                              offset=1))
    ctx = engine.context(torch.tensor([n + 1]), None, cache)
    out.append(engine.run_layers(engine.embed(torch.tensor([[11]])), ctx, skip_attn=frozenset({1}),
                                 skip_mlp=frozenset({0, 2})))
    return out


@pytest.mark.parametrize("name", sorted(VERIFIED))
def test_lean_forwards_equal_the_modules(name):
    model = build(VERIFIED[name]())
    lean, modules = Engine(model), Engine(model, "modules")
    assert lean.layer_path == "lean" and modules.layer_path == "modules"
    ids = list(range(3, 15))
    with torch.inference_mode():
        for got, want in zip(forwards(lean, ids), forwards(modules, ids)):
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_lean_decoding_equals_the_modules_token_for_token(tmp_path):
    model = tiny_model(layers=4)
    ids = [5, 17, 3, 29, 42, 8]
    ref = decode(Autoregressive(Engine(model, "modules"), "tiny"), ids, 40, set(), Engine(model).new_cache(128))
    lean = Engine(model)
    assert lean.layer_path == "lean"
    assert decode(Autoregressive(lean, "tiny"), ids, 40, set(), lean.new_cache(128)).output_ids == ref.output_ids
    medusa = make_medusa(lean, tmp_path, perturb=0.3)  # tree-masked verification
    assert decode(medusa, ids, 40, set(), lean.new_cache(128)).output_ids == ref.output_ids


def test_a_layer_without_the_expected_parts_keeps_the_modules():
    model = tiny_model()
    assert lean_problem(model.model.layers[0]) is None
    model.model.layers[1].mlp.act_fn = torch.nn.GELU()
    assert "GELU" in lean_problem(model.model.layers[1])
    assert Engine(model).layer_path == "modules"  # every layer lean, or none
    del model.model.layers[2].self_attn.k_proj
    assert "self_attn.k_proj" in lean_problem(model.model.layers[2])
    with pytest.raises(ValueError, match="not one of lean, modules"):
        Engine(tiny_model(), "fast")


def test_a_run_records_its_layer_path_and_refuses_an_unknown_one(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    Runner(cfg(tiny_model_dir, out, num_samples=1, datasets=["gsm8k"], layers="modules"), progress=False).run()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["layers"] == "modules" and manifest["request"]["layers"] == "modules"
    with pytest.raises(DataError, match="--layers 'fast'"):
        Runner(cfg(tiny_model_dir, tmp_path / "bad", layers="fast"), progress=False)

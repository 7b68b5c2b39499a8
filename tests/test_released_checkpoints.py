"""Published drafters load as released: small checkpoints written in the exact released formats
(FasterDecoding/Medusa medusa_lm_head.{pt,safetensors}; SafeAILab/EAGLE config.json +
pytorch_model.bin / model.safetensors), decoded losslessly; foreign shapes and pickled code refused."""

import json

import pytest
import torch
from helpers import assert_lossless
from safetensors.torch import save_file

from harness.core.checkpoint import CheckpointError, read_tensors
from methods.eagle import Eagle
from methods.medusa import Medusa

D, V = 32, 97  # the tiny Llama's hidden size and vocabulary


def medusa_state(heads=5, layers=2, hidden=D, vocab=V, seed=0):
    """Medusa's released keys: {head}.{layer}.linear.weight/bias (ResBlocks), {head}.{layers}.weight (LM head)."""
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for h in range(heads):
        for i in range(layers):
            state[f"{h}.{i}.linear.weight"] = torch.randn(hidden, hidden, generator=gen) * 0.05
            state[f"{h}.{i}.linear.bias"] = torch.randn(hidden, generator=gen) * 0.05
        state[f"{h}.{layers}.weight"] = torch.randn(vocab, hidden, generator=gen) * 0.3
    return state


def medusa_reference(state, x, heads, layers):
    """Medusa's forward written from its published definition: per head, `layers` blocks
    x + SiLU(W x + b), then the head's own LM head."""
    out = []
    for h in range(heads):
        y = x
        for i in range(layers):
            y = y + torch.nn.functional.silu(y @ state[f"{h}.{i}.linear.weight"].T + state[f"{h}.{i}.linear.bias"])
        out.append(y @ state[f"{h}.{layers}.weight"].T)
    return torch.stack(out)


@pytest.mark.parametrize("fmt", ["pt", "safetensors"])
def test_released_medusa_heads_load_from_their_keys_not_their_config(engine, tmp_path, fmt):
    state = medusa_state()
    if fmt == "pt":
        torch.save(state, tmp_path / "medusa_lm_head.pt")
    else:
        save_file(state, str(tmp_path / "medusa_lm_head.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps({"medusa_num_heads": 2, "medusa_num_layers": 1,
                                                      "base_model_name_or_path": "tiny"}))
    medusa = Medusa(engine, "tiny", checkpoint=str(tmp_path), tree="small")
    assert medusa.module.steps == 5 and medusa.module.layers == 2  # the file's 5 x 2, not config.json's 2 x 1
    assert medusa.describe()["training"]["data"]["config_json"] == {"heads": 2, "layers": 1}
    x = torch.randn(3, D)
    torch.testing.assert_close(medusa.module(x), medusa_reference(state, x, 5, 2), atol=1e-5, rtol=1e-5)
    assert_lossless(engine, medusa)


def test_released_medusa_file_given_by_path_and_foreign_shapes_refused(engine, tmp_path):
    save_file(medusa_state(heads=3, layers=1), str(tmp_path / "medusa_lm_head.safetensors"))
    assert Medusa(engine, "tiny", checkpoint=str(tmp_path / "medusa_lm_head.safetensors")).module.steps == 3
    torch.save(medusa_state(hidden=48), tmp_path / "wide.pt")
    with pytest.raises(CheckpointError, match="hidden size 48.*the target model has 32"):
        Medusa(engine, "tiny", checkpoint=str(tmp_path / "wide.pt"))
    torch.save(medusa_state(vocab=120), tmp_path / "vocab.pt")
    with pytest.raises(CheckpointError, match="vocabulary of 120.*the target model has 97"):
        Medusa(engine, "tiny", checkpoint=str(tmp_path / "vocab.pt"))
    torch.save({"0.0.linear.weight": torch.zeros(D, D)}, tmp_path / "partial.pt")
    with pytest.raises(CheckpointError, match="lack 0.0.linear.bias"):
        Medusa(engine, "tiny", checkpoint=str(tmp_path / "partial.pt"))


EAGLE_LAYER = {  # EAGLE-1/2's draft layer (cnets1.py): no input_layernorm in layer 0
    "layers.0.self_attn.q_proj.weight": (D, D), "layers.0.self_attn.k_proj.weight": (16, D),
    "layers.0.self_attn.v_proj.weight": (16, D), "layers.0.self_attn.o_proj.weight": (D, D),
    "layers.0.mlp.gate_proj.weight": (64, D), "layers.0.mlp.up_proj.weight": (64, D),
    "layers.0.mlp.down_proj.weight": (D, 64), "layers.0.post_attention_layernorm.weight": (D,),
}


def eagle_dir(path, fmt="bin", bias=True, embedding=True, hidden=D, config=None):
    """A released EAGLE directory: config.json (the layer's shapes, as in eagle/train/*_config.json)
    and the state dict in pytorch_model.bin or model.safetensors."""
    gen = torch.Generator().manual_seed(1)
    state = {k: torch.randn(*shape, generator=gen) * 0.2 for k, shape in EAGLE_LAYER.items()}
    state["layers.0.post_attention_layernorm.weight"] = torch.ones(D)
    state["fc.weight"] = torch.randn(hidden, 2 * hidden, generator=gen) * 0.2
    if bias:
        state["fc.bias"] = torch.zeros(hidden)
    if embedding:
        state["embed_tokens.weight"] = torch.randn(V, D, generator=gen)
    state["layers.0.self_attn.rotary_emb.inv_freq"] = torch.ones(2)  # a buffer older exports kept
    path.mkdir(parents=True, exist_ok=True)
    cfg = {"architectures": ["LlamaForCausalLM"], "hidden_size": D, "intermediate_size": 64,
           "num_attention_heads": 4, "num_key_value_heads": 2, "num_hidden_layers": 1, "rms_norm_eps": 1e-6,
           "hidden_act": "silu", "vocab_size": V, "rope_theta": 10000.0, "bias": True, **(config or {})}
    (path / "config.json").write_text(json.dumps(cfg))
    if fmt == "bin":
        torch.save(state, path / "pytorch_model.bin")
    else:
        save_file(state, str(path / "model.safetensors"))
    return state


@pytest.mark.parametrize("fmt, embedding", [("bin", True), ("safetensors", False)])
def test_released_eagle_head_loads_and_decodes_losslessly(engine, tmp_path, fmt, embedding):
    state = eagle_dir(tmp_path / "eagle", fmt, bias=False, embedding=embedding)  # config.json says "bias": true
    eagle = Eagle(engine, "tiny", checkpoint=str(tmp_path / "eagle"), depth=3, top_k=3, total_tokens=6)
    assert eagle.head.fc.bias is None  # the weights decide, not config.json's "bias"
    assert eagle.head.config()["embedding"] is embedding
    loaded = eagle.head.state_dict()
    assert set(loaded) == set(state) - {"layers.0.self_attn.rotary_emb.inv_freq"}
    assert all(torch.equal(loaded[k], state[k]) for k in loaded)
    assert eagle.describe()["training"]["data"]["format"].startswith("SafeAILab/EAGLE")
    assert_lossless(engine, eagle)


@pytest.mark.parametrize("change, message", [
    ({"hidden": 48}, r"fc.weight is \(48, 96\).*hidden size 32 needs \(32, 64\)"),
    ({"config": {"vocab_size": 32000}}, "vocab_size 32000, the target model's is 97"),
    ({"config": {"num_attention_heads": 2}}, "width 16; the target's rope needs width 8"),
    ({"config": {"rope_theta": 500000.0}}, "rope_theta 500000.0.*the target model's is 10000.0"),
])
def test_released_eagle_head_of_other_shapes_is_refused_naming_both(engine, tmp_path, change, message):
    eagle_dir(tmp_path / "eagle", **change)
    with pytest.raises(CheckpointError, match=message):
        Eagle(engine, "tiny", checkpoint=str(tmp_path / "eagle"))


def test_eagle3_and_deeper_drafts_are_refused(engine, tmp_path):
    state = eagle_dir(tmp_path / "e3")
    torch.save({**state, "d2t": torch.zeros(V, dtype=torch.long)}, tmp_path / "e3" / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="EAGLE-3"):
        Eagle(engine, "tiny", checkpoint=str(tmp_path / "e3"))
    torch.save({**state, "layers.1.mlp.up_proj.weight": torch.zeros(64, D)}, tmp_path / "e3" / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="decoder layers 0, 1"):
        Eagle(engine, "tiny", checkpoint=str(tmp_path / "e3"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="config.json is missing"):
        Eagle(engine, "tiny", checkpoint=str(tmp_path / "empty"))


class Planted:
    """Unpickling this runs code: it writes a marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('ran')",)


def test_a_pickle_that_would_run_code_is_refused(engine, tmp_path):
    marker = tmp_path / "marker"
    state = {**medusa_state(heads=1, layers=1), "payload": Planted(marker)}
    torch.save(state, tmp_path / "medusa_lm_head.pt")
    eagle = eagle_dir(tmp_path / "eagle")
    torch.save({**eagle, "payload": Planted(marker)}, tmp_path / "eagle" / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="refused.*run code"):
        read_tensors(tmp_path / "medusa_lm_head.pt")
    with pytest.raises(CheckpointError, match="refused.*run code"):
        Medusa(engine, "tiny", checkpoint=str(tmp_path))
    with pytest.raises(CheckpointError, match="refused.*run code"):
        Eagle(engine, "tiny", checkpoint=str(tmp_path / "eagle"))
    assert not marker.exists()
    torch.load(tmp_path / "medusa_lm_head.pt", weights_only=False)  # the plant is real: a full unpickle runs it
    assert marker.read_text() == "ran"


def test_a_pickle_of_something_else_than_a_state_dict_is_refused(tmp_path):
    torch.save([torch.zeros(2)], tmp_path / "list.bin")
    with pytest.raises(CheckpointError, match="not a flat dict of named tensors"):
        read_tensors(tmp_path / "list.bin")
    (tmp_path / "junk.pt").write_bytes(b"not a pickle")
    with pytest.raises(CheckpointError, match="cannot be read"):
        read_tensors(tmp_path / "junk.pt")

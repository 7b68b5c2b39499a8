"""Released EAGLE-3 drafts (SafeAILab/EAGLE's EAGLE-3 heads; the format SGLang, vLLM and SpecForge
read), loaded as released from a directory: config.json and the weights in model.safetensors or
pytorch_model.bin, read as plain tensors (harness.core.checkpoint.read_tensors: weights only, no
remote code).

Keys: fc.weight [d, 3d]; midlayer.{hidden_norm, input_layernorm, post_attention_layernorm}.weight;
midlayer.self_attn.{q,k,v}_proj.weight [., 2d] and o_proj.weight [d, .]; midlayer.mlp.{gate,up,
down}_proj.weight; norm.weight; lm_head.weight [draft_vocab_size, d]; d2t [draft_vocab_size]
(target id - draft id) and t2d [vocab_size] (absent when the draft vocabulary is the target's);
optionally embed_tokens.weight. The three target layers: config.json's
eagle_config.eagle_aux_hidden_state_layer_ids when it names them, else (2, L // 2, L - 3) as
EAGLE's own code reads them. The head must fit the target: hidden size, vocabulary, per-head width
and rope; a mismatch is refused naming both values.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from harness.core.checkpoint import CheckpointError, read_json, read_tensors
from harness.core.engine import Engine
from methods.eagle_released import check_config

WEIGHTS = ("model.safetensors", "pytorch_model.bin")
IGNORED = re.compile(r".*rotary_emb\.inv_freq")
FORMAT = "SafeAILab/EAGLE draft head (EAGLE-3)"


def released_head(engine: Engine, directory: Path, head_config) -> tuple[dict, dict]:
    """(state dict, sidecar) of the released EAGLE-3 head in `directory`; head_config(engine,
    layers, draft_vocab=...) makes our head's config for this target (methods/eagle3.py)."""
    said = read_json(directory / "config.json")
    file = next((directory / name for name in WEIGHTS if (directory / name).is_file()), None)
    if file is None:
        raise CheckpointError(f"{directory} holds no EAGLE-3 draft weights (none of {', '.join(WEIGHTS)})")
    state = {k: v for k, v in read_tensors(file).items() if not IGNORED.fullmatch(k)}
    if "fc.weight" not in state or "lm_head.weight" not in state or not any(k.startswith("midlayer.") for k in state):
        raise CheckpointError(f"{file} is not an EAGLE-3 draft (fc.weight, midlayer.*, lm_head.weight); EAGLE-1/2 "
                              "heads load with the `eagle` method")
    _check_target(engine, file, said, state)
    layers = (said.get("eagle_config") or {}).get("eagle_aux_hidden_state_layer_ids")
    draft = int(state["lm_head.weight"].shape[0])
    config = head_config(engine, layers, draft_vocab=draft)
    for key in ("intermediate_size", "num_attention_heads", "num_key_value_heads", "rms_norm_eps", "hidden_act"):
        config[key] = said.get(key, config[key])
    config["embedding"] = "embed_tokens.weight" in state
    if "d2t" not in state:  # the target's own vocabulary: the identity map
        state["d2t"] = torch.zeros(draft, dtype=torch.long)
    if "t2d" not in state:
        state["t2d"] = torch.zeros(engine.config.vocab_size, dtype=torch.bool)
        state["t2d"][torch.arange(draft) + state["d2t"]] = True
    state["t2d"] = state["t2d"].bool()
    origin = {"format": FORMAT, "file": str(file), "config_json": str(directory / "config.json"), "layers": config["layers"]}
    return state, {"config": config, "data": origin}


def _check_target(engine: Engine, file: Path, said: dict, state: dict) -> None:
    """Hidden size, vocabulary, per-head width, rope and the captured layers against the target's."""
    d = engine.hidden_size
    fc = state["fc.weight"]
    if tuple(fc.shape) != (d, 3 * d):
        raise CheckpointError(f"{file}: fc.weight is {tuple(fc.shape)}; the target model's hidden size {d} needs "
                              f"({d}, {3 * d}) (a draft of another hidden size is not supported)")
    check_config(engine, file, said, rope_default=None)
    layers = (said.get("eagle_config") or {}).get("eagle_aux_hidden_state_layer_ids")
    if layers is not None and (len(layers) != 3 or not all(0 <= i < engine.num_layers for i in layers)):
        raise CheckpointError(f"{file.parent / 'config.json'}: eagle_aux_hidden_state_layer_ids {layers} must name "
                              f"3 of the target's {engine.num_layers} layers")

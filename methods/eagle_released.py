"""Released EAGLE-1 / EAGLE-2 draft heads (SafeAILab/EAGLE), read as released, from a directory:
config.json (the draft layer's shapes, eagle/train/*_config.json style) and the state dict in
pytorch_model.bin or model.safetensors (eagle/model/ea_model.py tries them in that order).

What comes from where: the layer's head counts, norm epsilon, activation and rope base from
config.json (EAGLE builds its layer from it); whether `fc` has a bias and whether the file carries
its own embedding from the weights (EAGLE reads the bias from config.json's "bias" but loads the
weights non-strictly; here the weights decide and load strictly). The head decodes with the
target's LM head and reads the target's features, so the hidden size, vocabulary, per-head width
and rope base must be the target's: a mismatch is refused with both values named. EAGLE-3 drafts
(`midlayer.*`, `d2t`: three target layers and a reduced vocabulary) are refused, not guessed at.
The weights are read as plain tensors only (harness.core.checkpoint.read_tensors).
"""

from __future__ import annotations

import re
from pathlib import Path

from harness.core.checkpoint import CheckpointError, read_json, read_tensors
from harness.core.engine import Engine

WEIGHTS = ("pytorch_model.bin", "model.safetensors")
IGNORED = re.compile(r".*rotary_emb\.inv_freq")  # a rope buffer some exports keep; the target's rope is used
FORMAT = "SafeAILab/EAGLE draft layer (EAGLE-1/2)"


def released_head(engine: Engine, directory: Path, shapes: dict) -> tuple[dict, dict]:
    """(state dict, sidecar) of the released head in `directory`; `shapes`: our head's config
    keys with the target's values, overridden by config.json where it sets them."""
    said = read_json(directory / "config.json")
    file = next((directory / name for name in WEIGHTS if (directory / name).is_file()), None)
    if file is None:
        raise CheckpointError(f"{directory} holds no EAGLE draft weights (none of {', '.join(WEIGHTS)})")
    state = {k: v for k, v in read_tensors(file).items() if not IGNORED.fullmatch(k)}
    _check_kind(file, said, state)
    _check_target(engine, file, said, state)
    config = {k: said.get(k, v) for k, v in shapes.items()}
    config["num_key_value_heads"] = said.get("num_key_value_heads", config["num_attention_heads"])
    config.update(fc_bias="fc.bias" in state, embedding="embed_tokens.weight" in state)
    origin = {"format": FORMAT, "file": str(file), "config_json": str(directory / "config.json")}
    return state, {"config": config, "data": origin}


def _check_kind(file: Path, said: dict, state: dict) -> None:
    """An EAGLE-1/2 head: one decoder layer (layers.0), no EAGLE-3 parts, no q/k/v biases."""
    if any(k.startswith("midlayer.") or k in ("d2t", "t2d") for k in state):
        raise CheckpointError(f"{file} is an EAGLE-3 draft (midlayer.*, d2t): it reads three target layers "
                              "and drafts over its own vocabulary; only EAGLE-1/2 drafts load here")
    deeper = sorted({m.group(1) for k in state if (m := re.match(r"layers\.(\d+)\.", k)) and m.group(1) != "0"})
    if deeper:
        raise CheckpointError(f"{file} holds decoder layers {', '.join(['0', *deeper])}; an EAGLE-1/2 head has one")
    if said.get("qkv_bias") or any(k.endswith("_proj.bias") for k in state):
        raise CheckpointError(f"{file}: attention projections with biases (qkv_bias) are not supported")
    if said.get("rope_scaling"):
        raise CheckpointError(f"{file}: config.json sets rope_scaling {said['rope_scaling']}, not supported")


def _check_target(engine: Engine, file: Path, said: dict, state: dict) -> None:
    """Hidden size, vocabulary, per-head width and rope base against the target's."""
    d, vocab = engine.hidden_size, engine.lm_head.weight.shape[0]
    fc = state.get("fc.weight")
    if fc is None:
        raise CheckpointError(f"{file} has no fc.weight: it is not an EAGLE draft layer")
    if tuple(fc.shape) != (d, 2 * d):
        raise CheckpointError(f"{file}: fc.weight is {tuple(fc.shape)} (hidden size {fc.shape[0]}); "
                              f"the target model's hidden size {d} needs ({d}, {2 * d})")
    check_config(engine, file, said, rope_default=10000.0)
    embed = state.get("embed_tokens.weight")
    if embed is not None and tuple(embed.shape) != (vocab, d):
        raise CheckpointError(f"{file}: embed_tokens.weight is {tuple(embed.shape)}, the target's embedding is {(vocab, d)}")


def check_config(engine: Engine, file: Path, said: dict, rope_default: float | None) -> None:
    """A released draft's config.json against the target: hidden size, vocabulary, per-head width
    and rope base (rope_default: what a config without rope_theta means; None: then unchecked)."""
    cfg, d = engine.config, engine.hidden_size
    for key, theirs in (("hidden_size", d), ("vocab_size", engine.lm_head.weight.shape[0])):
        if said.get(key, theirs) != theirs:
            raise CheckpointError(f"{file.parent / 'config.json'}: {key} {said[key]}, the target model's is {theirs}")
    heads = said.get("num_attention_heads", cfg.num_attention_heads)
    width, ours = said.get("head_dim") or d // heads, getattr(cfg, "head_dim", None) or d // cfg.num_attention_heads
    if width != ours:
        raise CheckpointError(f"{file}: {heads} attention heads of width {width}; the target's rope needs width {ours}")
    rope = (getattr(cfg, "rope_parameters", None) or {}).get("rope_theta", getattr(cfg, "rope_theta", None))
    given = said.get("rope_theta", rope_default)
    if given is not None and float(given) != float(rope):
        default = "" if "rope_theta" in said else f" (the default {rope_default} when config.json omits it)"
        raise CheckpointError(f"{file}: rope_theta {given}{default}, the target model's is {rope}")

"""Which transformers architectures the engine runs correctly, checked before anything decodes.

The engine drives a model layer by layer (harness/core/engine.py): token embeddings without
scaling, pre-norm decoder layers (x + attn(norm(x)), then x + mlp(norm(x))), rotary positions
shared by every layer, full (not sliding-window) attention under its own masks, a final norm and
an LM head without soft-capping. An architecture that differs in any of these would run and be
silently wrong, so only the model types verified on tiny random configs (tests/test_architectures.py:
engine forwards equal the model's own, decoding equals generate()) are accepted.
"""

from __future__ import annotations

from torch import nn

# model_type -> what was verified; every one of them is a pre-norm Llama-style layout
SUPPORTED: dict[str, str] = {
    "llama": "Llama 1/2/3.x, SmolLM, TinyLlama and other LlamaForCausalLM checkpoints",
    "mistral": "Mistral without a sliding window shorter than the context (v0.2 and later)",
    "qwen2": "Qwen2 / Qwen2.5 without an active sliding window (use_sliding_window=false, the default)",
    "qwen3": "Qwen3 dense models (q/k norms inside attention) without an active sliding window",
}
PRE_NORM_LAYER = {"self_attn", "mlp", "input_layernorm", "post_attention_layernorm"}
# config fields whose presence (set to a value) changes the arithmetic the engine does not reproduce
FOREIGN_FIELDS = {
    "final_logit_softcapping": "soft-capped logits",
    "attn_logit_softcapping": "soft-capped attention scores",
    "query_pre_attn_scalar": "a non-standard attention scale",
    "embedding_multiplier": "scaled embeddings",
    "residual_multiplier": "scaled residual branches",
    "logits_scaling": "scaled logits",
}


def sliding_window(config) -> int | None:
    """The active sliding-window length of a config, or None when every layer attends in full."""
    window = getattr(config, "sliding_window", None)
    types = getattr(config, "layer_types", None)
    if types is not None:
        return window if any(t != "full_attention" for t in types) else None
    if getattr(config, "use_sliding_window", True) is False:
        return None
    return window


def config_problems(config) -> list[str]:
    """Why the engine cannot run this config correctly (empty when it can)."""
    kind = getattr(config, "model_type", None)
    problems = []
    if kind not in SUPPORTED:
        problems.append(f"model type {kind!r} is not one of {', '.join(SUPPORTED)}")
    window = sliding_window(config)
    context = getattr(config, "max_position_embeddings", None)
    if window is not None and (context is None or window < context):
        problems.append(f"sliding-window attention ({window} positions < context {context}): the engine "
                        "attends in full")
    for name, what in FOREIGN_FIELDS.items():
        if getattr(config, name, None) not in (None, 1, 1.0):
            problems.append(f"{what} ({name}={getattr(config, name)})")
    return problems


def layer_problems(layer: nn.Module) -> list[str]:
    """Why a decoder layer is not the pre-norm layout the engine assumes (empty when it is)."""
    children = {name for name, _ in layer.named_children()}
    extra, missing = sorted(children - PRE_NORM_LAYER), sorted(PRE_NORM_LAYER - children)
    problems = []
    if extra:
        problems.append(f"decoder layer has modules beyond the pre-norm layout: {', '.join(extra)}")
    if missing:
        problems.append(f"decoder layer lacks {', '.join(missing)}")
    return problems


def refusal(config, layer: nn.Module | None = None) -> str | None:
    """A message saying why the model is refused, or None when the engine supports it."""
    problems = config_problems(config) + (layer_problems(layer) if layer is not None else [])
    if not problems:
        return None
    kind = getattr(config, "model_type", "?")
    return (f"unsupported architecture {kind}: " + "; ".join(problems) + ". Supported: "
            + ", ".join(SUPPORTED) + " (pre-norm layers, full attention); see README, GPU section")

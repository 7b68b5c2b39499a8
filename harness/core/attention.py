"""Grouped-query attention for masked multi-row forwards without copying K/V.

transformers' sdpa path repeats every K/V head for its query heads (`repeat_kv`) whenever a mask
is given, which on a long context costs more than the attention itself on a CPU. Here the query
heads that share a K/V head are folded into the row dimension instead, with the mask repeated to
match: the same arithmetic, no K/V copy (harness/core/lean.py's `attend`, which the lean layers
call directly). It is registered under its own name through transformers' public
AttentionInterface, with sdpa's mask builder (without one, transformers builds no mask for an
unknown name and `generate()` would attend wrongly); without a mask it defers to the stock sdpa
function.
"""

from __future__ import annotations

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from harness.core.lean import attend

NAME = "spec_sdpa"


def packed_gqa_sdpa(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """query: [B, H, n, D]; key/value: [B, H_kv, L, D]; attention_mask: [B|1, 1, n, L] bool."""
    groups = getattr(module, "num_key_value_groups", 1)
    if attention_mask is None or groups == 1 or attention_mask.shape[1] != 1 or dropout:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, **kwargs)
    B, H, n, D = query.shape
    return attend(query, key, value, attention_mask, scaling).view(B, n, H, D), None  # as transformers expects


def use_packed_attention(model: torch.nn.Module) -> bool:
    """Switch a model using sdpa to the packed variant; returns whether it was switched."""
    if getattr(model.config, "_attn_implementation", None) not in ("sdpa", NAME):
        return False
    AttentionInterface.register(NAME, packed_gqa_sdpa)
    AttentionMaskInterface.register(NAME, sdpa_mask)  # else transformers builds no mask at all for it
    model.set_attn_implementation(NAME)
    return True

"""A pre-norm decoder layer computed from its modules' weights in fewer operators and Python calls.

At one row on a CPU a decoding step's products are about three quarters of its time; the rest is
some thirty small operators per layer (RMSNorm's six, rotary's seven per tensor, views, the cache
write) and the Python that carries the arguments through transformers' module stack. `LeanLayer`
computes the same function over the same modules (their linear layers, so the chosen formulations
of harness/core/linear.py, are called as they are): RMSNorm as one `F.rms_norm`; rotary as
x*cos + roll(x)*signed sin, which is rotate_half(x)*sin exactly, from a (cos, signed sin) pair the
Context makes once per forward for every layer; attention straight to sdpa with the query heads
that share a K/V head folded into rows (no K/V copy; the module path's attention calls it too). The
results equal the module path up to float rounding (tests/test_lean.py, per supported
architecture); a model whose layers do not have the expected parts keeps the module path.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

LAYER_PATHS = ("lean", "modules")  # how the engine computes a decoder layer (Engine's `layers`)
DEFAULT_LAYERS = "lean"
ATTN_PARTS = ("q_proj", "k_proj", "v_proj", "o_proj", "head_dim", "scaling", "layer_idx")
MLP_PARTS = ("gate_proj", "up_proj", "down_proj", "act_fn")


def is_rms_norm(module: nn.Module) -> bool:
    """Whether a module is a transformers RMSNorm of the Llama form (weight * x / rms(x), no offset)."""
    return type(module).__name__.endswith("RMSNorm") and hasattr(module, "variance_epsilon")


def lean_problem(block: nn.Module) -> str | None:
    """Why LeanLayer cannot compute this decoder layer (None when it can)."""
    attn, mlp = getattr(block, "self_attn", None), getattr(block, "mlp", None)
    missing = [f"self_attn.{p}" for p in ATTN_PARTS if not hasattr(attn, p)]
    missing += [f"mlp.{p}" for p in MLP_PARTS if not hasattr(mlp, p)]
    if missing:
        return "no " + ", ".join(missing)
    norms = [block.input_layernorm, block.post_attention_layernorm] + \
        [getattr(attn, n) for n in ("q_norm", "k_norm") if hasattr(attn, n)]
    if not all(is_rms_norm(n) for n in norms):
        return "a norm that is not a Llama-form RMSNorm"
    if not isinstance(mlp.act_fn, nn.SiLU) and type(mlp.act_fn).__name__ != "SiLUActivation":
        return f"activation {type(mlp.act_fn).__name__}, not SiLU"
    return None


def rms_norm(norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """transformers' RMSNorm (normalised in float32, cast back, then scaled) in one or three operators."""
    if x.dtype == torch.float32 and norm.weight.dtype == torch.float32:
        return F.rms_norm(x, norm.weight.shape, norm.weight, norm.variance_epsilon)
    return norm.weight * F.rms_norm(x.float(), norm.weight.shape, eps=norm.variance_epsilon).to(x.dtype)


def rotary_pair(cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin [B, c, D] -> cos [B, 1, c, D] and sin with its first half negated, so that
    rotate_half(x) * sin == x.roll(D / 2, -1) * signed sin, exactly (a negation is exact)."""
    half = sin.shape[-1] // 2
    signed = torch.cat([-sin[..., :half], sin[..., half:]], dim=-1)
    return cos[:, None], signed[:, None]


def rotate(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
    """x [B, H, c, D] with rotary positions applied."""
    return x * cos + x.roll(x.shape[-1] // 2, -1) * signed_sin


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, scale: float) -> torch.Tensor:
    """q [B, H, n, D], k and v [B, H_kv, L, D], mask [B|1, 1, n, L] bool or None (causal when
    n > 1, else full) -> [B, n, H * D]. The query heads sharing a K/V head are folded into rows
    when a mask is given or there is one row (no K/V copy); a causal block without a mask (a
    prefill from slot 0, once per turn) repeats K/V per query head, as transformers does."""
    B, H, n, D = q.shape
    groups = H // k.shape[1]
    if groups > 1 and (mask is not None or n == 1):
        packed = q.reshape(B, H // groups, groups * n, D)  # head h = kv * groups + r -> rows r * n + i
        fold = None if mask is None else mask.repeat(1, 1, groups, 1)  # [B|1, 1, groups * n, L]
        out = F.scaled_dot_product_attention(packed, k, v, attn_mask=fold, scale=scale).view(B, H, n, D)
    else:
        if groups > 1:
            k, v = k.repeat_interleave(groups, 1), v.repeat_interleave(groups, 1)  # [B, H, L, D]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None and n > 1, scale=scale)
    return out.transpose(1, 2).reshape(B, n, H * D)


class LeanLayer:
    """Decoder layer i of a supported model (lean_problem is None), called as the engine calls a
    layer: h [B, c, d], the Context's rotary pair and mask for c rows, the forward's cache writer."""

    def __init__(self, block: nn.Module):
        self.block, self.attn, self.mlp = block, block.self_attn, block.mlp
        self.head_dim = self.attn.head_dim
        self.qk_norm = hasattr(self.attn, "q_norm")

    def attention(self, x: torch.Tensor, rope, mask, cache) -> torch.Tensor:
        """x [B, c, d] (normed) -> the attention branch [B, c, d]; writes the rows' K/V to cache."""
        a, (B, c, _) = self.attn, x.shape
        q = a.q_proj(x).view(B, c, -1, self.head_dim)
        k = a.k_proj(x).view(B, c, -1, self.head_dim)
        v = a.v_proj(x).view(B, c, -1, self.head_dim).transpose(1, 2)  # [B, H_kv, c, D]
        if self.qk_norm:
            q, k = rms_norm(a.q_norm, q), rms_norm(a.k_norm, k)
        q, k = rotate(q.transpose(1, 2), *rope), rotate(k.transpose(1, 2), *rope)
        if cache is not None:
            k, v = cache.update(k, v, a.layer_idx)
        return a.o_proj(attend(q, k, v, mask, a.scaling))

    def __call__(self, h: torch.Tensor, rope, mask, cache, attn: bool = True, mlp: bool = True) -> torch.Tensor:
        """h [B, c, d] -> [B, c, d]; attn/mlp False skip that sublayer (its residual branch)."""
        if attn:
            h = h + self.attention(rms_norm(self.block.input_layernorm, h), rope, mask, cache)
        if mlp:
            m, x = self.mlp, rms_norm(self.block.post_attention_layernorm, h)
            h = h + m.down_proj(F.silu(m.gate_proj(x)) * m.up_proj(x))  # act_fn is SiLU (lean_problem)
        return h

"""A pre-norm decoder layer computed from its modules' weights in fewer operators and Python calls.

At one row on a CPU a decoding step's products are about three quarters of its time; the rest is
some thirty small operators per layer (RMSNorm's six, rotary's seven per tensor, views, the cache
write) and the Python that carries the arguments through transformers' module stack. `LeanLayer`
computes the same function over the same modules: their linear layers' products (the chosen
formulations of harness/core/linear.py) and norms bound once as plain functions, without
nn.Module's call machinery, on the rows as one [B * c, d] matrix; RMSNorm as one `F.rms_norm`; rotary as
x*cos + roll(x)*signed sin, which is rotate_half(x)*sin exactly, from a (cos, signed sin) pair the
Context makes once per forward for every layer; attention straight to sdpa with the query heads
that share a K/V head folded into rows (no K/V copy; the module path's attention calls it too). The
results equal the module path up to float rounding (tests/test_lean.py, per supported
architecture); a model whose layers do not have the expected parts keeps the module path.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from harness.core.linear import ChosenLinear

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
    return bound_norm(norm)(x)


def bound_norm(norm: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """rms_norm over this norm's weight as a plain function of x [..., d]."""
    weight, eps = norm.weight, norm.variance_epsilon

    def normed(x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float32 and weight.dtype == torch.float32:
            return F.rms_norm(x, weight.shape, weight, eps)
        return weight * F.rms_norm(x.float(), weight.shape, eps=eps).to(x.dtype)
    return normed


def bound_product(layer: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """A linear layer as a plain function of x, bound now: its chosen formulation
    (ChosenLinear.bound) or F.linear over its weight and bias, without nn.Module's call (some
    4 us a call here, 210 calls a token). A layer with hooks, or of another type, is called as
    a module."""
    if layer._forward_hooks or layer._forward_pre_hooks:
        return layer
    if isinstance(layer, ChosenLinear):
        return layer.bound()
    if type(layer) is nn.Linear:
        weight, bias = layer.weight, layer.bias
        return lambda x: F.linear(x, weight, bias)
    return layer


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
    layer: h [B, c, d], the Context's rotary pair and mask for c rows, the forward's cache writer.
    Its products and norms are bound when it is made, as the Engine binds the LM head: linear
    formulations changed later (harness/core/linear.py's engage) need a new Engine."""

    def __init__(self, block: nn.Module):
        attn, mlp = block.self_attn, block.mlp
        self.q, self.k, self.v, self.o = (bound_product(getattr(attn, f"{n}_proj")) for n in "qkvo")
        self.gate, self.up, self.down = (bound_product(getattr(mlp, f"{n}_proj")) for n in ("gate", "up", "down"))
        self.attn_norm, self.mlp_norm = bound_norm(block.input_layernorm), bound_norm(block.post_attention_layernorm)
        self.qk_norms = (bound_norm(attn.q_norm), bound_norm(attn.k_norm)) if hasattr(attn, "q_norm") else None
        self.head_dim, self.scale, self.index = attn.head_dim, attn.scaling, attn.layer_idx

    def attention(self, x: torch.Tensor, B: int, rope, mask, cache) -> torch.Tensor:
        """x [B * c, d] (normed rows) -> the attention branch [B * c, d]; writes the rows' K/V to cache."""
        c = x.shape[0] // B
        q = self.q(x).view(B, c, -1, self.head_dim)
        k = self.k(x).view(B, c, -1, self.head_dim)
        v = self.v(x).view(B, c, -1, self.head_dim).transpose(1, 2)  # [B, H_kv, c, D]
        if self.qk_norms:
            q, k = self.qk_norms[0](q), self.qk_norms[1](k)
        q, k = rotate(q.transpose(1, 2), *rope), rotate(k.transpose(1, 2), *rope)
        if cache is not None:
            k, v = cache.update(k, v, self.index)
        return self.o(attend(q, k, v, mask, self.scale).view(B * c, -1))

    def __call__(self, h: torch.Tensor, rope, mask, cache, attn: bool = True, mlp: bool = True) -> torch.Tensor:
        """h [B, c, d] -> [B, c, d]; attn/mlp False skip that sublayer (its residual branch). The
        products take the rows as one matrix [B * c, d] (F.linear folds a 3-D input otherwise)."""
        B, c, d = h.shape
        h = h.reshape(B * c, d)
        if attn:
            h = h + self.attention(self.attn_norm(h), B, rope, mask, cache)
        if mlp:
            x = self.mlp_norm(h)
            h = h + self.down(F.silu(self.gate(x)) * self.up(x))  # act_fn is SiLU (lean_problem)
        return h.view(B, c, d)

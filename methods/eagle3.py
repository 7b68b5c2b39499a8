"""EAGLE-3 (Li et al. 2025, "EAGLE-3: Scaling up Inference Acceleration of Large Language Models via
Training-Time Test", arXiv 2503.01840) with EAGLE-2's dynamic draft tree, on the shared loop.

What differs from EAGLE-1/2 (methods/eagle.py):
- The head reads a fusion of three target layers, not the last one: the hidden states entering
  layers `layers` (default (2, L // 2, L - 3), the released heads' choice: low, middle and high),
  concatenated [B, n, 3d] and projected by `fc` (3d -> d, no bias). The verify forward keeps them
  (Engine.forward_capturing): no extra target forward.
- One decoder layer (`midlayer`) over two inputs: the token's embedding and the hidden state, each
  RMS-normed (`input_layernorm`, `hidden_norm`) and concatenated [emb; hidden] (2d) into the
  attention's q/k/v projections; the residual is the hidden state; post-attention norm and MLP as
  Llama's. A drafted row's hidden state is the head's own output for its parent (pre-norm), so
  deeper levels run on the head's predictions, never on target features.
- Draft logits: the head's own `norm`, then its own `lm_head` over a draft vocabulary of
  `draft_vocab` tokens, mapped back to the target's ids through `d2t` (target = draft + d2t[draft]);
  `draft_vocab = 0` decodes with the target's frozen LM head over the full vocabulary instead.
- Training-time test (methods/eagle3_train.py): unrolled on its own outputs for `unroll` steps.

Released EAGLE-3 drafts load as released (methods/eagle3_released.py). Tree drafting, batching,
the head cache and `auto` depth / total_tokens are EAGLE's (this class subclasses it).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from transformers import LlamaConfig
from transformers.models.llama.modeling_llama import (
    LlamaAttention,
    LlamaMLP,
    LlamaRMSNorm,
)

from harness.core.cache import KVCache
from harness.core.drafter import frozen_module, load_frozen
from harness.core.engine import Context, Engine, cache_keyword
from harness.core.method import Option
from harness.core.tree import Tree
from methods.eagle import SHAPES, Eagle
from methods.eagle_tree import committed

UNROLL = 4  # training-time-test steps (the paper's code unrolls 7; 4 covers the depths planned on a CPU)


def default_layers(num_layers: int) -> tuple[int, int, int]:
    """Low, middle, high: the inputs of layers 2, L // 2 and L - 3, as the released heads read them
    (in increasing order; a very shallow model repeats one)."""
    return tuple(sorted((min(2, num_layers - 1), num_layers // 2, max(0, num_layers - 3))))


def head_config(engine: Engine, layers=None, draft_vocab: int = 0, unroll: int = UNROLL,
                feature: float = 0.0) -> dict:
    """A head's config for this target (layer shapes copied from it); `feature`: the weight of the
    optional feature-regression term in training (0: the paper's loss, KL only)."""
    cfg = engine.config
    return {"layers": list(layers or default_layers(engine.num_layers)), "draft_vocab": draft_vocab,
            "unroll": unroll, "embedding": False, "loss": {"feature": feature},
            **{k: getattr(cfg, k) for k in SHAPES}}


class Eagle3Layer(nn.Module):
    """EAGLE-3's decoder layer: attention over [norm(embedding); norm(hidden)], residual on hidden."""

    def __init__(self, target, d: int, config: dict):
        super().__init__()
        head_dim = getattr(target, "head_dim", None) or d // target.num_attention_heads
        shapes = {k: config[k] for k in SHAPES}
        attn = LlamaConfig(vocab_size=target.vocab_size, hidden_size=2 * d, head_dim=head_dim,
                           attn_implementation=target._attn_implementation, **shapes)
        self.self_attn = LlamaAttention(attn, layer_idx=0)
        self.self_attn.o_proj = nn.Linear(config["num_attention_heads"] * head_dim, d, bias=False)
        self.mlp = LlamaMLP(LlamaConfig(vocab_size=target.vocab_size, hidden_size=d, **shapes))
        eps = config["rms_norm_eps"]
        self.hidden_norm, self.input_layernorm = LlamaRMSNorm(d, eps), LlamaRMSNorm(d, eps)
        self.post_attention_layernorm = LlamaRMSNorm(d, eps)
        self._kw = cache_keyword(self.self_attn)

    def forward(self, emb: torch.Tensor, hidden: torch.Tensor, ctx: Context) -> torch.Tensor:
        """emb, hidden: [B, n, d] -> [B, n, d]."""
        rope, mask = ctx.view(hidden.shape[1])
        x = torch.cat([self.input_layernorm(emb), self.hidden_norm(hidden)], dim=-1)  # [B, n, 2d]
        a, _ = self.self_attn(hidden_states=x, position_embeddings=rope, attention_mask=mask, **{self._kw: ctx.cache})
        h = hidden + a
        return h + self.mlp(self.post_attention_layernorm(h))


class Eagle3Head(nn.Module):
    """fc (3d -> d) over the fused target layers, the two-input layer, norm, own LM head (+ d2t)."""

    kind = "eagle3"
    storage_dtype = torch.float16
    reads_final_only = False

    def __init__(self, engine: Engine, config: dict):
        super().__init__()
        t, d = engine.config, engine.hidden_size
        self.shapes = {k: (list(v) if isinstance(v, tuple) else v) for k, v in config.items() if k != "loss"}
        self.steps = int(config["unroll"])  # draft steps trained (held-out agreement per step)
        self.feature_weight = float((config.get("loss") or {}).get("feature", 0.0))  # older sidecars: none
        self.fc = nn.Linear(3 * d, d, bias=False)
        self.midlayer = Eagle3Layer(t, d, config)
        self.norm = LlamaRMSNorm(d, config["rms_norm_eps"])
        vocab, draft = t.vocab_size, int(config["draft_vocab"])
        if draft:
            self.lm_head = nn.Linear(d, draft, bias=False)
            self.register_buffer("d2t", torch.zeros(draft, dtype=torch.long))  # target id - draft id
            self.register_buffer("t2d", torch.zeros(vocab, dtype=torch.bool))  # target ids in the draft vocabulary
        if config["embedding"]:
            self.embed_tokens = nn.Embedding(vocab, d)
        self._frozen = [engine.embed_tokens, engine.lm_head]  # lists: the target's, not ours
        self._vocab = vocab

    def config(self) -> dict:
        return {**self.shapes, "loss": {"feature": self.feature_weight}}

    @property
    def reads_layers(self) -> tuple[int, ...]:
        """Training caches the inputs of these target layers (and its output) per sequence (FinalCache)."""
        return tuple(self.shapes["layers"])

    def new_cache(self, max_len: int, device, dtype, batch: int = 1) -> KVCache:
        attn = self.midlayer.self_attn
        return KVCache(1, batch, attn.config.num_key_value_heads, attn.head_dim, max_len, dtype, device)

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        return (self.embed_tokens if self.shapes["embedding"] else self._frozen[0])(tokens)

    def fuse(self, fused: torch.Tensor) -> torch.Tensor:
        """[..., 3d] the target's three layers -> [..., d] the head's input hidden state."""
        return self.fc(fused)

    def forward(self, hidden: torch.Tensor, tokens: torch.Tensor, ctx: Context) -> torch.Tensor:
        """hidden: [B, n, d] (fused target features or the head's own outputs); tokens: [B, n],
        token t + 1 of each row -> [B, n, d] outputs (pre-norm)."""
        return self.midlayer(self.embed(tokens), hidden, ctx)

    def draft_ids(self) -> torch.Tensor | None:
        """[Vd] the target ids of the draft vocabulary (None: the full vocabulary, target LM head)."""
        if not self.shapes["draft_vocab"]:
            return None
        return torch.arange(self.d2t.shape[0], device=self.d2t.device) + self.d2t

    def draft_logits(self, out: torch.Tensor) -> torch.Tensor:
        """[..., d] -> [..., Vd] over the draft vocabulary (or [..., V] with the target's LM head)."""
        normed = self.norm(out)
        return self.lm_head(normed) if self.shapes["draft_vocab"] else self._frozen[1](normed)

    def decode(self, out: torch.Tensor) -> torch.Tensor:
        """[..., d] -> [..., V] draft logits over the target's ids (-inf outside the draft vocabulary)."""
        logits = self.draft_logits(out)
        ids = self.draft_ids()
        if ids is None:
            return logits
        full = logits.new_full((*logits.shape[:-1], self._vocab), float("-inf"))
        return full.index_copy_(full.dim() - 1, ids, logits)

    def loss(self, engine: Engine, batch):
        from methods.eagle3_train import ttt_loss

        return ttt_loss(self, engine, batch)


def build_head(engine: Engine, config: dict) -> Eagle3Head:
    return Eagle3Head(engine, config)


class Eagle3(Eagle):
    """EAGLE-3: Eagle's tree drafting with the fused-feature head (see the module docstring)."""

    name = "eagle3"
    summary = "EAGLE-3: fused low/mid/high features, training-time test, dynamic draft tree"
    weights_file = "eagle3.safetensors"
    options = tuple(Option("checkpoint", "str", "eagle3", "checkpoint name under methods/checkpoints/<model>/, a "
                           "path, or a released EAGLE-3 directory (config.json + model.safetensors or "
                           "pytorch_model.bin)") if o.name == "checkpoint" else o for o in Eagle.options)

    @staticmethod
    def load_head(engine: Engine, path: Path) -> tuple[nn.Module, dict]:
        """Our checkpoint (safetensors + sidecar), or a released EAGLE-3 directory."""
        if not Path(path).is_dir():
            return load_frozen(engine, path, build_head, "eagle3")
        from methods.eagle3_released import released_head

        state, sidecar = released_head(engine, Path(path), head_config)
        return frozen_module(engine, build_head, state, sidecar, f"{path} is not a valid EAGLE-3 draft"), sidecar

    def prefill(self, ids: torch.Tensor, cache: KVCache) -> torch.Tensor:
        self.start(ids, cache)
        positions = cache.lengths[:, None] + cache.arange(ids.shape[1])  # [B, P]
        return self._forward(ids, positions, None, cache)

    def verify(self, tree: Tree, cache: KVCache) -> torch.Tensor:
        positions = tree.depths + cache.lengths[:, None]  # [B, n]
        return self._forward(tree.tokens, positions, tree.mask if tree.size > 1 else None, cache)

    def _forward(self, ids, positions, mask, cache) -> torch.Tensor:
        """The target forward, keeping the three layers' inputs fused ([B, n, 3d]) for observe."""
        layers = self.head.shapes["layers"]
        hidden_at, h = self.engine.forward_capturing(ids, positions, mask, cache, tuple(layers))
        self._fused = torch.cat([hidden_at[i] for i in layers], dim=-1)
        return h

    def features(self, hidden: torch.Tensor, rows: torch.Tensor | None, top: int) -> torch.Tensor:
        """fc over the fused layers of the committed rows (rows [B, top]; None: the first top)."""
        return self.head.fuse(committed(self._fused, rows, top))

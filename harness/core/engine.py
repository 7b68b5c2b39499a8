"""The target model as every method sees it: prefill, tree-masked forwards, a position-indexed
KV cache, and layer-level access (run a range of layers, skip sublayers, insert hidden states).

The engine drives a transformers causal LM module by module (embeddings, decoder layers, final
norm, LM head); it vendors no modeling code and patches nothing: it only hands the attention
modules its own cache object, which implements the cache protocol (`update`), and switches sdpa
attention to a variant that handles grouped K/V heads under a mask without copying them
(harness/core/attention.py, registered through transformers' AttentionInterface).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Callable, Mapping

import torch

from harness.core.architectures import refusal
from harness.core.attention import use_packed_attention
from harness.core.modelload import ModelLoadError

Insert = Callable[[torch.Tensor], torch.Tensor]  # h: [B, c, d] -> new rows [B, m, d]


class KVCache:
    """K/V of every layer in one buffer indexed by position, so a rollback is free and keeping
    an accepted tree path is a single gather.

    buf: [layers, 2, B, H_kv, max_len, D]. Slots [0, length) hold committed positions. A forward
    writes its c new rows at [start, start + c) and attends to [0, start + c).
    """

    def __init__(self, layers: int, batch: int, kv_heads: int, head_dim: int, max_len: int,
                 dtype: torch.dtype, device: torch.device | str):
        self.buf = torch.zeros(layers, 2, batch, kv_heads, max_len, head_dim, dtype=dtype, device=device)
        self.max_len = max_len
        self.length = 0
        self.start = 0

    def reset(self) -> None:
        self.length = 0
        self.start = 0

    def update(self, key: torch.Tensor, value: torch.Tensor, layer_idx: int, kwargs=None, **_):
        """Cache protocol used by transformers' attention: store new K/V, return all visible K/V."""
        end = self.start + key.shape[2]  # key: [B, H_kv, c, D]
        if end > self.max_len:
            raise RuntimeError(f"KV cache overflow: {end} positions > capacity {self.max_len}")
        kv = self.buf[layer_idx]
        kv[0, :, :, self.start:end] = key
        kv[1, :, :, self.start:end] = value
        return kv[0, :, :, :end], kv[1, :, :, :end]

    def keep(self, path: list[int], on_path: torch.Tensor | None = None) -> None:
        """Commit the rows `path` (node indices of the last forward, ascending, root first) as the
        next positions. on_path: [n] bool, the same path on the device, needed only when the rows
        are not already in place (a branch of a tree); the gather then needs no host read."""
        n = len(path)
        if path[-1] != n - 1:  # not already in place: gather them down
            rows = torch.argsort((~on_path).to(torch.int8), stable=True)[:n]  # path rows, ascending
            self.buf[:, :, :, :, self.length:self.length + n] = self.buf.index_select(4, rows + self.length)
        self.length += n

    def truncate(self, length: int) -> None:
        self.length = length


class PrefixKV:
    """Fixed K/V of rows computed earlier (a teacher pass: kv [layers, 2, B, H_kv, T, D]) followed
    by the rows of the current forward, joined without in-place writes so autograd can flow
    through the new rows (drafter training)."""

    def __init__(self, kv: torch.Tensor):
        self.kv = kv
        self.length = self.start = kv.shape[4]

    def update(self, key: torch.Tensor, value: torch.Tensor, layer_idx: int, kwargs=None, **_):
        return (torch.cat([self.kv[layer_idx, 0], key], dim=2),
                torch.cat([self.kv[layer_idx, 1], value], dim=2))


@dataclass
class Context:
    """What every layer of one forward needs, for the full set of rows it will ever hold
    (rows inserted mid-network included); layers see the first c rows of it."""

    cos: torch.Tensor  # [B, N, head_dim]
    sin: torch.Tensor  # [B, N, head_dim]
    mask: torch.Tensor | None  # [1 or B, 1, N, start + N] bool (True = may attend); None = causal/full
    cache: "KVCache | PrefixKV | None"
    start: int
    _views: dict = field(default_factory=dict)

    def view(self, c: int):
        """(cos, sin), mask for the first c rows."""
        if c not in self._views:
            mask = None if self.mask is None else self.mask[:, :, :c, :self.start + c]
            self._views[c] = ((self.cos[:, :c], self.sin[:, :c]), mask)
        return self._views[c]


@dataclass
class Counters:
    forwards: int = 0  # target forwards (full model), prefill included
    positions: int = 0  # rows processed by target forwards, at the last layer
    draft_forwards: int = 0  # forwards of a draft model or head (not the target)
    host_reads: int = 0  # device-to-host reads through Engine.host (each one waits for the device)


def cache_keyword(module: torch.nn.Module) -> str:
    """The keyword a transformers layer or attention module takes its cache under: `cache` since
    transformers 5.20, `past_key_values` before (passed under the wrong name, it would be ignored)."""
    return "cache" if "cache" in inspect.signature(module.forward).parameters else "past_key_values"


class Engine:
    """Layer-level access to a Llama-family causal LM (model.model.{embed_tokens, layers, norm,
    rotary_emb} and an output embedding). Any other architecture is refused (ModelLoadError, with
    the reason: harness/core/architectures.py)."""

    def __init__(self, model: torch.nn.Module):
        base = model.get_decoder() if hasattr(model, "get_decoder") else model.model
        for part in ("embed_tokens", "layers", "norm", "rotary_emb"):
            if not hasattr(base, part):
                raise ModelLoadError(f"unsupported architecture {type(model).__name__}: no decoder.{part}")
        why = refusal(model.config, base.layers[0])
        if why:
            raise ModelLoadError(why)
        self._layer_kw = cache_keyword(base.layers[0])
        self._attn_kw = cache_keyword(base.layers[0].self_attn)
        self.model = model
        self.packed_attention = use_packed_attention(model)
        self.config = model.config
        self.embed_tokens = base.embed_tokens
        self.layers = base.layers
        self.norm = base.norm
        self.rotary = base.rotary_emb
        self.lm_head = model.get_output_embeddings()
        self.num_layers = len(self.layers)
        self.hidden_size = self.config.hidden_size
        self.counters = Counters()
        p = next(model.parameters())
        self.device, self.dtype = p.device, p.dtype

    # -- caches and contexts ---------------------------------------------------------------
    def new_cache(self, max_len: int, batch: int = 1) -> KVCache:
        cfg = self.config
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        return KVCache(self.num_layers, batch, cfg.num_key_value_heads, head_dim, max_len,
                       self.dtype, self.device)

    def context(self, positions: torch.Tensor, tree_mask: torch.Tensor | None,
                cache: KVCache | PrefixKV | None, start: int | None = None,
                full_mask: torch.Tensor | None = None) -> Context:
        """positions: [N] or [B, N] absolute position ids; tree_mask: [N, N] bool among the new
        rows (row i may see row j), None for plain causal; the committed prefix is then always
        visible. full_mask: [B, 1, N, start + N] replaces both when given (training)."""
        if positions.dim() == 1:
            positions = positions[None]
        start = (cache.length if cache is not None else 0) if start is None else start
        if cache is not None:
            cache.start = start
        n = positions.shape[1]
        probe = torch.empty(0, dtype=self.dtype, device=self.device)
        cos, sin = self.rotary(probe, positions.to(self.device))
        if full_mask is not None:
            mask = full_mask
        elif tree_mask is None and (n == 1 or start == 0):
            mask = None  # sdpa: full attention for one row, causal from slot 0 otherwise
        else:
            if tree_mask is None:
                tree_mask = torch.ones(n, n, dtype=torch.bool, device=self.device).tril_()
            mask = torch.ones(n, start + n, dtype=torch.bool, device=self.device)
            mask[:, start:] = tree_mask
            mask = mask[None, None]
        return Context(cos, sin, mask, cache, start)

    # -- pieces ------------------------------------------------------------------------------
    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """ids: [B, n] -> [B, n, d]"""
        return self.embed_tokens(ids.to(self.device))

    def layer(self, i: int, h: torch.Tensor, ctx: Context, attn: bool = True, mlp: bool = True) -> torch.Tensor:
        """Decoder layer i on h: [B, c, d]. Skipping a sublayer assumes the pre-norm residual
        layout of Llama-family layers (x + attn(norm(x)), x + mlp(norm(x)))."""
        block = self.layers[i]
        rope, mask = ctx.view(h.shape[1])
        if attn and mlp:
            return block(h, attention_mask=mask, position_embeddings=rope, **{self._layer_kw: ctx.cache})
        if attn:
            a, _ = block.self_attn(hidden_states=block.input_layernorm(h), position_embeddings=rope,
                                   attention_mask=mask, **{self._attn_kw: ctx.cache})
            h = h + a
        if mlp:
            h = h + block.mlp(block.post_attention_layernorm(h))
        return h

    def run_layers(self, h: torch.Tensor, ctx: Context, lo: int = 0, hi: int | None = None,
                   inserts: Mapping[int, Insert] | None = None,
                   skip_attn: frozenset = frozenset(), skip_mlp: frozenset = frozenset()) -> torch.Tensor:
        """Layers [lo, hi). Before layer i, inserts[i](h) rows are appended to h (they then take
        part in every later layer; i = num_layers appends after the last layer); skip_* name
        sublayers to leave out (draft models)."""
        hi = self.num_layers if hi is None else hi
        for i in range(lo, hi):
            if inserts and i in inserts:
                h = torch.cat([h, inserts[i](h)], dim=1)
            h = self.layer(i, h, ctx, attn=i not in skip_attn, mlp=i not in skip_mlp)
        if inserts and hi == self.num_layers and hi in inserts:  # after the last layer
            h = torch.cat([h, inserts[hi](h)], dim=1)
        return h

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        """Final norm + LM head: [..., d] -> [..., V]"""
        return self.lm_head(self.norm(h))

    # -- the target forward ------------------------------------------------------------------
    def forward(self, ids: torch.Tensor, positions: torch.Tensor, tree_mask: torch.Tensor | None,
                cache: KVCache | None, start: int | None = None,
                inserts: Mapping[int, Insert] | None = None) -> torch.Tensor:
        """One full-model forward of new rows; returns last-layer hidden states (pre final norm).

        ids: [n] or [B, n]; positions, tree_mask cover every row, inserted ones included:
        positions [N], tree_mask [N, N] with N = n + inserted rows. Counts one target forward.
        """
        if ids.dim() == 1:
            ids = ids[None]
        ctx = self.context(positions, tree_mask, cache, start)
        h = self.run_layers(self.embed(ids), ctx, inserts=inserts)
        self.count(h.shape[1])
        return h

    def host(self, x: torch.Tensor) -> list | int | float:
        """The one way decoding code reads a tensor on the host (`x.tolist()`): on a GPU each read
        waits for the device, so the loop keeps them to one per step; counted for tests and records."""
        self.counters.host_reads += 1
        return x.tolist()

    def count_draft(self, forwards: int = 1) -> None:
        """Book forwards of a draft model or head (timed inside the turn, not target forwards)."""
        self.counters.draft_forwards += forwards

    def count(self, rows: int, forwards: int = 1) -> None:
        """Book target work done outside `forward` (a method splitting one forward in parts)."""
        self.counters.forwards += forwards
        self.counters.positions += rows

    def capture_pass(self, ids: torch.Tensor, capture: tuple[int, ...], cache: KVCache | None
                     ) -> tuple[dict[int, torch.Tensor], torch.Tensor]:
        """A plain causal forward of ids [B, T] from slot 0 (not counted), keeping the hidden
        states entering the `capture` layers: ({layer: [B, T, d]}, last-layer output [B, T, d])."""
        B, T = ids.shape
        ctx = self.context(torch.arange(T, device=self.device).expand(B, T), None, cache, start=0)
        h, lo, hidden_at = self.embed(ids), 0, {}
        for layer in sorted(set(capture)):
            h = self.run_layers(h, ctx, lo, layer)
            hidden_at[layer], lo = h, layer
        return hidden_at, self.run_layers(h, ctx, lo)

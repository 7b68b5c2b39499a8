"""The target model as every method sees it: prefill, tree-masked forwards, a position-indexed
KV cache, and layer-level access (run a range of layers, skip sublayers, insert hidden states).

The engine drives a transformers causal LM module by module (embeddings, decoder layers, final
norm, LM head); it vendors no modeling code and patches nothing: it only hands the attention
modules its own cache object, which implements the cache protocol (`update`), and switches sdpa
attention to a variant that handles grouped K/V heads under a mask without copying them
(harness/core/attention.py, registered through transformers' AttentionInterface). By default
each decoder layer is computed from its modules' weights in fewer operators (harness/core/lean.py,
the same function up to float rounding); `Engine(model, layers="modules")` calls the modules.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Callable, Mapping

import torch

from harness.core.architectures import refusal
from harness.core.attention import use_packed_attention
from harness.core.cache import KVCache, PrefixKV, SlotWriter
from harness.core.lean import (
    DEFAULT_LAYERS,
    LAYER_PATHS,
    LeanLayer,
    lean_problem,
    rotary_pair,
)
from harness.core.modelload import ModelLoadError

Insert = Callable[[torch.Tensor], torch.Tensor]  # h: [B, c, d] -> new rows [B, m, d]


@dataclass
class Context:
    """What every layer of one forward needs, for the full set of rows it will ever hold
    (rows inserted mid-network included); layers see the first c rows of it."""

    cos: torch.Tensor  # [B, N, head_dim]
    sin: torch.Tensor  # [B, N, head_dim]
    mask: torch.Tensor | None  # [1 or B, 1, N, start + N] bool (True = may attend); None = causal/full
    cache: SlotWriter | PrefixKV | None  # where this forward's rows write their K/V
    start: int  # slots before the new rows that the rows may attend to
    window: int | None = None  # a fixed number of slots attended to (static shapes), else start + rows
    _views: dict = field(default_factory=dict)
    _lean: dict = field(default_factory=dict)

    def view(self, c: int):
        """(cos, sin), mask for the first c rows."""
        if c not in self._views:
            end = self.window or self.start + c
            mask = None if self.mask is None else self.mask[:, :, :c, :end]
            self._views[c] = ((self.cos[:, :c], self.sin[:, :c]), mask)
        return self._views[c]

    def lean_view(self, c: int):
        """(cos, signed sin) [B, 1, c, D], mask for the first c rows (harness/core/lean.py)."""
        if c not in self._lean:
            (cos, sin), mask = self.view(c)
            self._lean[c] = (rotary_pair(cos, sin), mask)
        return self._lean[c]


@dataclass
class Counters:
    forwards: int = 0  # target forwards (full model), prefill included
    positions: int = 0  # rows processed by target forwards, at the last layer
    draft_forwards: int = 0  # forwards of a draft model or head (not the target)
    syncs: int = 0  # waits for the device: reads through Engine.host, blocking copies through Engine.upload
    uploads: int = 0  # host-to-device copies through Engine.upload (pinned and non-blocking on CUDA)


def cache_keyword(module: torch.nn.Module) -> str:
    """The keyword a transformers layer or attention module takes its cache under: `cache` since
    transformers 5.20, `past_key_values` before (passed under the wrong name, it would be ignored)."""
    return "cache" if "cache" in inspect.signature(module.forward).parameters else "past_key_values"


class Engine:
    """Layer-level access to a Llama-family causal LM (model.model.{embed_tokens, layers, norm,
    rotary_emb} and an output embedding). Any other architecture is refused (ModelLoadError, with
    the reason: harness/core/architectures.py)."""

    def __init__(self, model: torch.nn.Module, layers: str = DEFAULT_LAYERS):
        """layers: "lean" computes each decoder layer with LeanLayer (harness/core/lean.py) when
        every layer has the expected parts and attention is sdpa; "modules" calls the
        transformers layer modules. `layer_path` says which is in use."""
        if layers not in LAYER_PATHS:
            raise ValueError(f"layers: {layers!r} is not one of {', '.join(LAYER_PATHS)}")
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
        lean = layers == "lean" and self.packed_attention and not any(map(lean_problem, base.layers))
        self.lean = [LeanLayer(block) for block in base.layers] if lean else None
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

    @property
    def layer_path(self) -> str:
        """How the decoder layers are computed: "lean" (LeanLayer) or "modules"."""
        return "modules" if self.lean is None else "lean"

    # -- caches and contexts ---------------------------------------------------------------
    def new_cache(self, max_len: int, batch: int = 1) -> KVCache:
        cfg = self.config
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        return KVCache(self.num_layers, batch, cfg.num_key_value_heads, head_dim, max_len,
                       self.dtype, self.device)

    def context(self, positions: torch.Tensor, tree_mask: torch.Tensor | None,
                cache: KVCache | PrefixKV | None, offset: int = 0,
                full_mask: torch.Tensor | None = None, window: int | None = None) -> Context:
        """What the layers of one forward of N new rows need.

        positions: [N] or [B, N] absolute position ids (device). The rows write their K/V at
        slots lengths[b] + offset + i of `cache` (nothing in the cache moves: the loop commits
        rows afterwards) and attend to every slot before their own (the committed prefix, and
        rows drafted earlier at smaller offsets) plus, among the new rows, what tree_mask
        ([N, N] or [B, N, N] bool, row i may see row j; None = causal) allows. full_mask
        [B|1, 1, N, start + N] (or [.., window]) replaces both (training, drafting heads, static
        steps); window: attend to that many slots whatever the lengths (static shapes)."""
        if positions.dim() == 1:
            positions = positions[None]
        n = positions.shape[1]
        writer = cache.writer(n, offset, window) if cache is not None else None
        start = (cache.length + offset) if cache is not None else 0
        cos, sin = self.rotary(torch.empty(0, dtype=self.dtype, device=self.device), positions.to(self.device))
        if full_mask is not None:
            mask = full_mask
        elif isinstance(cache, KVCache) and len(set(cache.seen)) > 1:
            mask = ragged_mask(cache, tree_mask, n, offset)  # sequences of different lengths
        elif tree_mask is None and (n == 1 or start == 0):
            mask = None  # sdpa: full attention for one row, causal from slot 0 otherwise
        else:
            mask = prefix_mask(tree_mask, n, start, self.device)
        return Context(cos, sin, mask, writer, start, window)

    # -- pieces ------------------------------------------------------------------------------
    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """ids: [B, n] -> [B, n, d]"""
        return self.embed_tokens(ids.to(self.device))

    def layer(self, i: int, h: torch.Tensor, ctx: Context, attn: bool = True, mlp: bool = True) -> torch.Tensor:
        """Decoder layer i on h: [B, c, d]. Skipping a sublayer assumes the pre-norm residual
        layout of Llama-family layers (x + attn(norm(x)), x + mlp(norm(x)))."""
        if self.lean is not None:
            rope, mask = ctx.lean_view(h.shape[1])
            return self.lean[i](h, rope, mask, ctx.cache, attn, mlp)
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
                cache: KVCache | None, offset: int = 0,
                inserts: Mapping[int, Insert] | None = None) -> torch.Tensor:
        """One full-model forward of new rows; returns last-layer hidden states [B, N, d] (pre
        final norm). The rows' K/V go to the slots after each sequence's committed length (see
        context); committing them is the caller's (cache.keep / advance / truncate).

        ids: [n] or [B, n]; positions, tree_mask cover every row, inserted ones included:
        positions [N] or [B, N], tree_mask [N, N] or [B, N, N] with N = n + inserted rows.
        Counts one target forward.
        """
        if ids.dim() == 1:
            ids = ids[None]
        ctx = self.context(positions, tree_mask, cache, offset)
        h = self.run_layers(self.embed(ids), ctx, inserts=inserts)
        self.count(h.shape[1])
        return h

    def host(self, x: torch.Tensor) -> list | int | float:
        """The one way decoding code reads a tensor on the host (`x.tolist()`): on a GPU each read
        waits for the device, so the loop keeps them to one per step; counted as a sync."""
        self.counters.syncs += 1
        return x.tolist()

    def upload(self, values: list, dtype: torch.dtype = torch.long) -> torch.Tensor:
        """Host values as a device tensor without waiting for the device: on CUDA through pinned
        memory, copied non-blocking (a copy from pageable memory, `torch.tensor(list, device=...)`,
        waits like a read). On the CPU there is nothing to copy to."""
        self.counters.uploads += 1
        if self.device.type != "cuda":
            return torch.tensor(values, dtype=dtype, device=self.device)
        return torch.tensor(values, dtype=dtype, pin_memory=True).to(self.device, non_blocking=True)

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
        ctx = self.context(torch.arange(T, device=self.device).expand(B, T), None, cache)
        return self._capturing(ids, ctx, capture)

    def forward_capturing(self, ids: torch.Tensor, positions: torch.Tensor, tree_mask: torch.Tensor | None,
                          cache: KVCache | None, capture: tuple[int, ...]) -> tuple[dict[int, torch.Tensor], torch.Tensor]:
        """`forward` (counted) that also keeps the hidden states entering the `capture` layers:
        ({layer: [B, N, d]}, last-layer output [B, N, d]) (drafters reading several layers)."""
        hidden_at, h = self._capturing(ids, self.context(positions, tree_mask, cache), capture)
        self.count(h.shape[1])
        return hidden_at, h

    def _capturing(self, ids: torch.Tensor, ctx: Context, capture: tuple[int, ...]):
        h, lo, hidden_at = self.embed(ids), 0, {}
        for layer in sorted(set(capture)):
            h = self.run_layers(h, ctx, lo, layer)
            hidden_at[layer], lo = h, layer
        return hidden_at, self.run_layers(h, ctx, lo)


def prefix_mask(tree_mask: torch.Tensor | None, n: int, start: int, device) -> torch.Tensor:
    """[1|B, 1, n, start + n]: every row sees the `start` slots before the rows, and the new rows
    as tree_mask ([n, n] or [B, n, n]; None = causal) says."""
    if tree_mask is None:
        tree_mask = torch.ones(n, n, dtype=torch.bool, device=device).tril_()
    if tree_mask.dim() == 2:
        tree_mask = tree_mask[None]
    before = torch.ones(1, 1, 1, 1, dtype=torch.bool, device=device).expand(tree_mask.shape[0], 1, n, start)
    return torch.cat([before, tree_mask[:, None]], dim=3)


def ragged_mask(cache: KVCache, tree_mask: torch.Tensor | None, n: int, offset: int) -> torch.Tensor:
    """[B, 1, n, max length + offset + n] for sequences of different committed lengths: sequence
    b's rows (at slots lengths[b] + offset + i) see its slots before them and, among the new rows,
    what tree_mask allows; nothing past its own rows (other sequences' longer prefixes)."""
    device = cache.buf.device
    if tree_mask is None:
        tree_mask = torch.ones(n, n, dtype=torch.bool, device=device).tril_()
    tree_mask = tree_mask.expand(cache.batch, n, n)
    if offset:  # the rows drafted earlier at smaller offsets: all visible
        tree_mask = torch.cat([tree_mask.new_ones(cache.batch, n, offset), tree_mask], dim=2)
    return region_mask(cache, tree_mask)


def region_mask(cache: KVCache, seen: torch.Tensor) -> torch.Tensor:
    """[B, 1, n, max length + w]: sequence b's n new rows see its committed slots (< lengths[b])
    and, of the w slots after them (rows drafted earlier and these rows), what seen [B, n, w]
    allows; nothing past them (other sequences' longer prefixes)."""
    B, n, w = seen.shape
    end = cache.length + w
    rel = cache.arange(end)[None, :] - cache.lengths[:, None]  # [B, end] slot - first slot after the committed ones
    inside = (rel >= 0) & (rel < w)
    part = seen.gather(2, rel.clamp(0, w - 1)[:, None, :].expand(-1, n, -1))  # [B, n, end]
    return ((rel < 0)[:, None, :] | (inside[:, None, :] & part))[:, None]

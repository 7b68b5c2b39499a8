"""The target's KV cache: one buffer for B sequences, a committed length per sequence, and writes
at slot indices held on the device.

A forward never moves shared state in the cache. It asks for a `SlotWriter` (where its c rows go:
slots [B, c], and how many slots the attention reads), hands that to the attention modules as
their cache, and the loop commits accepted rows afterwards (`keep`, `advance`, `truncate`). So a
draft forward and a verify forward can interleave on one cache, every sequence of a batch keeps
its own length, and a CUDA graph can capture a step (its slots come from the device lengths).

Lengths live twice: `lengths` [B] on the device (slot indices, masks, graphs) and `seen` on the
host (shapes: how many slots an eager forward attends to). The loop updates both from the one
host read it makes per step, so keeping them in step costs no extra read.
"""

from __future__ import annotations

import torch


class SlotWriter:
    """The cache as one forward sees it (transformers' cache protocol: `update`): the new rows'
    K/V go to `slots` [B, N]; a layer holding c of the rows attends to slots [0, start + c), or to
    the first `window` slots when a static shape is asked for."""

    def __init__(self, buf: torch.Tensor, slots: torch.Tensor, start: int, window: int | None = None,
                 layer_kv: list[tuple[torch.Tensor, torch.Tensor]] | None = None):
        self.buf, self.slots, self.start, self.window = buf, slots, start, window  # buf: [layers, 2, B, H_kv, L, D]
        self.layer_kv = layer_kv or [(kv[0], kv[1]) for kv in buf]  # per layer K, V [B, H_kv, L, D] (views)
        self._index: dict[int, torch.Tensor] = {}  # c -> the first c slots of sequence 0 [c]

    def update(self, key: torch.Tensor, value: torch.Tensor, layer_idx: int, kwargs=None, **_):
        """key, value: [B, H_kv, c, D] -> the layer's K/V of the visible slots, [B, H_kv, visible, D] each."""
        k_all, v_all = self.layer_kv[layer_idx]
        c = key.shape[2]
        visible = self.window or self.start + c
        if k_all.shape[0] == 1:  # one sequence: an index copy along the slot axis
            if c not in self._index:
                self._index[c] = self.slots[0, :c]
            k_all.index_copy_(2, self._index[c], key)
            v_all.index_copy_(2, self._index[c], value)
        else:  # a batch: each sequence's rows at its own slots
            index = self.slots[:, None, :c, None].expand_as(key)
            k_all.scatter_(2, index, key)
            v_all.scatter_(2, index, value)
        return k_all[:, :, :visible], v_all[:, :, :visible]


class KVCache:
    """K/V of every layer for B sequences, indexed by position, so a rollback is free and keeping
    an accepted tree path is one gather. buf: [layers, 2, B, H_kv, max_len, D]; slots
    [0, lengths[b]) of sequence b hold its committed positions."""

    def __init__(self, layers: int, batch: int, kv_heads: int, head_dim: int, max_len: int,
                 dtype: torch.dtype, device: torch.device | str):
        self.buf = torch.zeros(layers, 2, batch, kv_heads, max_len, head_dim, dtype=dtype, device=device)
        self.max_len, self.batch = max_len, batch
        self.lengths = torch.zeros(batch, dtype=torch.long, device=device)  # [B], updated in place (graphs)
        self.seen = [0] * batch  # the same lengths on the host
        self._ranges: dict[int, torch.Tensor] = {}
        self._layer_kv = [(kv[0], kv[1]) for kv in self.buf]  # per layer K, V views, made once

    @property
    def length(self) -> int:
        """The longest sequence's committed length (host): what room checks and shapes need."""
        return max(self.seen)

    def arange(self, n: int) -> torch.Tensor:
        """[n] 0..n-1 on the cache's device, made once per n (not a kernel per forward)."""
        if n not in self._ranges:
            self._ranges[n] = torch.arange(n, device=self.buf.device)
        return self._ranges[n]

    def writer(self, rows: int, offset: int = 0, window: int | None = None) -> SlotWriter:
        """Where a forward of `rows` new rows writes: slots lengths[b] + offset + i of sequence b.
        It attends to every slot up to its last row, or to the first `window` slots."""
        slots = self.lengths[:, None] + (self.arange(rows) + offset if offset else self.arange(rows))  # [B, rows]
        start = self.length + offset
        end = start + rows if window is None else window
        if end > self.max_len:
            raise RuntimeError(f"KV cache overflow: {end} positions > capacity {self.max_len}")
        return SlotWriter(self.buf, slots, start, window, self._layer_kv)

    def keep(self, paths: list[list[int]], on_path: torch.Tensor) -> None:
        """Commit the accepted rows of the last forward: paths[b] the accepted node indices of
        sequence b's draft (host, root first, ascending), on_path [B, n] bool the same on the
        device. Rows already in place (a chain's prefix) need no gather."""
        if any(p and p[-1] != len(p) - 1 for p in paths):
            top = max(len(p) for p in paths)
            rows = torch.argsort((~on_path).to(torch.int8), dim=1, stable=True)[:, :top]  # [B, top] path rows
            src = self.lengths[:, None] + rows  # [B, top] their slots
            dst = self.lengths[:, None] + self.arange(top)  # [B, top] where they go
            if self.batch == 1:
                self.buf[:, :, :, :, dst[0]] = self.buf.index_select(4, src[0])
            else:
                b = self.arange(self.batch)[:, None]
                self.buf[:, :, b, :, dst] = self.buf[:, :, b, :, src]  # [B, top, layers, 2, H_kv, D]
        counts = [len(p) for p in paths]
        if len(set(counts)) == 1:
            self.lengths.add_(counts[0])
        else:
            self.lengths.add_(on_path.sum(dim=1))
        self.seen = [s + c for s, c in zip(self.seen, counts)]

    def advance(self, count: int = 1) -> None:
        """Every sequence commits `count` more slots, already in place (a one-row step)."""
        self.lengths.add_(count)
        self.seen = [s + count for s in self.seen]

    def truncate(self, length: int) -> None:
        """Every sequence's committed length set to `length` (a rollback, or a new turn at 0)."""
        self.lengths.fill_(length)
        self.seen = [length] * self.batch

    def reset(self) -> None:
        self.truncate(0)

    def set_lengths(self, lengths: list[int]) -> None:
        """Every sequence's committed length set (after a right-padded prefill)."""
        if len(set(lengths)) == 1:
            self.truncate(lengths[0])
        else:
            for b, length in enumerate(lengths):
                self.set_length(b, length)

    def follow(self, other: "KVCache") -> None:
        """Every sequence's committed length set to another cache's (a drafter's cache kept in step
        with the target's; a device copy, no read)."""
        self.lengths.copy_(other.lengths)
        self.seen = list(other.seen)

    def set_length(self, b: int, length: int) -> None:
        """Sequence b's committed length set to `length` (its rollback; the others are untouched)."""
        self.lengths[b:b + 1].fill_(length)  # a fill: no copy from the host
        self.seen[b] = length


class PrefixKV:
    """Fixed K/V of rows computed earlier (a teacher pass: kv [layers, 2, B, H_kv, T, D]) followed
    by the rows of the current forward, joined without in-place writes so autograd can flow
    through the new rows (drafter training)."""

    def __init__(self, kv: torch.Tensor):
        self.kv = kv
        self.length = kv.shape[4]

    def writer(self, rows: int, offset: int = 0, window: int | None = None) -> "PrefixKV":
        return self

    def update(self, key: torch.Tensor, value: torch.Tensor, layer_idx: int, kwargs=None, **_):
        return (torch.cat([self.kv[layer_idx, 0], key], dim=2),
                torch.cat([self.kv[layer_idx, 1], value], dim=2))

"""The autoregressive baseline with static shapes, replayed as a CUDA graph on CUDA: the same
greedy decoding as `ar`, with the per-kernel launch cost taken out, so that speedups can be
reported against an eager and a launch-optimised baseline alike.

Each step attends to a fixed bucket of KV slots under a mask (harness/core/static.py), so its
shapes never change within a bucket; every bucket's graph is captured by `prepare`, before any
timed turn. On the CPU the static step runs eagerly (no graph): there it is the lossless
rehearsal of the GPU path, not a baseline worth timing.
"""

from __future__ import annotations

import torch

from harness.core.cache import KVCache
from harness.core.method import Method, Option
from harness.core.static import StaticStep


class ARGraph(Method):
    """One token per target forward, the step captured per KV-cache buffer as CUDA graphs."""

    name = "ar-graph"
    summary = "autoregressive greedy decoding, static shapes + CUDA graph (launch-lean baseline)"
    options = (Option("graph", "bool", True, "capture the step as a CUDA graph on CUDA (false: the static step eagerly)"),)
    drafts = False
    accelerator = "cuda"  # on a CPU the static step runs eagerly: a rehearsal, not a baseline

    def __init__(self, engine, model_key: str, **values):
        super().__init__(engine, model_key, **values)
        self._step: StaticStep | None = None

    def prepare(self, cache: KVCache) -> None:
        """The static step over this cache's buffer, every window's graph captured (again only
        when the buffer changed)."""
        if self._step is None or not self._step.fits(cache):
            self._step = StaticStep(self.engine, cache, graph=self.config["graph"])
            self._step.capture_all()

    def step(self, pending: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """pending: [B] -> hidden [B, d], written at each sequence's slot cache.lengths."""
        if cache.length >= cache.max_len:  # checked here: on the device an out-of-range slot would be a device assert
            raise RuntimeError(f"KV cache overflow: {cache.length + 1} positions > capacity {cache.max_len}")
        hidden = self._step(pending)
        self.engine.count(1)  # one row per sequence
        return hidden

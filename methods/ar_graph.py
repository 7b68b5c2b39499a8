"""The autoregressive baseline with static shapes, replayed as a CUDA graph on CUDA: the same
greedy decoding as `ar`, with the per-kernel launch cost taken out, so that speedups can be
reported against an eager and a launch-optimised baseline alike.

Each step attends to every slot of the KV cache under a mask (harness/core/static.py), which
costs more attention arithmetic than `ar` on a long cache and nothing measurable on a GPU at
the context lengths of the benchmarks; on the CPU the static step runs eagerly (no graph), so
there it is slower than `ar` and is only the lossless rehearsal of the GPU path.
"""

from __future__ import annotations

import torch

from harness.core.engine import KVCache
from harness.core.method import Method, Option
from harness.core.static import StaticStep
from harness.core.tree import Tree


class ARGraph(Method):
    """One token per target forward, the step captured once per KV-cache buffer as a CUDA graph."""

    name = "ar-graph"
    summary = "autoregressive greedy decoding, static shapes + CUDA graph (launch-lean baseline)"
    options = (Option("graph", "bool", True, "capture the step as a CUDA graph on CUDA (false: the static step eagerly)"),)

    def __init__(self, engine, model_key: str, **values):
        super().__init__(engine, model_key, **values)
        self._step: StaticStep | None = None

    def step_for(self, cache: KVCache) -> StaticStep:
        """The static step over this cache's buffer (built, and captured, again if it changed)."""
        if self._step is None or not self._step.fits(cache):
            self._step = StaticStep(self.engine, cache, graph=self.config["graph"])
        return self._step

    def verify(self, tree: Tree, cache: KVCache) -> torch.Tensor:
        """tree: the pending token alone -> hidden [1, d], written to slot cache.length."""
        if cache.length >= cache.max_len:  # checked here: on the device an out-of-range slot would be a device assert
            raise RuntimeError(f"KV cache overflow: {cache.length + 1} positions > capacity {cache.max_len}")
        hidden = self.step_for(cache)(tree.tokens, cache.length)
        self.engine.count(1)
        return hidden

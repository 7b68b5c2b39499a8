"""The one-row step with static shapes, so that on CUDA it can be captured once as a CUDA graph and
replayed: one launch per step instead of one per kernel (hundreds for a 7B model).

It uses the same KVCache and the same write path as every other forward: the input tokens live
at a fixed address, the slot each sequence writes is its device length (`cache.lengths`, updated
in place by the loop), and the layers attend to a fixed window of slots under a mask built from
those lengths inside the step. The window is the cache's capacity rounded to WINDOW-slot
buckets: one graph per bucket in use, so attention covers the slots in use (to within a bucket),
not the whole cache. Every bucket is captured by `prepare`, before any timed turn. The same code
runs eagerly on the CPU (no graph), which is how its losslessness is tested there.
"""

from __future__ import annotations

import torch

from harness.core.cache import KVCache
from harness.core.engine import Engine

WARMUP = 3  # eager runs on a side stream before capture (cuBLAS/sdpa workspaces, as torch advises)
WINDOW = 128  # slots per attention bucket


class StaticStep:
    """One target forward of one token per sequence at its cache's next slot, for a given
    KVCache; one CUDA graph per window bucket when `graph` is true (and the engine is on CUDA)."""

    def __init__(self, engine: Engine, cache: KVCache, graph: bool = True):
        dev = engine.device
        self.engine, self.cache = engine, cache
        self.buf_ptr = cache.buf.data_ptr()
        self.token = torch.zeros(cache.batch, 1, dtype=torch.long, device=dev)  # [B, 1] the input tokens
        self.use_graph = graph and torch.device(dev).type == "cuda"
        self.graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}

    def fits(self, cache: KVCache) -> bool:
        """Whether this step was built over `cache`'s current buffer."""
        return cache is self.cache and cache.buf.data_ptr() == self.buf_ptr

    def window(self, length: int) -> int:
        """The bucket of slots a step at committed length `length` attends to."""
        return min(self.cache.max_len, (length // WINDOW + 1) * WINDOW)

    def forward(self, window: int) -> torch.Tensor:
        """The step's kernels: hidden [B, d] of the tokens (pre final norm)."""
        eng, lengths = self.engine, self.cache.lengths
        mask = (self.cache.arange(window)[None, :] <= lengths[:, None])[:, None, None, :]  # [B, 1, 1, window]
        ctx = eng.context(lengths[:, None], None, self.cache, full_mask=mask, window=window)
        return eng.run_layers(eng.embed(self.token), ctx)[:, 0]

    def capture_all(self) -> None:
        """Capture every bucket's graph (on CUDA, when asked for); real steps at the current
        lengths run first, writing K/V the next prefill overwrites."""
        if not self.use_graph:
            return
        for window in sorted({self.window(n) for n in range(0, self.cache.max_len, WINDOW)}):
            if window not in self.graphs:
                self.graphs[window] = self.capture(window)

    def capture(self, window: int) -> tuple[torch.cuda.CUDAGraph, torch.Tensor]:
        """Warm up on a side stream, then record forward(window) as a CUDA graph."""
        dev = self.engine.device
        side = torch.cuda.Stream(dev)
        side.wait_stream(torch.cuda.current_stream(dev))
        with torch.cuda.stream(side):
            for _ in range(WARMUP):
                self.forward(window)
        torch.cuda.current_stream(dev).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = self.forward(window)
        return graph, out

    def __call__(self, token: torch.Tensor) -> torch.Tensor:
        """token: [B] on the device, written at each sequence's slot cache.lengths -> hidden
        [B, d]. The input is set by a device-side copy (no host synchronisation)."""
        self.token.copy_(token[:, None])
        window = self.window(self.cache.length)
        if not self.use_graph:
            return self.forward(window)
        if window not in self.graphs:  # a decode that skipped prepare(): captured here, untimed callers only
            self.graphs[window] = self.capture(window)
        graph, out = self.graphs[window]
        graph.replay()
        return out

"""The autoregressive step with static shapes, so that on CUDA it can be captured once as a CUDA
graph and replayed: one launch per step instead of one per kernel (hundreds for a 7B model).

Everything a step reads lives at a fixed address: the input token and its position (= its KV
slot) are one-element device tensors, K/V are written with index_copy_ at that slot, and every
layer attends to all max_len slots of the cache under a mask that hides the slots past the
position. The same code runs eagerly on the CPU (no graph), which is how its losslessness is
tested there; on CUDA the graph replays exactly these kernels.
"""

from __future__ import annotations

import torch

from harness.core.engine import Engine, KVCache

WARMUP = 3  # eager runs on a side stream before capture (cuBLAS/sdpa workspaces, as torch advises)


class StaticKV:
    """A KVCache's buffer seen with static shapes: update writes the new row at `slot` (a device
    tensor) and returns every slot, so shapes never depend on the current length."""

    def __init__(self, buf: torch.Tensor, slot: torch.Tensor):
        self.buf, self.slot = buf, slot  # buf: [layers, 2, B, H_kv, L, D]; slot: [1] long
        self.start = 0

    def update(self, key: torch.Tensor, value: torch.Tensor, layer_idx: int, kwargs=None, **_):
        """key, value: [B, H_kv, 1, D] -> all K/V of the layer: [B, H_kv, L, D] each."""
        kv = self.buf[layer_idx]
        kv[0].index_copy_(2, self.slot, key)
        kv[1].index_copy_(2, self.slot, value)
        return kv[0], kv[1]


class StaticStep:
    """One target forward of one token at the cache's next slot, for a given KVCache; captured as
    a CUDA graph on first use when `graph` is true (and the engine is on CUDA)."""

    def __init__(self, engine: Engine, cache: KVCache, graph: bool = True):
        dev = engine.device
        self.engine, self.cache = engine, cache
        self.buf_ptr = cache.buf.data_ptr()
        self.token = torch.zeros(1, dtype=torch.long, device=dev)  # [1] the input token
        self.slot = torch.zeros(1, dtype=torch.long, device=dev)  # [1] its position and KV slot
        self.slots = torch.arange(cache.max_len, device=dev)  # [L]
        self.view = StaticKV(cache.buf, self.slot)
        self.use_graph = graph and torch.device(dev).type == "cuda"
        self.graph: torch.cuda.CUDAGraph | None = None
        self.out: torch.Tensor | None = None

    def fits(self, cache: KVCache) -> bool:
        """Whether this step was built over `cache`'s current buffer."""
        return cache is self.cache and cache.buf.data_ptr() == self.buf_ptr

    def forward(self) -> torch.Tensor:
        """The step's kernels: hidden [1, d] of the token (pre final norm)."""
        eng = self.engine
        mask = (self.slots <= self.slot)[None, None, None, :]  # [1, 1, 1, L]: the slots up to the position
        ctx = eng.context(self.slot, None, self.view, start=self.cache.max_len - 1, full_mask=mask)
        return eng.run_layers(eng.embed(self.token[None]), ctx)[0]

    def capture(self) -> None:
        """Warm up on a side stream, then record forward() as a CUDA graph. The warm-up runs are
        real steps with the current inputs (they write the same K/V the replay writes)."""
        dev = self.engine.device
        side = torch.cuda.Stream(dev)
        side.wait_stream(torch.cuda.current_stream(dev))
        with torch.cuda.stream(side):
            for _ in range(WARMUP):
                self.forward()
        torch.cuda.current_stream(dev).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self.out = self.forward()
        self.graph = graph

    def __call__(self, token: torch.Tensor, position: int) -> torch.Tensor:
        """token: [1] on the device; position: the cache slot it takes. -> hidden [1, d]. The
        inputs are set by device-side copy and fill (no host synchronisation)."""
        self.token.copy_(token)
        self.slot.fill_(position)
        if not self.use_graph:
            return self.forward()
        if self.graph is None:
            self.capture()
        self.graph.replay()
        return self.out

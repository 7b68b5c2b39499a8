"""FIRP (arXiv 2410.20488): draft tokens from *pseudo hidden states* of future tokens, predicted
by linear maps at intermediate layers and refined by the remaining layers of the target model.

What the paper states: K linear maps at fixed intermediate layers predict hidden states of
future tokens; the pseudo states take part in every later layer (attending to the context);
the model's own final norm + LM head decode drafts from them; tree attention verifies them;
training is KL to the frozen model's own distribution; serial steps beat parallel ones.

Decisions of ours (see ../shared/design/firp.md), each an option:
- W_i is d x d + bias, initialised to identity (an untrained FIRP is a valid, weak drafter).
- Source of step i at layer l_i: the previous position's state (`previous`: the node for i = 1,
  pseudo i-1 otherwise) or the node's real state for every step (`last-real`).
- Pseudo i sees the context, its node's ancestors and node, and pseudo 1..i-1 of its own chain
  (`serial`); `parallel` (the ablation) drops the earlier pseudos.
- One target forward per step: every node of the current tree carries its own chain, so the
  forward that verifies the tree also drafts the next one; pseudo rows never enter the cache.
These are training-time choices, stored in the checkpoint's sidecar; a run picks a checkpoint.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from harness.core.cache import KVCache, PrefixKV
from harness.core.drafter import TreeDrafter, tree_options
from harness.core.engine import Engine
from harness.core.method import Step
from harness.core.planning.planner import Path, layered_cost, tree_depth
from harness.core.planning.shapes import draft_cost
from harness.core.tree import Tree
from harness.train.training import Batch, gather_rows, step_losses, teacher_pass

# Default insertion layers per model, from the layer sweep (results/firp-layer-sweep/<model>.json):
# step 1 at the layer with the best held-out step-1 accuracy, later steps one layer deeper each, so
# that pseudo i-1 has been refined by one layer when pseudo i is derived from it.
DEFAULT_LAYERS: dict[str, tuple[int, ...]] = {"SmolLM2-135M-Instruct-Q4_1": (19, 20, 21)}

RealAt = Callable[[int, torch.Tensor], torch.Tensor]  # (layer, h) -> [B, m, d] real states of hung nodes


class PseudoChains(nn.Module):
    """The trainable part of FIRP: one linear map per draft step, and how chains are wired."""

    kind = "firp"

    def __init__(self, hidden: int, layers: tuple[int, ...], serial: bool = True, source: str = "previous",
                 targets: tuple[int, ...] | None = None):
        """targets: the future offset each step stands at (default 1..K). The layer probe of
        the analyses uses independent one-step chains at many layers: targets = (1, 1, ...)."""
        super().__init__()
        self.targets = tuple(targets) if targets else tuple(range(1, len(layers) + 1))
        if list(layers) != sorted(layers) or not layers:
            raise ValueError(f"FIRP layers must be non-decreasing and non-empty, got {layers}")
        if source not in ("previous", "last-real"):
            raise ValueError(f"source must be 'previous' or 'last-real', got {source!r}")
        self.layers, self.serial, self.source = tuple(layers), serial, source
        self.proj = nn.ModuleList(nn.Linear(hidden, hidden) for _ in layers)
        for lin in self.proj:
            nn.init.eye_(lin.weight)
            nn.init.zeros_(lin.bias)

    @property
    def steps(self) -> int:
        return len(self.layers)

    def config(self) -> dict:
        return {"layers": list(self.layers), "steps": self.steps, "mask": "serial" if self.serial else "parallel",
                "source": self.source}

    def inserts(self, real_at: RealAt, m: int, steps: int | None = None) -> dict:
        """Engine inserts adding pseudo block i (m rows, one per hung node) before layer l_i."""
        steps = self.steps if steps is None else steps
        by_layer: dict[int, list[int]] = {}
        for i in range(steps):
            by_layer.setdefault(self.layers[i], []).append(i)

        def make(layer: int, idx: list[int]):
            def insert(h: torch.Tensor) -> torch.Tensor:
                blocks = []
                for i in idx:
                    if i == 0 or self.source == "last-real":
                        src = real_at(layer, h)
                    else:  # the previous step's block: the last m rows so far
                        src = blocks[-1] if blocks else h[:, -m:]
                    blocks.append(self.project(i, src))
                return torch.cat(blocks, dim=1)
            return insert

        return {layer: make(layer, idx) for layer, idx in by_layer.items()}

    def project(self, i: int, src: torch.Tensor) -> torch.Tensor:
        """W_i src in the module's dtype (float32 while training), returned in the model's."""
        lin = self.proj[i]
        return lin(src.to(lin.weight.dtype)).to(src.dtype)

    def chain_mask(self, real_vis: torch.Tensor, steps: int | None = None) -> torch.Tensor:
        """Rows of the pseudo blocks. real_vis: [..., m, R] what each hung node sees among R
        real columns (itself included) -> [..., steps*m, R + steps*m]."""
        steps = self.steps if steps is None else steps
        *lead, m, _ = real_vis.shape
        eye = torch.eye(m, dtype=torch.bool, device=real_vis.device).expand(*lead, m, m)
        none = torch.zeros_like(eye)
        rows = []
        for i in range(steps):
            seen = [eye if (j <= i if self.serial else j == i) else none for j in range(steps)]
            rows.append(torch.cat([real_vis, *seen], dim=-1))
        return torch.cat(rows, dim=-2)

    def loss(self, engine: Engine, batch: Batch):
        """KL to the frozen model at the same future position, summed over steps; every hung
        position of every sequence in one pass (teacher rows cached, pseudo rows trained)."""
        K, (B, T), m, dev = self.steps, batch.ids.shape, batch.hang.shape[1], batch.ids.device
        capture = self.layers if self.source == "last-real" else self.layers[:1]
        tp = teacher_pass(engine, batch.ids, capture)
        offsets = torch.tensor(self.targets, device=dev)[None, :, None]  # pseudo i stands at t + i
        target = batch.hang[:, None, :] + offsets  # [B, K, m]
        ok = batch.hang_ok[:, None, :] & (target < batch.lengths[:, None, None])
        with torch.no_grad():
            teacher = engine.logits(gather_rows(tp.final, target.clamp(max=T - 1).view(B, K * m)))
        real_vis = torch.arange(T, device=dev)[None, None, :] <= batch.hang[:, :, None]  # [B, m, T]
        mask = self.chain_mask(real_vis)[:, None]  # [B, 1, K*m, T + K*m]
        positions = (batch.hang[:, None, :] + offsets).view(B, K * m)
        ctx = engine.context(positions, None, PrefixKV(tp.kv), full_mask=mask)
        h = torch.zeros(B, 0, engine.hidden_size, dtype=engine.dtype, device=dev)
        real_at = lambda layer, _h: gather_rows(tp.hidden_at[layer], batch.hang)  # noqa: E731
        h = engine.run_layers(h, ctx, self.layers[0], inserts=self.inserts(real_at, m))
        return step_losses(teacher.view(B, K, m, -1), engine.logits(h).view(B, K, m, -1), ok)


class FIRP(TreeDrafter):
    name = "firp"
    summary = "FIRP: pseudo hidden states of future tokens at intermediate layers, tree-verified"
    weights_file = "firp.safetensors"
    options = tree_options("firp", "chain, chain-N, tiny, small")

    def __init__(self, engine: Engine, model_key: str, **values):
        super().__init__(engine, model_key, **values)
        self.chains = self.module
        self.steps = self.shape.depth  # chains only as long as the tree needs
        self._memo: dict = {}
        self._pseudo = self._offset = None

    @staticmethod
    def build_module(engine: Engine, config: dict) -> PseudoChains:
        return PseudoChains(engine.hidden_size, tuple(config["layers"]), config["mask"] == "serial", config["source"])

    def tree_cost(self, paths: list[Path], cost) -> float:
        """The verify forward carries one pseudo chain per node: n rows below the first insertion
        layer, n more from each step's layer on; then the LM head decodes the accepted node's
        chain (depth rows: a draft cost, which c(n) does not cover)."""
        n, depth = len(paths) + 1, tree_depth(paths)
        rows_from = [(0, n)] + [(layer, n * (i + 2)) for i, layer in enumerate(self.module.layers[:depth])]
        return layered_cost(cost.ratio, rows_from, self.engine.num_layers) + draft_cost(
            cost, self.draft_key(depth), lambda: self.chain_decode(depth))

    @staticmethod
    def draft_key(depth: int) -> str:
        return f"firp:chain-logits:{depth}"

    def chain_decode(self, depth: int):
        """The draft operation of a tree `depth` deep: final norm + LM head on its chain's
        pseudo rows, top-k."""
        rows = torch.zeros(depth, self.engine.hidden_size, dtype=self.engine.dtype, device=self.engine.device)
        return lambda: self.engine.logits(rows).topk(4, dim=-1)

    def draft_operations(self) -> dict:
        return {self.draft_key(d): (lambda d=d: self.chain_decode(d)) for d in range(1, self.module.steps + 1)}

    def _layout(self, tree: Tree) -> tuple[torch.Tensor, torch.Tensor]:
        """Mask [B, N, N] and position offsets [B, N] of a tree plus one chain per node, memoised
        per tree shape (the shape's template: a tree's mask is a view of it)."""
        key = (tree.mask.data_ptr(), tuple(tree.mask.shape))
        if key not in self._memo:
            (B, n), K = tree.tokens.shape, self.steps
            top = torch.cat([tree.mask, torch.zeros(B, n, K * n, dtype=torch.bool, device=tree.mask.device)], 2)
            mask = torch.cat([top, self.chains.chain_mask(tree.mask, K)], 1)
            offsets = torch.cat([tree.depths + i for i in range(K + 1)], 1)
            self._memo = {key: (mask, offsets, tree.mask)}  # keeps the template alive, so its address stays its own
        return self._memo[key][:2]

    def begin(self, prompts: list[list[int]]) -> None:
        self._lengths = [len(p) for p in prompts]

    def prefill(self, ids: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """The baseline's causal prefill, keeping each prompt's last token's state at the insertion
        layers; then that token's pseudo chain runs through the upper layers only, attending to
        its own prompt's cache (its K/V slots are overwritten by the next verify). Booked as one
        target forward of P + K rows per sequence. ids: [B, P], right-padded prompts."""
        eng, (B, P), K = self.engine, ids.shape, self.steps
        hidden_at, h = eng.capture_pass(ids, self.chains.layers[:K], cache)
        eng.count(P + K)
        cache.set_lengths(self._lengths)  # each sequence's prompt: the chains attend to it alone
        last = (cache.lengths - 1)[:, None, None]  # [B, 1, 1] each prompt's last row
        chain = self.chains.chain_mask(torch.ones(1, 0, dtype=torch.bool, device=eng.device), K)  # [K, K]
        positions = cache.lengths[:, None] - 1 + cache.arange(K + 1)[1:]  # [B, K]
        ctx = eng.context(positions, chain, cache)
        real_at = lambda layer, _h: hidden_at[layer].gather(1, last.expand(-1, 1, h.shape[-1]))  # noqa: E731
        inserts = self.chains.inserts(real_at, 1, K)
        pseudo = eng.run_layers(h.new_zeros(B, 0, h.shape[-1]), ctx, self.chains.layers[0], inserts=inserts)
        self._pseudo, self._offset = pseudo.view(B, K, 1, -1), last[:, 0, 0]
        return h

    def verify(self, tree: Tree, cache: KVCache) -> torch.Tensor:
        (B, n), K = tree.tokens.shape, self.steps
        mask, offsets = self._layout(tree)
        inserts = self.chains.inserts(lambda layer, h: h[:, :n], n, K)
        h = self.engine.forward(tree.tokens, offsets + cache.lengths[:, None], mask, cache, inserts=inserts)
        self._pseudo, self._offset = h[:, n:].view(B, K, n, -1), 0  # [B, K, n, d]
        return h[:, :n]

    def observe(self, hidden: torch.Tensor, tree: Tree | None, step: Step) -> None:
        """The accepted node's chain, decoded: the next step's candidates."""
        B, K, _, d = self._pseudo.shape
        node = (step.best - self._offset)[:, None, None, None].expand(B, K, 1, d)
        self.set_candidates(self.engine.logits(self._pseudo.gather(2, node)[:, :, 0]))  # [B, K, V]

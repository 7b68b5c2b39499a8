"""Medusa (Cai et al. 2024): K extra decoding heads on the last hidden state draft tokens
t+2 .. t+K+1 in parallel; a sparse tree of their top-k candidates is verified in one forward.

Head k is a residual block h + SiLU(W_k h + b_k), W_k zero-initialised, feeding an LM head. By
default every head shares the base model's frozen LM head (small checkpoints: K x d^2 weights);
`--separate-lm-head` trains one LM head per head as in Medusa-1 (K x V x d more weights).
Drafts for the next step come from the heads on the accepted node's hidden state: no extra forward.
"""

from __future__ import annotations

import torch
from torch import nn

from harness.core.drafter import TreeDrafter, tree_options
from harness.core.engine import Engine
from harness.core.method import MethodError
from harness.core.tree import Tree
from harness.train.training import Batch, gather_rows, step_losses, teacher_pass


class MedusaHeads(nn.Module):
    """K residual heads over the final (normed) hidden state."""

    kind = "medusa"

    def __init__(self, hidden: int, heads: int, lm_head: nn.Module, separate_lm_head: bool = False,
                 layer: int | None = None):
        """layer: read the hidden state entering this layer instead of the last one: the
        early-exit heads the analyses compare against (not used for decoding)."""
        super().__init__()
        self.layer = layer
        if layer is not None:
            self.kind = "early-exit"
        self.blocks = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(heads))
        for lin in self.blocks:
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)
        self.separate = separate_lm_head
        if separate_lm_head:  # initialised from the base LM head, then trained
            self.lm_heads = nn.ModuleList(nn.Linear(hidden, lm_head.weight.shape[0], bias=False) for _ in range(heads))
            for head in self.lm_heads:
                head.weight.data.copy_(lm_head.weight.data)
        self._shared = [lm_head]  # a list: the frozen base head is not a parameter of ours

    @property
    def steps(self) -> int:
        return len(self.blocks)

    def config(self) -> dict:
        return {"heads": self.steps, "separate_lm_head": self.separate, "layer": self.layer}

    def forward(self, normed: torch.Tensor) -> torch.Tensor:
        """normed: [..., d] final hidden after the model's norm -> logits [K, ..., V]. The blocks
        run in the module's dtype (float32 while training), the shared LM head in the model's."""
        normed = normed.to(self.blocks[0].weight.dtype)
        shared = self._shared[0]
        out = []
        for k, block in enumerate(self.blocks):
            x = normed + nn.functional.silu(block(normed))
            out.append(self.lm_heads[k](x) if self.separate else shared(x.to(shared.weight.dtype)))
        return torch.stack(out)

    def loss(self, engine: Engine, batch: Batch):
        """Head k at position t against the frozen model's distribution at t + k (the position
        whose next token it drafts), KL summed over heads."""
        K, (B, T) = self.steps, batch.ids.shape
        tp = teacher_pass(engine, batch.ids, () if self.layer is None else (self.layer,))
        source = tp.final if self.layer is None else tp.hidden_at[self.layer]
        target = batch.hang[:, None, :] + torch.arange(1, K + 1, device=batch.ids.device)[None, :, None]  # [B, K, m]
        ok = batch.hang_ok[:, None, :] & (target < batch.lengths[:, None, None])
        with torch.no_grad():
            teacher = engine.logits(gather_rows(tp.final, target.clamp(max=T - 1).view(B, -1))).view(*target.shape, -1)
            normed = engine.norm(gather_rows(source, batch.hang))  # [B, m, d]
        return step_losses(teacher, self(normed).transpose(0, 1), ok)  # heads: [K, B, m, V]


class Medusa(TreeDrafter):
    name = "medusa"
    summary = "Medusa: residual heads on the last hidden state, tree-verified"
    weights_file = "medusa.safetensors"
    options = tree_options("medusa", "chain, chain-N, tiny, small, medusa63")

    @staticmethod
    def build_module(engine: Engine, config: dict) -> MedusaHeads:
        if config.get("layer") is not None:
            raise MethodError("this checkpoint holds early-exit heads (an analysis artifact), not Medusa heads")
        return MedusaHeads(engine.hidden_size, config["heads"], engine.lm_head, config["separate_lm_head"])

    def observe(self, hidden: torch.Tensor, tree: Tree | None, path: list[int]) -> None:
        normed = self.engine.norm(hidden[path[-1]])
        self.set_candidates(self.module(normed)[: self.shape.depth])  # [depth, V]

"""Medusa (Cai et al. 2024): K extra decoding heads on the last hidden state draft tokens
t+2 .. t+K+1 in parallel; a sparse tree of their top-k candidates is verified in one forward.

Head k is a stack of residual blocks h + SiLU(W h + b) (one by default, W zero-initialised)
feeding an LM head. By default every head shares the base model's frozen LM head (small
checkpoints: K x d^2 weights); `--separate-lm-head` trains one LM head per head as in Medusa-1
(K x V x d more weights). Drafts for the next step come from the heads on the accepted node's
hidden state: no extra forward.

Released heads (FasterDecoding/Medusa, medusa/model/medusa_model.py) load as released with
`--method-arg medusa.checkpoint=PATH_OR_DIR`: a `medusa_lm_head.safetensors` or `.pt` file (or
the directory holding it) whose keys are `{head}.{layer}.linear.weight/bias` (residual SiLU
blocks over the base model's final normed hidden state, as here) and `{head}.{layers}.weight`
(each head's own LM head). Head and layer counts are read from the keys, not from config.json
(medusa-vicuna-7b-v1.3's config says 2 heads, its file holds 5).
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import nn

from harness.core.checkpoint import CheckpointError, read_json, read_tensors
from harness.core.drafter import TreeDrafter, frozen_module, tree_options
from harness.core.engine import Engine
from harness.core.method import MethodError, Option, Step
from harness.core.planning.planner import Path as TreePath
from harness.core.planning.shapes import draft_cost
from harness.core.tree import Tree
from harness.train.training import (
    Batch,
    gather_rows,
    step_losses,
    teacher_final,
    teacher_pass,
)


class MedusaHeads(nn.Module):
    """K heads of residual blocks over the final (normed) hidden state."""

    kind = "medusa"

    def __init__(self, hidden: int, heads: int, lm_head: nn.Module, separate_lm_head: bool = False,
                 layer: int | None = None, layers: int = 1):
        """layer: read the hidden state entering this layer instead of the last one: the
        early-exit heads the analyses compare against (not used for decoding). layers: residual
        blocks per head; block l of head k is blocks[k * layers + l] (one per head: blocks[k])."""
        super().__init__()
        self.layer, self.layers, self.heads = layer, layers, heads
        if layer is not None:
            self.kind = "early-exit"
        self.blocks = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(heads * layers))
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
        return self.heads

    @property
    def reads_final_only(self) -> bool:
        """On the last layer, training caches the target's output per sequence (FinalCache)."""
        return self.layer is None

    def config(self) -> dict:
        deeper = {"layers": self.layers} if self.layers != 1 else {}
        return {"heads": self.steps, "separate_lm_head": self.separate, "layer": self.layer, **deeper}

    def forward(self, normed: torch.Tensor) -> torch.Tensor:
        """normed: [..., d] final hidden after the model's norm -> logits [K, ..., V]. The blocks
        run in the module's dtype (float32 while training), the shared LM head in the model's."""
        normed = normed.to(self.blocks[0].weight.dtype)
        shared = self._shared[0]
        out = []
        for k in range(self.heads):
            x = normed
            for block in self.blocks[k * self.layers:(k + 1) * self.layers]:
                x = x + nn.functional.silu(block(x))
            out.append(self.lm_heads[k](x) if self.separate else shared(x.to(shared.weight.dtype)))
        return torch.stack(out)

    def loss(self, engine: Engine, batch: Batch):
        """Head k at position t against the frozen model's distribution at t + k (the position
        whose next token it drafts), KL summed over heads."""
        K, (B, T) = self.steps, batch.ids.shape
        if self.layer is None:
            final = source = teacher_final(engine, batch)  # [B, T, d]
        else:
            tp = teacher_pass(engine, batch.ids, (self.layer,))
            final, source = tp.final, tp.hidden_at[self.layer]
        target = batch.hang[:, None, :] + torch.arange(1, K + 1, device=batch.ids.device)[None, :, None]  # [B, K, m]
        ok = batch.hang_ok[:, None, :] & (target < batch.lengths[:, None, None])
        with torch.no_grad():
            teacher = engine.logits(gather_rows(final, target.clamp(max=T - 1).view(B, -1))).view(*target.shape, -1)
            normed = engine.norm(gather_rows(source, batch.hang))  # [B, m, d]
        return step_losses(teacher, self(normed).transpose(0, 1), ok)  # heads: [K, B, m, V]


class Medusa(TreeDrafter):
    name = "medusa"
    summary = "Medusa: residual heads on the last hidden state, tree-verified"
    weights_file = "medusa.safetensors"
    options = tree_options("medusa", "chain, chain-N, tiny, small, medusa63") + (
        Option("acceptance", "str", "exact", "under sampling (T > 0): exact (the run's rule: lossless) or typical "
               "(Medusa-2's typical acceptance: lossy by design, its records not compared with the baseline)",
               choices=("exact", "typical")),)

    @staticmethod
    def build_module(engine: Engine, config: dict) -> MedusaHeads:
        if config.get("layer") is not None:
            raise MethodError("this checkpoint holds early-exit heads (an analysis artifact), not Medusa heads")
        return MedusaHeads(engine.hidden_size, config["heads"], engine.lm_head, config["separate_lm_head"],
                           layers=config.get("layers", 1))

    def load_module(self, engine: Engine, path: Path) -> tuple[nn.Module, dict]:
        """Our checkpoint (safetensors + JSON sidecar), or released heads (see the module doc)."""
        path = Path(path)
        if path.suffix == ".safetensors" and path.with_suffix(".json").is_file():
            return super().load_module(engine, path)
        try:
            return load_released(engine, path)
        except CheckpointError as err:  # neither format: say what was tried
            reason = str(err).removeprefix(str(path)).lstrip(": ")
            raise CheckpointError(f"{path} is not a valid medusa checkpoint (no sidecar, so read as released "
                                  f"Medusa heads): {reason}") from None

    def tree_cost(self, paths: list[TreePath], cost) -> float:
        """Verify the n tree rows, then run every head on the accepted node's state."""
        return cost.ratio(len(paths) + 1) + draft_cost(cost, self.draft_cost_key(), self.draft_probe)

    def draft_cost_key(self) -> str:
        return f"medusa:{Path(self.weights).name}"

    def draft_probe(self):
        normed = torch.zeros(self.engine.hidden_size, dtype=self.engine.dtype, device=self.engine.device)
        return lambda: self.module(normed).topk(4, dim=-1)

    def observe(self, hidden: torch.Tensor, tree: Tree | None, step: Step) -> None:
        normed = self.engine.norm(step.rows(hidden))  # [B, d] the accepted node's state
        self.set_candidates(self.module(normed)[: self.shape.depth].transpose(0, 1))  # [B, depth, V]


RELEASED_FILES = ("medusa_lm_head.safetensors", "medusa_lm_head.pt", "medusa_lm_head.bin")
_BLOCK = re.compile(r"(\d+)\.(\d+)\.linear\.(weight|bias)")


def released_file(path: Path) -> Path:
    """The weights file of released heads given as a file or as the directory holding it."""
    if not path.is_dir():
        return path
    for name in RELEASED_FILES:
        if (path / name).is_file():
            return path / name
    raise CheckpointError(f"{path} holds no released Medusa heads (none of {', '.join(RELEASED_FILES)})")


def released_state(file: Path, hidden: int, vocab: int) -> tuple[dict[str, torch.Tensor], int, int]:
    """Released keys -> (our state dict, heads, layers per head); counts come from the keys and
    every tensor is checked against the target's hidden size and vocabulary."""
    state = {k.removeprefix("medusa_head."): v for k, v in read_tensors(file).items()}
    blocks = {tuple(map(int, m.groups()[:2])) for k in state if (m := _BLOCK.fullmatch(k))}
    if not blocks:
        raise CheckpointError(f"{file} has no spec-harness sidecar ({file.with_suffix('.json').name}) and no "
                              "released Medusa keys ({head}.{layer}.linear.weight): it is neither format")
    heads, layers = max(h for h, _ in blocks) + 1, max(layer for _, layer in blocks) + 1
    ours: dict[str, torch.Tensor] = {}
    for k in range(heads):
        for layer in range(layers):
            for part in ("weight", "bias"):
                ours[f"blocks.{k * layers + layer}.{part}"] = _take(state, f"{k}.{layer}.linear.{part}", file)
        ours[f"lm_heads.{k}.weight"] = _take(state, f"{k}.{layers}.weight", file)
    if state:
        raise CheckpointError(f"{file}: unexpected keys for Medusa heads: {', '.join(sorted(state)[:5])}")
    got_hidden, got_vocab = ours["blocks.0.weight"].shape[0], ours["lm_heads.0.weight"].shape[0]
    if got_hidden != hidden:
        raise CheckpointError(f"{file}: the heads have hidden size {got_hidden} (blocks {got_hidden} x {got_hidden}), "
                              f"the target model has {hidden}")
    if got_vocab != vocab:
        raise CheckpointError(f"{file}: the heads' LM heads have a vocabulary of {got_vocab} "
                              f"({got_vocab} x {got_hidden}), the target model has {vocab}")
    return ours, heads, layers


def _take(state: dict, key: str, file: Path) -> torch.Tensor:
    if key not in state:
        raise CheckpointError(f"{file}: released Medusa heads lack {key}")
    return state.pop(key)


def load_released(engine: Engine, path: Path) -> tuple[MedusaHeads, dict]:
    """Released heads as (frozen module, sidecar describing where they came from)."""
    file = released_file(path)
    vocab = engine.lm_head.weight.shape[0]
    state, heads, layers = released_state(file, engine.hidden_size, vocab)
    config = {"heads": heads, "separate_lm_head": True, "layer": None, "layers": layers}
    origin = {"format": "FasterDecoding/Medusa medusa_lm_head", "file": str(file)}
    cfg_file = file.parent / "config.json"
    if cfg_file.is_file():  # recorded, not used: released configs disagree with their weights
        said = read_json(cfg_file)
        origin["config_json"] = {k: said.get(f"medusa_num_{k}") for k in ("heads", "layers")}
    sidecar = {"config": config, "data": origin}
    module = frozen_module(engine, Medusa.build_module, state, sidecar, f"{file} is not a valid Medusa head file")
    return module, sidecar

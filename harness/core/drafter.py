"""Base class of methods that draft a sparse candidate tree with a trained module (FIRP, Medusa):
checkpoint loading, tree shape, candidates from per-step draft logits."""

from __future__ import annotations

from pathlib import Path

import torch

from harness.core.checkpoint import CheckpointError, load_checkpoint
from harness.core.engine import Engine, KVCache
from harness.core.method import Method, MethodError, Option
from harness.core.tree import Tree, TreeShape, resolve_tree

# Default tree: 'tiny' (5 draft nodes) had the best measured speedup for both FIRP and Medusa on
# the tuning sets on a 2-core CPU, where every extra row costs (results/tuning/trees/summary.md).
DEFAULT_TREE = "tiny"


def tree_options(default_checkpoint: str, trees: str) -> tuple[Option, ...]:
    return (
        Option("checkpoint", "str", default_checkpoint, "checkpoint name under methods/checkpoints/<model>/ or a path"),
        Option("tree", "str", DEFAULT_TREE, f"draft tree: {trees}, or paths '0;1;0.0'"),
    )


def load_frozen(engine: Engine, path: Path, build, kind: str | None = None) -> tuple[torch.nn.Module, dict]:
    """The module `build(engine, sidecar config)` with the checkpoint's weights, frozen, and its
    sidecar; a checkpoint that is corrupt, foreign (`kind`: the method it must be for) or does not
    fit its own config is refused with CheckpointError."""
    state, sidecar = load_checkpoint(path, kind)
    return frozen_module(engine, build, state, sidecar, f"{path} is not a valid {kind or 'drafter'} checkpoint"), sidecar


def frozen_module(engine: Engine, build, state: dict, sidecar: dict, refusal: str) -> torch.nn.Module:
    """`build(engine, sidecar["config"])` loaded strictly with `state`, frozen, on the engine's
    device and dtype; a config or state that does not fit raises CheckpointError(refusal: why)."""
    try:
        module = build(engine, sidecar["config"])
        module.load_state_dict(state)
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        if isinstance(err, CheckpointError):
            raise
        detail = f"config lacks {err}" if isinstance(err, KeyError) else str(err).splitlines()[0]
        raise CheckpointError(f"{refusal}: {detail}") from None
    return module.to(engine.device, engine.dtype).eval().requires_grad_(False)


class TreeDrafter(Method):
    """Subclasses define `build_module(engine, config) -> nn.Module` (with `.steps`, `.config()`)
    and call `self.set_candidates(draft_logits)` from observe()."""

    def __init__(self, engine: Engine, model_key: str, **values):
        super().__init__(engine, model_key, **values)
        self.weights: Path = self.weights_path()
        self.module, self.sidecar = self.load_module(engine, self.weights)
        try:
            self.shape = TreeShape(resolve_tree(self.config["tree"], self.module.steps), engine.device)
        except ValueError as err:
            raise MethodError(f"{self.name}.tree: {err}") from None
        if self.shape.depth > self.module.steps:
            raise MethodError(f"{self.name}.tree is {self.shape.depth} deep but the checkpoint drafts "
                              f"{self.module.steps} steps")
        self._candidates: torch.Tensor | None = None

    @staticmethod
    def build_module(engine: Engine, config: dict) -> torch.nn.Module:
        raise NotImplementedError

    def load_module(self, engine: Engine, path: Path) -> tuple[torch.nn.Module, dict]:
        """(frozen module, sidecar) from `path`; a subclass may also read other formats."""
        return load_frozen(engine, path, self.build_module, self.name)

    def describe(self) -> dict:
        out = super().describe()
        out.update(weights=str(self.weights), module=self.module.config(), tree_nodes=self.shape.size - 1,
                   training={k: self.sidecar.get(k) for k in ("data", "train_seconds", "heldout_top1", "commit")})
        return out

    def set_candidates(self, draft_logits: torch.Tensor) -> None:
        """draft_logits: [steps, V] -> the top-k candidates per step the tree shape needs."""
        self._candidates = draft_logits.topk(max(1, self.shape.topk), dim=-1).indices

    def propose(self, root: int, cache: KVCache) -> Tree:
        return self.shape.build(root, self._candidates)

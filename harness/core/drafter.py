"""Base class of methods that draft a sparse candidate tree with a trained module (FIRP, Medusa):
checkpoint loading, tree shape (`auto`: planned from the checkpoint's acceptance profile and the
hardware's cost model), candidates from per-step draft logits."""

from __future__ import annotations

from pathlib import Path

import torch

from harness.core.cache import KVCache
from harness.core.checkpoint import CheckpointError, load_checkpoint, shown_path
from harness.core.engine import Engine
from harness.core.method import AUTO, Method, MethodError, Option, Options
from harness.core.planning.planner import Choice, tree_choices
from harness.core.planning.planner import Path as TreePath
from harness.core.planning.shapes import PLANNING_OPTIONS, Planned, plan_shape
from harness.core.tree import Tree, TreeShape, resolve_tree

# Static tree, used when `auto` cannot plan (no profile): 'tiny' (5 draft nodes) had the best
# measured speedup for both FIRP and Medusa on the tuning sets on a 2-core CPU, where every extra
# row costs (results/tuning/trees/summary.md).
DEFAULT_TREE = "tiny"
PROFILE_RANKS = 8  # candidates per step a profile follows the target's tokens among


def tree_options(default_checkpoint: str, trees: str) -> tuple[Option, ...]:
    return (
        Option("checkpoint", "str", default_checkpoint, "checkpoint name under methods/checkpoints/<model>/ or a path"),
        Option("tree", "str", AUTO, f"draft tree: auto (planned from the checkpoint's acceptance profile and this "
                                    f"hardware's cost model; {DEFAULT_TREE} without a profile), {trees}, "
                                    "or paths '0;1;0.0'"),
        *PLANNING_OPTIONS,
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


def checked_tree(method: str, spec: str, steps: int) -> list[TreePath]:
    """The paths of tree spec `spec` (resolve_tree); a malformed one is a MethodError naming
    `method`.tree."""
    try:
        return resolve_tree(spec, steps)
    except ValueError as err:
        raise MethodError(f"{method}.tree: {err}") from None


class TreeDrafter(Method):
    """Subclasses define `build_module(engine, config) -> nn.Module` (with `.steps`, `.config()`)
    and call `self.set_candidates(draft_logits)` from observe()."""

    profile_family = "tree"

    @classmethod
    def validate(cls, config: Options) -> None:
        """A tree spec other than auto is parsed here, before any model loads (its depth and
        ranks are checked against the checkpoint and vocabulary once they are loaded)."""
        if config["tree"] != AUTO:
            checked_tree(cls.name, config["tree"], 1)  # any depth: 'chain' takes the checkpoint's

    def __init__(self, engine: Engine, model_key: str, **values):
        super().__init__(engine, model_key, **values)
        self.weights: Path = self.weights_path()
        self.module, self.sidecar = self.load_module(engine, self.weights)
        try:
            self.shape = TreeShape(self.tree_paths(), engine.device)
        except ValueError as err:
            raise MethodError(f"{self.name}.tree: {err}") from None
        if self.shape.depth > self.module.steps:
            raise MethodError(f"{self.name}.tree is {self.shape.depth} deep but the checkpoint drafts "
                              f"{self.module.steps} steps")
        if self.shape.topk > engine.config.vocab_size:
            raise MethodError(f"{self.name}.tree uses candidate rank {self.shape.topk - 1} but the vocabulary "
                              f"has {engine.config.vocab_size} tokens")
        self._candidates: torch.Tensor | None = None
        self.recorded: list[torch.Tensor] | None = None  # set to [] to keep each step's top candidates

    def tree_paths(self) -> list[TreePath]:
        """The tree option's paths; `auto` plans them (or falls back to DEFAULT_TREE, cut to the
        checkpoint's depth)."""
        if self.config["tree"] != AUTO:
            return resolve_tree(self.config["tree"], self.module.steps)  # a ValueError: refused by __init__
        steps = self.module.steps
        fallback = [p for p in resolve_tree(DEFAULT_TREE, steps) if len(p) <= steps]  # as deep as it drafts
        self.planned: Planned = plan_shape(self, "tree", (fallback, DEFAULT_TREE), self.tree_choices)
        return self.planned.shape

    def tree_choices(self, profile: dict, cost) -> list[Choice]:
        return tree_choices(profile, self.module.steps, lambda paths: self.tree_cost(paths, cost))

    def tree_cost(self, paths: list[TreePath], cost) -> float:
        """One step's cost in units of c(1) with this tree (a subclass adds what it does besides
        verifying the tree's rows)."""
        return cost.ratio(len(paths) + 1)

    def profile_file(self) -> Path:
        """Beside the checkpoint: <checkpoint>.profile.json (its drafts are what it measures)."""
        return self.weights.with_name(self.weights.stem + ".profile.json")

    @staticmethod
    def build_module(engine: Engine, config: dict) -> torch.nn.Module:
        raise NotImplementedError

    def load_module(self, engine: Engine, path: Path) -> tuple[torch.nn.Module, dict]:
        """(frozen module, sidecar) from `path`; a subclass may also read other formats."""
        return load_frozen(engine, path, self.build_module, self.name)

    def describe(self) -> dict:
        out = super().describe()
        out.update(weights=shown_path(self.weights), module=self.module.config(), tree_nodes=self.shape.size - 1,
                   training={k: self.sidecar.get(k) for k in ("data", "train_seconds", "heldout_top1", "commit")})
        return out

    def set_candidates(self, draft_logits: torch.Tensor) -> None:
        """draft_logits: [B, steps, V] -> the top-k candidates per step the tree shape needs (and
        the top PROFILE_RANKS when recording a profile)."""
        self._candidates = draft_logits.topk(max(1, self.shape.topk), dim=-1).indices  # [B, steps, k]
        if self.recorded is not None:
            self.recorded.append(draft_logits.topk(PROFILE_RANKS, dim=-1).indices)  # [B, steps, R]

    def propose(self, pending: torch.Tensor, cache: KVCache) -> Tree:
        return self.shape.build(pending, self._candidates)

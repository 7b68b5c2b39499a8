"""The interface every decoding method implements, and its typed command-line options.

A method says how it drafts; the shared loop in harness/core/decoding.py does the rest:

    prepare -> begin -> prefill -> observe -> [propose -> verify -> accept -> keep cache -> observe]*

Every hook works on a batch of B sequences (B = 1 today) with device tensors: `propose` gets the
pending tokens [B] and returns a Tree [B, n]; `observe` gets the Step the acceptance rule decided
(device tensors, and the host copy of the paths the loop read in its one read per step).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar

import torch

from harness.core.cache import KVCache
from harness.core.engine import Engine
from harness.core.options import AUTO, MethodError, Option, Options, resolve
from harness.core.tree import Tree

__all__ = ["AUTO", "CHECKPOINT_ROOT", "Method", "MethodError", "Option", "Options", "Step", "checkpoint_file"]

CHECKPOINT_ROOT = Path(__file__).resolve().parents[2] / "methods" / "checkpoints"


def checkpoint_file(model_key: str, name: str) -> Path:
    """A checkpoint given by name (methods/checkpoints/<model>/<name>.safetensors) or by path."""
    path = Path(name)
    if path.suffix == ".safetensors" or path.exists():
        return path
    return CHECKPOINT_ROOT / model_key / f"{name}.safetensors"


@dataclass
class Step:
    """What one target forward decided for each of B sequences."""

    paths: list[list[int]]  # host: accepted node indices per sequence, root first (prefill: [[P - 1]])
    tokens: list[list[int]]  # host: committed tokens per sequence, accepted drafts then `next`
    best: torch.Tensor  # [B] the deepest accepted node (prefill: the last prompt row)
    next: torch.Tensor  # [B] the target's next token: the new pending token
    on_path: torch.Tensor | None = None  # [B, n] bool, the accepted nodes (None after a prefill or a plain step)
    extra: list[list[int]] | None = None  # host: the method's extra_read(), read with the step
    drafted: list[int] | None = None  # host: draft tokens verified per sequence (padding left out)

    def rows(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden [B, n, d] -> [B, d]: each sequence's row of its deepest accepted node."""
        B, _, d = hidden.shape
        return hidden.gather(1, self.best[:, None, None].expand(B, 1, d))[:, 0]


class Method:
    """Base class: autoregressive behaviour (no drafts) unless a subclass drafts."""

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    options: ClassVar[tuple[Option, ...]] = ()
    weights_file: ClassVar[str | None] = None  # trained artifact under checkpoints/<model>/
    trainer: ClassVar[str | None] = None  # `spec-harness train <trainer>` builds it (default: the name)
    profile_family: ClassVar[str | None] = None  # "tree" | "chain" | "grid": plans its draft shape
    planned: Any = None  # a planning.Planned when the method planned (or fell back from) an auto shape
    rule: Any = None  # the acceptance rule of the turn being decoded (set by the loop before `begin`)

    def __init__(self, engine: Engine, model_key: str, options: Options | None = None, **values: Any):
        """options: values already resolved (by the run's validation); else `values` (strings of
        --method-arg, or typed values) are resolved here."""
        self.engine = engine
        self.model_key = model_key
        resolved = options if options is not None else self.resolve_options(values)
        self.config = Options(resolved)  # a copy the method may fill in (planned shapes)
        self.config.given = resolved.given

    @classmethod
    def resolve_options(cls, values: dict[str, Any]) -> Options:
        """Every option typed and checked, then the method's own rule between options (`validate`)."""
        return resolve(cls.name, cls.options, values, cls.validate)

    @classmethod
    def validate(cls, config: Options) -> None:
        """Rules between options (a subclass's); raise MethodError naming the options."""

    @classmethod
    def artifact_path(cls, model_key: str, name: str) -> Path:
        """A trained artifact of this method given by name (methods/checkpoints/<model>/<name> plus
        the suffix of `weights_file`) or by path."""
        suffix = Path(cls.weights_file or "").suffix
        path = Path(name)
        if (suffix and path.suffix == suffix) or path.exists():
            return path
        return CHECKPOINT_ROOT / model_key / f"{name}{suffix}"

    @classmethod
    def default_weights(cls, model_key: str) -> Path | None:
        if cls.weights_file is None:
            return None
        return CHECKPOINT_ROOT / model_key / cls.weights_file

    def weights_path(self) -> Path:
        """The trained artifact this instance uses (option `checkpoint`: a name under
        checkpoints/<model>/ or a path); a clear error when it does not exist."""
        given = self.config.get("checkpoint")
        path = checkpoint_file(self.model_key, given) if given else self.default_weights(self.model_key)
        if path is None or not path.exists():
            raise MethodError(
                f"{self.name}: no trained weights for model {self.model_key} at {path}; "
                f"train them with `spec-harness train {self.train_command()} --model <model>` "
                f"or pass --method-arg {self.name}.checkpoint=PATH"
            )
        return path

    @classmethod
    def train_command(cls) -> str:
        """The `spec-harness train` subcommand that builds this method's weights."""
        return cls.trainer or cls.name

    def describe(self) -> dict[str, Any]:
        """Everything a results manifest needs to say what ran (with `plan`: the auto shape chosen,
        its predicted speedup, the profile and cost model used, or why it fell back)."""
        out = {"name": self.name, "options": {k: list(v) if isinstance(v, tuple) else v
                                              for k, v in self.config.items()}}
        if self.planned is not None:
            out["plan"] = self.planned.record
        return out

    def profile_file(self) -> Path:
        """Where this method's acceptance profile lives by default (training-free methods: per
        model; a trained drafter overrides it: beside its checkpoint)."""
        return CHECKPOINT_ROOT / self.model_key / f"{self.name}.profile.json"

    def draft_cost_key(self) -> str | None:
        """The name of this method's draft operation in a cost model's "drafts", or None when it
        drafts inside the target forward (or not at all)."""
        return None

    def draft_probe(self):
        """A zero-argument callable doing one draft operation, for timing (see draft_cost_key)."""
        raise NotImplementedError

    def draft_operations(self) -> dict[str, Callable[[], Callable[[], object]]]:
        """Every draft operation a plan of this method may charge, {cost-model key: probe}, for
        `spec-harness costmodel --drafts` to time (by default the one of draft_cost_key)."""
        key = self.draft_cost_key()
        return {} if key is None else {key: self.draft_probe}

    # -- the decoding hooks ------------------------------------------------------------------
    drafts: ClassVar[bool] = True  # False: one row per step through `step` (no tree, no acceptance walk)
    batchable: ClassVar[bool] = True  # False: decodes one sequence at a time (its drafting state is per turn)
    accelerator: ClassVar[str | None] = None  # a device kind it is only worth timing on (`--methods default` elsewhere leaves it out)

    def prepare(self, cache: KVCache) -> None:
        """Size what the method keeps beside the target's cache (a draft model's or head's cache,
        captured graphs) for cache.max_len positions. Called before any timed turn (and again by
        decode, where it must be a no-op once sized): nothing is allocated inside a timed turn."""

    def begin(self, prompts: list[list[int]]) -> None:
        """A turn starts: each sequence's prompt as host ids, before the prefill (no device read)."""

    def prefill(self, ids: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """Target forward over the prompts, right-padded to one length. ids: [B, P] -> hidden
        [B, P, d] (pre final norm); the loop then sets each sequence's length to its own."""
        positions = cache.lengths[:, None] + cache.arange(ids.shape[1])  # [B, P]
        return self.engine.forward(ids, positions, None, cache)

    def step(self, pending: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """A method that drafts nothing: one target forward of the pending tokens [B] at the
        slots after each sequence -> hidden [B, d]."""
        return self.engine.forward(pending[:, None], cache.lengths[:, None], None, cache)[:, 0]

    def propose(self, pending: torch.Tensor, cache: KVCache) -> Tree:
        """The drafts rooted at the pending tokens [B] (device): a Tree [B, n]. Drafting may write
        K/V at slots past each sequence's length (the verify forward overwrites them) but must not
        commit any (cache lengths unchanged)."""
        return Tree.chain(pending[:, None])

    def verify(self, tree: Tree, cache: KVCache) -> torch.Tensor:
        """One target forward over the drafts; returns hidden [B, n, d] of the tree nodes."""
        positions = tree.depths + cache.lengths[:, None]  # [B, n]
        mask = tree.mask if tree.size > 1 else None
        return self.engine.forward(tree.tokens, positions, mask, cache)

    def extra_read(self) -> torch.Tensor | None:
        """Integers [B, r] the method needs on the host after this verify (lookahead's window
        guesses): read together with the loop's own read, so they cost no extra device wait."""
        return None

    def observe(self, hidden: torch.Tensor, tree: Tree | None, step: Step) -> None:
        """After acceptance: hidden [B, n, d] of the forward's rows and what was accepted (for the
        prefill: tree None, step.paths = [[P - 1]]). The committed rows are already in the cache.
        Reading a tensor on the host here costs a device wait: use engine.host, and only if needed."""

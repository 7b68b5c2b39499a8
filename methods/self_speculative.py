"""Self-speculative decoding (Zhang et al. 2023, "Draft & Verify", arXiv 2309.08168): the draft
model is the target itself with some attention and MLP sublayers skipped, so it needs no extra
weights, only a skip set (searched once per model by `spec-harness train self-spec`).

Each step drafts a chain token by token from the pending root, stopping after a token whose
top-1 probability falls below a threshold (or at `max_draft`); the shared loop verifies the
chain with one target forward. The threshold adapts to the running acceptance rate
(Draft & Verify's adaptive draft-exiting), or stays fixed with `adaptive=false`.

KV handling: draft row j (the root is j = 0) stands at slot cache.length + j and writes its K/V
there, in the layers whose attention it runs; it attends to the committed prefix (the target's
K/V) and to the draft rows before it. Skipped layers leave stale or zero slots, which no draft
row reads (it skips those layers too). The verify forward rewrites every slot it can see, all
layers, before attending, so the target cache never holds draft K/V; cache.length is untouched.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from harness.core.cache import KVCache
from harness.core.engine import Engine
from harness.core.method import Method, MethodError, Option, Step
from harness.core.tree import ChainLayouts, Tree

ARTIFACT_NAME = "self-spec"


@dataclass(frozen=True)
class SkipSet:
    """The sublayers the draft model leaves out: attention and MLP layer indices."""

    attn: frozenset[int] = frozenset()
    mlp: frozenset[int] = frozenset()

    @staticmethod
    def parse(text: str) -> "SkipSet":
        """'a3,a5,m7' -> attention 3 and 5, MLP 7; 'none' -> the empty set (draft = target)."""
        if text.strip().lower() == "none":
            return SkipSet()
        attn, mlp = set(), set()
        for item in (x.strip().lower() for x in text.split(",") if x.strip()):
            match = re.fullmatch(r"([am])(\d+)", item)
            if not match:
                raise MethodError(f"self-spec.skip: {item!r} is not a sublayer; write a<layer> (attention) "
                                  "or m<layer> (MLP), e.g. a3,a5,m7, or 'none'")
            (attn if match[1] == "a" else mlp).add(int(match[2]))
        return SkipSet(frozenset(attn), frozenset(mlp))

    def spec(self) -> str:
        """The canonical text form, the inverse of parse."""
        items = [f"a{i}" for i in sorted(self.attn)] + [f"m{i}" for i in sorted(self.mlp)]
        return ",".join(items) or "none"

    @property
    def size(self) -> int:
        return len(self.attn) + len(self.mlp)

    def check(self, num_layers: int) -> None:
        bad = sorted(i for i in self.attn | self.mlp if not 0 <= i < num_layers)
        if bad:
            raise MethodError(f"self-spec: skip set names layer(s) {bad}, the model has layers 0..{num_layers - 1}")


@dataclass
class ThresholdRule:
    """Draft & Verify's adaptive draft-exiting. After each step with acceptance rate r (accepted
    / drafted): rate <- b1 rate + (1 - b1) r; the threshold is pushed up by `step` when rate <=
    `target` (drafts too long: stop earlier) and down otherwise, then smoothed:
    value <- b2 value + (1 - b2) pushed. As in the authors' code, it is not lowered after a
    draft that reached max_draft (the threshold did not stop it). Ours: the smoothed rate
    starts at the first observation, and the value is clipped to [0, 1]."""

    value: float
    adaptive: bool = True
    target: float = 0.9  # alpha: acceptance rate aimed at
    step: float = 0.01  # epsilon
    beta_rate: float = 0.5  # b1
    beta_value: float = 0.9  # b2
    rate: float | None = None

    def update(self, accepted: int, drafted: int, hit_max: bool) -> None:
        if not self.adaptive or drafted == 0:
            return
        r = accepted / drafted
        self.rate = r if self.rate is None else self.beta_rate * self.rate + (1 - self.beta_rate) * r
        if self.rate <= self.target:
            pushed = self.value + self.step
        else:
            pushed = self.value if hit_max else self.value - self.step
        self.value = min(1.0, max(0.0, self.beta_value * self.value + (1 - self.beta_value) * pushed))


class SelfSpeculative(Method):
    """Draft & Verify: the target with a skip set drafts a chain; one target forward verifies it.

    The threshold state persists across the turns of a run (the paper's constants move it by at
    most 1e-3 per step: it adapts over a run, not within one answer), so tau depends on the order
    of decodes, deterministically for a given run; `adaptive=false` makes every turn independent.
    """

    name = "self-spec"
    summary = "self-speculative (Draft & Verify): the target with sublayers skipped drafts a chain"
    weights_file = f"{ARTIFACT_NAME}.json"
    options = (
        Option("skip", "str", "", "sublayers the draft skips, e.g. a3,a5,m7 (attention 3, 5; MLP 7); "
                                  "'none' = skip nothing; empty = the searched set"),
        Option("checkpoint", "str", ARTIFACT_NAME,
               "searched skip set: a name under methods/checkpoints/<model>/ or a .json path"),
        Option("threshold", "float", 0.8,
               "stop drafting after a token whose top-1 probability is below this (initial value if adaptive)",
               low=0, high=1),
        Option("adaptive", "bool", True, "adapt the threshold to the acceptance rate (Draft & Verify); false = fixed"),
        Option("max_draft", "int", 8, "maximum draft tokens per step", low=1),
    )

    @classmethod
    def validate(cls, config: dict) -> None:
        """The skip set is parsed here, before any model is loaded (layer ranges are checked later)."""
        if config["skip"]:
            SkipSet.parse(config["skip"])

    def __init__(self, engine: Engine, model_key: str, **values):
        super().__init__(engine, model_key, **values)
        self.artifact: dict | None = None
        if self.config["skip"]:
            self.skip = SkipSet.parse(self.config["skip"])
        else:
            self.skip = self._load_artifact()
        self.skip.check(engine.num_layers)
        self.exit_rule = ThresholdRule(self.config["threshold"], self.config["adaptive"])
        self.drafted = self.accepted = 0  # draft tokens verified / accepted, over the method's life
        self._chains = ChainLayouts()

    def weights_path(self) -> Path:
        path = self.artifact_path(self.model_key, self.config["checkpoint"])
        if not path.exists():
            raise MethodError(
                f"self-spec: no searched skip set for model {self.model_key} at {path}; run "
                f"`spec-harness train self-spec --model <model>`, or give one with "
                f"--method-arg self-spec.skip=a3,m7 (or self-spec.checkpoint=PATH)")
        return path

    def _load_artifact(self) -> SkipSet:
        path = self.weights_path()
        try:
            self.artifact = json.loads(path.read_text())
            skip = SkipSet(frozenset(self.artifact["skip_attn"]), frozenset(self.artifact["skip_mlp"]))
        except (ValueError, KeyError, TypeError) as err:
            raise MethodError(f"self-spec: {path} is not a skip-set artifact ({err!r})") from None
        if self.artifact.get("model", self.model_key) != self.model_key:
            raise MethodError(f"self-spec: {path} was searched for model {self.artifact['model']}, "
                              f"not {self.model_key}")
        return skip

    def describe(self) -> dict:
        out = super().describe()
        out.update(skip_set=self.skip.spec(), skipped_sublayers=self.skip.size)
        if self.artifact is not None:
            keys = ("best", "empty_set", "ar", "budget", "seconds", "commit")
            out["search"] = {k: self.artifact.get(k) for k in keys}
        return out

    # -- the decoding hooks ------------------------------------------------------------------
    def draft_logits(self, token: torch.Tensor, offset: int, cache: KVCache) -> torch.Tensor:
        """One draft-model forward of tokens [B, 1] at slot (and position) each sequence's length +
        offset -> logits [B, V]. Not a target forward: it bypasses engine.forward and its counters."""
        eng = self.engine
        ctx = eng.context(cache.lengths[:, None] + offset, None, cache, offset=offset)
        h = eng.run_layers(eng.embed(token), ctx, skip_attn=self.skip.attn, skip_mlp=self.skip.mlp)  # [B, 1, d]
        return eng.logits(h[:, -1])

    def propose(self, pending: torch.Tensor, cache: KVCache) -> Tree:
        """A chain root, d1, d2, ... per sequence: d_k drafted by the row at slot length + k - 1.
        A sequence stops drafting after a token below the exit threshold; in a batch the others
        go on, its later tokens padding (invalid), until every sequence has stopped."""
        room = min(self.config["max_draft"], cache.max_len - cache.length - 1)  # verify needs 1 + drafts slots
        tokens, B = [pending], pending.shape[0]  # each [B]
        counts, active = [0] * B, [True] * B  # draft tokens per sequence up to its exit
        for j in range(room):
            probs = self.draft_logits(tokens[-1][:, None], j, cache).float().softmax(-1)  # [B, V]
            p, tok = probs.max(-1)
            tokens.append(tok)
            top = self.engine.host(p)  # one host read per draft token: the exit rule
            for b in range(B):
                if active[b]:
                    counts[b] += 1
                    active[b] = top[b] >= self.exit_rule.value
            if not any(active):
                break
        tree = Tree.chain(torch.stack(tokens, dim=1), self._chains)
        if len(set(counts)) > 1:  # ragged exits: each sequence's own chain
            tree = replace(tree, valid=cache.arange(len(tokens))[None, :] <= self.engine.upload(counts)[:, None])
        return tree

    def observe(self, hidden: torch.Tensor, tree: Tree | None, step: Step) -> None:
        if tree is None:  # the prefill: nothing was drafted
            return
        for drafted, path in zip(step.drafted, step.paths):
            accepted = len(path) - 1
            self.drafted += drafted
            self.accepted += accepted
            self.exit_rule.update(accepted, drafted, hit_max=drafted >= self.config["max_draft"])

"""Prompt lookup decoding (Saxena 2023, "Prompt Lookup Decoding", as run in Spec-Bench):
training-free, the draft is copied from the context itself.

Each step the last n tokens of the context (prompt + committed output, the pending root
included), n from max_ngram down to min_ngram, are looked up among the context's earlier
n-grams; the most recent earlier occurrence wins and the (up to) k tokens that followed it form
a chain draft. No match: a plain one-token step. The shared loop verifies the chain with one
target forward, so decoding stays exact. k = auto (the default) plans k for the hardware from the
model's chain profile (how often a match drafts and is accepted at each depth) and cost model.

The context lives on the host: the prompt arrives through `begin`, every committed token
(accepted drafts and the target's next token) through `observe`, from the loop's one read per
step. An index keeps, per n, where the most recent occurrence of every n-gram ended, updated as
tokens are committed: a lookup is a few dict probes, never a rescan of the context. The draft
goes to the device through Engine.upload (pinned, non-blocking on CUDA): PLD adds no wait to
the loop.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Iterable

import torch

from harness.core.cache import KVCache
from harness.core.method import AUTO, Method, MethodError, Option, Step
from harness.core.planning.shapes import PLANNING_OPTIONS, chain_k
from harness.core.tree import ChainLayouts, Tree

STATIC_K = 10  # without a profile: Saxena's and Spec-Bench's value


class NGramIndex:
    """A growing token sequence and, for n in [lo, hi], every n-gram that ends before its last
    token -> the index just past its most recent such occurrence (where its continuation starts).
    The n-grams ending at the last token are registered when the next token arrives, so the
    suffix being looked up never matches itself."""

    def __init__(self, lo: int, hi: int):
        self.lo, self.hi = lo, hi
        self.tokens: list[int] = []
        self._after: list[dict[tuple[int, ...], int]] = [{} for _ in range(hi - lo + 1)]

    def extend(self, tokens: Iterable[int]) -> None:
        for tok in tokens:
            end = len(self.tokens)  # n-grams ending at tokens[end - 1] become earlier occurrences
            for n in range(self.lo, min(self.hi, end) + 1):
                self._after[n - self.lo][tuple(self.tokens[end - n:end])] = end
            self.tokens.append(int(tok))

    def lookup(self, k: int) -> list[int]:
        """The (up to) k tokens that followed the most recent earlier occurrence of the longest
        suffix n-gram that occurred before; [] when none did."""
        toks = self.tokens
        for n in range(min(self.hi, len(toks) - 1), self.lo - 1, -1):
            start = self._after[n - self.lo].get(tuple(toks[-n:]))
            if start is not None:
                return toks[start:start + k]
        return []


class PromptLookup(Method):
    """Prompt lookup decoding on the shared loop: propose = the continuation of the context's
    latest earlier match of its own suffix, as a chain."""

    name = "pld"
    summary = "prompt lookup decoding (PLD): the context's own n-gram matches draft a chain (training-free)"
    options = (
        Option("max_ngram", "int", 3, "longest suffix n-gram looked up (tried first)"),
        Option("min_ngram", "int", 1, "shortest suffix n-gram looked up"),
        Option("k", "int", AUTO, f"draft tokens copied per match: auto (planned from the model's pld profile and "
                                 f"this hardware's cost model; {STATIC_K}, the published value, without a profile)",
               low=1),
        *PLANNING_OPTIONS,
    )
    profile_family = "chain"
    profile_k_max = 16  # the k a profile is measured with: auto chooses among 1..16

    @classmethod
    def validate(cls, config: dict) -> None:
        if config["min_ngram"] < 1 or config["max_ngram"] < config["min_ngram"]:
            raise MethodError(f"pld: need 1 <= min_ngram <= max_ngram, got min_ngram={config['min_ngram']}, "
                              f"max_ngram={config['max_ngram']}")

    def __init__(self, engine, model_key: str, **values):
        super().__init__(engine, model_key, **values)
        self.k = chain_k(self, STATIC_K)
        self.indexes = [NGramIndex(self.config["min_ngram"], self.config["max_ngram"])]
        self._chains = ChainLayouts()

    # -- the decoding hooks ------------------------------------------------------------------
    def begin(self, prompts: list[list[int]]) -> None:
        """A new turn: one index per sequence, started over from its prompt."""
        self.indexes = [NGramIndex(self.config["min_ngram"], self.config["max_ngram"]) for _ in prompts]
        for index, prompt in zip(self.indexes, prompts):
            index.extend(prompt)

    @property
    def index(self) -> NGramIndex:
        """The first sequence's index (a batch of one: the turn's)."""
        return self.indexes[0]

    def propose(self, pending: torch.Tensor, cache: KVCache) -> Tree:
        """Each sequence's pending token (already in its index: the loop read it) and the
        continuation of its context's latest earlier match; chains of a batch padded to the
        longest (padding invalid). pending: [B]."""
        room = cache.max_len - cache.length - 1  # verify needs 1 + drafts slots
        drafts = [index.lookup(min(self.k, room)) if room > 0 else [] for index in self.indexes]
        width, B = max(map(len, drafts)), len(drafts)
        if width == 0:
            return Tree.chain(pending[:, None], self._chains)
        if B == 1:
            return Tree.chain(torch.cat([pending, self.engine.upload(drafts[0])])[None], self._chains)
        packed = self.engine.upload([t for d in drafts for t in d + [0] * (width - len(d))] + list(map(len, drafts)))
        tree = Tree.chain(torch.cat([pending[:, None], packed[:B * width].view(B, width)], dim=1), self._chains)
        return replace(tree, valid=cache.arange(width + 1)[None, :] <= packed[B * width:, None])  # [B, 1 + width]

    def observe(self, hidden: torch.Tensor, tree: Tree | None, step: Step) -> None:
        for index, tokens in zip(self.indexes, step.tokens):
            index.extend(tokens)  # the committed tokens: accepted drafts, then the pending one

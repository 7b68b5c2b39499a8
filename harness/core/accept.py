"""Acceptance rules: how the target's logits over a batch of drafts become the accepted path and
the next token of every sequence, on the device (the loop reads the result once per step).

A rule has two parts. `choose` is the target's own token from logits at given positions: what
autoregressive decoding emits there (greedy: the argmax). `accept` walks each draft: a node is
accepted when its token is what the target chooses after its parent, and so are all its
ancestors; the deepest accepted node ends the path, and the target's choice after it is the next
token. A rule that chooses by position-keyed noise (sampling) or compares with the draft's own
probabilities (rejection sampling) replaces these two methods; the loop stays as it is.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from harness.core.tree import Tree


@dataclass(frozen=True)
class Accepted:
    """What a rule decided for a batch of drafts (device tensors)."""

    on_path: torch.Tensor  # [B, n] bool: the accepted path's nodes, root included
    best: torch.Tensor  # [B] the deepest accepted node
    next: torch.Tensor  # [B] the target's token after it: the new pending token


def longest_path(tree: Tree, ok: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """ok: [B, n] node i passes its own test (the root always). -> (best [B], on_path [B, n]):
    the deepest node that passes with all its ancestors, and its path."""
    B, n = ok.shape
    if tree.valid is not None:
        ok = ok & tree.valid
    passes = ~(tree.mask & ~ok[:, None, :]).any(dim=2)  # [B, n] the node and all its ancestors pass
    best = torch.argmax(tree.depths * passes, dim=1)  # [B] deepest (the root, depth 0, always passes)
    on_path = tree.mask.gather(1, best[:, None, None].expand(B, 1, n))[:, 0]  # [B, n]
    return best, on_path


class Greedy:
    """Greedy decoding: the target's token is the argmax of its logits (ties: the lowest id, in
    the model's dtype; harness/bench/divergence.py tells such ties from bugs)."""

    name = "greedy"
    temperature = 1.0  # the scale of `scores` against the logits (a divergence's tie tolerance follows it)

    def scores(self, logits: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
        """What the target's choice is the argmax of: the logits themselves."""
        return logits

    def choose(self, logits: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
        """logits: [..., V] at rows standing at `positions` [...] -> the target's tokens [...]."""
        return logits.argmax(dim=-1)

    def accept(self, tree: Tree, logits: torch.Tensor, positions: torch.Tensor) -> Accepted:
        """tree: [B, n] drafts; logits: [B, n, V] the target's at each node; positions: [B, n]."""
        target = self.choose(logits, positions)  # [B, n] the target's token after each node
        after_parent = target.gather(1, tree.parents.clamp(min=0))  # [B, n]
        ok = (tree.tokens == after_parent) | (tree.parents < 0)  # the root always passes
        best, on_path = longest_path(tree, ok)
        return Accepted(on_path, best, target.gather(1, best[:, None])[:, 0])


RULES = {"greedy": Greedy}

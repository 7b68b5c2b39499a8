"""EAGLE-2's dynamic draft tree (Li et al. 2024, "EAGLE-2: Faster Inference of Language Models with
Dynamic Draft Trees"), grown and pruned on the device: no host read.

Every drafted node carries its cumulative draft log-probability (the sum along its path from the
root), EAGLE-2's estimate of the chance that the target accepts it.
- Expansion: the frontier (top_k nodes of one depth) gets top_k children each; of these
  top_k^2 children the top_k most confident become the next frontier. Every child is kept as a
  candidate, expanded or not.
- Rerank: of all candidates the `total` most confident are verified. A child never scores above
  its parent (a log-probability is <= 0) and is drafted after it, so a stable descending sort
  lists every parent before its children, even on ties: the kept set holds every kept node's
  parent, and kept in drafting order it is stored parents-first, as Tree requires.
"""

from __future__ import annotations

import torch

from harness.core.tree import Tree


class DraftTree:
    """Candidates of one drafting step; candidate 0 is the root (the pending token)."""

    def __init__(self, root: torch.Tensor, logp: torch.Tensor, top_k: int):
        """root: [1] pending token; logp: [V] draft log-probabilities of the root's child."""
        top = logp.topk(top_k)
        self.top_k, self.count = top_k, 1 + top_k
        self._tokens, self._scores = [root, top.indices], [top.values]  # scores: of candidates 1..
        self._parents = [torch.full((1,), -1, device=root.device), torch.zeros_like(top.indices)]
        self.frontier = torch.arange(1, top_k + 1, device=root.device)  # [k] candidate ids
        self.frontier_scores, self.frontier_tokens = top.values, top.indices  # [k], [k]
        self.levels = 1

    def grow(self, logp: torch.Tensor) -> torch.Tensor:
        """logp: [k, V] draft log-probabilities after each frontier node. Adds its top_k children
        per frontier node, moves the frontier to the best top_k of them; returns [k] the frontier
        row each new frontier node descends from."""
        k = self.top_k
        top = logp.topk(k, dim=-1)
        scores = (self.frontier_scores[:, None] + top.values).view(-1)  # [k*k] cumulative
        ids = self.count + torch.arange(k * k, device=logp.device)  # [k*k] their candidate ids
        self._tokens.append(top.indices.view(-1))
        self._scores.append(scores)
        self._parents.append(self.frontier.repeat_interleave(k))
        self.count += k * k
        self.levels += 1
        best = scores.topk(k).indices  # [k]
        self.frontier, self.frontier_scores = ids[best], scores[best]
        self.frontier_tokens = top.indices.view(-1)[best]
        return best // k

    @property
    def scores(self) -> torch.Tensor:
        """[count] cumulative draft log-probability of every candidate (the root's: 0)."""
        return torch.cat([self._scores[0].new_zeros(1), *self._scores])

    @property
    def parents(self) -> torch.Tensor:
        """[count] parent candidate of every candidate (the root's: -1)."""
        return torch.cat(self._parents)

    def select(self, total: int) -> torch.Tensor:
        """[total + 1] the root and the `total` most confident candidates, ascending (parents first)."""
        order = torch.sort(torch.cat(self._scores), descending=True, stable=True).indices[:total]
        return torch.cat([order.new_zeros(1), order.sort().values + 1])

    def tree(self, total: int) -> Tree:
        """The selected candidates as a Tree (node i = the i-th kept candidate)."""
        keep = self.select(total)
        node_of = torch.zeros(self.count, dtype=torch.long, device=keep.device)
        node_of[keep] = torch.arange(keep.numel(), device=keep.device)
        parents = self.parents[keep]  # [n] candidate ids; -1 for the root
        parents = torch.where(parents < 0, parents, node_of[parents.clamp(min=0)])
        return tree_from_parents(torch.cat(self._tokens)[keep], parents, self.levels)


def tree_from_parents(tokens: torch.Tensor, parents: torch.Tensor, depth: int) -> Tree:
    """One sequence's Tree ([1, n]) built on the device: parents [n] (parents[0] = -1, parents[i] < i) of a tree at
    most `depth` deep; the ancestor mask grows one generation per round."""
    n = tokens.numel()
    up = parents.clamp(min=0)  # the root is its own parent here, which adds nothing
    mask = torch.eye(n, dtype=torch.bool, device=tokens.device)
    for _ in range(depth):
        mask = mask | mask[up]
    return Tree(tokens[None], parents[None], (mask.sum(dim=1) - 1)[None], mask[None])

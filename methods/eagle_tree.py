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

Every sequence of a batch grows its own tree of the same shape (top_k per level, `total` kept),
so a batch's trees need no padding.
"""

from __future__ import annotations

import torch

from harness.core.method import MethodError
from harness.core.tree import Tree

TREE_SIZES = ("depth", "top_k", "total_tokens")  # the options a draft tree is sized by


class DraftTree:
    """Candidates of one drafting step for B sequences; candidate 0 is the root (the pending token)."""

    def __init__(self, root: torch.Tensor, logp: torch.Tensor, top_k: int):
        """root: [B] pending tokens; logp: [B, V] draft log-probabilities of each root's child."""
        top = logp.topk(top_k, dim=-1)
        B, dev = root.shape[0], root.device
        self.top_k, self.count = top_k, 1 + top_k
        self._tokens, self._scores = [root[:, None], top.indices], [top.values]  # [B, *]; scores: of candidates 1..
        self._parents = [torch.full((B, 1), -1, device=dev), torch.zeros_like(top.indices)]
        self.frontier = torch.arange(1, top_k + 1, device=dev).expand(B, top_k)  # [B, k] candidate ids
        self.frontier_scores, self.frontier_tokens = top.values, top.indices  # [B, k], [B, k]
        self.levels = 1

    def grow(self, logp: torch.Tensor) -> torch.Tensor:
        """logp: [B, k, V] draft log-probabilities after each frontier node. Adds its top_k
        children per frontier node, moves the frontier to the best top_k of them; returns [B, k]
        the frontier row each new frontier node descends from."""
        k, B = self.top_k, logp.shape[0]
        top = logp.topk(k, dim=-1)  # [B, k, k]
        scores = (self.frontier_scores[:, :, None] + top.values).view(B, k * k)  # [B, k*k] cumulative
        tokens = top.indices.view(B, k * k)
        self._tokens.append(tokens)
        self._scores.append(scores)
        self._parents.append(self.frontier.repeat_interleave(k, dim=1))
        best = scores.topk(k, dim=-1).indices  # [B, k]
        self.frontier, self.frontier_scores = self.count + best, scores.gather(1, best)
        self.frontier_tokens = tokens.gather(1, best)
        self.count += k * k
        self.levels += 1
        return best // k

    @property
    def scores(self) -> torch.Tensor:
        """[B, count] cumulative draft log-probability of every candidate (the roots': 0)."""
        return torch.cat([self._scores[0].new_zeros(self._scores[0].shape[0], 1), *self._scores], dim=1)

    @property
    def parents(self) -> torch.Tensor:
        """[B, count] parent candidate of every candidate (the roots': -1)."""
        return torch.cat(self._parents, dim=1)

    def select(self, total: int) -> torch.Tensor:
        """[B, total + 1] the root and the `total` most confident candidates, ascending (parents first)."""
        order = torch.sort(torch.cat(self._scores, dim=1), dim=1, descending=True, stable=True).indices[:, :total]
        return torch.cat([order.new_zeros(order.shape[0], 1), order.sort(dim=1).values + 1], dim=1)

    def tree(self, total: int) -> Tree:
        """The selected candidates as a Tree [B, total + 1] (node i = the i-th kept candidate)."""
        keep = self.select(total)  # [B, n]
        B, n = keep.shape
        node_of = torch.zeros(B, self.count, dtype=torch.long, device=keep.device)
        node_of.scatter_(1, keep, torch.arange(n, device=keep.device).expand(B, n))
        parents = self.parents.gather(1, keep)  # [B, n] candidate ids; -1 for the roots
        parents = torch.where(parents < 0, parents, node_of.gather(1, parents.clamp(min=0)))
        return tree_from_parents(torch.cat(self._tokens, dim=1).gather(1, keep), parents, self.levels)


def tree_from_parents(tokens: torch.Tensor, parents: torch.Tensor, depth: int) -> Tree:
    """A batch of trees ([B, n]; or one sequence's, [n]) built on the device: parents (parents[., 0]
    = -1, parents[., i] < i) of trees at most `depth` deep; the ancestor mask grows one generation
    per round."""
    if tokens.dim() == 1:
        tokens, parents = tokens[None], parents[None]
    B, n = tokens.shape
    up = parents.clamp(min=0)[:, :, None].expand(B, n, n)  # the root is its own parent here, which adds nothing
    mask = torch.eye(n, dtype=torch.bool, device=tokens.device).expand(B, n, n)
    for _ in range(depth):
        mask = mask | mask.gather(1, up)
    return Tree(tokens, parents, mask.sum(dim=2) - 1, mask)


def check_sizes(config: dict, method: str = "eagle") -> None:
    """depth, top_k, total_tokens >= 1 and total_tokens within the nodes drafted (MethodError)."""
    depth, k, total = (config[o] for o in TREE_SIZES)
    drafted = k + (depth - 1) * k * k
    if min(depth, k, total) < 1 or total > drafted:
        raise MethodError(f"{method}: depth, top_k and total_tokens must be >= 1 and total_tokens <= the "
                          f"{drafted} nodes drafted at depth {depth}, top_k {k}")


def path_rows(on_path: torch.Tensor, count: int) -> torch.Tensor:
    """[B, n] bool accepted nodes -> [B, count] each sequence's accepted indices first, ascending,
    without reading the device (count, the most accepted, is known on the host)."""
    return torch.argsort((~on_path).to(torch.int8), dim=-1, stable=True)[..., :count]


def committed(x: torch.Tensor, rows: torch.Tensor | None, top: int) -> torch.Tensor:
    """x [B, n, e] of a forward -> [B, top, e]: its rows `rows` [B, top] (each sequence's committed
    path, from path_rows), or its first `top` rows when rows is None (a prefill)."""
    return x[:, :top] if rows is None else x.gather(1, rows[:, :, None].expand(-1, -1, x.shape[-1]))

"""Draft trees shared by every method: build from per-step top-k candidates and a list of paths,
flatten with true depths, ancestor mask, greedy verification.

A tree's node 0 is the root: the pending token (the last committed token, whose K/V is not yet
in the cache). Nodes are stored parents-first, so every path is ascending in node index.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

Path = tuple[int, ...]


@dataclass(frozen=True)
class Tree:
    """A flattened draft tree of n nodes (root included)."""

    tokens: torch.Tensor  # [n] token ids; tokens[0] = root
    parents: torch.Tensor  # [n] parent node index; parents[0] = -1
    depths: torch.Tensor  # [n] distance from the root (position offset)
    mask: torch.Tensor  # [n, n] bool: mask[i, j] = j is i or an ancestor of i

    @property
    def size(self) -> int:
        return self.tokens.numel()

    @property
    def draft_size(self) -> int:
        """Draft tokens verified besides the root."""
        return self.tokens.numel() - 1

    @staticmethod
    def chain(tokens: torch.Tensor) -> "Tree":
        """A single path: root followed by a draft sequence. tokens: [n]"""
        n = tokens.numel()
        idx = torch.arange(n, device=tokens.device)
        mask = torch.ones(n, n, dtype=torch.bool, device=tokens.device).tril_()
        return Tree(tokens, idx - 1, idx, mask)

    @staticmethod
    def from_parents(tokens: torch.Tensor, parents: list[int]) -> "Tree":
        """Any tree given parents-first: parents[0] = -1 and parents[i] < i."""
        n = len(parents)
        mask = torch.zeros(n, n, dtype=torch.bool, device="cpu")  # built on the host, moved once
        depths = [0] * n
        for i, p in enumerate(parents):
            if i == 0:
                if p != -1:
                    raise ValueError("node 0 must be the root")
            elif not 0 <= p < i:
                raise ValueError(f"node {i}: parent {p} must come before it")
            else:
                mask[i] = mask[p]
                depths[i] = depths[p] + 1
            mask[i, i] = True
        dev = tokens.device
        return Tree(tokens, torch.tensor(parents, device=dev), torch.tensor(depths, device=dev), mask.to(dev))


class TreeShape:
    """The static shape of a sparse candidate tree, from Medusa-style paths: path (a, b, c)
    is the node reached by the a-th candidate of step 1, then the b-th of step 2, then the c-th
    of step 3. Everything shape-dependent is computed once here, not per decoding step."""

    def __init__(self, paths: list[Path] | tuple[Path, ...], device: torch.device | str = "cpu"):
        paths = sorted({tuple(int(x) for x in p) for p in paths}, key=lambda p: (len(p), p))
        index = {(): 0}
        parents, steps, ranks = [-1], [0], [0]
        for p in paths:
            if not p or min(p) < 0:
                raise ValueError(f"bad tree path {p}")
            if p[:-1] not in index:
                raise ValueError(f"tree path {p} lacks its parent path {p[:-1]}")
            index[p] = len(parents)
            parents.append(index[p[:-1]])
            steps.append(len(p))
            ranks.append(p[-1])
        self.paths = tuple(paths)
        self.depth = max(steps)
        self.topk = max(ranks) + 1 if paths else 0
        self._template = Tree.from_parents(torch.zeros(len(parents), dtype=torch.long, device=device), parents)
        self._step = torch.tensor(steps[1:], device=device) - 1  # [n-1] which step's candidates
        self._rank = torch.tensor(ranks[1:], device=device)  # [n-1] which of its top-k

    @property
    def size(self) -> int:
        return len(self.paths) + 1

    def build(self, root: int, candidates: torch.Tensor) -> Tree:
        """candidates: [steps, k] top-k token ids per draft step (best first)."""
        t = self._template
        drafts = candidates[self._step, self._rank]
        # torch.full launches a fill; torch.tensor([root]) would be a host-to-device copy, which waits for the device
        tokens = torch.cat([torch.full((1,), root, dtype=drafts.dtype, device=drafts.device), drafts])
        return Tree(tokens, t.parents, t.depths, t.mask)

    def __repr__(self) -> str:
        return f"TreeShape({self.size - 1} draft nodes, depth {self.depth}, top-{self.topk})"


def chain_paths(depth: int) -> list[Path]:
    return [(0,) * d for d in range(1, depth + 1)]


def accepted_mask(tree: Tree, predicted: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The longest path whose every token equals the argmax of its parent's logits, computed on
    the device without a host read.

    predicted: [n] the target's greedy next token at each node. Returns (best, on_path): the
    deepest accepted node ([1]; the bonus token is predicted[best]) and [n] bool, the nodes of
    the accepted path, root included.
    """
    ok = torch.ones_like(tree.tokens, dtype=torch.bool)
    ok[1:] = tree.tokens[1:] == predicted[tree.parents[1:]]
    valid = ~(tree.mask & ~ok[None, :]).any(dim=1)  # node and all its ancestors match
    best = torch.argmax(tree.depths * valid).view(1)  # [1] deepest valid node (root has depth 0)
    return best, tree.mask.index_select(0, best)[0]  # indexing with a 0-d tensor would read it on the host


def greedy_accept(tree: Tree, predicted: torch.Tensor) -> torch.Tensor:
    """Accepted node indices, root first (ascending): accepted_mask's path as indices."""
    return accepted_mask(tree, predicted)[1].nonzero().squeeze(1)


# Named sparse trees (paths over per-step top-k candidates), shared by FIRP and Medusa.
NAMED_TREES: dict[str, list[Path]] = {
    # 5 draft nodes: the top chain of 3 plus the runner-up at steps 1 and 2 (the default on CPUs)
    "tiny": [(0,), (1,), (0, 0), (0, 1), (0, 0, 0)],
    # 9 draft nodes, depth 3
    "small": [(0,), (1,), (2,), (0, 0), (0, 1), (1, 0), (0, 0, 0), (0, 0, 1), (0, 1, 0)],
    # Medusa paper's 63-node tree for Vicuna-7B ("mc_sim_7b_63" in FasterDecoding/Medusa), depth 4
    "medusa63": [
        (0,), (0, 0), (1,), (0, 1), (2,), (0, 0, 0), (1, 0), (0, 2), (3,), (0, 3), (4,), (0, 4), (2, 0),
        (0, 5), (0, 0, 1), (5,), (0, 6), (6,), (0, 7), (0, 1, 0), (1, 1), (7,), (0, 8), (0, 0, 2), (3, 0),
        (0, 9), (8,), (9,), (1, 0, 0), (0, 2, 0), (1, 2), (0, 0, 3), (4, 0), (2, 1), (0, 0, 4), (0, 0, 5),
        (0, 0, 0, 0), (0, 1, 1), (0, 0, 6), (0, 3, 0), (5, 0), (1, 3), (0, 0, 7), (0, 0, 8), (0, 0, 9),
        (6, 0), (0, 4, 0), (1, 4), (7, 0), (0, 1, 2), (2, 0, 0), (3, 1), (2, 2), (8, 0), (0, 5, 0), (1, 5),
        (1, 0, 1), (0, 2, 1), (9, 0), (0, 6, 0), (0, 0, 0, 1), (1, 6), (0, 7, 0),
    ],
}


def resolve_tree(spec: str, steps: int) -> list[Path]:
    """A tree from a name ('chain', 'chain-N', a NAMED_TREES key) or explicit paths written as
    '0;1;0.0;0.0.0' (steps separated by '.', paths by ';')."""
    if spec == "chain":
        return chain_paths(steps)
    if spec.startswith("chain-"):
        return chain_paths(int(spec[6:]))
    if spec in NAMED_TREES:
        return NAMED_TREES[spec]
    try:
        return [tuple(int(x) for x in p.split(".")) for p in spec.split(";") if p]
    except ValueError:
        names = ", ".join(["chain", "chain-N", *NAMED_TREES])
        raise ValueError(f"unknown tree {spec!r}: use one of {names} or paths like '0;1;0.0'") from None

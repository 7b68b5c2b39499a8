"""Draft trees shared by every method: a batch of B trees padded to n nodes as device tensors, built
from per-step top-k candidates and a list of paths, from host parents, or as chains.

A tree's node 0 is the root: the pending token (the last committed token, whose K/V is not yet
in the cache). Nodes are stored parents-first, so every path is ascending in node index.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

Path = tuple[int, ...]


@dataclass(frozen=True)
class Tree:
    """The drafts of B sequences, padded to n nodes each (root included): what one verify forward
    checks. A chain is parents = i - 1; a tree anything parents-first."""

    tokens: torch.Tensor  # [B, n] token ids; tokens[:, 0] = root (the pending token)
    parents: torch.Tensor  # [B, n] parent node index; parents[:, 0] = -1
    depths: torch.Tensor  # [B, n] distance from the root (position offset)
    mask: torch.Tensor  # [B, n, n] bool: mask[b, i, j] = j is i or an ancestor of i
    valid: torch.Tensor | None = None  # [B, n] bool, False on padding nodes; None = every node is real
    probs: torch.Tensor | None = None  # the draft's own probabilities ([B, n] of its tokens, or [B, n, V]);
    #                                    None for a deterministic draft (top-k, n-gram copies)

    @property
    def size(self) -> int:
        """Nodes per sequence (padding included), root included."""
        return self.tokens.shape[1]

    @property
    def batch(self) -> int:
        return self.tokens.shape[0]

    @property
    def draft_size(self) -> int:
        """Draft tokens verified per sequence besides the root."""
        return self.tokens.shape[1] - 1

    @staticmethod
    def chain(tokens: torch.Tensor, layout: "ChainLayouts | None" = None) -> "Tree":
        """A single path per sequence: root followed by a draft sequence. tokens: [B, n] (or [n])."""
        if tokens.dim() == 1:
            tokens = tokens[None]
        B, n = tokens.shape
        parents, depths, mask = (layout or ChainLayouts())(n, tokens.device)
        return Tree(tokens, parents.expand(B, n), depths.expand(B, n), mask.expand(B, n, n))

    @staticmethod
    def from_parents(tokens: torch.Tensor, parents: list[int]) -> "Tree":
        """One sequence's tree given parents-first on the host: parents[0] = -1, parents[i] < i."""
        mask, depths = host_layout(parents)
        dev = tokens.device
        return Tree(tokens.view(1, -1), torch.tensor(parents, device=dev)[None], torch.tensor(depths, device=dev)[None],
                    torch.tensor(mask, device=dev)[None])

    @staticmethod
    def from_host(tokens: list[int], parents: list[int], upload) -> "Tree":
        """One sequence's tree built on the host, sent to the device in one copy: upload(list of
        ints) -> a device tensor (Engine.upload: pinned and non-blocking on CUDA)."""
        return Tree.from_host_batch([tokens], [parents], upload)

    @staticmethod
    def from_host_batch(tokens: list[list[int]], parents: list[list[int]], upload) -> "Tree":
        """B sequences' trees built on the host, padded to the largest as `stack` pads (padding
        nodes hang off the root, see only themselves and are invalid), sent in one copy."""
        n = max(map(len, tokens))
        rows = []
        for toks, par in zip(tokens, parents):
            mask, depths = host_layout(par)
            m, pad = len(toks), n - len(toks)
            grid = [row + [False] * pad for row in mask] + [[i == j for j in range(n)] for i in range(m, n)]
            rows += toks + [0] * pad + par + [0] * pad + depths + [0] * pad + [1] * m + [0] * pad
            rows += [int(x) for row in grid for x in row]
        packed = upload(rows).view(len(tokens), 4 * n + n * n)  # [B, 4n + n*n]
        valid = packed[:, 3 * n:4 * n].bool() if min(map(len, tokens)) < n else None
        return Tree(packed[:, :n], packed[:, n:2 * n], packed[:, 2 * n:3 * n], packed[:, 4 * n:].view(-1, n, n).bool(),
                    valid=valid)

    @staticmethod
    def stack(trees: list["Tree"]) -> "Tree":
        """One tree per sequence -> a batch padded to the largest; padding nodes hang off the root
        and are invalid (the acceptance rule never accepts them)."""
        n = max(t.size for t in trees)
        parts = [[], [], [], [], []]
        for t in trees:
            pad = n - t.size
            dev = t.tokens.device
            parts[0].append(nn_pad(t.tokens, pad, 0))
            parts[1].append(nn_pad(t.parents, pad, 0))
            parts[2].append(nn_pad(t.depths, pad, 0))
            mask = torch.zeros(t.batch, n, n, dtype=torch.bool, device=dev)
            mask[:, :t.size, :t.size] = t.mask
            mask[:, t.size:, t.size:] |= torch.eye(pad, dtype=torch.bool, device=dev)
            parts[3].append(mask)
            valid = t.valid if t.valid is not None else torch.ones_like(t.tokens, dtype=torch.bool)
            parts[4].append(nn_pad(valid, pad, False))
        return Tree(*(torch.cat(p) for p in parts))


def nn_pad(x: torch.Tensor, pad: int, value) -> torch.Tensor:
    """[B, n] -> [B, n + pad], padded at the end with `value`."""
    return torch.nn.functional.pad(x, (0, pad), value=value) if pad else x


def host_layout(parents: list[int]) -> tuple[list[list[bool]], list[int]]:
    """(ancestor mask [n][n], depths) of a parents-first tree, as host lists; a malformed tree is
    a ValueError."""
    n = len(parents)
    mask = [[False] * n for _ in range(n)]
    depths = [0] * n
    for i, p in enumerate(parents):
        if i == 0:
            if p != -1:
                raise ValueError("node 0 must be the root")
        elif not 0 <= p < i:
            raise ValueError(f"node {i}: parent {p} must come before it")
        else:
            mask[i] = list(mask[p])
            depths[i] = depths[p] + 1
        mask[i][i] = True
    return mask, depths


class ChainLayouts:
    """Parents, depths and causal mask of chains, made once per length (a method drafting chains
    of varying length keeps one, instead of a few small kernels per step)."""

    def __init__(self):
        self._made: dict[tuple[int, str], tuple[torch.Tensor, ...]] = {}

    def __call__(self, n: int, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        key = (n, str(device))
        if key not in self._made:
            idx = torch.arange(n, device=device)
            self._made[key] = (idx - 1, idx, torch.ones(n, n, dtype=torch.bool, device=device).tril_())
        return self._made[key]


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

    def build(self, root: torch.Tensor, candidates: torch.Tensor) -> Tree:
        """root: [B] the pending tokens (device); candidates: [B, steps, k] top-k token ids per draft
        step (best first) -> the tree of each sequence, [B, n]."""
        t, B = self._template, root.shape[0]
        drafts = candidates[:, self._step, self._rank]  # [B, n - 1]
        tokens = torch.cat([root[:, None].to(drafts.dtype), drafts], dim=1)
        n = tokens.shape[1]
        return Tree(tokens, t.parents.expand(B, n), t.depths.expand(B, n), t.mask.expand(B, n, n))

    def __repr__(self) -> str:
        return f"TreeShape({self.size - 1} draft nodes, depth {self.depth}, top-{self.topk})"


def chain_paths(depth: int) -> list[Path]:
    return [(0,) * d for d in range(1, depth + 1)]


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
    """A tree from a name ('chain': `steps` deep, 'chain-N' with N >= 1, a NAMED_TREES key) or
    explicit paths written as '0;1;0.0;0.0.0' (steps separated by '.', paths by ';'). Strict, so a
    typo is never read as another tree: a malformed spec is a ValueError saying what is wrong."""
    if spec == "chain":
        return chain_paths(steps)
    if spec in NAMED_TREES:
        return NAMED_TREES[spec]
    if spec.startswith("chain-"):
        depth = spec[6:]
        if not depth.isascii() or not depth.isdigit() or int(depth) < 1:
            raise ValueError(f"{spec!r}: chain-N needs a whole number N >= 1 (the chain's depth)")
        return chain_paths(int(depth))
    return explicit_paths(spec)


def explicit_paths(spec: str) -> list[Path]:
    """Paths '0;1;0.0': each a non-empty '.'-list of ranks >= 0, unique, its parent path listed
    too (the root's children need none); else a ValueError naming the first bad path."""
    hint = f"use one of {', '.join(['chain', 'chain-N', *NAMED_TREES])} or paths like '0;1;0.0'"
    paths: dict[Path, str] = {}  # path -> as written, in the given order
    for i, text in enumerate(spec.split(";"), 1):
        text = text.strip()
        ranks = text.split(".")
        if not all(r.isascii() and r.isdigit() for r in ranks):
            if ";" not in spec and "." not in spec and text:
                raise ValueError(f"unknown tree {spec!r}: {hint}")
            what = "is empty" if not text else "is not '.'-separated ranks >= 0"
            raise ValueError(f"{spec!r}: path {i} ({text!r}) {what}; {hint}")
        path = tuple(int(r) for r in ranks)
        if path in paths:
            raise ValueError(f"{spec!r}: path {text!r} is given twice")
        paths[path] = text
    for path, text in paths.items():
        if len(path) > 1 and path[:-1] not in paths:
            raise ValueError(f"{spec!r}: path {text!r} lacks its parent path {text.rsplit('.', 1)[0]!r}")
    return list(paths)

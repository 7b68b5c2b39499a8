"""Lookahead decoding (Fu et al. 2024, "Break the Sequential Dependency of LLM Inference Using
Lookahead Decoding", arXiv 2402.02057): training-free; every step runs two branches in ONE
target forward.

- Lookahead branch: a 2D window of Jacobi guesses, (N-1) levels x W columns. Token (l, i) stands
  at offset i + l from the pending root; column 0 of level 0 is the root itself. The forward is
  one Jacobi step for the newest level: the output of token (N-2, i) guesses offset i + N - 1.
  Column i then reads as an n-gram of N consecutive guesses (levels 0..N-2, then the output),
  which goes to the pool; the window drops its oldest level and takes the outputs as its newest.
- Verification branch: the pool's n-grams that start with the pending root (at most G of them)
  merged into a trie rooted at it; the shared loop accepts greedily, so decoding stays exact.

Mask (the paper's Fig. 2b): window token (l, i) sees the committed prefix, the root, level 0's
columns 1..i and its own column's levels 1..l: one token at every offset before its own, a
complete (guessed) context. Tree rows see their ancestors only, never a window row. Window rows
are written to KV slots after the tree rows; cache.keep keeps only the accepted tree path.

Warm-up (as the paper's code): level 0 starts as W + N - 3 prompt tokens (seeded choice); each
step until the window is full adds the outputs as a new level and drops one column from every
level, so the levels stay aligned with the advancing root. The window always advances by one
position per step, however many tokens were accepted (the paper's default). The pool is reset
for every decoded turn. In a batch each sequence has its own window and pool (the windows
advance together, so they share one shape) and its own trie, padded to the largest.

preset = auto (the default, when no size is given) plans (W, N, G) for the hardware from the
model's grid profile (tokens per step and rows per forward measured at each grid point).
"""

from __future__ import annotations

import itertools
import random
from typing import Sequence

import torch

from harness.core.cache import KVCache
from harness.core.engine import Engine
from harness.core.method import AUTO, Method, MethodError, Option, Step
from harness.core.planning.shapes import PLANNING_OPTIONS, grid_point
from harness.core.tree import Tree

PRESETS: dict[str, tuple[int, int, int]] = {"published": (7, 5, 7)}  # (W, N, G) of the paper's 7B runs
PROFILE_GRID = tuple({"window": w, "ngram": n, "guess": g}  # the points a profile measures
                     for w, n, g in itertools.product((3, 5, 7), (3, 4, 5), (3, 5, 7)))
SIZES = ("window", "ngram", "guess")
LOWEST = {"window": 1, "ngram": 2, "guess": 1}


class NGramPool:
    """n-grams keyed by their first token; at most `per_key` continuations per key, the most
    recently added kept (adding an n-gram already there refreshes it)."""

    def __init__(self, per_key: int):
        self.per_key = per_key
        self._grams: dict[int, dict[tuple[int, ...], None]] = {}  # first token -> tails, oldest first

    def add(self, gram: Sequence[int]) -> None:
        bucket = self._grams.setdefault(int(gram[0]), {})
        tail = tuple(int(t) for t in gram[1:])
        bucket.pop(tail, None)
        bucket[tail] = None
        if len(bucket) > self.per_key:
            del bucket[next(iter(bucket))]

    def lookup(self, first: int) -> list[tuple[int, ...]]:
        """Continuations of `first` (n-grams without their first token), most recent first."""
        return list(reversed(self._grams.get(first, {})))

    def __len__(self) -> int:
        return sum(map(len, self._grams.values()))


class Window:
    """The lookahead branch's Jacobi trajectory. levels[0] holds columns 1..C-1 of level 0 (column
    0 is the pending root), levels[l >= 1] columns 0..C-1. Warm-up starts from level 0 alone over
    C = W + N - 2 columns and ends with N - 1 levels over W columns."""

    def __init__(self, width: int, ngram: int, seed_tokens: Sequence[int]):
        if len(seed_tokens) != width + ngram - 3:
            raise ValueError(f"level 0 needs {width + ngram - 3} seed tokens, got {len(seed_tokens)}")
        self.ngram = ngram
        self.levels: list[list[int]] = [list(seed_tokens)]

    @property
    def columns(self) -> int:
        return len(self.levels[0]) + 1

    @property
    def full(self) -> bool:
        return len(self.levels) == self.ngram - 1

    def tokens(self) -> list[int]:
        """The window rows in forward order: level 0 (columns 1..C-1), then each higher level."""
        return [t for level in self.levels for t in level]

    def advance(self, root: int, outputs: Sequence[int]) -> list[list[int]]:
        """outputs: the greedy next token of the newest level's C columns (column 0 of a lone
        level 0 is the root). Moves the window one position; returns the n-grams read off its
        columns (only once the window is full)."""
        stack = self.levels + [list(outputs)]
        if not self.full:  # warm-up: one more level, one column fewer
            self.levels = [row[1:] for row in stack]
            return []
        firsts = [root] + stack[0]
        grams = [[firsts[i]] + [row[i] for row in stack[1:]] for i in range(self.columns)]
        self.levels = [stack[1][1:]] + stack[2:]
        return grams


def window_layout(levels: int, columns: int, device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
    """Offsets from the root [R] and visibility among the window rows [R, R] (row r may see s)
    for `levels` levels over `columns` columns, rows ordered as Window.tokens()."""
    level = [0] * (columns - 1) + [lv for lv in range(1, levels) for _ in range(columns)]
    level = torch.tensor(level, dtype=torch.long, device="cpu")  # [R], built on the host once per shape
    col = torch.tensor(list(range(1, columns)) + list(range(columns)) * (levels - 1), dtype=torch.long, device="cpu")  # [R]
    earlier_base = (level[None, :] == 0) & (col[None, :] <= col[:, None])
    own_column = (level[None, :] >= 1) & (level[None, :] <= level[:, None]) & (col[None, :] == col[:, None])
    return (level + col).to(device), (earlier_base | own_column).to(device)


def joint_mask(tree_mask: torch.Tensor, window_mask: torch.Tensor) -> torch.Tensor:
    """[B, n, n] tree mask and [R, R] window mask -> [B, n + R, n + R]: tree rows first, window
    rows see the root (row 0) besides their own window rows, tree rows never see the window."""
    B, n, _ = tree_mask.shape
    r, dev = window_mask.shape[0], tree_mask.device
    top = torch.cat([tree_mask, torch.zeros(B, n, r, dtype=torch.bool, device=dev)], dim=2)
    root = torch.ones(B, r, 1, dtype=torch.bool, device=dev)
    bottom = torch.cat([root, torch.zeros(B, r, n - 1, dtype=torch.bool, device=dev), window_mask.expand(B, r, r)], dim=2)
    return torch.cat([top, bottom], dim=1)


def trie(root: int, grams: Sequence[Sequence[int]], limit: int) -> tuple[list[int], list[int]]:
    """The candidates (continuations of root) merged into a trie rooted at root, parents first,
    as (tokens, parents) on the host; a candidate that would take it past `limit` nodes is left out."""
    tokens, parents, child = [root], [-1], {}  # child: (parent node, token) -> node
    for gram in grams:
        node, shared = 0, 0
        while shared < len(gram) and (node, gram[shared]) in child:  # walk the common prefix
            node = child[(node, gram[shared])]
            shared += 1
        if len(tokens) + len(gram) - shared > limit:
            continue
        for tok in gram[shared:]:
            child[(node, tok)] = len(tokens)
            tokens.append(tok)
            parents.append(node)
            node = len(tokens) - 1
    return tokens, parents


def resolve_sizes(config: dict, given: dict, name: str = "lookahead") -> tuple[int, int, int]:
    """(W, N, G) from the options, a named preset overriding the three; checked (`auto` stands for
    the three options' values here: planning replaces them later, if none was given)."""
    preset = config["preset"]
    if preset not in ("none", AUTO):
        if preset not in PRESETS:
            raise MethodError(f"{name}.preset: {preset!r} is not one of none, {', '.join(PRESETS)}")
        clash = [k for k in SIZES if k in given]
        if clash:
            raise MethodError(f"{name}.preset={preset} sets window, ngram and guess; drop {', '.join(clash)} "
                              "or the preset")
        config.update(zip(SIZES, PRESETS[preset]))
    for key in SIZES:
        if not isinstance(config[key], int) or config[key] < LOWEST[key]:
            raise MethodError(f"{name}.{key}: {config[key]!r} must be an integer >= {LOWEST[key]}")
    return config["window"], config["ngram"], config["guess"]


class Lookahead(Method):
    """Lookahead decoding on the shared loop: propose = trie of pooled n-grams, verify = one
    forward over tree + window rows, observe = Jacobi step of the window and pool update."""

    name = "lookahead"
    summary = "Lookahead decoding: Jacobi window + n-gram pool, verified in the same forward (training-free)"
    options = (
        # chosen by the sweep (`spec-harness tune lookahead`, results/lookahead-sweep/): on the
        # 2-core CPU the smallest grid point, (3, 3, 3), was fastest (0.73x AR; published 0.54x)
        Option("window", "int", 3, "W: lookahead window width (future positions per Jacobi level)"),
        Option("ngram", "int", 3, "N: n-gram size; the window keeps N-1 Jacobi levels"),
        Option("guess", "int", 3, "G: n-grams kept per first token, all verified when it is the root"),
        Option("preset", "str", AUTO, "named (W, N, G), overriding the three: published = (7, 5, 7); auto (unless a "
                                      "size is given) = planned from the model's lookahead profile and this hardware's "
                                      "cost model, the three defaults without a profile", choices=(AUTO, "none", *PRESETS)),
        *PLANNING_OPTIONS,
    )
    profile_family = "grid"
    profile_grid = PROFILE_GRID

    PRESETS = PRESETS

    @classmethod
    def sizes(cls, values: dict) -> tuple[int, int, int]:
        """(W, N, G) that these option values give; a MethodError when they are invalid."""
        config = cls.resolve_options(values)
        return config["window"], config["ngram"], config["guess"]

    @classmethod
    def validate(cls, config: dict) -> None:
        """A named preset fills in the three sizes (refused beside any of them); sizes checked."""
        resolve_sizes(config, config.given)

    def __init__(self, engine: Engine, model_key: str, **values):
        super().__init__(engine, model_key, **values)
        self.width, self.ngram, self.guess = (self.config[k] for k in SIZES)
        if self.config["preset"] == AUTO and not any(k in self.config.given for k in SIZES):
            self.config.update(grid_point(self, {}, dict(zip(SIZES, (self.width, self.ngram, self.guess)))))
            self.width, self.ngram, self.guess = (self.config[k] for k in SIZES)
        self.pools: list[NGramPool] = []  # per sequence
        self.windows: list[Window] = []  # per sequence, all of one shape (they advance together)
        self._layouts: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] = {}
        self._outputs: torch.Tensor | None = None  # [B, C] the newest level's guesses of the last forward
        self._roots: list[int] = []  # per sequence: the pending token
        self._prev_roots: list[int] = []  # per sequence: the root of the forward just verified

    def describe(self) -> dict:
        out = super().describe()
        out.update(window_rows=(self.ngram - 1) * self.width - 1, max_tree_nodes=1 + self.guess * (self.ngram - 1))
        return out

    # -- the decoding hooks ------------------------------------------------------------------
    def begin(self, prompts: list[list[int]]) -> None:
        """A new turn: per sequence an empty pool and level 0 seeded from its prompt's tokens
        (host ids: no read)."""
        seeds = [random.Random(0).choices(p, k=self.width + self.ngram - 3) for p in prompts]
        self.windows = [Window(self.width, self.ngram, s) for s in seeds]
        self.pools = [NGramPool(self.guess) for _ in prompts]
        self._outputs = None

    def observe(self, hidden: torch.Tensor, tree: Tree | None, step: Step) -> None:
        """The pending tokens for the next tries; each window's Jacobi step from the outputs read
        with the loop's own read (extra_read); its n-grams to its sequence's pool."""
        self._roots = [t[-1] for t in step.tokens]
        if tree is not None and step.extra is not None:
            for window, pool, root, outputs in zip(self.windows, self.pools, self._prev_roots, step.extra):
                for gram in window.advance(root, outputs):
                    pool.add(gram)

    def propose(self, pending: torch.Tensor, cache: KVCache) -> Tree:
        """Per sequence the pool's n-grams starting with its pending token, as a trie (built on the
        host, padded to the largest, sent in one non-blocking copy). pending: [B] (its host values
        came through observe)."""
        self._prev_roots = self._roots
        room = cache.max_len - cache.length
        tries = [trie(root, pool.lookup(root), room) for root, pool in zip(self._roots, self.pools)]
        return Tree.from_host_batch([t for t, _ in tries], [p for _, p in tries], self.engine.upload)

    def prepare(self, cache: KVCache) -> None:
        """The window's layout at every shape it takes (warm-up levels, then full), built once:
        no host-made tensor is sent to the device inside a turn."""
        for level in range(1, self.ngram):
            key = (level, self.width + self.ngram - 1 - level)  # levels, columns
            if key not in self._layouts:
                self._layouts[key] = window_layout(*key, self.engine.device)

    def layout(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(offsets [R], window mask [R, R]) of the current window shape (made by prepare)."""
        key = (len(self.windows[0].levels), self.windows[0].columns)
        if key not in self._layouts:
            self._layouts[key] = window_layout(*key, self.engine.device)
        return self._layouts[key]

    def verify(self, tree: Tree, cache: KVCache) -> torch.Tensor:
        """Tree rows, then window rows, in one forward; returns hidden [B, n, d] of the tree rows
        and keeps each window's newest level's greedy outputs for the loop's read."""
        n, B, first = tree.size, tree.batch, self.windows[0]
        windows = [t for w in self.windows for t in w.tokens()]
        self._outputs = None
        if n + len(windows) // B > cache.max_len - cache.length:  # no room left: verify only, windows wait
            return super().verify(tree, cache)
        offsets, window_mask = self.layout()
        ids = torch.cat([tree.tokens, self.engine.upload(windows).view(B, -1)], dim=1)  # [B, N]
        positions = cache.lengths[:, None] + torch.cat([tree.depths, offsets[None].expand(B, -1)], dim=1)  # [B, N]
        h = self.engine.forward(ids, positions, joint_mask(tree.mask, window_mask), cache)  # [B, N, d]
        if len(first.levels) == 1:  # level 0 alone: its column 0 is the root, tree row 0
            newest = torch.cat([h[:, :1], h[:, n:]], dim=1)  # [B, C, d]
        else:
            newest = h[:, -first.columns:]  # [B, C, d]
        self._outputs = self.engine.logits(newest).argmax(dim=-1)  # [B, C]: the Jacobi step's guesses
        return h[:, :n]

    def extra_read(self) -> torch.Tensor | None:
        return self._outputs

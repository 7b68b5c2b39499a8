"""Choosing a draft shape by predicted speed: pure arithmetic over an acceptance profile (what a
drafter's drafts are worth, measured on the tuning sets) and a per-step cost (what the hardware
charges for them, from its cost model c(n)).

A decoding step commits E = 1 + E[accepted draft tokens] tokens and costs one target forward of
the shape's rows plus its drafting, both in units of c(1), the baseline's cost per token; so the
predicted speedup over autoregressive decoding is E / cost. Three profile families:

- tree (drafters of per-step top-k candidates: FIRP, Medusa): the probability of every candidate
  path (a, b, ...) = the a-th candidate of step 1 is the target's token, then the b-th of step 2,
  ...; a tree accepts on average the sum of its nodes' path probabilities. Trees are grown
  greedily (the most probable node whose parent is in the tree), so size s+1 extends size s.
- chain (pld, sps): P(at least i draft tokens drafted) and P(at least i accepted), i = 1..k_max;
  a chain of k accepts sum_{i<=k} P(accepted >= i) and verifies 1 + min(k, drafted) rows.
- grid (lookahead, eagle): measured tokens per step, rows per forward and draft forwards per step
  of a set of option points; a point's cost follows from them.
Ties go to the first (smallest) shape, so planning is deterministic.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable

Path = tuple[int, ...]
MAX_TREE_NODES = 64  # draft nodes of the largest tree considered


@dataclass(frozen=True)
class Choice:
    """One candidate shape: what the method uses, a readable label, E and the cost per step."""

    shape: Any
    label: str
    expected: float  # tokens committed per step: 1 + E[accepted draft tokens]
    cost: float  # target forward + drafting per step, in units of c(1)

    @property
    def speedup(self) -> float:
        return self.expected / self.cost


def best(choices: Iterable[Choice]) -> Choice:
    """The fastest choice; the first of equals (choices come smallest first)."""
    out = None
    for c in choices:
        if out is None or c.speedup > out.speedup + 1e-12:
            out = c
    if out is None:
        raise ValueError("nothing to choose from")
    return out


# -- trees ---------------------------------------------------------------------------------------
def path_key(path: Path) -> str:
    return ".".join(map(str, path))


def path_probability(profile: dict) -> Callable[[Path], float]:
    """P(path accepted) from a tree profile: the measured frequency of each path ("paths") when
    present, else the product of positional acceptances p[step][rank] along it (Sequoia's
    factorised model, "p")."""
    if "paths" in profile:
        freq = profile["paths"]
        return lambda path: float(freq.get(path_key(path), 0.0))
    p = profile["p"]

    def product(path: Path) -> float:
        out = 1.0
        for step, rank in enumerate(path):
            row = p[step] if step < len(p) else []
            out *= row[rank] if rank < len(row) else 0.0
        return out
    return product


def greedy_tree(prob: Callable[[Path], float], depth: int, ranks: int, max_nodes: int) -> list[tuple[Path, float]]:
    """Nodes in the order greedy growth adds them: each time the child (of the root or of a node
    already in, at most `depth` deep, rank < `ranks`) with the largest path probability. Nodes of
    probability 0 are never added."""
    chosen: list[tuple[Path, float]] = []
    frontier = {(r,): prob((r,)) for r in range(ranks)}
    while frontier and len(chosen) < max_nodes:
        path = min(frontier, key=lambda q: (-frontier[q], len(q), q))
        p = frontier.pop(path)
        if p <= 0.0:
            break
        chosen.append((path, p))
        if len(path) < depth:
            frontier.update({path + (r,): prob(path + (r,)) for r in range(ranks)})
    return chosen


def tree_depth(paths: Iterable[Path]) -> int:
    return max((len(p) for p in paths), default=0)


def tree_choices(profile: dict, depth: int, cost: Callable[[list[Path]], float],
                 max_nodes: int = MAX_TREE_NODES) -> list[Choice]:
    """Greedy trees of 1..max_nodes draft nodes (at most `depth` steps deep), smallest first."""
    depth = min(depth, int(profile.get("depth", depth)))
    ranks = int(profile.get("ranks") or max(map(len, profile.get("p", [[0]]))))
    nodes = greedy_tree(path_probability(profile), depth, ranks, max_nodes)
    out, expected = [], 1.0
    for size in range(1, len(nodes) + 1):
        paths = [p for p, _ in nodes[:size]]
        expected += nodes[size - 1][1]
        label = f"{size} nodes, depth {tree_depth(paths)}: " + ";".join(map(path_key, paths))
        out.append(Choice(paths, label, expected, cost(paths)))
    return out


# -- chains --------------------------------------------------------------------------------------
def chain_choices(profile: dict, cost: Callable[[int, list[float]], float], k_max: int | None = None) -> list[Choice]:
    """k = 1..k_max. cost(k, rows) gets rows[j] = P(the step verifies 1 + j rows), j = 0..k."""
    drafted, accepted = profile["drafted_at_least"], profile["accepted_at_least"]
    top = min(len(drafted), len(accepted), k_max or len(drafted))
    out = []
    for k in range(1, top + 1):
        at_least = [1.0] + list(drafted[:k]) + [0.0]  # P(min(k, drafted) >= j), j = 0..k+1
        rows = [at_least[j] - at_least[j + 1] for j in range(k + 1)]
        out.append(Choice(k, f"k={k}", 1.0 + sum(accepted[:k]), cost(k, rows)))
    return out


def expected_ratio(ratio: Callable[[float], float], rows: list[float]) -> float:
    """E[c(1 + j)] / c(1) when the step verifies 1 + j rows with probability rows[j]."""
    return sum(p * ratio(1 + j) for j, p in enumerate(rows) if p > 0)


# -- grids ---------------------------------------------------------------------------------------
def grid_choices(profile: dict, cost: Callable[[dict], float], fixed: dict | None = None) -> list[Choice]:
    """Every measured point whose options agree with `fixed`, in the profile's order."""
    out = []
    for point in profile["points"]:
        options = point["options"]
        if any(k in options and options[k] != v for k, v in (fixed or {}).items()):
            continue
        label = " ".join(f"{k}={v}" for k, v in options.items())
        out.append(Choice(dict(options), label, float(point["tokens_per_step"]), cost(point)))
    return out


def layered_cost(ratio: Callable[[float], float], rows_from: list[tuple[int, int]], layers: int) -> float:
    """Cost of a forward whose row count grows inside the network (FIRP's pseudo rows join at
    intermediate layers): rows_from = [(first layer, rows from there on), ...] ascending from
    layer 0; each layer range is charged its share of c(rows)."""
    total = 0.0
    for i, (start, rows) in enumerate(rows_from):
        end = rows_from[i + 1][0] if i + 1 < len(rows_from) else layers
        total += (end - start) / layers * ratio(rows)
    return total

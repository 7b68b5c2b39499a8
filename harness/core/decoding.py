"""The one decode loop every method shares: propose -> verify -> accept -> update cache -> observe.

A method that drafts nothing (`ar`, `ar-graph`) runs the same loop with a one-row step instead:
no tree, mask or acceptance walk, only the rule's choice of the next token, so the baseline is
the leanest loop the engine allows. Either way the loop reads the device once per step.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from harness.core.accept import Greedy
from harness.core.cache import KVCache
from harness.core.method import Method, Step
from harness.core.tree import Tree


@dataclass
class Decoded:
    """One decoded turn. Every list has one entry per target forward, the prefill first."""

    output_ids: list[int] = field(default_factory=list)
    accept_lengths: list[int] = field(default_factory=list)  # tokens committed per forward (prefill: 1)
    draft_sizes: list[int] = field(default_factory=list)  # draft tokens verified per forward (prefill: 0)
    positions: list[int] = field(default_factory=list)  # rows processed per forward
    accepted: list[int] = field(default_factory=list)  # draft tokens committed per forward (prefill: 0)
    draft_forwards: int = 0  # forwards of a draft model or head during the turn
    syncs: int | None = None  # waits for the device during the turn: host reads and blocking copies
    prefill_syncs: int | None = None  # those of the prefill (the first token's read); None: not counted (peers)
    prefill_time: float | None = 0.0
    stop: str = ""  # "eos" | "length"

    @property
    def forwards(self) -> int:
        return len(self.accept_lengths)

    @property
    def steps(self) -> int:
        """Decoding steps: the forwards after the prefill."""
        return max(0, len(self.accept_lengths) - 1)


def synchronize(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


class _Commit:
    """Appends tokens until EOS or the token budget, exactly where the baseline would stop."""

    def __init__(self, out: Decoded, max_new: int, eos: frozenset[int]):
        self.out, self.max_new, self.eos = out, max_new, eos

    def add(self, tokens: list[int], drafted: int, rows: int) -> bool:
        """Commit one forward's tokens in order (its accepted drafts, then the target's next
        token); returns True when decoding must stop. Only committed draft tokens count as accepted."""
        taken = 0
        for tok in tokens:
            self.out.output_ids.append(tok)
            taken += 1
            if tok in self.eos:
                self.out.stop = "eos"
                break
            if len(self.out.output_ids) >= self.max_new:
                self.out.stop = "length"
                break
        out = self.out
        out.accept_lengths.append(taken)
        out.accepted.append(min(taken, len(tokens) - 1))
        out.draft_sizes.append(drafted)
        out.positions.append(rows)
        return bool(out.stop)


def verify_step(method: Method, tree: Tree, cache: KVCache, rule) -> tuple[torch.Tensor, Step]:
    """Verify a batch of drafts with one target forward and the acceptance rule: hidden [B, n, d]
    and the Step, read from the device in one transfer."""
    engine, n = method.engine, tree.size
    hidden = method.verify(tree, cache)  # [B, n, d] hidden of the tree nodes
    positions = cache.lengths[:, None] + tree.depths  # [B, n]
    acc = rule.accept(tree, engine.logits(hidden), positions)
    extra = method.extra_read()  # [B, r] or None
    parts = [acc.next[:, None], acc.on_path.long(), tree.tokens] + ([extra.long()] if extra is not None else [])
    host = engine.host(torch.cat(parts, dim=1))  # [B, 1 + 2n (+ r)]
    paths = [[i for i in range(n) if row[1 + i]] for row in host]
    tokens = [[row[1 + n + i] for i in path[1:]] + [row[0]] for row, path in zip(host, paths)]
    more = [row[1 + 2 * n:] for row in host] if extra is not None else None
    return hidden, Step(paths, tokens, acc.best, acc.next, acc.on_path, more)


def _prefill(method: Method, prompt_ids: list[int], cache: KVCache, rule) -> tuple[torch.Tensor, Step]:
    """The prompt's forward: hidden [1, P(+extra), d] and the Step holding the first new token."""
    engine, P = method.engine, len(prompt_ids)
    hidden = method.prefill(engine.upload(prompt_ids)[None], cache)  # ids [1, P]
    last = torch.full((1,), P - 1, dtype=torch.long, device=engine.device)  # [1]
    first = rule.choose(engine.logits(hidden[:, P - 1]), last)  # [1]
    token = engine.host(first)[0]
    cache.truncate(P)
    return hidden, Step([[P - 1]], [[token]], last, first)


def _plain_step(method: Method, pending: torch.Tensor, cache: KVCache, rule) -> Step:
    """One row per sequence: the target's next token after the pending one, no draft."""
    engine = method.engine
    positions = cache.lengths  # [B] where the pending tokens stand (read before the commit below)
    hidden = method.step(pending, cache)  # [B, d]
    nxt = rule.choose(engine.logits(hidden), positions)  # [B]
    token = engine.host(nxt)
    cache.advance(1)
    return Step([[0]] * len(token), [[t] for t in token], None, nxt, None)


@torch.inference_mode()
def decode(method: Method, prompt_ids: list[int], max_new_tokens: int, eos_ids: set[int],
           cache: KVCache, rule=None) -> Decoded:
    """Decode one prompt with `method` under `rule` (default greedy); lossless by construction of
    the verifier: every committed token is the rule's choice of the target's."""
    engine, out, rule = method.engine, Decoded(), rule or Greedy()
    commit = _Commit(out, max_new_tokens, frozenset(eos_ids))
    syncs, drafts = engine.counters.syncs, engine.counters.draft_forwards
    method.prepare(cache)
    cache.reset()
    method.rule = rule  # drafters may draft with it (the target's noise at a position, a draft stream)
    t0 = time.perf_counter()
    method.begin(prompt_ids)
    before = engine.counters.positions
    hidden, step = _prefill(method, prompt_ids, cache, rule)
    out.prefill_syncs = engine.counters.syncs - syncs
    done = commit.add(step.tokens[0], 0, engine.counters.positions - before)
    synchronize(engine.device)
    out.prefill_time = time.perf_counter() - t0
    if not done:
        method.observe(hidden, None, step)
    while not done:
        before = engine.counters.positions
        if not method.drafts:
            step, drafted = _plain_step(method, step.next, cache, rule), 0
        else:
            tree = method.propose(step.next, cache)
            hidden, step = verify_step(method, tree, cache, rule)
            cache.keep(step.paths, step.on_path)
            drafted = tree.draft_size
        done = commit.add(step.tokens[0], drafted, engine.counters.positions - before)
        if not done and method.drafts:
            method.observe(hidden, tree, step)
    cache.truncate(len(prompt_ids) + len(out.output_ids) - 1)  # drop accepted-but-cut tokens
    out.syncs = engine.counters.syncs - syncs
    out.draft_forwards = engine.counters.draft_forwards - drafts
    return out

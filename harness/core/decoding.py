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
from harness.core.timing import synchronize
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
    finish_time: float | None = None  # seconds from the turn's start to this sequence's last token (its latency)
    idle_rows: int | None = 0  # rows processed for this sequence after it finished (a batch's longer sequences went on)
    stop: str = ""  # "eos" | "length"

    @property
    def forwards(self) -> int:
        return len(self.accept_lengths)

    @property
    def steps(self) -> int:
        """Decoding steps: the forwards after the prefill."""
        return max(0, len(self.accept_lengths) - 1)


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
    valid = tree.valid.long().sum(dim=1, keepdim=True) if tree.valid is not None else None  # [B, 1]
    parts = [acc.next[:, None], acc.on_path.long(), tree.tokens] + [x.long() for x in (valid, extra) if x is not None]
    host = engine.host(torch.cat(parts, dim=1))  # [B, 1 + 2n (+ 1) (+ r)]
    paths = [[i for i in range(n) if row[1 + i]] for row in host]
    tokens = [[row[1 + n + i] for i in path[1:]] + [row[0]] for row, path in zip(host, paths)]
    tail = 1 + 2 * n + (valid is not None)
    drafted = [row[1 + 2 * n] - 1 for row in host] if valid is not None else [n - 1] * len(host)
    more = [row[tail:] for row in host] if extra is not None else None
    return hidden, Step(paths, tokens, acc.best, acc.next, acc.on_path, more, drafted)


def _prefill(method: Method, prompts: list[list[int]], cache: KVCache, rule) -> tuple[torch.Tensor, Step]:
    """The prompts' forward, right-padded to the longest ([B, P]): hidden [B, P(+extra), d] and
    the Step holding each sequence's first new token (from its own last prompt row)."""
    engine, lengths = method.engine, [len(p) for p in prompts]
    width = max(lengths)
    padded = [t for p in prompts for t in p + [p[-1]] * (width - len(p))]
    hidden = method.prefill(engine.upload(padded).view(len(prompts), width), cache)  # ids [B, P]
    last = engine.upload([n - 1 for n in lengths]) if len(set(lengths)) > 1 else \
        torch.full((len(prompts),), width - 1, dtype=torch.long, device=engine.device)  # [B]
    rows = hidden.gather(1, last[:, None, None].expand(-1, 1, hidden.shape[-1]))[:, 0]  # [B, d]
    first = rule.choose(engine.logits(rows), last)  # [B]
    tokens = engine.host(first)
    cache.set_lengths(lengths)
    return hidden, Step([[n - 1] for n in lengths], [[t] for t in tokens], last, first)


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
    return decode_batch(method, [prompt_ids], max_new_tokens, eos_ids, cache, rule)[0]


@torch.inference_mode()
def decode_batch(method: Method, prompts: list[list[int]], max_new_tokens: int, eos_ids: set[int],
                 cache: KVCache, rule=None) -> list[Decoded]:
    """Decode B prompts together (cache.batch == B; rule keyed per sequence): each sequence
    commits its own tokens and stops at its own EOS or budget. A finished sequence keeps its rows
    in the batch until the last one finishes (its cache frozen; those rows are its `idle_rows`).
    A sequence's `positions` are the forward's rows per sequence, padding to the batch's longest
    prompt or draft included. The counters (syncs, draft forwards, prefill time) are the batch's."""
    engine, rule, B = method.engine, rule or Greedy(), len(prompts)
    if cache.batch != B:
        raise ValueError(f"a batch of {B} prompts needs a cache of batch {B}, not {cache.batch}")
    if B > 1 and not method.batchable:
        raise ValueError(f"{method.name} decodes one sequence at a time (its drafting state is per turn)")
    outs = [Decoded() for _ in prompts]
    commits = [_Commit(o, max_new_tokens, frozenset(eos_ids)) for o in outs]
    syncs, drafts = engine.counters.syncs, engine.counters.draft_forwards
    method.prepare(cache)
    cache.reset()
    method.rule = rule  # drafters may draft with it (the target's noise at a position, a draft stream)
    t0 = time.perf_counter()
    method.begin(prompts)
    before = engine.counters.positions
    hidden, step = _prefill(method, prompts, cache, rule)
    prefill_syncs, rows = engine.counters.syncs - syncs, engine.counters.positions - before  # rows per sequence
    done = [c.add(t, 0, rows) for c, t in zip(commits, step.tokens)]
    synchronize(engine.device)
    prefill_time = time.perf_counter() - t0
    for out, stopped in zip(outs, done):
        out.finish_time = prefill_time if stopped else None
    if not all(done):
        method.observe(hidden, None, step)
    while not all(done):
        before = engine.counters.positions
        hidden, tree, step, drafted = _advance(method, step, cache, rule)
        rows = engine.counters.positions - before  # per sequence (the engine counts a forward's rows), padding included
        for b in range(B):
            if done[b]:
                outs[b].idle_rows += rows  # a finished sequence's rows, stepped along with the others
            elif commits[b].add(step.tokens[b], drafted[b], rows):
                done[b], outs[b].finish_time = True, time.perf_counter() - t0
        if not all(done) and method.drafts:
            method.observe(hidden, tree, step)
        _freeze(cache, prompts, outs, done)
    for b, out in enumerate(outs):
        out.syncs, out.prefill_syncs, out.prefill_time = engine.counters.syncs - syncs, prefill_syncs, prefill_time
        out.draft_forwards = engine.counters.draft_forwards - drafts
    _freeze(cache, prompts, outs, [True] * B)
    return outs


def _advance(method: Method, step: Step, cache: KVCache, rule) -> tuple[torch.Tensor | None, Tree | None, Step, list[int]]:
    """One decoding step of the batch: (hidden, tree, step, draft tokens verified per sequence);
    a method that drafts nothing takes the one-row step (no hidden, no tree)."""
    if not method.drafts:
        return None, None, _plain_step(method, step.next, cache, rule), [0] * len(step.tokens)
    tree = method.propose(step.next, cache)
    hidden, step = verify_step(method, tree, cache, rule)
    cache.keep(step.paths, step.on_path)
    return hidden, tree, step, step.drafted


def _freeze(cache: KVCache, prompts: list[list[int]], outs: list[Decoded], done: list[bool]) -> None:
    """Finished sequences' cache lengths back to prompt + output - 1 (accepted-but-cut tokens
    dropped; a finished sequence stepped along with the others never grows)."""
    for b, (prompt, out) in enumerate(zip(prompts, outs)):
        length = len(prompt) + len(out.output_ids) - 1
        if done[b] and cache.seen[b] != length:
            cache.set_length(b, length)

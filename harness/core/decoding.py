"""The one decode loop every method shares: propose -> verify -> accept -> update cache."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from harness.core.engine import KVCache
from harness.core.method import Method
from harness.core.tree import Tree, accepted_mask


@dataclass
class Decoded:
    """One decoded turn, with the per-forward statistics the results schema records."""

    output_ids: list[int] = field(default_factory=list)
    accept_lengths: list[int] = field(default_factory=list)  # tokens committed per target forward
    draft_sizes: list[int] = field(default_factory=list)  # draft tokens verified per forward
    positions: list[int] = field(default_factory=list)  # rows processed per forward
    accepted: list[int] = field(default_factory=list)  # draft tokens accepted per decoding step
    draft_forwards: int = 0  # forwards of a draft model or head during the turn
    host_reads: int = 0  # device-to-host reads during the turn (Engine.host)
    prefill_time: float = 0.0
    stop: str = ""  # "eos" | "length"


def synchronize(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


class _Commit:
    """Appends tokens until EOS or the token budget, exactly where the baseline would stop."""

    def __init__(self, out: Decoded, max_new: int, eos: frozenset[int]):
        self.out, self.max_new, self.eos = out, max_new, eos

    def add(self, tokens: list[int]) -> bool:
        """Commit tokens in order; returns True when decoding must stop."""
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
        self.out.accept_lengths.append(taken)
        return bool(self.out.stop)


@dataclass
class Step:
    """What one verification forward decided, read from the device in one transfer."""

    path: list[int]  # accepted node indices, root first
    accepted: list[int]  # their draft tokens (the root excluded)
    bonus: int  # the target's next token after the path: the new pending token
    on_path: torch.Tensor  # [n] bool, the path on the device (for the cache gather)


def verify_step(method: Method, tree: Tree, cache: KVCache) -> tuple[torch.Tensor, Step]:
    """Verify `tree` with one target forward and accept greedily: hidden [n, d] and the Step.
    Logits are compared in fp32 whatever the model's dtype. Exactly one host read."""
    engine, n = method.engine, tree.size
    hidden = method.verify(tree, cache)  # [n, d] hidden of the tree nodes
    predicted = engine.logits(hidden[:n]).float().argmax(dim=-1)  # [n]
    best, on_path = accepted_mask(tree, predicted)
    packed = torch.cat([predicted.index_select(0, best), on_path.long(), tree.tokens])  # [1 + 2n]
    host = engine.host(packed)
    path = [i for i in range(n) if host[1 + i]]
    return hidden, Step(path, [host[1 + n + i] for i in path[1:]], host[0], on_path)


def _prefill(method: Method, prompt_ids: list[int], cache: KVCache, out: Decoded) -> tuple[torch.Tensor, int]:
    """The prompt's forward; returns (hidden [P(+extra), d], the first new token)."""
    engine = method.engine
    ids = torch.tensor(prompt_ids, dtype=torch.long, device=engine.device)
    before = engine.counters.positions
    hidden = method.prefill(ids, cache)
    first = engine.host(engine.logits(hidden[len(prompt_ids) - 1]).float().argmax())
    cache.truncate(len(prompt_ids))
    out.draft_sizes.append(0)
    out.positions.append(engine.counters.positions - before)
    return hidden, first


@torch.inference_mode()
def decode(method: Method, prompt_ids: list[int], max_new_tokens: int, eos_ids: set[int],
           cache: KVCache) -> Decoded:
    """Greedy decoding of one prompt with `method`; lossless by construction of the verifier."""
    engine, out = method.engine, Decoded()
    commit = _Commit(out, max_new_tokens, frozenset(eos_ids))
    reads, drafts = engine.counters.host_reads, engine.counters.draft_forwards
    cache.reset()
    t0 = time.perf_counter()
    method.begin(prompt_ids)
    hidden, pending = _prefill(method, prompt_ids, cache, out)
    done = commit.add([pending])
    synchronize(engine.device)
    out.prefill_time = time.perf_counter() - t0
    if not done:
        method.observe(hidden, None, [len(prompt_ids) - 1])
    while not done:
        tree = method.propose(pending, cache)
        before = engine.counters.positions
        hidden, step = verify_step(method, tree, cache)
        cache.keep(step.path, step.on_path)
        pending = step.bonus
        out.draft_sizes.append(tree.draft_size)
        out.positions.append(engine.counters.positions - before)
        out.accepted.append(len(step.accepted))
        done = commit.add(step.accepted + [pending])
        if not done:
            method.observe(hidden, tree, step.path)
    cache.truncate(len(prompt_ids) + len(out.output_ids) - 1)  # drop accepted-but-cut tokens
    out.host_reads = engine.counters.host_reads - reads
    out.draft_forwards = engine.counters.draft_forwards - drafts
    return out

"""The one decode loop every method shares: propose -> verify -> accept -> update cache."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from harness.core.engine import KVCache
from harness.core.method import Method
from harness.core.tree import greedy_accept


@dataclass
class Decoded:
    """One decoded turn, with the per-forward statistics the results schema records."""

    output_ids: list[int] = field(default_factory=list)
    accept_lengths: list[int] = field(default_factory=list)  # tokens committed per target forward
    draft_sizes: list[int] = field(default_factory=list)  # draft tokens verified per forward
    positions: list[int] = field(default_factory=list)  # rows processed per forward
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


@torch.inference_mode()
def decode(method: Method, prompt_ids: list[int], max_new_tokens: int, eos_ids: set[int],
           cache: KVCache) -> Decoded:
    """Greedy decoding of one prompt with `method`; lossless by construction of the verifier."""
    engine = method.engine
    out = Decoded()
    commit = _Commit(out, max_new_tokens, frozenset(eos_ids))
    cache.reset()
    t0 = time.perf_counter()
    ids = torch.tensor(prompt_ids, dtype=torch.long, device=engine.device)
    before = engine.counters.positions
    hidden = method.prefill(ids, cache)  # [P(+extra), d]
    last = len(prompt_ids) - 1
    pending = int(engine.logits(hidden[last]).argmax())
    cache.truncate(len(prompt_ids))
    out.draft_sizes.append(0)
    out.positions.append(engine.counters.positions - before)
    done = commit.add([pending])
    synchronize(engine.device)
    out.prefill_time = time.perf_counter() - t0
    if not done:
        method.observe(hidden, None, torch.tensor([last], device=engine.device))
    while not done:
        tree = method.propose(pending, cache)
        before = engine.counters.positions
        hidden = method.verify(tree, cache)  # [n, d] hidden of the tree nodes
        predicted = engine.logits(hidden[: tree.size]).argmax(dim=-1)  # [n]
        path = greedy_accept(tree, predicted)
        cache.keep(path + cache.length)
        accepted = tree.tokens[path[1:]].tolist()
        pending = int(predicted[path[-1]])
        out.draft_sizes.append(tree.draft_size)
        out.positions.append(engine.counters.positions - before)
        done = commit.add(accepted + [pending])
        if not done:
            method.observe(hidden, tree, path)
    cache.truncate(len(prompt_ids) + len(out.output_ids) - 1)  # drop accepted-but-cut tokens
    return out

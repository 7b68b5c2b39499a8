"""Training EAGLE-3's head with training-time test: the head is unrolled on its own outputs, so it
learns from the inputs it meets when drafting, not only from target features.

For every hung position h of a batch (the last committed row: make_batch's `hang`), step 0 is the
head's row h over the fused target features (a causal pass over the whole sequence, whose K/V
stand for the committed rows); step j >= 1 is a drafted row at position h + j whose hidden state
is the head's own step-(j - 1) output and whose token is the real x_{h+j+1} (an accepted draft is
the target's token). It attends to step 0's rows <= h and to its own chain's earlier steps: the
rows and positions a drafted row of depth j sees in the decode loop. Step j's logits are trained
towards the target's distribution at position h + j + 1 (KL, on the draft vocabulary when it is
reduced). No feature regression by default, as the paper; `--feature-weight w` adds w times a
smooth L1 between the head's normed step-j output and the target's normed last-layer state at
h + j + 1 (EAGLE-1's feature loss, for data budgets far below the paper's).
"""

from __future__ import annotations

from collections import Counter

import torch

from harness.core.engine import Engine
from harness.train.training import (
    TOPK,
    Batch,
    gather_rows,
    per_step_mean,
    step_losses,
    teacher_pass,
)


class ChainKV:
    """The head's K/V during an unroll: step 0's rows, then each chain step's rows, joined without
    in-place writes so that gradients flow through every step (the engine's cache protocol)."""

    def __init__(self):
        self.keys: list[torch.Tensor] = []  # each [B, H_kv, n, D]
        self.values: list[torch.Tensor] = []

    @property
    def length(self) -> int:
        return sum(k.shape[2] for k in self.keys)

    def writer(self, rows: int, offset: int = 0, window: int | None = None) -> "ChainKV":
        return self

    def update(self, key: torch.Tensor, value: torch.Tensor, layer_idx: int, kwargs=None, **_):
        self.keys.append(key)
        self.values.append(value)
        return torch.cat(self.keys, dim=2), torch.cat(self.values, dim=2)


def unroll(head, engine: Engine, fused: torch.Tensor, batch: Batch) -> list[torch.Tensor]:
    """The head's outputs at each unroll step for every hung position's chain: `unroll` tensors
    [B, m, d]. fused: [B, T, 3d] the target's three layers over the batch."""
    (B, T), m = batch.ids.shape, batch.hang.shape[1]
    dev, kv = engine.device, ChainKV()
    rows = torch.arange(T - 1, device=dev)
    ctx = engine.context(rows.expand(B, T - 1), None, kv)  # causal over the committed rows
    out0 = head(head.fuse(fused[:, :-1]), batch.ids[:, 1:], ctx)  # [B, T - 1, d]: row t takes (g_t, x_{t+1})
    hang = batch.hang.clamp(max=T - 2)  # [B, m]
    outs = [gather_rows(out0, hang)]
    committed = rows[None, None, :] <= hang[:, :, None]  # [B, m, T - 1] step 0's rows a chain sees
    own = torch.eye(m, dtype=torch.bool, device=dev).expand(B, m, m)  # each chain sees its own rows only
    for j in range(1, head.steps):
        tokens = gather_rows(batch.ids, (hang + j + 1).clamp(max=T - 1))  # [B, m] x_{h+j+1}
        mask = torch.cat([committed, own.repeat(1, 1, j)], dim=2)[:, None]  # [B, 1, m, T - 1 + j m]
        ctx = engine.context(hang + j, None, kv, full_mask=mask)
        outs.append(head(outs[-1], tokens, ctx))  # the head's own previous output: no teacher forcing
    return outs


def ttt_loss(head, engine: Engine, batch: Batch):
    """(loss, hits [K, TOPK], counted [K]) over the unroll's K steps (see the module docstring)."""
    (B, T), K, m = batch.ids.shape, head.steps, batch.hang.shape[1]
    layers = tuple(head.shapes["layers"])
    with torch.no_grad():
        if batch.final is None or batch.hidden_at is None:  # not cached (FinalCache): one teacher pass
            teacher = teacher_pass(engine, batch.ids, layers)
            batch.final, batch.hidden_at = teacher.final, teacher.hidden_at
        fused = torch.cat([batch.hidden_at[i] for i in layers], dim=-1)  # [B, T, 3d]
        at = batch.hang[:, None, :] + 1 + torch.arange(K, device=engine.device)[None, :, None]  # [B, K, m]
        target = engine.logits(gather_rows(batch.final, at.clamp(max=T - 1).view(B, K * m))).view(B, K, m, -1)
    outs = unroll(head, engine, fused, batch)
    draft = torch.stack([head.draft_logits(o) for o in outs], dim=1)  # [B, K, m, Vd]
    ok = batch.hang_ok[:, None, :] & (at < batch.lengths[:, None, None])  # [B, K, m]: x_{h+j+1} is real
    loss, hits, counted = vocab_losses(target, draft, ok, head.draft_ids())
    if head.feature_weight:
        loss = loss + head.feature_weight * feature_loss(head, engine, outs, batch, at, ok)
    return loss, hits, counted


def feature_loss(head, engine: Engine, outs: list[torch.Tensor], batch: Batch, at: torch.Tensor,
                 ok: torch.Tensor) -> torch.Tensor:
    """Smooth L1 between the head's normed outputs (outs: K x [B, m, d]) and the target's normed
    last-layer states at positions `at` [B, K, m]: averaged over each step's real rows `ok`
    [B, K, m] and summed over steps, as the KL (so w = 10 is EAGLE-1's 1 : 0.1 at every step)."""
    (B, K, m), T = at.shape, batch.ids.shape[1]
    with torch.no_grad():
        real = engine.norm(gather_rows(batch.final, at.clamp(max=T - 1).view(B, K * m))).view(B, K, m, -1)
    pred = head.norm(torch.stack(outs, dim=1))  # [B, K, m, d]
    l1 = torch.nn.functional.smooth_l1_loss(pred.float(), real.float(), reduction="none").mean(-1)  # [B, K, m]
    return per_step_mean(l1, ok)


def vocab_losses(teacher: torch.Tensor, draft: torch.Tensor, ok: torch.Tensor, ids: torch.Tensor | None):
    """step_losses where the draft may cover a reduced vocabulary `ids` [Vd]: KL to the target's
    distribution renormalised on it; agreement still against the target's greedy token over the
    full vocabulary (a token outside the draft vocabulary is a miss)."""
    if ids is None:
        return step_losses(teacher, draft, ok)
    loss, _, counted = step_losses(teacher[..., ids], draft, ok)
    with torch.no_grad():
        top = ids[draft.float().topk(TOPK, dim=-1).indices]  # [B, K, m, TOPK] target ids
        rank = (top == teacher.argmax(-1, keepdim=True)).int().cumsum(-1)
        hits = (rank * ok[..., None]).sum((0, 2))
    return loss, hits, counted


def draft_vocabulary(seqs, size: int, vocab: int) -> torch.Tensor:
    """The `size` target ids most frequent in the corpus's answers (ties: lower id first), sorted."""
    counts = Counter(t for s in seqs for t in s.ids[s.answer_start:])
    ranked = sorted(range(vocab), key=lambda t: (-counts.get(t, 0), t))[:size]
    return torch.tensor(sorted(ranked), dtype=torch.long)


def coverage(seqs, ids: torch.Tensor) -> float:
    """The share of the corpus's answer tokens inside the draft vocabulary."""
    keep = set(ids.tolist())
    tokens = [t for s in seqs for t in s.ids[s.answer_start:]]
    return sum(t in keep for t in tokens) / max(1, len(tokens))


def with_vocabulary(head, engine: Engine, ids: torch.Tensor):
    """Set a new head's d2t / t2d to the draft vocabulary `ids` [Vd] and start its LM head from the
    target's rows of those tokens."""
    ids = ids.to(head.d2t.device)
    head.d2t.copy_(ids - torch.arange(ids.numel(), device=ids.device))
    head.t2d.zero_()
    head.t2d[ids] = True
    with torch.no_grad():
        head.lm_head.weight.copy_(engine.lm_head.weight[ids.to(engine.device)].to(head.lm_head.weight.dtype))
    return head

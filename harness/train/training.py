"""Drafter training shared by FIRP and Medusa: batches from the self-distillation corpus, the
frozen model's teacher pass, the optimisation loop, held-out accuracy, and the checkpoint format
(safetensors weights + JSON sidecar).

A drafter is an nn.Module with `loss(engine, batch) -> (loss, hits [K, TOPK], counted [K])`
(see step_losses), plus `kind`, `steps` and `config()`.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from harness.bench.results import git_info
from harness.core.checkpoint import save_checkpoint
from harness.core.engine import Engine
from harness.core.method import CHECKPOINT_ROOT
from harness.train import resume
from harness.train.distill import CorpusConfig, Sequence, corpus_summary, load_corpus


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 600
    batch: int = 8  # sequences per step
    positions: int = 48  # draft positions trained per sequence
    max_len: int = 448  # sequences keep their last max_len tokens
    lr: float = 1e-3
    warmup: int = 30
    weight_decay: float = 0.0
    eval_sequences: int = 48  # held out from the (training-split) corpus
    seed: int = 0


@dataclass
class Batch:
    ids: torch.Tensor  # [B, T] token ids, right-padded
    lengths: torch.Tensor  # [B] real length
    hang: torch.Tensor  # [B, m] positions t whose future is drafted
    hang_ok: torch.Tensor  # [B, m] bool: a real (not padding) entry
    final: torch.Tensor | None = None  # [B, T, d] the target's last-layer output, when cached (FinalCache)
    hidden_at: dict[int, torch.Tensor] | None = None  # layer -> [B, T, d] its input, when cached (FinalCache)

    def to(self, device: torch.device | str) -> "Batch":
        final = None if self.final is None else self.final.to(device)
        hidden = None if self.hidden_at is None else {k: v.to(device) for k, v in self.hidden_at.items()}
        return Batch(self.ids.to(device), self.lengths.to(device), self.hang.to(device), self.hang_ok.to(device), final,
                     hidden)


def split_corpus(seqs: list[Sequence], cfg: TrainConfig) -> tuple[list[Sequence], list[Sequence]]:
    """(training, held-out) sequences: a seeded shuffle; at most a quarter is held out."""
    if len(seqs) < 2:
        raise ValueError(f"the training corpus holds {len(seqs)} sequence(s); at least 2 are needed")
    order = list(range(len(seqs)))
    random.Random(cfg.seed).shuffle(order)
    n_held = min(cfg.eval_sequences, max(1, len(seqs) // 4))
    return [seqs[i] for i in order[n_held:]], [seqs[i] for i in order[:n_held]]


def make_batch(seqs: list[Sequence], cfg: TrainConfig, rng: random.Random, device: torch.device | str = "cpu") -> Batch:
    """Right-padded token ids and, per sequence, up to cfg.positions hang positions t in the
    answer region (from the last prompt token on); drafts past the end are masked by the loss.
    Built on the host, returned on `device` (the engine's)."""
    rows = []
    for s in seqs:
        cut = max(0, len(s.ids) - cfg.max_len)
        ids = s.ids[cut:]
        first = max(0, s.answer_start - 1 - cut)
        candidates = list(range(first, len(ids) - 1))
        rows.append((ids, sorted(rng.sample(candidates, min(cfg.positions, len(candidates))))))
    T = max(len(r[0]) for r in rows)
    m = max(1, max(len(r[1]) for r in rows))
    cpu = torch.device("cpu")
    ids = torch.zeros(len(rows), T, dtype=torch.long, device=cpu)
    hang = torch.zeros(len(rows), m, dtype=torch.long, device=cpu)
    ok = torch.zeros(len(rows), m, dtype=torch.bool, device=cpu)
    for b, (row, pos) in enumerate(rows):
        ids[b, : len(row)] = torch.tensor(row, device=cpu)
        hang[b, : len(pos)] = torch.tensor(pos, dtype=torch.long, device=cpu)
        ok[b, : len(pos)] = True
    lengths = torch.tensor([len(r[0]) for r in rows], device=cpu)
    return Batch(ids, lengths, hang, ok).to(device)


@dataclass
class TeacherPass:
    """The frozen model over real tokens: K/V of every layer, chosen hidden states, final states."""

    kv: torch.Tensor  # [layers, 2, B, H_kv, T, D]
    hidden_at: dict[int, torch.Tensor]  # layer l -> [B, T, d] input of layer l
    final: torch.Tensor  # [B, T, d] last-layer output (pre final norm)


@torch.no_grad()
def teacher_pass(engine: Engine, ids: torch.Tensor, capture: tuple[int, ...] = ()) -> TeacherPass:
    cache = engine.new_cache(ids.shape[1], batch=ids.shape[0])
    hidden_at, final = engine.capture_pass(ids, capture, cache)
    return TeacherPass(cache.buf, hidden_at, final)


def teacher_final(engine: Engine, batch: Batch) -> torch.Tensor:
    """[B, T, d] the frozen model's last-layer output (pre final norm) over the batch: the cached
    rows when FinalCache filled them, else one teacher pass."""
    return batch.final if batch.final is not None else teacher_pass(engine, batch.ids).final


class FinalCache:
    """The frozen model's last-layer output per training sequence (and the inputs of `layers`, for
    a drafter reading several: EAGLE-3), computed on first use and kept on the host: a drafter
    that reads nothing else (`reads_final_only`, or `reads_layers`) then costs one target forward
    per sequence for the whole training instead of one per step. Keyed by the Sequence object (the
    corpus lives as long as the training). Final rows in float32 ([len, d] per sequence: about 1.5
    GB for a 1,600-sequence corpus at d = 576); layer rows in `layer_dtype` (bfloat16 by default:
    half the memory, a relative rounding of 2^-8 on the drafter's inputs)."""

    def __init__(self, engine: Engine, layers: tuple[int, ...] = (), layer_dtype: torch.dtype = torch.bfloat16):
        self.engine, self.rows = engine, {}
        self.layers, self.layer_dtype = tuple(sorted(set(layers))), layer_dtype

    def fill(self, batch: Batch, seqs: list[Sequence]) -> Batch:
        """Sets batch.final (and batch.hidden_at) from the cache, running the teacher over the
        sequences not seen yet."""
        missing = [b for b, s in enumerate(seqs) if id(s) not in self.rows]
        if missing:
            teacher = teacher_pass(self.engine, batch.ids[missing], self.layers)
            for j, b in enumerate(missing):
                n = int(batch.lengths[b])
                layers = {i: teacher.hidden_at[i][j, :n].to("cpu", self.layer_dtype) for i in self.layers}
                self.rows[id(seqs[b])] = (teacher.final[j, :n].float().cpu(), layers)
        batch.final = self._stack(seqs, batch, lambda row: row[0])
        if self.layers:
            batch.hidden_at = {i: self._stack(seqs, batch, lambda row, i=i: row[1][i]) for i in self.layers}
        return batch

    def _stack(self, seqs: list[Sequence], batch: Batch, pick) -> torch.Tensor:
        """[B, T, d] of the cached rows `pick` selects, zero past each end, on the engine's device."""
        B, T = batch.ids.shape
        out = torch.zeros(B, T, self.engine.hidden_size, device="cpu")
        for b, s in enumerate(seqs):
            row = pick(self.rows[id(s)])
            out[b, : row.shape[0]] = row.float()
        return out.to(self.engine.device, self.engine.dtype)


def _batch(seqs: list[Sequence], cfg: TrainConfig, rng: random.Random, engine: Engine,
           cache: FinalCache | None) -> Batch:
    batch = make_batch(seqs, cfg, rng, engine.device)
    return cache.fill(batch, seqs) if cache is not None else batch


def gather_rows(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """x: [B, T, ...], index: [B, m] -> [B, m, ...]"""
    return x[torch.arange(x.shape[0], device=x.device)[:, None], index]


TOPK = 5  # top-1..top-5 agreement is tracked (the paper's Figure 3)


def per_step_mean(values: torch.Tensor, ok: torch.Tensor) -> torch.Tensor:
    """values [B, K, m] averaged over each step's ok [B, K, m] entries, summed over the K steps."""
    okf = ok.float()
    return ((values * okf).sum((0, 2)) / okf.sum((0, 2)).clamp(min=1)).sum()


def step_losses(teacher: torch.Tensor, draft: torch.Tensor, ok: torch.Tensor):
    """Per draft step: KL(p_teacher || q_draft) over the vocabulary, averaged over ok entries and
    summed over steps; and whether the teacher's greedy token is in the draft's top-1..top-5.

    teacher, draft: [B, K, m, V] logits; ok: [B, K, m] bool.
    Returns loss, hits [K, TOPK] (cumulative top-k counts), counted [K].
    """
    logp = torch.log_softmax(teacher.float(), -1)
    logq = torch.log_softmax(draft.float(), -1)
    kl = (logp.exp() * (logp - logq)).sum(-1)  # [B, K, m]
    loss = per_step_mean(kl, ok)
    with torch.no_grad():
        rank = (logq.topk(TOPK, -1).indices == logp.argmax(-1, keepdim=True)).int().cumsum(-1)  # [B, K, m, TOPK]
        hits = (rank * ok[..., None]).sum((0, 2))
    return loss, hits, ok.sum((0, 2))


def _lr(step: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * progress))


@torch.no_grad()
def evaluate(drafter, engine: Engine, held: list[Sequence], cfg: TrainConfig,
             cache: FinalCache | None = None) -> list[list[float]]:
    """Top-1..top-5 agreement with the target's greedy token, per draft step, on held-out
    training-split sequences: [K][TOPK]."""
    rng = random.Random(cfg.seed + 1)
    hits, total = 0, 0
    for i in range(0, len(held), cfg.batch):
        _, h, n = drafter.loss(engine, _batch(held[i:i + cfg.batch], cfg, rng, engine, cache))
        hits, total = hits + h, total + n
    return (hits / total.clamp(min=1)[:, None]).tolist()


def train(drafter, engine: Engine, seqs: list[Sequence], cfg: TrainConfig, progress: bool = True,
          snapshot: Path | None = None) -> dict:
    """Optimise the drafter's parameters (the target stays frozen); returns the training record.
    The drafter keeps its own dtype (float32: weights and AdamW state), whatever the target runs in;
    its modules cast inputs to their own dtype and outputs back to the model's. snapshot: a file the
    run is saved to every resume.EVERY steps and resumed from when it exists (harness/train/resume.py)."""
    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    train_set, held = split_corpus(seqs, cfg)
    params = [p for p in drafter.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    t0 = time.perf_counter()
    layers = tuple(getattr(drafter, "reads_layers", ()))
    cache = FinalCache(engine, layers) if getattr(drafter, "reads_final_only", False) or layers else None
    done = (snapshot and resume.load(snapshot, drafter, opt, rng)) or resume.Progress()
    if done.step:
        tqdm.write(f"spec-harness: resuming {drafter.kind} training at step {done.step} from {snapshot}")
    before = done.before if done.before is not None else evaluate(drafter, engine, held, cfg, cache)
    losses = done.losses
    bar = tqdm(range(done.step, cfg.steps), desc=f"train {drafter.kind}", disable=not progress,
               initial=done.step, total=cfg.steps)
    for step in bar:
        if snapshot and step > done.step and step % resume.EVERY == 0:
            resume.save(snapshot, drafter, opt, rng, resume.Progress(step, losses, done.seconds + time.perf_counter() - t0, before))
        for group in opt.param_groups:
            group["lr"] = _lr(step, cfg)
        batch = _batch(rng.sample(train_set, min(cfg.batch, len(train_set))), cfg, rng, engine, cache)
        loss, hits, counted = drafter.loss(engine, batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        bar.set_postfix(loss=f"{losses[-1]:.3f}", top1=f"{float(hits[:, 0].sum() / counted.sum().clamp(min=1)):.2f}")
    return {"train_config": asdict(cfg), "train_seconds": round(done.seconds + time.perf_counter() - t0, 1),
            "loss_curve": losses[:: max(1, len(losses) // 100)], "final_loss": sum(losses[-20:]) / len(losses[-20:]),
            "heldout_topk_before": before, "heldout_topk": (after := evaluate(drafter, engine, held, cfg, cache)),
            "heldout_top1": [row[0] for row in after],
            "train_sequences": len(train_set), "heldout_sequences": len(held)}


def train_and_save(lm, build, corpus: CorpusConfig, cfg: TrainConfig, name: str, progress: bool = True,
                   path: Path | None = None) -> Path:
    """Train the drafter `build(engine)` on the self-distillation corpus of `lm` and write
    `path` (default methods/checkpoints/<model>/<name>.safetensors) + its JSON sidecar."""
    engine = Engine(lm.model)
    seqs = load_corpus(lm, corpus, progress)
    torch.manual_seed(cfg.seed)
    module = build(engine).to(engine.device)  # float32 weights and optimiser state; the target runs in its dtype
    path = path or CHECKPOINT_ROOT / lm.key / f"{name}.safetensors"
    snapshot = resume.snapshot_path({"model": lm.key, "dtype": lm.dtype, "drafter": module.config(),
                                     "corpus": asdict(corpus), "train": asdict(cfg), "out": str(path.resolve())})
    record = train(module, engine, seqs, cfg, progress=progress, snapshot=snapshot)
    save_checkpoint(path, module, {"method": module.kind, "model": lm.key, "config": module.config(),
                                   "data": corpus_summary(corpus, seqs), **record, "commit": git_info()["commit"]})
    snapshot.unlink(missing_ok=True)
    return path

"""The analyses behind the FIRP paper's Figures 3-5, on the current model and training data:

- layer probe (Fig 5): step-1 accuracy of a one-step pseudo state inserted at each layer;
- top-k accuracy per draft step (Fig 3) of early-exit heads, Medusa heads and FIRP;
- cosine similarity of pseudo and real hidden states per layer after insertion (Fig 4).

All accuracies are measured on the same held-out sequences, answered by the model for
training-split prompts that no drafter trained on, so the predictors are comparable.
Output: one analysis.json that `spec-harness figures` draws.
"""

from __future__ import annotations

import random
from dataclasses import asdict
from pathlib import Path

import torch

from harness.core.checkpoint import load_checkpoint
from harness.core.drafter import load_frozen
from harness.core.engine import Engine, PrefixKV
from harness.core.modelload import LoadedModel
from harness.train.distill import (
    CorpusConfig,
    corpus_summary,
    load_corpus,
    trained_rows,
)
from harness.train.training import (
    TrainConfig,
    evaluate,
    gather_rows,
    make_batch,
    split_corpus,
    teacher_pass,
    train,
)
from methods.firp import FIRP, PseudoChains
from methods.medusa import Medusa, MedusaHeads


def layer_probe(engine: Engine, seqs, layers: list[int], cfg: TrainConfig) -> dict[str, list[float]]:
    """Independent one-step chains at every layer, trained together (they never see each other:
    parallel mask, real source, all targeting t + 1); held-out top-1..5 per layer."""
    probe = PseudoChains(engine.hidden_size, tuple(sorted(layers)), serial=False, source="last-real",
                         targets=(1,) * len(layers)).to(engine.device)  # float32, as every trained drafter
    record = train(probe, engine, seqs, cfg)
    return {str(layer): topk for layer, topk in zip(sorted(layers), record["heldout_topk"])}


def early_exit_topk(engine: Engine, seqs, layer: int, steps: int, cfg: TrainConfig) -> list[list[float]]:
    """Heads reading the hidden state entering `layer` (residual block + the model's LM head)."""
    heads = MedusaHeads(engine.hidden_size, steps, engine.lm_head, layer=layer).to(engine.device)
    return train(heads, engine, seqs, cfg)["heldout_topk"]


@torch.no_grad()
def cosine_by_layer(engine: Engine, chains: PseudoChains, held, cfg: TrainConfig) -> dict[str, dict[str, float]]:
    """Mean cosine between pseudo i (hung at t) and the real hidden state of position t + i,
    after every layer from the insertion on. Returns {"step i": {layer: cos}}."""
    K, first, dev = chains.steps, chains.layers[0], engine.device
    sums = torch.zeros(K, engine.num_layers + 1, device=dev)
    counts = torch.zeros(K, device=dev)
    for i in range(0, len(held), cfg.batch):
        batch = make_batch(held[i:i + cfg.batch], cfg, random.Random(cfg.seed), dev)
        (B, T), m = batch.ids.shape, batch.hang.shape[1]
        tp = teacher_pass(engine, batch.ids, tuple(range(first, engine.num_layers)))
        reals = {**tp.hidden_at, engine.num_layers: tp.final}
        target = (batch.hang[:, None, :] + torch.tensor(chains.targets, device=dev)[None, :, None])  # [B, K, m]
        ok = batch.hang_ok[:, None, :] & (target < batch.lengths[:, None, None])
        mask = chains.chain_mask(torch.arange(T, device=dev)[None, None, :] <= batch.hang[:, :, None])[:, None]
        ctx = engine.context(target.view(B, K * m), None, PrefixKV(tp.kv), full_mask=mask)
        inserts = chains.inserts(lambda layer, _h: gather_rows(tp.hidden_at[layer], batch.hang), m)
        h = torch.zeros(B, 0, engine.hidden_size, dtype=engine.dtype, device=dev)
        for layer in range(first, engine.num_layers):
            h = engine.run_layers(h, ctx, layer, layer + 1, inserts=inserts)
            for step in range(K):
                if chains.layers[step] > layer:
                    continue
                pseudo = h[:, step * m:(step + 1) * m]
                real = gather_rows(reals[layer + 1], target[:, step].clamp(max=T - 1))
                cos = torch.nn.functional.cosine_similarity(pseudo, real, dim=-1)
                sums[step, layer + 1] += (cos * ok[:, step]).sum()
        counts += ok.sum((0, 2))
    out = {}
    for step in range(K):
        start = chains.layers[step] + 1
        out[f"step {step + 1}"] = {str(j): float(sums[step, j] / counts[step]) for j in range(start, engine.num_layers + 1)}
    return out


def load_drafter(engine: Engine, path: Path) -> tuple[torch.nn.Module, dict]:
    """A trained FIRP or Medusa module and its sidecar, frozen."""
    sidecar = load_checkpoint(path)[1]
    build = {"firp": FIRP.build_module, "medusa": Medusa.build_module}.get(sidecar.get("method"))
    if build is None:
        raise ValueError(f"{path} holds a {sidecar.get('method')!r} checkpoint; the analyses take FIRP or Medusa")
    return load_frozen(engine, path, build)


def budget(train_config: dict, sequences: int | None) -> dict:
    """How much training a predictor had: optimiser steps x sequences per step x drafted
    positions per sequence, and the training sequences it drew from (Fig 3's fairness)."""
    return {"steps": train_config.get("steps"), "batch": train_config.get("batch"),
            "positions": train_config.get("positions"), "sequences": sequences}


def check_disjoint(corpus: CorpusConfig, sidecars: dict[str, dict]) -> None:
    """The analysis prompts must be none that a drafter trained on (same splits, file order)."""
    mine = corpus.prompt_range()
    for name, side in sidecars.items():
        theirs = trained_rows(side)
        if max(mine.start, theirs.start) < min(mine.stop, theirs.stop):
            raise ValueError(f"analysis prompts {mine.start}..{mine.stop - 1} overlap {name}'s training prompts "
                             f"{theirs.start}..{theirs.stop - 1} (per split): pass --skip {theirs.stop} or more")


def analyze_firp(lm: LoadedModel, firp_path: Path, others: dict[str, Path], corpus: CorpusConfig, cfg: TrainConfig,
                 layers: list[int] | None = None, sweep: dict[int, float] | None = None) -> dict:
    """Everything `figures` needs for Figures 3-5, as a JSON-ready dict. `corpus`: training-split
    prompts no drafter trained on; every predictor is scored on its same held-out part, and the
    early-exit heads train on the rest. `sweep`: step-1 top-1 per layer of an existing layer
    sweep, used for Fig 5 instead of probing `layers` again. `others`: label -> checkpoint of
    the FIRP or Medusa predictors scored next to `firp_path`."""
    engine = Engine(lm.model)
    drafters = {name: load_drafter(engine, path) for name, path in {"firp": firp_path, **others}.items()}
    check_disjoint(corpus, {name: side for name, (_, side) in drafters.items()})
    seqs = load_corpus(lm, corpus)
    _, held = split_corpus(seqs, cfg)
    chains = drafters["firp"][0]
    topk = {name: evaluate(module, engine, held, cfg) for name, (module, _) in drafters.items()}
    early_exit = f"early-exit (layer {chains.layers[0]})"
    topk[early_exit] = early_exit_topk(engine, seqs, chains.layers[0], chains.steps, cfg)
    budgets = {name: budget(side.get("train_config", {}), side.get("train_sequences")) for name, (_, side) in drafters.items()}
    budgets[early_exit] = budget(asdict(cfg), len(seqs) - len(held))
    rows = corpus.prompt_range()
    return {
        "model": lm.key,
        "topk_accuracy": {name: {str(step + 2): row for step, row in enumerate(rows)} for name, rows in topk.items()},
        "training_budget": budgets,
        "layer_sweep": sweep if sweep is not None
        else {layer: row[0] for layer, row in layer_probe(engine, seqs, layers or [], cfg).items()},
        "cosine": cosine_by_layer(engine, chains, held, cfg),
        "notes": (f"held-out: {len(held)} of {len(seqs)} sequences answered by the model for training-split "
                  f"prompts {rows.start}..{rows.stop - 1} of each split, which no drafter trained on; FIRP checkpoint "
                  f"{firp_path.name} (layers {list(chains.layers)}); N = step + 1 (N=2 is the first draft token)"),
        "training": {"steps": cfg.steps, "batch": cfg.batch, "positions": cfg.positions, "lr": cfg.lr},
        "data": corpus_summary(corpus, seqs),
    }

"""`spec-harness train <method>`: build the trained artifacts a method needs."""

from __future__ import annotations

import time

import click

from harness.distill import CorpusConfig
from harness.modelload import DEFAULT_MODEL, load_model
from harness.training import TrainConfig, train_and_save


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(",") if x.strip())


def corpus_options(fn):
    """Options shared by every trained drafter (same data pipeline, same loop)."""
    opts = [
        click.option("--model", default=DEFAULT_MODEL, show_default=True),
        click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True),
        click.option("--train-steps", type=int, default=TrainConfig.steps, show_default=True, help="Optimiser steps."),
        click.option("--batch", type=int, default=TrainConfig.batch, show_default=True, help="Sequences per step."),
        click.option("--positions", type=int, default=TrainConfig.positions, show_default=True, help="Drafted positions per sequence."),
        click.option("--lr", type=float, default=TrainConfig.lr, show_default=True),
        click.option("--per-source", type=int, default=CorpusConfig.per_source, show_default=True,
                     help="Prompts per training split (GSM8K train, XSum validation)."),
        click.option("--seed", type=int, default=0, show_default=True),
        click.option("--name", default=None, help="Checkpoint name (default: the method's name)."),
    ]
    for opt in reversed(opts):
        fn = opt(fn)
    return fn


def configs(kw: dict) -> tuple[CorpusConfig, TrainConfig]:
    corpus = CorpusConfig(per_source=kw["per_source"])
    cfg = TrainConfig(steps=kw["train_steps"], batch=kw["batch"], positions=kw["positions"], lr=kw["lr"], seed=kw["seed"])
    return corpus, cfg


@click.group()
def train() -> None:
    """Train a drafter on the training splits (self-distillation from the target model)."""


@train.command("firp")
@click.option("--layers", default=None, help="Insertion layer of each step, e.g. 12,14,16 (default: the sweep's choice).")
@click.option("--steps", "k", type=int, default=None, help="Draft steps K (repeats a single --layers value).")
@click.option("--mask", type=click.Choice(["serial", "parallel"]), default="serial", show_default=True)
@click.option("--source", type=click.Choice(["previous", "last-real"]), default="previous", show_default=True)
@corpus_options
def train_firp_cmd(layers, k, mask, source, **kw) -> None:
    """FIRP: K linear maps at intermediate layers (weights + JSON sidecar)."""
    from methods.firp import DEFAULT_LAYERS, PseudoChains

    lm = load_model(kw["model"], kw["device"])
    chosen = _ints(layers) if layers else DEFAULT_LAYERS.get(lm.key, _fallback_layers(lm.model.config.num_hidden_layers))
    if k is not None:
        chosen = chosen * k if len(chosen) == 1 else chosen
        if len(chosen) != k:
            raise click.BadParameter(f"--steps {k} but {len(chosen)} layers given", param_hint="--steps")
    corpus, cfg = configs(kw)
    t0 = time.time()
    path = train_and_save(lm, lambda e: PseudoChains(e.hidden_size, chosen, mask == "serial", source),
                          corpus, cfg, kw["name"] or "firp")
    click.echo(f"wrote {path} (+ .json sidecar) in {time.time() - t0:.0f} s")


def _fallback_layers(num_layers: int) -> tuple[int, ...]:
    """For models without a sweep: about half depth, as the design note suggests searching around."""
    mid = num_layers // 2
    return (mid, mid, mid)


@train.command("medusa")
@click.option("--heads", type=int, default=3, show_default=True, help="Draft heads K (tokens t+2 .. t+K+1).")
@click.option("--separate-lm-head", is_flag=True, help="Train one LM head per head (Medusa-1) instead of sharing the frozen one.")
@corpus_options
def train_medusa_cmd(heads, separate_lm_head, **kw) -> None:
    """Medusa: residual heads on the last hidden state (weights + JSON sidecar)."""
    from methods.medusa import MedusaHeads

    lm = load_model(kw["model"], kw["device"])
    corpus, cfg = configs(kw)
    t0 = time.time()
    path = train_and_save(lm, lambda e: MedusaHeads(e.hidden_size, heads, e.lm_head, separate_lm_head),
                          corpus, cfg, kw["name"] or "medusa")
    click.echo(f"wrote {path} (+ .json sidecar) in {time.time() - t0:.0f} s")

"""`spec-harness train <method>`: build the trained artifacts a method needs.

Every command checks all its inputs before any corpus or model work: the numbers by their click
types, the rest (the cache directory, layer indices against the model's config, where the output
goes) by `preflight` and the helpers of harness/cli/common.py."""

from __future__ import annotations

import time
from pathlib import Path

import click

from harness.bench.data import DataError
from harness.bench.sources import ORIGINAL, SOURCES, parse_sources, resolve_mix
from harness.cli.common import (
    FiniteFloat,
    InputError,
    check_context,
    check_layers,
    check_out_file,
    device_option,
    dtype_option,
    ints,
    model_config,
    user_errors,
)
from harness.core.method import CHECKPOINT_ROOT
from harness.core.modelload import DEFAULT_MODEL, load_model, model_key
from harness.train.distill import CorpusConfig
from harness.train.training import TrainConfig, train_and_save
from methods.eagle import LOSS as EAGLE_LOSS

AT_LEAST_1 = click.IntRange(min=1)
SEED = click.IntRange(min=0)


def corpus_options(fn):
    """Options shared by every trained drafter (same data pipeline, same loop)."""
    opts = [
        click.option("--model", default=DEFAULT_MODEL, show_default=True),
        device_option,
        dtype_option,
        click.option("--train-steps", type=AT_LEAST_1, default=TrainConfig.steps, show_default=True, help="Optimiser steps."),
        click.option("--batch", type=AT_LEAST_1, default=TrainConfig.batch, show_default=True, help="Sequences per step."),
        click.option("--positions", type=AT_LEAST_1, default=TrainConfig.positions, show_default=True,
                     help="Drafted positions per sequence."),
        click.option("--lr", type=FiniteFloat(min=0, min_open=True), default=TrainConfig.lr, show_default=True),
        click.option("--per-source", type=AT_LEAST_1, default=CorpusConfig.per_source, show_default=True,
                     help="Prompts per training source (at most the source's training part)."),
        click.option("--sources", default=",".join(SOURCES), show_default=True, callback=_sources,
                     help="Training sources, SOURCE or SOURCE=N (N prompts; else --per-source): gsm8k-train, "
                          "xsum-validation, instructions (chat requests), mbpp-train (code); training splits only, "
                          "chat and code without their held-back tuning parts."),
        click.option("--seed", type=SEED, default=0, show_default=True),
        click.option("--name", default=None, help="Checkpoint name (default: the method's name)."),
        click.option("--out", type=click.Path(path_type=Path), default=None,
                     help="Output file: the weights for train (default methods/checkpoints/<model>/<name>.safetensors), the JSON for analyze."),
    ]
    for opt in reversed(opts):
        fn = opt(fn)
    return fn


def _sources(ctx, param, value: str):
    try:
        return parse_sources(value)
    except DataError as err:
        raise click.BadParameter(str(err), ctx=ctx, param=param) from None


def configs(kw: dict) -> tuple[CorpusConfig, TrainConfig]:
    mix = resolve_mix(kw["sources"], kw["per_source"])
    original = mix == {s: kw["per_source"] for s in ORIGINAL}  # the corpus of drafters trained before chat and code
    corpus = CorpusConfig(per_source=kw["per_source"], mix=None if original else tuple(mix.items()))
    cfg = TrainConfig(steps=kw["train_steps"], batch=kw["batch"], positions=kw["positions"], lr=kw["lr"], seed=kw["seed"])
    return corpus, cfg


def preflight(model: str, out: Path):
    """What a command checks before any corpus or model work besides its numbers (click types):
    the cache directory and the model's config (read without weights), and that `out` can be
    written. Returns the config, for the model-dependent checks."""
    config = model_config(model)
    check_out_file(out)
    return config


def weights_out(kw: dict, name: str) -> Path:
    """Where a trained drafter goes: --out, or methods/checkpoints/<model>/<--name or name>.safetensors."""
    return kw["out"] or CHECKPOINT_ROOT / model_key(kw["model"]) / f"{kw['name'] or name}.safetensors"


@click.group()
def train() -> None:
    """Train a drafter on the training splits (self-distillation from the target model)."""


@train.command("firp")
@click.option("--layers", default=None, help="Insertion layer of each step, e.g. 12,14,16 (default: the sweep's choice).")
@click.option("--steps", "k", type=AT_LEAST_1, default=None, help="Draft steps K (repeats a single --layers value).")
@click.option("--mask", type=click.Choice(["serial", "parallel"]), default="serial", show_default=True)
@click.option("--source", type=click.Choice(["previous", "last-real"]), default="previous", show_default=True)
@corpus_options
def train_firp_cmd(layers, k, mask, source, **kw) -> None:
    """FIRP: K linear maps at intermediate layers (weights + JSON sidecar)."""
    from methods.firp import DEFAULT_LAYERS, PseudoChains

    with user_errors():
        config = preflight(kw["model"], weights_out(kw, "firp"))
        chosen = firp_layers(config, layers, k, DEFAULT_LAYERS.get(model_key(kw["model"])))
        lm = load_model(kw["model"], kw["device"], kw["dtype"])
    _train_drafter(lm, kw, "firp", lambda e: PseudoChains(e.hidden_size, chosen, mask == "serial", source))


def firp_layers(config, layers: str | None, k: int | None, default: tuple[int, ...] | None) -> tuple[int, ...]:
    """FIRP's insertion layers: --layers (or the sweep's default, else about half depth), one per
    step (--steps K repeats a single value), checked against the model: in range, not decreasing."""
    chosen = ints(layers, "--layers") if layers else default or _fallback_layers(config.num_hidden_layers)
    if k is not None:
        chosen = chosen * k if len(chosen) == 1 else chosen
        if len(chosen) != k:
            raise InputError(f"--steps {k} but {len(chosen)} layers given")
    check_layers(config, "--layers", chosen)
    if list(chosen) != sorted(chosen):
        raise InputError(f"--layers {','.join(map(str, chosen))}: must not decrease (step i + 1 is inserted "
                         "at or after step i's layer)")
    return chosen


def _train_drafter(lm, kw: dict, name: str, build) -> None:
    """Train `build(engine)` with the shared loop and corpus options; write weights + sidecar."""
    corpus, cfg = configs(kw)
    t0 = time.time()
    path = train_and_save(lm, build, corpus, cfg, kw["name"] or name, path=weights_out(kw, name))
    click.echo(f"wrote {path} (+ .json sidecar) in {time.time() - t0:.0f} s")


def _fallback_layers(num_layers: int) -> tuple[int, ...]:
    """For models without a sweep: about half depth, as the design note suggests searching around."""
    mid = num_layers // 2
    return (mid, mid, mid)


@train.command("medusa")
@click.option("--heads", type=AT_LEAST_1, default=3, show_default=True, help="Draft heads K (tokens t+2 .. t+K+1).")
@click.option("--separate-lm-head", is_flag=True, help="Train one LM head per head (Medusa-1) instead of sharing the frozen one.")
@corpus_options
def train_medusa_cmd(heads, separate_lm_head, **kw) -> None:
    """Medusa: residual heads on the last hidden state (weights + JSON sidecar)."""
    from methods.medusa import MedusaHeads

    with user_errors():
        preflight(kw["model"], weights_out(kw, "medusa"))
        lm = load_model(kw["model"], kw["device"], kw["dtype"])
    _train_drafter(lm, kw, "medusa", lambda e: MedusaHeads(e.hidden_size, heads, e.lm_head, separate_lm_head))


@train.command("eagle")
@click.option("--feature-weight", type=FiniteFloat(min=0), default=EAGLE_LOSS["feature"], show_default=True,
              help="Weight of the smooth-L1 regression to the target's next feature (EAGLE's v_w).")
@click.option("--token-weight", type=FiniteFloat(min=0), default=EAGLE_LOSS["token"], show_default=True,
              help="Weight of the KL to the target's next-token distribution (EAGLE's p_w).")
@click.option("--noise", type=FiniteFloat(min=0), default=EAGLE_LOSS["noise"], show_default=True,
              help="Uniform noise on the input features, EAGLE's std (width std * 512 / d); 0: none.")
@corpus_options
def train_eagle_cmd(feature_weight, token_weight, noise, **kw) -> None:
    """EAGLE: a one-layer head over the target's features and next tokens (weights + JSON sidecar)."""
    from methods.eagle import EagleHead, target_shapes

    with user_errors():
        if feature_weight + token_weight <= 0:
            raise InputError("--feature-weight and --token-weight are both 0: nothing would be trained")
        preflight(kw["model"], weights_out(kw, "eagle"))
        lm = load_model(kw["model"], kw["device"], kw["dtype"])
    loss = {"feature": feature_weight, "token": token_weight, "noise": noise}
    _train_drafter(lm, kw, "eagle", lambda e: EagleHead(e, target_shapes(e), loss))


@train.command("sps-draft")
@click.option("--layers", "n_layers", type=AT_LEAST_1, default=2, show_default=True,
              help="Decoder layers N of the draft, taken from the target (which: --pick).")
@click.option("--pick", type=click.Choice(["first", "spread"]), default="first", show_default=True,
              help="first: the target's first N layers; spread: N layers evenly over its depth, first and last included.")
@click.option("--from-layers", default=None, help="The target's layers to start from, e.g. 0,1,29 (overrides --layers, --pick).")
@corpus_options
def train_sps_draft_cmd(n_layers, pick, from_layers, **kw) -> None:
    """SpS: a shallow draft built from the target (its embeddings and LM head shared and frozen),
    distilled on the training-split corpus (weights of its own layers + JSON sidecar)."""
    from methods.sps_draft import ShallowDraft, pick_layers

    with user_errors():
        config = preflight(kw["model"], weights_out(kw, "sps-draft"))
        if from_layers:
            chosen = ints(from_layers, "--from-layers")
            check_layers(config, "--from-layers", chosen)
        else:
            try:
                chosen = pick_layers(config.num_hidden_layers, n_layers, pick)
            except ValueError as err:
                raise InputError(f"--layers {n_layers}: {err}") from None
        lm = load_model(kw["model"], kw["device"], kw["dtype"])
    corpus, cfg = configs(kw)
    t0 = time.time()
    path = train_and_save(lm, lambda e: ShallowDraft(e.model, chosen), corpus, cfg, kw["name"] or "sps-draft",
                          path=weights_out(kw, "sps-draft"))
    click.echo(f"wrote {path} (+ .json sidecar; layers {list(chosen)}) in {time.time() - t0:.0f} s")


@train.command("self-spec")
@click.option("--trials", type=click.IntRange(min=2), default=200, show_default=True,
              help="Bayesian-optimisation trials (TPE; the first is the empty reference set).")
@click.option("--num-prompts", type=AT_LEAST_1, default=8, show_default=True,
              help="Training-split prompts decoded per trial (GSM8K train and XSum validation alternately).")
@click.option("--max-new-tokens", type=AT_LEAST_1, default=64, show_default=True, help="Tokens decoded per prompt.")
@click.option("--confirm", type=AT_LEAST_1, default=3, show_default=True, help="Best skip sets measured again at the end.")
@click.option("--model", default=DEFAULT_MODEL, show_default=True)
@device_option
@dtype_option
@click.option("--seed", type=SEED, default=0, show_default=True)
@click.option("--name", default="self-spec", show_default=True, help="Artifact name under methods/checkpoints/<model>/.")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Output JSON (default methods/checkpoints/<model>/<name>.json).")
def train_self_spec_cmd(trials, num_prompts, max_new_tokens, confirm, model, device, dtype, seed, name, out) -> None:
    """Self-speculative decoding: search the sublayers the draft skips (writes <name>.json)."""
    import methods as registry
    from harness.train.skipsearch import NAME, SearchConfig, run_search

    out = out or registry.get(NAME).artifact_path(model_key(model), name)
    with user_errors():
        check_context(preflight(model, out), max_new_tokens)
        lm = load_model(model, device, dtype)
    cfg = SearchConfig(trials=trials, num_prompts=num_prompts, max_new_tokens=max_new_tokens, seed=seed,
                       confirm=confirm)
    path, record = run_search(lm, cfg, name, out)
    click.echo(f"skip set {record['skip']}: {record['best']['tokens_per_s']:.1f} tok/s "
               f"({record['speedup_over_ar']:.2f}x the baseline's {record['ar']['tokens_per_s']:.1f}); "
               f"wrote {path} in {record['seconds']:.0f} s")


COMMANDS = (train,)

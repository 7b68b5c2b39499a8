"""`spec-harness train <method>`: build the trained artifacts a method needs."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, replace
from pathlib import Path

import click

from harness.cli.common import device_option, dtype_option
from harness.core.modelload import DEFAULT_MODEL, load_model
from harness.train.distill import CorpusConfig
from harness.train.training import TrainConfig, train_and_save
from methods.eagle import LOSS as EAGLE_LOSS


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(",") if x.strip())


def corpus_options(fn):
    """Options shared by every trained drafter (same data pipeline, same loop)."""
    opts = [
        click.option("--model", default=DEFAULT_MODEL, show_default=True),
        device_option,
        dtype_option,
        click.option("--train-steps", type=int, default=TrainConfig.steps, show_default=True, help="Optimiser steps."),
        click.option("--batch", type=int, default=TrainConfig.batch, show_default=True, help="Sequences per step."),
        click.option("--positions", type=int, default=TrainConfig.positions, show_default=True, help="Drafted positions per sequence."),
        click.option("--lr", type=float, default=TrainConfig.lr, show_default=True),
        click.option("--per-source", type=int, default=CorpusConfig.per_source, show_default=True,
                     help="Prompts per training split (GSM8K train, XSum validation)."),
        click.option("--seed", type=int, default=0, show_default=True),
        click.option("--name", default=None, help="Checkpoint name (default: the method's name)."),
        click.option("--out", type=click.Path(path_type=Path), default=None,
                     help="Output file: the weights for train (default methods/checkpoints/<model>/<name>.safetensors), the JSON for analyze."),
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

    lm = load_model(kw["model"], kw["device"], kw["dtype"])
    chosen = _ints(layers) if layers else DEFAULT_LAYERS.get(lm.key, _fallback_layers(lm.model.config.num_hidden_layers))
    if k is not None:
        chosen = chosen * k if len(chosen) == 1 else chosen
        if len(chosen) != k:
            raise click.BadParameter(f"--steps {k} but {len(chosen)} layers given", param_hint="--steps")
    _train_drafter(lm, kw, "firp", lambda e: PseudoChains(e.hidden_size, chosen, mask == "serial", source))


def _train_drafter(lm, kw: dict, name: str, build) -> None:
    """Train `build(engine)` with the shared loop and corpus options; write weights + sidecar."""
    corpus, cfg = configs(kw)
    t0 = time.time()
    path = train_and_save(lm, build, corpus, cfg, kw["name"] or name, path=kw["out"])
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

    lm = load_model(kw["model"], kw["device"], kw["dtype"])
    _train_drafter(lm, kw, "medusa", lambda e: MedusaHeads(e.hidden_size, heads, e.lm_head, separate_lm_head))


@train.command("eagle")
@click.option("--feature-weight", type=float, default=EAGLE_LOSS["feature"], show_default=True,
              help="Weight of the smooth-L1 regression to the target's next feature (EAGLE's v_w).")
@click.option("--token-weight", type=float, default=EAGLE_LOSS["token"], show_default=True,
              help="Weight of the KL to the target's next-token distribution (EAGLE's p_w).")
@click.option("--noise", type=float, default=EAGLE_LOSS["noise"], show_default=True,
              help="Uniform noise on the input features, EAGLE's std (width std * 512 / d); 0: none.")
@corpus_options
def train_eagle_cmd(feature_weight, token_weight, noise, **kw) -> None:
    """EAGLE: a one-layer head over the target's features and next tokens (weights + JSON sidecar)."""
    from methods.eagle import EagleHead, target_shapes

    lm = load_model(kw["model"], kw["device"], kw["dtype"])
    loss = {"feature": feature_weight, "token": token_weight, "noise": noise}
    _train_drafter(lm, kw, "eagle", lambda e: EagleHead(e, target_shapes(e), loss))


@train.command("sps-draft")
@click.option("--layers", "n_layers", type=int, default=2, show_default=True,
              help="Decoder layers N of the draft, taken from the target (which: --pick).")
@click.option("--pick", type=click.Choice(["first", "spread"]), default="first", show_default=True,
              help="first: the target's first N layers; spread: N layers evenly over its depth, first and last included.")
@click.option("--from-layers", default=None, help="The target's layers to start from, e.g. 0,1,29 (overrides --layers, --pick).")
@corpus_options
def train_sps_draft_cmd(n_layers, pick, from_layers, **kw) -> None:
    """SpS: a shallow draft built from the target (its embeddings and LM head shared and frozen),
    distilled on the training-split corpus (weights of its own layers + JSON sidecar)."""
    from methods.sps_draft import ShallowDraft, pick_layers

    lm = load_model(kw["model"], kw["device"], kw["dtype"])
    try:
        chosen = _ints(from_layers) if from_layers else pick_layers(lm.model.config.num_hidden_layers, n_layers, pick)
        ShallowDraft(lm.model, chosen)  # fails here on layers the target lacks
    except ValueError as err:
        raise click.BadParameter(str(err), param_hint="--layers/--from-layers") from None
    corpus, cfg = configs(kw)
    t0 = time.time()
    path = train_and_save(lm, lambda e: ShallowDraft(e.model, chosen), corpus, cfg, kw["name"] or "sps-draft",
                          path=kw["out"])
    click.echo(f"wrote {path} (+ .json sidecar; layers {list(chosen)}) in {time.time() - t0:.0f} s")


@train.command("self-spec")
@click.option("--trials", type=int, default=200, show_default=True, help="Bayesian-optimisation trials (TPE).")
@click.option("--num-prompts", type=int, default=8, show_default=True,
              help="Training-split prompts decoded per trial (GSM8K train and XSum validation alternately).")
@click.option("--max-new-tokens", type=int, default=64, show_default=True, help="Tokens decoded per prompt.")
@click.option("--confirm", type=int, default=3, show_default=True, help="Best skip sets measured again at the end.")
@click.option("--model", default=DEFAULT_MODEL, show_default=True)
@device_option
@dtype_option
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--name", default="self-spec", show_default=True, help="Artifact name under methods/checkpoints/<model>/.")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Output JSON (default methods/checkpoints/<model>/<name>.json).")
def train_self_spec_cmd(trials, num_prompts, max_new_tokens, confirm, model, device, dtype, seed, name, out) -> None:
    """Self-speculative decoding: search the sublayers the draft skips (writes <name>.json)."""
    from harness.train.skipsearch import SearchConfig, run_search

    lm = load_model(model, device, dtype)
    cfg = SearchConfig(trials=trials, num_prompts=num_prompts, max_new_tokens=max_new_tokens, seed=seed,
                       confirm=confirm)
    path, record = run_search(lm, cfg, name, out)
    click.echo(f"skip set {record['skip']}: {record['best']['tokens_per_s']:.1f} tok/s "
               f"({record['speedup_over_ar']:.2f}x the baseline's {record['ar']['tokens_per_s']:.1f}); "
               f"wrote {path} in {record['seconds']:.0f} s")


def _layer_range(text: str) -> list[int]:
    """'4..28' (every layer), '4..28:4' (every 4th) or '4,8,12'."""
    if ".." in text:
        span, _, step = text.partition(":")
        lo, hi = (int(x) for x in span.split(".."))
        return list(range(lo, hi + 1, int(step) if step else 1))
    return list(_ints(text))


@click.group()
def analyze() -> None:
    """Analyses: the FIRP paper's figures (JSON for `spec-harness figures`), the SpS draft size."""


@analyze.command("firp")
@click.option("--layers", default="4..28:3", show_default=True, help="Prediction layers probed for Fig 5: 'lo..hi[:step]' or a list.")
@click.option("--firp", "firp_name", default="firp", show_default=True, help="FIRP checkpoint (name or path).")
@click.option("--medusa", "medusa_name", default=None, help="Medusa checkpoint (name or path; default: medusa if trained).")
@click.option("--sweep", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Reuse the step-1 accuracies of a layer sweep (`analyze layers` JSON) for Fig 5 instead of --layers.")
@click.option("--also", "also", multiple=True,
              help="Another FIRP or Medusa checkpoint scored alongside (repeatable; default: firp-parallel if trained).")
@click.option("--skip", type=int, default=None,
              help="Prompts skipped per training split (default: past every drafter's training prompts).")
@corpus_options
def analyze_firp_cmd(layers, firp_name, medusa_name, sweep, also, skip, out, **kw) -> None:
    """Top-k accuracy per step (Fig 3), pseudo-vs-real cosine (Fig 4), step-1 accuracy per layer (Fig 5),
    on training-split prompts no drafter trained on (--per-source of them from --skip on).
    --out: the JSON written (default results/analysis/<model>/analysis.json)."""
    from harness.analysis.analyses import analyze_firp
    from harness.bench.results import RESULTS_ROOT, write_json
    from harness.core.method import checkpoint_file

    lm = load_model(kw["model"], kw["device"], kw["dtype"])
    corpus, cfg = configs(kw)
    firp = checkpoint_file(lm.key, firp_name)
    asked = {**({"medusa": medusa_name} if medusa_name else {}), **{Path(n).stem: n for n in also}}
    others = _scored_alongside(lm.key, asked, {"medusa": "medusa", **({} if also else {"firp-parallel": "firp-parallel"})})
    corpus = replace(corpus, skip=_past_training([firp, *others.values()]) if skip is None else skip)
    reused = None if sweep is None else sweep_step1(sweep, lm.key)
    try:
        result = analyze_firp(lm, firp, others, corpus, cfg, layers=_layer_range(layers), sweep=reused)
    except (FileNotFoundError, ValueError) as err:
        raise click.ClickException(str(err)) from None
    result["layer_sweep_source"] = str(sweep) if sweep else f"probed here ({layers})"
    out = out or RESULTS_ROOT / "analysis" / lm.key / "analysis.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out, result)
    click.echo(f"wrote {out}")


def _scored_alongside(model_key: str, asked: dict[str, str], defaults: dict[str, str]) -> dict[str, Path]:
    """Label -> checkpoint of the predictors scored next to FIRP: those asked for (they must
    exist) and the defaults not overridden that were trained."""
    from harness.core.method import checkpoint_file

    paths = {label: checkpoint_file(model_key, n) for label, n in {**defaults, **asked}.items()}
    missing = [str(paths[label]) for label in asked if not paths[label].exists()]
    if missing:
        raise click.BadParameter(f"no checkpoint at {', '.join(missing)}", param_hint="--medusa/--also")
    return {label: p for label, p in paths.items() if p.exists()}


def _past_training(paths: list[Path]) -> int:
    """The first prompt row (per split) after every existing checkpoint's training prompts."""
    from harness.train.distill import trained_rows

    sidecars = [p.with_suffix(".json") for p in paths]
    return max([0] + [trained_rows(json.loads(s.read_text())).stop for s in sidecars if s.exists()])


def sweep_step1(path: Path, model_key: str) -> dict[int, float]:
    """Step-1 top-1 per layer from a committed layer sweep, checked to be of this model."""
    data = json.loads(path.read_text())
    if data.get("model") != model_key or "topk_by_layer" not in data:
        raise click.BadParameter(f"{path} is not a layer sweep of {model_key}", param_hint="--sweep")
    return {int(layer): row[0] for layer, row in data["topk_by_layer"].items()}


@analyze.command("layers")
@click.option("--layers", default="4..28:3", show_default=True, help="'lo..hi[:step]' or a list.")
@corpus_options
def analyze_layers_cmd(layers, out, **kw) -> None:
    """The layer sweep that picks FIRP's default layers: held-out step-1 top-k per insertion layer.
    --out: the JSON written (default results/firp-layer-sweep/<model>.json)."""
    from harness.analysis.analyses import layer_probe
    from harness.bench.results import RESULTS_ROOT, write_json
    from harness.core.engine import Engine
    from harness.train.distill import corpus_summary, load_corpus

    lm = load_model(kw["model"], kw["device"], kw["dtype"])
    corpus, cfg = configs(kw)
    seqs = load_corpus(lm, corpus)
    t0 = time.time()
    result = layer_probe(Engine(lm.model), seqs, _layer_range(layers), cfg)
    out = out or RESULTS_ROOT / "firp-layer-sweep" / f"{lm.key}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    best = max(result, key=lambda k: result[k][0])
    write_json(out, {"model": lm.key, "topk_by_layer": result, "best_step1_layer": int(best),
                     "seconds": round(time.time() - t0), "training": asdict(cfg),
                     "data": corpus_summary(corpus, seqs)})
    click.echo(f"best step-1 layer: {best} (top-1 {result[best][0]:.3f}); wrote {out}")


@analyze.command("sps-draft")
@click.option("--drafts", required=True, help="Comma-separated drafts to compare (sps.draft values: checkpoint names "
                                              "under methods/checkpoints/<model>/, .safetensors paths, HF ids or dirs).")
@click.option("--num-prompts", type=int, default=8, show_default=True, help="Prompts per tuning set (gsm8k-train, xsum-train).")
@click.option("--max-new-tokens", type=int, default=64, show_default=True)
@click.option("--k", type=int, default=4, show_default=True, help="sps.k: draft tokens per step.")
@click.option("--model", default=DEFAULT_MODEL, show_default=True)
@device_option
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Output JSON (default results/sps-draft-size/<model>-<device>.json); the sweep's run "
                   "directory beside it (same name without .json).")
def analyze_sps_draft_cmd(drafts, num_prompts, max_new_tokens, k, model, device, out) -> None:
    """The SpS draft size: per draft, its forward cost against the target's and the acceptance,
    tau and paired speedup of `sps` with it on the tuning sets (run it on an idle machine)."""
    from harness.analysis.draftsize import RESULTS_DIR, SizeConfig, measure_drafts
    from harness.bench.results import write_json
    from harness.cli.common import USER_ERRORS, csv, fail

    labels = csv(drafts)
    try:
        result = measure_drafts(model, device, None, labels, SizeConfig(num_prompts, max_new_tokens, k),
                                out.with_suffix("") if out else None)
    except (*USER_ERRORS, ValueError) as err:
        fail(err)
    out = out or RESULTS_DIR / f"{result['model']}-{result['device'].split(':')[0]}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out, result)
    click.echo(f"target c(1) = {result['c_ms']:.2f} ms; baseline {result['ar']['tokens_per_s']:.1f} tok/s")
    for row in result["rows"]:
        click.echo("{draft}: layers {layers}, c_d(1) = {c_d_ms:.2f} ms ({cost_ratio:.2f} c), accept_len "
                   "{accept_len:.2f}, tau {tau:.2f}, {tokens_per_s:.1f} tok/s, speedup {speedup:.3f} "
                   "[{speedup_ci_low:.3f}, {speedup_ci_high:.3f}], lossless {lossless_rate:.0%}".format(**row))
    click.echo(f"best: {result['best']}; wrote {out}")


COMMANDS = (train, analyze)

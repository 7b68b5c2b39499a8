"""`spec-harness analyze <what>`: the FIRP paper's figures (top-k per step, pseudo-vs-real cosine,
step-1 accuracy per layer), the layer sweep behind FIRP's default layers, and the SpS draft size.

Inputs are checked as for `train` (same corpus options, same preflight) before any model work."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, replace
from pathlib import Path

import click

from harness.cli.common import (
    InputError,
    check_context,
    check_layers,
    device_option,
    ints,
    user_errors,
)
from harness.cli.train import AT_LEAST_1, configs, corpus_options, preflight
from harness.core.modelload import DEFAULT_MODEL, load_model, model_key


def layer_range(text: str, config) -> list[int]:
    """'4..28' (every layer), '4..28:4' (every 4th) or '4,8,12' (--layers of the analyses),
    checked against the model's layers."""
    if ".." in text:
        span, _, step = text.partition(":")
        try:
            lo, hi = (int(x) for x in span.split(".."))
            stride = int(step) if step else 1
        except ValueError:
            raise InputError(f"--layers {text!r}: expected 'lo..hi[:step]' or a list, e.g. 4..28:3") from None
        if stride < 1:
            raise InputError(f"--layers {text!r}: the step must be at least 1")
        layers = list(range(lo, hi + 1, stride))
    else:
        layers = list(ints(text, "--layers"))
    check_layers(config, "--layers", layers)
    return layers


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
@click.option("--skip", type=click.IntRange(min=0), default=None,
              help="Prompts skipped per training split (default: past every drafter's training prompts).")
@corpus_options
def analyze_firp_cmd(layers, firp_name, medusa_name, sweep, also, skip, out, **kw) -> None:
    """Top-k accuracy per step (Fig 3), pseudo-vs-real cosine (Fig 4), step-1 accuracy per layer (Fig 5),
    on training-split prompts no drafter trained on (--per-source of GSM8K train and XSum validation
    each, from --skip on; --sources does not apply).
    --out: the JSON written (default results/analysis/<model>/analysis.json)."""
    from harness.analysis.analyses import analyze_firp
    from harness.bench.results import RESULTS_ROOT, write_json
    from harness.core.method import checkpoint_file

    key = model_key(kw["model"])
    out = out or RESULTS_ROOT / "analysis" / key / "analysis.json"
    with user_errors():
        config = preflight(kw["model"], out)
        probed = None if sweep else layer_range(layers, config)
        firp = checkpoint_file(key, firp_name)
        if not firp.exists():
            raise InputError(f"--firp {firp_name}: no checkpoint at {firp} (train one: `spec-harness train firp`)")
        asked = {**({"medusa": medusa_name} if medusa_name else {}), **{Path(n).stem: n for n in also}}
        others = _scored_alongside(key, asked, {"medusa": "medusa", **({} if also else {"firp-parallel": "firp-parallel"})})
        reused = None if sweep is None else sweep_step1(sweep, key)
        lm = load_model(kw["model"], kw["device"], kw["dtype"])
    corpus, cfg = configs(kw)
    corpus = replace(corpus, mix=None, skip=_past_training([firp, *others.values()]) if skip is None else skip)
    try:
        result = analyze_firp(lm, firp, others, corpus, cfg, layers=probed, sweep=reused)
    except (FileNotFoundError, ValueError) as err:
        raise click.ClickException(str(err)) from None
    result["layer_sweep_source"] = str(sweep) if sweep else f"probed here ({layers})"
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

    out = out or RESULTS_ROOT / "firp-layer-sweep" / f"{model_key(kw['model'])}.json"
    with user_errors():
        probed = layer_range(layers, preflight(kw["model"], out))
        lm = load_model(kw["model"], kw["device"], kw["dtype"])
    corpus, cfg = configs(kw)
    seqs = load_corpus(lm, corpus)
    t0 = time.time()
    result = layer_probe(Engine(lm.model), seqs, probed, cfg)
    out.parent.mkdir(parents=True, exist_ok=True)
    best = max(result, key=lambda k: result[k][0])
    write_json(out, {"model": lm.key, "topk_by_layer": result, "best_step1_layer": int(best),
                     "seconds": round(time.time() - t0), "training": asdict(cfg),
                     "data": corpus_summary(corpus, seqs)})
    click.echo(f"best step-1 layer: {best} (top-1 {result[best][0]:.3f}); wrote {out}")


@analyze.command("sps-draft")
@click.option("--drafts", required=True, help="Comma-separated drafts to compare (sps.draft values: checkpoint names "
                                              "under methods/checkpoints/<model>/, .safetensors paths, HF ids or dirs).")
@click.option("--num-prompts", type=AT_LEAST_1, default=8, show_default=True, help="Prompts per tuning set (gsm8k-train, xsum-train).")
@click.option("--max-new-tokens", type=AT_LEAST_1, default=64, show_default=True)
@click.option("--k", type=AT_LEAST_1, default=4, show_default=True, help="sps.k: draft tokens per step.")
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
    from harness.cli.common import csv

    labels = csv(drafts)
    run_dir = out.with_suffix("") if out else None  # default: the sweep's own (RESULTS_DIR/sweep)
    out = out or RESULTS_DIR / f"{model_key(model)}-{device.split(':')[0]}.json"
    with user_errors(ValueError):
        if not labels:
            raise InputError("--drafts is empty: name at least one draft")
        check_context(preflight(model, out), max_new_tokens)
        result = measure_drafts(model, device, None, labels, SizeConfig(num_prompts, max_new_tokens, k), run_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out, result)
    click.echo(f"target c(1) = {result['c_ms']:.2f} ms; baseline {result['ar']['tokens_per_s']:.1f} tok/s")
    for row in result["rows"]:
        click.echo("{draft}: layers {layers}, c_d(1) = {c_d_ms:.2f} ms ({cost_ratio:.2f} c), accept_len "
                   "{accept_len:.2f}, tau {tau:.2f}, {tokens_per_s:.1f} tok/s, speedup {speedup:.3f} "
                   "[{speedup_ci_low:.3f}, {speedup_ci_high:.3f}], lossless {lossless_rate:.0%}".format(**row))
    click.echo(f"best: {result['best']}; wrote {out}")


COMMANDS = (analyze,)

"""`spec-harness tune <method>`: choose a training-free method's defaults by measuring real decodes
on the tuning sets (training splits; never the test sets), through the benchmark runner."""

from __future__ import annotations

from pathlib import Path

import click

from harness.cli.common import (
    USER_ERRORS,
    check_context,
    check_out_file,
    device_option,
    dtype_option,
    fail,
    ints,
    model_config,
    user_errors,
)
from harness.core.modelload import DEFAULT_MODEL

AT_LEAST_1 = click.IntRange(min=1)


@click.group()
def tune() -> None:
    """Choose method defaults by measurement on training-split prompts (run it on an idle machine)."""


def sweep_options(fn):
    """Options every sweep shares."""
    opts = [
        click.option("--num-prompts", type=AT_LEAST_1, default=8, show_default=True,
                     help="Tuning-set prompts, split evenly over gsm8k-train, xsum-train, chat-train and code-train."),
        click.option("--max-new-tokens", type=AT_LEAST_1, default=64, show_default=True),
        click.option("--model", default=DEFAULT_MODEL, show_default=True),
        device_option,
        dtype_option,
        click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
                     help="Seed of the method order and the bootstrap."),
        click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
                     help="Output directory: <model>-<device>.csv and .json, and the run under run/."),
    ]
    for opt in reversed(opts):
        fn = opt(fn)
    return fn


def run_sweep(method: str, grid: list[dict], kw: dict, default_out: str) -> dict:
    """Run the sweep, write its table, print one line per point (best first); the result."""
    from harness.bench.results import RESULTS_ROOT
    from harness.train.tuning import SweepConfig, sweep, write_sweep

    out = kw["out"] or RESULTS_ROOT / default_out
    try:
        model_config(kw["model"])  # the cache directory, before the run's own checks (bench/validate.py)
        cfg = SweepConfig(kw["num_prompts"], kw["max_new_tokens"], kw["seed"])
        result = sweep(method, grid, cfg, kw["model"], kw["device"], kw["dtype"], out)
    except (*USER_ERRORS, ValueError) as err:
        fail(err)
    csv, js = write_sweep(result, out)
    for row in sorted(result["rows"], key=lambda r: -r["speedup"]):
        point = " ".join(f"{k}={row[k]}" for k in grid[0])
        click.echo(f"{point}: tau {row['tau']:.2f}, accept_len {row['accept_len']:.2f}, "
                   f"{row['positions']:.1f} positions/forward, {row['tokens_per_s']:.1f} tok/s, speedup "
                   f"{row['speedup']:.3f} [{row['speedup_ci_low']:.3f}, {row['speedup_ci_high']:.3f}]")
    click.echo(f"wrote {csv} and {js}")
    return result


@tune.command("lookahead")
@click.option("--grid", default=None, metavar="WxNxG,...",
              help="(W, N, G) triples, e.g. 3x3x3,5x4x5 or 'published' (default: W 3,5,7 x N 3,4,5 x G 3,5,7).")
@sweep_options
def tune_lookahead_cmd(grid, **kw) -> None:
    """Lookahead decoding: ar and every (W, N, G), paired per prompt (default out results/lookahead-sweep/)."""
    from harness.train.tuning import DEFAULT_GRID, parse_grid

    try:
        triples = parse_grid(grid) if grid else DEFAULT_GRID
    except (*USER_ERRORS, ValueError) as err:
        fail(err)
    points = [{"window": w, "ngram": n, "guess": g} for w, n, g in triples]
    best = run_sweep("lookahead", points, kw, "lookahead-sweep")["best"]
    click.echo(f"best: W={best['window']} N={best['ngram']} G={best['guess']}")


@tune.command("pld")
@click.option("--k", "ks", default="1,2,3,4,6,8,10", show_default=True, help="Draft lengths to try.")
@sweep_options
def tune_pld_cmd(ks, **kw) -> None:
    """Prompt lookup decoding: ar and every draft length k (default out results/pld-sweep/)."""
    with user_errors():
        points = [{"k": k} for k in ints(ks, "--k")]
    best = run_sweep("pld", points, kw, "pld-sweep")["best"]
    click.echo(f"best: k={best['k']}")


@tune.command("method")
@click.argument("name")
@click.option("--vary", "vary", multiple=True, required=True, metavar="KEY=V1,V2,...",
              help="Option values to try (repeatable; every combination is measured), e.g. --vary k=2,4,8.")
@sweep_options
def tune_method_cmd(name, vary, **kw) -> None:
    """Any method: every combination of the --vary values (default out results/tuning/NAME/)."""
    from harness.train.tuning import product_grid

    values = {}
    for item in vary:
        key, sep, text = item.partition("=")
        if not sep or not key or not text:
            fail(ValueError(f"--vary {item!r}: expected KEY=V1,V2,..., e.g. k=2,4,8"))
        values[key.strip()] = [v.strip() for v in text.split(",") if v.strip()]
    best = run_sweep(name, product_grid(values), kw, f"tuning/{name}")["best"]
    click.echo("best: " + " ".join(f"{k}={best[k]}" for k in values))


@tune.command("profile")
@click.argument("name")
@click.option("--num-prompts", type=AT_LEAST_1, default=16, show_default=True,
              help="Tuning-set prompts, split evenly over gsm8k-train, xsum-train, chat-train and code-train.")
@click.option("--max-new-tokens", type=AT_LEAST_1, default=128, show_default=True)
@click.option("--model", default=DEFAULT_MODEL, show_default=True)
@device_option
@dtype_option
@click.option("--method-arg", "method_args", multiple=True, metavar="NAME.KEY=VALUE",
              help="Options of the method besides its shape, e.g. firp.checkpoint=PATH (repeatable).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Profile JSON (default: where the method looks for it: beside its checkpoint, or "
                   "methods/checkpoints/<model>/<method>.profile.json).")
def tune_profile_cmd(name, num_prompts, max_new_tokens, model, device, dtype, method_args, out) -> None:
    """Measure NAME's acceptance profile on the tuning sets, from which `auto` plans its draft shape.

    Decoding statistics only (no timing): any machine will do, busy or not."""
    from harness.bench.results import write_json
    from harness.cli.common import parse_method_args
    from harness.core.modelload import load_model
    from harness.train.profile import ProfileConfig, check_profiled, measure_profile

    with user_errors(ValueError):
        options = parse_method_args(method_args)
        unknown = set(options) - {name}
        if unknown:
            raise ValueError(f"--method-arg names {', '.join(sorted(unknown))}, not {name}")
        check_profiled(name, options.get(name))
        check_context(model_config(model), max_new_tokens)
        if out is not None:
            check_out_file(out)
        lm = load_model(model, device, dtype)
    with user_errors():
        profile, path = measure_profile(name, lm, ProfileConfig(num_prompts, max_new_tokens), options.get(name))
    path = out or path
    write_json(path, profile)
    click.echo(profile_summary(profile))
    click.echo(f"wrote {path} ({profile['seconds']} s)")


def profile_summary(profile: dict) -> str:
    """A few lines on what a profile measured."""
    steps = profile.get("steps") or sum(p["steps"] for p in profile.get("points", []))
    head = f"{profile['method']} ({profile['family']} profile, {steps} steps)"
    if profile["family"] == "tree":
        top = sorted(profile["paths"].items(), key=lambda kv: -kv[1])[:8]
        return head + "\n  most accepted tree nodes: " + ", ".join(f"({k}) {v:.3f}" for k, v in top)
    if profile["family"] == "chain":
        rates = "/".join(f"{x:.2f}" for x in profile["accepted_at_least"])
        return head + f"\n  P(accepted >= i), i = 1..{profile['k_max']}: {rates}"
    lines = [f"  {' '.join(f'{k}={v}' for k, v in p['options'].items())}: {p['tokens_per_step']:.2f} tokens/step, "
             f"{p['positions']:.1f} rows/forward" for p in profile["points"]]
    return "\n".join([head, *lines])


COMMANDS = (tune,)

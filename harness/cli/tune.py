"""`spec-harness tune <method>`: choose a training-free method's defaults by measuring real decodes
on training-split prompts (never the test sets)."""

from __future__ import annotations

from pathlib import Path

import click

from harness.cli.common import USER_ERRORS, device_option, dtype_option, fail
from harness.core.modelload import DEFAULT_MODEL


@click.group()
def tune() -> None:
    """Choose method defaults by measurement on training-split prompts (run it on an idle machine)."""


@tune.command("lookahead")
@click.option("--grid", default=None, metavar="WxNxG,...",
              help="(W, N, G) triples, e.g. 3x3x3,5x4x5 or 'published' (default: W 3,5,7 x N 3,4,5 x G 3,5,7).")
@click.option("--num-prompts", type=int, default=8, show_default=True,
              help="Training-split prompts (GSM8K train and XSum validation alternately).")
@click.option("--max-new-tokens", type=int, default=64, show_default=True)
@click.option("--model", default=DEFAULT_MODEL, show_default=True)
@device_option
@dtype_option
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the bootstrap interval.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Output directory (default results/lookahead-sweep/): <model>-<device>.csv and .json.")
def tune_lookahead_cmd(grid, num_prompts, max_new_tokens, model, device, dtype, seed, out) -> None:
    """Lookahead decoding: ar and every (W, N, G) back to back per prompt; paired speedups."""
    from harness.core.modelload import load_model
    from harness.train.tuning import (
        DEFAULT_GRID,
        SweepConfig,
        parse_grid,
        sweep_lookahead,
        write_sweep,
    )

    try:
        cfg = SweepConfig(parse_grid(grid) if grid else DEFAULT_GRID, num_prompts, max_new_tokens, seed)
        lm = load_model(model, device, dtype)
        result = sweep_lookahead(lm, cfg)
    except (*USER_ERRORS, ValueError) as err:
        fail(err)
    csv, js = write_sweep(result, out)
    for row in sorted(result["rows"], key=lambda r: -r["speedup_median"]):
        click.echo("W={window} N={ngram} G={guess}: tau {tau:.2f}, {positions:.1f} positions/forward, "
                   "{tokens_per_s:.1f} tok/s, speedup {speedup_median:.3f} "
                   "[{speedup_ci_low:.3f}, {speedup_ci_high:.3f}]".format(**row))
    best = result["best"]
    click.echo(f"best: W={best['window']} N={best['ngram']} G={best['guess']}; wrote {csv} and {js}")


COMMANDS = (tune,)

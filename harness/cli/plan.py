"""`spec-harness plan`: the draft shape each method's `auto` chooses, and its predicted speedup,
for this machine or for another machine's cost model, without decoding."""

from __future__ import annotations

from pathlib import Path

import click

from harness.cli.common import USER_ERRORS, csv, fail, parse_method_args
from harness.core.modelload import DEFAULT_MODEL


@click.command("plan")
@click.option("--model", default=DEFAULT_MODEL, show_default=True, help="'smollm2' (embedded), an HF hub id or a local HF directory.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--dtype", type=click.Choice(["float32", "float16", "bfloat16"]), default=None)
@click.option("--costmodel", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Plan for this cost-model JSON (e.g. another machine's, results/costmodel/*.json); "
                   "default: this machine's, measured once and cached.")
@click.option("--methods", "methods_", default=None,
              help="Comma-separated methods (default: every method that plans a draft shape and has its weights).")
@click.option("--method-arg", "method_args", multiple=True, metavar="NAME.KEY=VALUE", help="Method option (repeatable).")
def plan(model, device, dtype, costmodel, methods_, method_args) -> None:
    """Each method's planned draft shape and predicted speedup over autoregressive decoding."""
    from harness.analysis.plans import plan_rows, planners, render
    from harness.core.engine import Engine
    from harness.core.modelload import load_model

    try:
        lm = load_model(model, device, dtype)
        names = csv(methods_) if methods_ else planners(lm.key)
        args = parse_method_args(method_args)
        if set(args) - set(names):
            raise ValueError(f"--method-arg names method(s) not planned: {', '.join(sorted(set(args) - set(names)))}")
        rows = plan_rows(Engine(lm.model), lm.key, names, args, str(costmodel or ""))
    except (*USER_ERRORS, ValueError) as err:
        fail(err)
    click.echo(render(rows))


COMMANDS = (plan,)

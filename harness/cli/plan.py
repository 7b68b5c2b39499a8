"""`spec-harness plan`: the draft shape each method's `auto` chooses, and its predicted speedup,
for this machine or for another machine's cost model, without decoding."""

from __future__ import annotations

from pathlib import Path

import click

from harness.cli.common import (
    USER_ERRORS,
    csv,
    device_option,
    dtype_option,
    fail,
    model_config,
    parse_method_args,
)
from harness.core.modelload import DEFAULT_MODEL, model_key


@click.command("plan")
@click.option("--model", default=DEFAULT_MODEL, show_default=True, help="'smollm2' (embedded), an HF hub id or a local HF directory.")
@device_option
@dtype_option
@click.option("--costmodel", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Plan for this cost-model JSON (e.g. another machine's, results/costmodel/*.json); "
                   "default: this machine's, measured once and cached.")
@click.option("--methods", "methods_", default=None,
              help="Comma-separated methods (default: every method that plans a draft shape and has its weights).")
@click.option("--method-arg", "method_args", multiple=True, metavar="NAME.KEY=VALUE", help="Method option (repeatable).")
@click.option("--batch-size", "batch_size", default="1", show_default=True,
              help="Plan for batches of this many sequences (a step of n rows each costs c(B n)/c(B)), or several "
                   "comma-separated: one plan per batch size, as `run --batch-size` plans them.")
def plan(model, device, dtype, costmodel, methods_, method_args, batch_size) -> None:
    """Each method's planned draft shape and predicted speedup over autoregressive decoding (at
    the same batch size)."""
    from harness.analysis.plans import at_batch, plan_rows, render
    from harness.bench.batches import batch_sizes
    from harness.core.engine import Engine
    from harness.core.modelload import load_model

    try:
        sizes = batch_sizes(batch_size)
        if not sizes or min(sizes) < 1:
            raise ValueError(f"--batch-size {batch_size}: each at least 1")
        names, args = _plan_inputs(model, costmodel, methods_, method_args)
        lm = load_model(model, device, dtype)
        engine = Engine(lm.model)
        texts = [render(plan_rows(engine, lm.key, names, at_batch(names, args, b), str(costmodel or "")))
                 for b in sizes]
    except (*USER_ERRORS, ValueError) as err:
        fail(err)
    click.echo("\n\n".join(f"batch size {b}:\n{t}" if len(sizes) > 1 else t for b, t in zip(sizes, texts)))


def _plan_inputs(model: str, costmodel: Path | None, methods_: str | None,
                 method_args: tuple[str, ...]) -> tuple[list[str], dict]:
    """The methods to plan and their options, checked before the model loads: the cache directory
    and the model's config, every method and option, and the cost model (valid, of this model)."""
    import methods as registry
    from harness.analysis.plans import planners, with_costmodel
    from harness.core.planning.costmodel import check_model, read

    model_config(model)
    key = model_key(model)
    names = csv(methods_) if methods_ else planners(key)
    args = parse_method_args(method_args)
    if set(args) - set(names):
        raise ValueError(f"--method-arg names method(s) not planned: {', '.join(sorted(set(args) - set(names)))}")
    if costmodel is not None:
        check_model(read(costmodel), costmodel, key)
    resolved = with_costmodel(names, {k: dict(v) for k, v in args.items()}, costmodel)
    for name in names:
        registry.get(name).resolve_options(dict(resolved.get(name, {})))
    return names, args


COMMANDS = (plan,)

"""`spec-harness list | setup | run | report`: the benchmark commands."""

from __future__ import annotations

import sys
from pathlib import Path

import click

import methods as registry
from harness.bench.data import DATASETS
from harness.bench.results import ResultsError
from harness.cli.common import (
    USER_ERRORS,
    device_option,
    dtype_option,
    fail,
)
from harness.core.checkpoint import shown_path
from harness.core.lean import DEFAULT_LAYERS, LAYER_PATHS
from harness.core.modelload import DEFAULT_MODEL, ModelLoadError, model_key


@click.command("list")
@click.option("--model", default=DEFAULT_MODEL, show_default=True, help="Model whose trained weights to look for.")
def list_cmd(model: str) -> None:
    """Methods (with their options and trained weights) and datasets."""
    key = model_key(model)
    click.echo(f"methods (weights looked up for model {key}):")
    for name in registry.names():
        cls = registry.get(name)
        path = cls.default_weights(key)
        weights = "no weights needed" if path is None else (f"weights: {shown_path(path)}" if path.exists()
                                                             else f"NO WEIGHTS: run `spec-harness train {cls.train_command()}`")
        click.echo(f"  {name:12s} {cls.summary} [{weights}]")
        for opt in cls.options:
            click.echo(f"      {name}.{opt.name}={opt.default!s:<10} {opt.help}")
    click.echo("datasets: " + ", ".join(DATASETS) + ", jsonl:PATH (fields: prompt; optional reference, id, category), "
               "specbench:PATH (Spec-Bench's question.jsonl format); mt-bench#CATEGORY, spec-bench#CATEGORY (one "
               "category); NAME@N (N items of it, instead of --num-samples)")


@click.command()
def setup() -> None:
    """Convert the embedded model (SmolLM2-135M-Instruct GGUF) once into the local cache."""
    from harness.core.modelload import embedded_dir

    try:
        click.echo(f"embedded model ready at {embedded_dir()}")
    except ModelLoadError as err:
        fail(err)


@click.command()
@click.option("--methods", "methods_", default="ar", show_default=True, help="Comma-separated methods (`list` shows them), or 'all' (every method with weights), or 'default' (those of all worth timing on the device found: no CUDA-graph baseline on a CPU); ar always runs as the baseline.")
@click.option("--datasets", default="gsm8k,xsum,mt-bench", show_default=True, help="Comma-separated: gsm8k, xsum, mt-bench, spec-bench, jsonl:PATH, specbench:PATH; mt-bench#CATEGORY or spec-bench#CATEGORY: one category's items, a dataset of its own (e.g. spec-bench#coding); NAME@N: N items of that dataset instead of --num-samples (e.g. spec-bench@39, 3 per category).")
@click.option("--num-samples", type=int, default=10, show_default=True, help="N items per dataset: a deterministic subset, stratified by category where the data has categories (>= 1).")
@click.option("--max-new-tokens", type=int, default=128, show_default=True)
@click.option("--model", default=DEFAULT_MODEL, show_default=True, help="'smollm2' (embedded), an HF hub id or a local HF directory.")
@device_option
@dtype_option
@click.option("--method-arg", "method_args", multiple=True, metavar="NAME.KEY=VALUE", help="Method option (repeatable), e.g. firp.tree=chain.")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Run directory (default: results/runs/<timestamp>).")
@click.option("--resume", is_flag=True, help="Continue an interrupted run in --out.")
@click.option("--overwrite", is_flag=True, help="Replace the run in --out.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--data-source", type=click.Choice(["local", "hub"]), default="local", show_default=True, help="hub: full datasets from the HF hub (needs network).")
@click.option("--no-telemetry", is_flag=True, help="Do not sample hardware telemetry.")
@click.option("--no-warmup", is_flag=True, help="Skip the untimed warm-up decodes.")
@click.option("--control", is_flag=True, help="A/A control: decode the baseline a second time per sample (as ar:control).")
@click.option("--temperature", default="0", show_default=True,
              help="Sampling temperature, or several comma-separated (each its own set of pairs; report shows "
                   "them apart). 0 = greedy. At T > 0 the target's token at each position is the Gumbel-max "
                   "sample keyed by seed, sample, turn and position, so every method can match the baseline's.")
@click.option("--top-k", type=int, default=0, show_default=True, help="Sample among the top k tokens (0 = off).")
@click.option("--top-p", type=float, default=1.0, show_default=True, help="Nucleus sampling mass (1 = off).")
@click.option("--acceptance", type=click.Choice(["exact", "rejection"]), default="exact", show_default=True,
              help="Under T > 0: exact (every method reproduces the baseline's sample; lossless checked) or "
                   "rejection (speculative sampling's rule for drafts drawn from q: lossless in distribution, "
                   "lossless null in records).")
@click.option("--batch-size", "batch_size", default="1", show_default=True,
              help="Sequences decoded together, or several comma-separated in increasing order, e.g. 1,4,8 (each "
                   "its own set of pairs: a method at batch B against ar at batch B on the same group of samples).")
@click.option("--costmodel", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Cost-model JSON every method plans its auto draft shape for (METHOD.costmodel; e.g. the "
                   "reference machine's, so that planning is the same on every machine). Default: this machine's.")
@click.option("--linear", type=click.Choice(["auto", "off"]), default="auto", show_default=True,
              help="Linear layers: auto runs each with the formulation fastest on this machine for the row count "
                   "at hand (timed once, cached beside the cost model, recorded in the manifest); off: F.linear.")
@click.option("--layers", type=click.Choice(list(LAYER_PATHS)), default=DEFAULT_LAYERS, show_default=True,
              help="Decoder layers: lean computes each from its modules' weights in fewer operators (same "
                   "function up to float rounding; recorded in the manifest); modules calls transformers' own.")
def run(methods_, datasets, num_samples, max_new_tokens, model, device, dtype, method_args, out, resume,
        overwrite, seed, data_source, no_telemetry, no_warmup, control, temperature, top_k, top_p, acceptance,
        batch_size, costmodel, linear, layers) -> None:
    """Decode every sample with every method back to back, in a seeded order; write a run directory.

    Everything is validated before the model loads and before --out is created or emptied."""
    from harness.bench.report import report
    from harness.bench.request import run_config
    from harness.bench.runner import Runner

    try:
        cfg = run_config(out=out, resume=resume, overwrite=overwrite, methods=methods_, datasets=datasets,
                         num_samples=num_samples, max_new_tokens=max_new_tokens, model=model, device=device,
                         dtype=dtype, method_arg=method_args, seed=seed, data_source=data_source,
                         telemetry=not no_telemetry, warmup=not no_warmup, control=control, temperature=temperature,
                         top_k=top_k, top_p=top_p, acceptance=acceptance, batch_size=batch_size, costmodel=costmodel,
                         linear=linear, layers=layers)
        runner = Runner(cfg)
    except USER_ERRORS as err:
        fail(err)
    click.echo(f"run directory: {runner.out}", err=True)
    try:
        runner.run()
    except KeyboardInterrupt:
        click.echo(f"\ninterrupted: records so far are in {runner.out}; continue with --resume --out {runner.out}", err=True)
        sys.exit(130)
    except USER_ERRORS as err:
        fail(err)
    click.echo(report(runner.out))
    click.echo(f"\nwritten: {runner.out}/records.jsonl, summary.md, summary.csv")


@click.command("report")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--by", type=click.Choice(["category", "temperature", "batch_size"]), default=None,
              help="Break each dataset down by category (MT-bench, Spec-Bench, jsonl with `category`), by "
                   "temperature or by batch size (a run at several of either is always shown per value).")
def report_cmd(run_dir: Path, by: str | None) -> None:
    """Method x dataset table of a run (also written as summary.md and summary.csv); of a sweep
    directory, one table per grid dimension and the rows of every grid point."""
    from harness.bench.report import report
    from harness.sweep.report import is_sweep, sweep_report

    try:
        click.echo(sweep_report(run_dir) if is_sweep(run_dir) else report(run_dir, by=(by,) if by else ()))
    except ResultsError as err:
        fail(err)


COMMANDS = (list_cmd, setup, run, report_cmd)

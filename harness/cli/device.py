"""`spec-harness doctor | gpu-check`: whether a model, and the harness as a whole, run correctly
and lean on this machine's device."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from harness.cli.common import (
    USER_ERRORS,
    FiniteFloat,
    InputError,
    check_context,
    device_option,
    dtype_option,
    fail,
    model_config,
    user_errors,
)
from harness.core.modelload import cache_root, unwritable_dir


@click.command()
@click.option("--model", required=True, help="'smollm2' (embedded), an HF hub id or a local HF directory.")
@device_option
@dtype_option
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=32, show_default=True,
              help="Tokens decoded per prompt.")
def doctor(model, device, dtype, max_new_tokens) -> None:
    """Load MODEL, check its architecture is supported, that ar == transformers generate() on two
    prompts, and print dtype, memory, c(1) and c(8)/c(1)."""
    from harness.analysis.doctor import doctor as run_doctor
    from harness.analysis.doctor import render

    try:
        check_context(model_config(model), max_new_tokens)
        report = run_doctor(model, device, dtype, max_new_tokens)
    except (*USER_ERRORS, ValueError) as err:
        fail(err)
    click.echo(render(report))
    sys.exit(0 if all(report["ar_equals_generate"]) or (report["divergence"] or {}).get("tie") else 1)


@click.command("gpu-check")
@device_option
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Output directory (default results/gpu/<gpu-name>-<date>/; CPU: build/gpu-check/cpu-<date>/).")
@click.option("--budget", type=FiniteFloat(min=0, min_open=True), default=420.0, show_default=True,
              help="Seconds; sections not started by then are skipped (and say so; a run that checked "
                   "nothing fails).")
@click.option("--shapes", default=None, help="Two random-weight shapes, smaller,larger "
              "(default llama-1b,llama-7b on CUDA, tiny-gqa,tiny-mha on the CPU).")
@click.option("--no-tests", is_flag=True, help="Skip the CUDA test file.")
@click.option("--no-embedded", is_flag=True, help="Skip the embedded model.")
def gpu_check(device, out, budget, shapes, no_tests, no_embedded) -> None:
    """One short network-free check of the GPU path: CUDA tests, every method lossless with its tau on
    random-weight Llama shapes (bf16) and the embedded model, c(n) vs the bandwidth bound, ar /
    ar-graph / generate() tokens/s, syncs per step, NVML, drafter training. Exit 1 on a failed check."""
    from harness.analysis import gpucheck, gpucheck_report

    with user_errors():
        sizes = _gpu_check_sizes(device, shapes)
        if not no_embedded:
            cache_root()  # where the embedded model is looked for
        if out is not None and (why := unwritable_dir(out)):
            raise InputError(f"--out {out}: {why}")
    result = gpucheck.run_check(device, sizes, budget, tests=not no_tests, embedded=not no_embedded)
    path, rows = gpucheck_report.write(result, out)
    for name, status, detail in rows:
        click.echo(f"{status:>7}  {name}: {detail}")
    click.echo(f"{result['verdict']}; wrote {path}/gpu_check.json and summary.md ({result['seconds']:.0f} s)")
    sys.exit(0 if result["ok"] else 1)


def _gpu_check_sizes(device: str, shapes: str | None):
    """The sizes for the device, with --shapes (two known shapes, smaller,larger) when given."""
    from dataclasses import replace

    from harness.analysis import gpucheck

    sizes = gpucheck.GPU_SIZES if device.startswith("cuda") else gpucheck.CPU_SIZES
    if not shapes:
        return sizes
    names = tuple(s.strip() for s in shapes.split(","))
    if len(names) != 2 or any(s not in gpucheck.SHAPES for s in names):
        raise click.BadParameter(f"two of {', '.join(gpucheck.SHAPES)}", param_hint="--shapes")
    return replace(sizes, shapes=names)


COMMANDS = (doctor, gpu_check)

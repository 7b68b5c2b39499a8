"""`spec-harness sweep`: a grid of runs cut into shards, on this process or a Ray cluster."""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

import click

from harness.cli.common import USER_ERRORS, fail


@click.command()
@click.argument("sweep_file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--executor", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="local: shards one after another in this process (no Ray needed); ray: one worker per device "
                   "of a Ray cluster (pip install 'spec-harness[ray]').")
@click.option("--address", default=None, help="Ray: the cluster to join, auto (the one this node belongs to) or "
                                                "HOST:PORT; default: a Ray instance started for this sweep.")
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="Ray: worker actors (default: one per GPU of the cluster; without GPUs, its CPUs / "
                   "--cpus-per-worker). For timings on a CPU machine, 1.")
@click.option("--cpus-per-worker", type=click.FloatRange(min=0.01), default=1.0, show_default=True,
              help="Ray: CPUs each worker reserves.")
@click.option("--retries", type=click.IntRange(min=0), default=3, show_default=True,
              help="Ray: times a shard is handed to a new worker after its worker died.")
@click.option("--resume", is_flag=True, help="Continue the sweep in the file's `out`: shards already merged are kept.")
def sweep(sweep_file, executor, address, workers, cpus_per_worker, retries, resume) -> None:
    """Run every grid point of SWEEP_FILE (TOML; README "Sweeps") in shards, each shard with every
    method, baseline and A/A control, and merge them into one run directory per point.

    The whole file is validated (every point as `run` validates it) before any worker starts."""
    from harness.sweep.driver import prepare, run_sweep
    from harness.sweep.executors import ExecutorError
    from harness.sweep.executors import executor as make
    from harness.sweep.report import sweep_report
    from harness.sweep.shards import cut
    from harness.sweep.spec import SweepError

    errors = (*USER_ERRORS, SweepError, ExecutorError)
    try:
        plan = prepare(sweep_file, resume)
        runner = make(executor, **({} if executor == "local" else {
            "address": address, "workers": workers, "cpus_per_worker": cpus_per_worker, "retries": retries}))
        click.echo(f"sweep: {len(plan.points)} grid point(s), {len(cut(plan))} shard(s) of up to {plan.shard_size} "
                   f"samples -> {plan.out}", err=True)
        result = run_sweep(plan, runner, resume)
    except KeyboardInterrupt:
        click.echo(f"\ninterrupted: merged shards are kept; continue with spec-harness sweep {sweep_file} --resume",
                   err=True)
        sys.exit(130)
    except errors as err:
        fail(err)
    click.echo(sweep_report(result.out))
    overhead = ""
    if result.overhead and executor == "ray":
        ms = sorted(1000 * o for o in result.overhead)
        overhead = f"; Ray's overhead per shard: median {statistics.median(ms):.0f} ms, max {ms[-1]:.0f} ms"
    click.echo(f"\n{len(result.run)} shard(s) decoded, {result.shards - len(result.run)} already merged{overhead}")


COMMANDS = (sweep,)

"""The command line (`spec-harness`, also `python -m harness`): click commands, one module per
command group, assembled into the `main` group here.

- common.py: the user errors and the failure helper every command shares;
- run.py: list, setup, run, report;  train.py: train (train_eagle3.py: train eagle3);
- analyze.py: analyze;  tune.py: tune;
- analysis.py: figures, costmodel, regress;  device.py: doctor, gpu-check;  plan.py: plan;
- sweep.py: sweep (a grid of runs in shards, local or on Ray).

May import everything below it (analysis, train, bench, core, methods); nothing imports it.
"""

from __future__ import annotations

import click

from harness.cli import (
    analysis,
    analyze,
    device,
    plan,
    run,
    sweep,
    train,
    train_eagle3,
    tune,
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Benchmark speculative decoding methods behind one decode loop."""


train.train.add_command(train_eagle3.COMMAND)
for _command in (*run.COMMANDS, *train.COMMANDS, *analyze.COMMANDS, *tune.COMMANDS, *analysis.COMMANDS,
                 *device.COMMANDS, *plan.COMMANDS, *sweep.COMMANDS):
    main.add_command(_command)

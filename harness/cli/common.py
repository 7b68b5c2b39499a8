"""What every command shares: the user errors (each printed as one line, exit status 2), the
failure helper, the --device/--dtype options, small option parsers, and the checks every command
runs on its inputs before any work: static bounds as click types (IntRange, FiniteFloat: click's
usage error, exit 2), model-dependent ones against the model's config, read without its weights
(model_config, check_layers, check_context: `error: ...`, exit 2)."""

from __future__ import annotations

import math
import sys
from contextlib import contextmanager
from pathlib import Path

import click

from harness.bench.data import DataError
from harness.bench.request import csv, parse_method_args  # noqa: F401 (commands import them from here)
from harness.bench.results import ResultsError
from harness.bench.validate import check_budget
from harness.core.checkpoint import CheckpointError
from harness.core.method import MethodError
from harness.core.modelload import (
    DTYPES,
    ModelLoadError,
    cache_root,
    check_supported,
    load_config,
    resolve_device,
    unwritable_dir,
)


class InputError(ValueError):
    """A command-line value that cannot be used (with this model); the message names the option."""


USER_ERRORS = (MethodError, DataError, ModelLoadError, ResultsError, CheckpointError, KeyError, InputError)


def fail(err: Exception) -> None:
    """Print `error: <message>` on stderr and exit with status 2."""
    msg = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
    click.echo(f"error: {msg}", err=True)
    sys.exit(2)


@contextmanager
def user_errors(*extra: type[Exception]):
    """Inside it, a user error (USER_ERRORS, and `extra`) ends the command: one line, exit 2.
    Wrap the checks and the loading, not the work: a bug there keeps its traceback."""
    try:
        yield
    except (*USER_ERRORS, *extra) as err:
        fail(err)


class FiniteFloat(click.FloatRange):
    """click.FloatRange that also refuses nan and inf (which pass any range check)."""

    def convert(self, value, param, ctx):
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{number} is not a finite number.", param, ctx)
        return number


def _device(ctx, param, value: str) -> str:
    try:
        return resolve_device(value)
    except ModelLoadError as err:
        raise click.BadParameter(str(err), ctx=ctx, param=param) from None


def device_option(fn):
    """`--device auto|cpu|cuda|cuda:N`, validated by modelload.resolve_device for every command."""
    return click.option("--device", default="auto", show_default=True, callback=_device,
                        help="auto, cpu, cuda or cuda:N (as torch numbers the visible GPUs).")(fn)


def dtype_option(fn):
    """`--dtype`, default: float32 on CPU; on CUDA the model's own dtype (float32 -> bfloat16)."""
    return click.option("--dtype", type=click.Choice(list(DTYPES)), default=None,
                        help="Default: float32 on CPU; on CUDA the dtype in the model's config, "
                             "float32 there becoming bfloat16 (README, GPU).")(fn)


def ints(text: str, option: str) -> tuple[int, ...]:
    """'12,14,16' -> (12, 14, 16); InputError naming the option otherwise."""
    try:
        return tuple(int(x) for x in csv(text))
    except ValueError:
        raise InputError(f"{option} {text!r}: expected comma-separated integers, e.g. 2,4,8") from None


def model_config(model: str):
    """The model's transformers config, read without its weights, after checking the cache
    directory: what a command checks its model-dependent options against before any work
    (an unsupported architecture is refused here too)."""
    cache_root()
    config = load_config(model)
    check_supported(config)
    return config


def check_layers(config, option: str, layers: tuple[int, ...] | list[int]) -> None:
    """Every index in `layers` names one of the model's layers (0 .. num_hidden_layers - 1)."""
    total = config.num_hidden_layers
    if not layers or any(not 0 <= i < total for i in layers):
        raise InputError(f"{option} {','.join(map(str, layers)) or '(none)'}: the model has layers 0..{total - 1} "
                         f"({total} in all)")


def check_context(config, max_new_tokens: int, option: str = "--max-new-tokens") -> None:
    """`max_new_tokens` (with room for draft rows) fits the model's context, as `run` checks."""
    check_budget(int(getattr(config, "max_position_embeddings", None) or 1 << 30), max_new_tokens, option)


def check_out_file(path: Path, option: str = "--out") -> None:
    """A file can be written at `path`: not a directory, and its directory exists or can be made."""
    if path.is_dir():
        raise InputError(f"{option} {path} is a directory; give a file path")
    why = unwritable_dir(path.parent)
    if why:
        raise InputError(f"{option} {path}: {why}")

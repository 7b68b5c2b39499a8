"""What every command shares: the user errors (each printed as one line, exit status 2), the
failure helper, the --device/--dtype options, and small option parsers."""

from __future__ import annotations

import sys

import click

from harness.bench.data import DataError
from harness.bench.results import ResultsError
from harness.core.checkpoint import CheckpointError
from harness.core.method import MethodError
from harness.core.modelload import DTYPES, ModelLoadError, resolve_device

USER_ERRORS = (MethodError, DataError, ModelLoadError, ResultsError, CheckpointError, KeyError)


def fail(err: Exception) -> None:
    """Print `error: <message>` on stderr and exit with status 2."""
    msg = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
    click.echo(f"error: {msg}", err=True)
    sys.exit(2)


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


def csv(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def parse_method_args(items: tuple[str, ...]) -> dict[str, dict[str, str]]:
    """NAME.KEY=VALUE items -> {name: {key: value}} (values typed later by each method)."""
    out: dict[str, dict[str, str]] = {}
    for item in items:
        head, sep, value = item.partition("=")
        name, dot, key = head.partition(".")
        if not sep or not dot or not name or not key:
            raise MethodError(f"--method-arg {item!r}: expected NAME.KEY=VALUE, e.g. firp.tree=chain")
        out.setdefault(name, {})[key] = value
    return out

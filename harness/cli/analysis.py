"""`spec-harness figures | costmodel | regress`: figures from results files, the forward-cost
model of the target, and the CI regression check of a run against a reference run."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from harness.cli.common import (
    USER_ERRORS,
    FiniteFloat,
    InputError,
    check_out_file,
    device_option,
    dtype_option,
    fail,
    ints,
    model_config,
)
from harness.core.modelload import DEFAULT_MODEL, model_key, unwritable_dir

_DIR = click.Path(exists=True, file_okay=False, path_type=Path)
_FILE = click.Path(exists=True, dir_okay=False, path_type=Path)


def _user_errors():
    return (*USER_ERRORS, ValueError, OSError)


@click.command()
@click.argument("run_dir", type=_DIR)
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Output directory (default: RUN_DIR/figures).")
@click.option("--costmodel", "costmodel_json", type=_FILE, default=None,
              help="Cost-model JSON (`spec-harness costmodel`): adds the measured-vs-bound figure.")
@click.option("--analysis", "analysis_json", type=_FILE, default=None,
              help="analysis.json (`spec-harness analyze firp`): adds Figures 3-5.")
def figures(run_dir: Path, out: Path | None, costmodel_json: Path | None, analysis_json: Path | None) -> None:
    """Every figure (PNG + the CSV behind it) from a run directory and optional JSON inputs."""
    from harness.analysis.figures import make_all
    from harness.core.planning.costmodel import read

    out = out or run_dir / "figures"
    try:
        if costmodel_json is not None:
            read(costmodel_json)  # validated before any figure is drawn
        if why := unwritable_dir(out):
            raise InputError(f"--out {out}: {why}")
        written = make_all(run_dir, out, costmodel_json, analysis_json)
    except _user_errors() as err:
        fail(err)
    for path in written:
        click.echo(f"wrote {path}")


@click.command()
@click.option("--model", default=DEFAULT_MODEL, show_default=True, help="'smollm2' (embedded), an HF hub id or a local HF directory.")
@device_option
@dtype_option
@click.option("--prefix", type=click.IntRange(min=1), default=256, show_default=True,
              help="Committed positions in the KV cache before the timed rows.")
@click.option("--repeats", type=click.IntRange(min=1), default=7, show_default=True,
              help="Timed forwards per n (median kept), after 2 warm-up rounds.")
@click.option("--n", "ns", default=None, help="Comma-separated row counts (default 1-16, then every 4th up to 64).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Output JSON (default: results/costmodel/<model>-<device>-<dtype>.json).")
@click.option("--drafts", default=None, metavar="METHODS",
              help="Also time these methods' draft operations (a head or draft-model forward, in units of c(1)) "
                   "and their decode loop's overhead per step (on four tuning prompts at 128 tokens, at the shape "
                   "each plans) for planning their auto shapes on this machine: comma-separated, or 'all'.")
@click.option("--update", type=_FILE, default=None,
              help="Keep this cost-model JSON's c(n) and re-measure only --drafts into it (written back, or to --out).")
@click.option("--linear", type=click.Choice(["auto", "off"]), default="auto", show_default=True,
              help="Linear formulations the model runs with, as `run --linear` (the cost model records which).")
def costmodel(model, device, dtype, prefix, repeats, ns, out, drafts, update, linear) -> None:
    """Target forward latency c(n) for n new rows (a verification forward) and c(n)/c(1)."""
    from harness.analysis import costmodel as cm
    from harness.bench.results import write_json

    try:
        n_values, result = _costmodel_inputs(model, prefix, ns, out, drafts, update)
        result = result or cm.run(model, device, dtype, prefix, repeats, n_values, linear)
        path = out or update or cm.default_out(result)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path, result)
        if drafts:
            _planning_costs(model, device, dtype, drafts, path, result, linear)
    except _user_errors() as err:
        fail(err)
    click.echo(f"{'n':>4} {'c(n) ms':>9} {'c(n)/c(1)':>10}")
    for n, sec, ratio in zip(result["n"], result["seconds"], result["ratio"]):
        click.echo(f"{n:>4} {1000 * sec:>9.2f} {ratio:>10.2f}")
    if "roofline_s" in result:
        click.echo(f"roofline: {1000 * result['roofline_s']:.2f} ms for one row through every linear layer and the LM "
                   f"head ({result.get('linear', 'F.linear')}); c(1) is {result['seconds'][0] / result['roofline_s']:.2f}x it")
    for key, ratio in result.get("drafts", {}).items():
        click.echo(f"draft {key}: {ratio:.3f} c(1)")
    for key, ratio in result.get("overheads", {}).items():
        click.echo(f"overhead {key}: {ratio:+.3f} c(1) per step")
    click.echo(f"wrote {path}")


def _costmodel_inputs(model: str, prefix: int, ns: str | None, out: Path | None, drafts: str | None,
                      update: Path | None) -> tuple[tuple[int, ...], dict | None]:
    """Everything `costmodel` is given, checked before any model is loaded: the row counts (>= 1,
    fitting the model's context after the prefix), the methods of --drafts, the file to --update
    (a valid cost model of this model) and --out. Returns (n values, the --update cost model or None)."""
    import methods as registry
    from harness.analysis import costmodel as cm
    from harness.core.planning.costmodel import check_model, read

    if update and not drafts:
        raise click.UsageError("--update re-measures the draft costs and overheads: give --drafts METHODS too")
    n_values = ints(ns, "--n") if ns else cm.DEFAULT_NS
    if not n_values or min(n_values) < 1:
        raise InputError(f"--n {ns!r}: row counts must be at least 1")
    context = int(getattr(model_config(model), "max_position_embeddings", None) or 1 << 30)
    if not update and prefix + max(n_values) > context:
        raise InputError(f"--prefix {prefix} + {max(n_values)} rows exceeds the model's context of {context}")
    for name in [] if drafts in (None, "all") else drafts.split(","):
        registry.get(name.strip())
    result = read(update) if update else None
    if result is not None:
        check_model(result, update, model_key(model))
    if out is not None:
        check_out_file(out)
    return n_values, result


def _planning_costs(model: str, device: str, dtype: str | None, drafts: str, path: Path, result: dict,
                    linear: str = "auto") -> None:
    """Adds the draft costs, then the step overheads at the shapes planned with them, to the cost
    model written at `path` (rewritten after each)."""
    from harness.analysis.plans import draft_costs, planners, step_overheads
    from harness.bench.results import write_json
    from harness.cli.common import csv
    from harness.core.engine import Engine
    from harness.core.modelload import load_model

    lm = load_model(model, device, dtype, linear)
    names = planners(lm.key) if drafts == "all" else csv(drafts)
    result["drafts"] = draft_costs(Engine(lm.model), lm.key, names, {})
    write_json(path, result)
    result["overheads"] = step_overheads(lm, names, {}, str(path))
    write_json(path, result)


@click.command()
@click.argument("run_dir", type=_DIR)
@click.option("--baseline", "ref_dir", type=_DIR, required=True, help="Reference run directory.")
@click.option("--speedup-margin", type=FiniteFloat(min=0), default=None,
              help="Allowed drop below the reference's 95% CI low of the median speedup (default 0.05).")
def regress(run_dir: Path, ref_dir: Path, speedup_margin: float | None) -> None:
    """Compare RUN_DIR with a reference run: exit 1 on a changed tau or lossless rate, a
    speedup below the reference interval, or a missing method/dataset; 0 otherwise."""
    from harness.bench.regress import DEFAULT_MARGIN, compare, render

    margin = DEFAULT_MARGIN if speedup_margin is None else speedup_margin
    try:
        cmp = compare(run_dir, ref_dir, margin)
    except _user_errors() as err:
        fail(err)
    click.echo(render(cmp, margin))
    sys.exit(0 if cmp.ok else 1)


@click.command("linear-gain")
@click.option("--model", default=DEFAULT_MODEL, show_default=True, help="'smollm2' (embedded), an HF hub id or a local HF directory.")
@device_option
@dtype_option
@click.option("--n", "ns", default="1-32", show_default=True, help="Row counts: comma-separated, or LO-HI.")
@click.option("--repeats", type=click.IntRange(min=1), default=7, show_default=True, help="Timed rounds (median kept), after 2 warm-up rounds.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Output JSON (default: results/linear/<model>-<device>-<dtype>.json).")
def linear_gain(model, device, dtype, ns, repeats, out) -> None:
    """c(n), the bare-linear roofline and ar's time per token with F.linear, with the linear
    formulations chosen for this machine, and with those and the lean decoder layers, timed in
    turns in one process (a timing: idle machine)."""
    from harness.analysis.linear_gain import compare, render
    from harness.bench.results import write_json

    try:
        lo, dash, hi = ns.partition("-")
        n_values = tuple(range(int(lo), int(hi) + 1)) if dash else ints(ns, "--n")
        if not n_values or min(n_values) < 1:
            raise InputError(f"--n {ns!r}: row counts must be at least 1")
        if out is not None:
            check_out_file(out)
        result = compare(model, device, dtype, n_values, repeats=repeats)
        path = out or Path("results/linear") / f"{result['model']}-{result['device'].split(':')[0]}-{result['dtype']}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path, result)
    except (ValueError, *_user_errors()) as err:
        fail(err)
    click.echo(render(result))
    click.echo(f"wrote {path}")


COMMANDS = (figures, costmodel, regress, linear_gain)

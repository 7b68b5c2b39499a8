"""The sweep file (TOML): `run`'s options shared by every grid point, and a grid whose every
combination is one run. Everything is checked here, every point through the same validation as
`spec-harness run`, before any worker starts.

    out = "results/sweeps/example"   # one run directory per grid point under it
    shard_size = 2                    # samples of one dataset per shard

    [run]                             # options of `spec-harness run`, named as its flags
    methods = "pld,firp"              # (dashes or underscores; method_arg a list of NAME.KEY=VALUE)
    datasets = "gsm8k,mt-bench"
    num_samples = 4

    [grid]                            # a list of values per option: the points are their product
    temperature = ["0", "1"]
    batch_size = ["1", "1,2"]
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib

from harness.bench import rundir
from harness.bench.data import DataError
from harness.bench.request import RUN_OPTIONS, run_config
from harness.bench.results import RESULTS_ROOT, ResultsError
from harness.bench.validate import ValidRun, validate
from harness.core.checkpoint import CheckpointError
from harness.core.modelload import ModelLoadError
from harness.core.options import MethodError

TOP_KEYS = {"out", "shard_size", "run", "grid"}
RUN_ERRORS = (DataError, ResultsError, ModelLoadError, MethodError, CheckpointError, KeyError)  # what `run` refuses
SWEEP_FILE = "sweep.json"  # in the sweep directory: the parsed sweep, its points and dimensions


class SweepError(ValueError):
    """A sweep file that cannot be run as written; the message names the file and the key."""


@dataclass
class Point:
    """One run of the grid: its name (its directory under the sweep's), its grid values, and
    every option of the run."""

    name: str
    values: dict[str, Any]
    options: dict[str, Any]
    valid: ValidRun | None = None

    def out(self, root: Path) -> Path:
        return root / self.name


@dataclass
class Sweep:
    path: Path
    out: Path
    shard_size: int
    dimensions: list[str]
    points: list[Point] = field(default_factory=list)

    def describe(self) -> dict:
        return {"file": str(self.path), "out": str(self.out), "shard_size": self.shard_size,
                "dimensions": self.dimensions, "points": {p.name: p.values for p in self.points}}


def _typed(where: str, key: str, value: Any) -> Any:
    """A value of `run` option `key` as the request wants it (numbers for text options accepted)."""
    kind = RUN_OPTIONS[key][0]
    if kind is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind is list and isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise SweepError(f"{where}.{key} = {value!r}: expected {'a list of strings' if kind is list else kind.__name__}")
    return value


def _options(where: str, table: Any, grid: bool) -> dict[str, Any]:
    if not isinstance(table, dict):
        raise SweepError(f"{where}: expected a table of `run` options")
    out = {}
    for raw, value in table.items():
        key = raw.replace("-", "_")
        if key not in RUN_OPTIONS:
            raise SweepError(f"{where}.{raw}: not an option of `spec-harness run` (one of {', '.join(RUN_OPTIONS)})")
        if grid:
            if not isinstance(value, list) or not value:
                raise SweepError(f"{where}.{raw}: expected a non-empty list of values, one per grid point")
            out[key] = [_typed(where, key, v) for v in value]
        else:
            out[key] = _typed(where, key, value)
    return out


def point_name(values: dict[str, Any]) -> str:
    """A directory name from a point's grid values, e.g. temperature=0__batch_size=1,2."""
    if not values:
        return "run"
    text = "__".join(f"{k}={','.join(v) if isinstance(v, tuple) else v}" for k, v in values.items())
    return re.sub(r"[^A-Za-z0-9._=,+-]", "-", text)


def read_sweep(path: Path) -> dict:
    try:
        return tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SweepError(f"sweep file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise SweepError(f"cannot read {path}: {err}") from None
    except tomllib.TOMLDecodeError as err:
        raise SweepError(f"{path}: not valid TOML ({err})") from None


def load_sweep(path: Path, resume: bool = False) -> Sweep:
    """The sweep of a file, every point validated as `run` validates it (a SweepError, or the
    user error `run` would raise, prefixed with the point); nothing is written."""
    raw, where = read_sweep(path), Path(path).name
    unknown = set(raw) - TOP_KEYS
    if unknown:
        raise SweepError(f"{where}: unknown key(s) {', '.join(sorted(unknown))} (expected {', '.join(sorted(TOP_KEYS))})")
    shared = _options(f"{where}: [run]", raw.get("run", {}), grid=False)
    grid = _options(f"{where}: [grid]", raw.get("grid", {}), grid=True)
    both = set(shared) & set(grid)
    if both:
        raise SweepError(f"{where}: {', '.join(sorted(both))} in both [run] and [grid]; keep one")
    size = raw.get("shard_size", 4)
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise SweepError(f"{where}: shard_size = {size!r}: expected a whole number >= 1")
    out = Path(raw.get("out") or RESULTS_ROOT / "sweeps" / Path(path).stem)
    sweep = Sweep(Path(path), out, size, list(grid))
    for combo in itertools.product(*grid.values()):
        values = dict(zip(grid, combo))
        sweep.points.append(Point(point_name(values), values, {**shared, **values}))
    names = [p.name for p in sweep.points]
    if len(set(names)) < len(names):
        raise SweepError(f"{where}: two grid points share a directory name; make the [grid] values distinct")
    for point in sweep.points:
        point.valid = check_point(sweep, point, resume)
    return sweep


def check_point(sweep: Sweep, point: Point, resume: bool) -> ValidRun:
    """The point validated as `run` would validate it (its directory resumed only with --resume)."""
    out = point.out(sweep.out)
    begun = (out / "manifest.json").exists()  # records without a manifest: a first shard half-merged, dropped
    try:
        cfg = run_config(out=out, resume=resume and begun, overwrite=resume and not begun and rundir.holds_run(out),
                         **point.options)
        valid = validate(cfg)
    except RUN_ERRORS as err:  # a user error of `run`: said with the point it belongs to
        detail = err.args[0] if isinstance(err, KeyError) and err.args else err
        raise SweepError(f"{Path(sweep.path).name}: grid point {point.name}: {detail}") from None
    largest = max(cfg.batch_sizes)
    if sweep.shard_size % largest:
        raise SweepError(f"{Path(sweep.path).name}: shard_size {sweep.shard_size} is not a multiple of batch size "
                         f"{largest} (grid point {point.name}): a shard must hold whole batches, as `run` groups them")
    return valid


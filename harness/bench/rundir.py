"""The output directory of a run: checked before anything is loaded or written, created (or
emptied, for --overwrite) only once everything else has been validated, and resumed only with
exactly the request that started it.

A run directory holds manifest.json, records.jsonl, summary.md/.csv, summary-<by>.md/.csv
(`report --by`) and figures/ (all written by the harness); --overwrite removes all of it, and
refuses a directory holding anything else.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
from pathlib import Path

from harness.bench.results import RESULTS_ROOT, ResultsError
from harness.bench.runlock import LOCK_NAME, RunLock, holder, refusal

RUN_FILES = {"manifest.json", "records.jsonl", "summary.md", "summary.csv", "figures", "manifest.tmp", LOCK_NAME}
BY_SUMMARY = re.compile(r"summary(-[A-Za-z0-9_]+)+\.(md|csv)")  # `report --by COLUMN [--by ...]`
DEFAULT_ROOT = RESULTS_ROOT / "runs"


def holds_run(out: Path) -> bool:
    return (out / "manifest.json").exists() or (out / "records.jsonl").exists()


def _nearest_existing(path: Path) -> Path:
    for parent in [path, *path.parents]:
        if parent.exists():
            return parent
    return Path("/")


def check_writable(out: Path) -> None:
    """`out` is a directory or can be made one: no file in the way, and the nearest existing
    directory accepts new entries (probed by creating and removing a temporary directory)."""
    if out.exists() and not out.is_dir():
        raise ResultsError(f"--out {out} is a file, not a directory; choose another --out")
    base = _nearest_existing(out)
    if not base.is_dir():
        raise ResultsError(f"--out {out}: {base} is a file, so no directory can be made under it")
    try:
        Path(tempfile.mkdtemp(prefix=".spec-harness-probe-", dir=base)).rmdir()
    except OSError as err:
        raise ResultsError(f"--out {out}: cannot write under {base} ({err.strerror}); choose another --out") from None


def check_out(out: Path | None, resume: bool, overwrite: bool) -> None:
    """Refuse to mix runs or to lose files; raises before anything is loaded or written."""
    if resume and overwrite:
        raise ResultsError("--resume and --overwrite exclude each other")
    if out is None:
        if resume or overwrite:
            raise ResultsError("--resume and --overwrite need --out (the run directory to continue or replace)")
        check_writable(DEFAULT_ROOT)
        return
    check_writable(out)
    who = holder(out) if out.is_dir() else None
    if who:
        raise refusal(out, who)
    exists = holds_run(out)
    if exists and not (resume or overwrite):
        raise ResultsError(f"{out} already holds a run; pass --resume to continue it or --overwrite to replace it")
    if resume and not exists:
        raise ResultsError(f"--resume: {out} holds no run to continue")
    if overwrite and out.is_dir():
        foreign = sorted(p.name for p in out.iterdir() if p.name not in RUN_FILES and not BY_SUMMARY.fullmatch(p.name))
        if foreign:
            raise ResultsError(f"--overwrite: {out} holds files the harness did not write ({', '.join(foreign[:5])}); "
                               "remove them or choose another --out")


def create(out: Path | None, overwrite: bool) -> tuple[Path, RunLock]:
    """The run directory, ready to write, and its lock, held: the default one made unique (created
    atomically, so two runs started in the same second get two directories); an overwritten one
    emptied completely once the lock is held (never while another run writes it)."""
    if out is None:
        DEFAULT_ROOT.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        for i in range(1000):
            path = DEFAULT_ROOT / (stamp if i == 0 else f"{stamp}-{i}")
            try:
                path.mkdir()
                return path, RunLock(path).acquire()
            except FileExistsError:
                continue
        raise ResultsError(f"no free run directory name under {DEFAULT_ROOT} for {stamp}")
    lock = RunLock(out).acquire()
    if overwrite:
        for entry in out.iterdir():
            if entry.name != LOCK_NAME:
                shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
    return out, lock


def check_resume(out: Path, request: dict) -> dict:
    """The manifest of the run in `out`, if it was started with exactly `request`; else an error
    naming every differing key."""
    path = out / "manifest.json"
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
        before = old["request"]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as err:
        raise ResultsError(f"--resume: {path} is not a readable manifest of this harness ({err}); "
                           "use a new --out") from None
    diff = sorted(k for k in request.keys() | before.keys() if request.get(k) != before.get(k))
    if diff:
        detail = "; ".join(f"{k}: {before.get(k)!r} -> {request.get(k)!r}" for k in diff[:6])
        raise ResultsError(f"--resume: {out} was started with different {', '.join(diff)} ({detail}); "
                           "resume with the same options or use a new --out")
    return old


def check_resumed_samples(old: dict, samples: dict[str, list[str]], num_samples: int | None) -> None:
    """A resumed run measures at least the items it already holds (a larger --num-samples extends
    it; a smaller one would leave records the manifest no longer lists): else an error."""
    lost = {d: [i for i in ids if i not in samples.get(d, [])] for d, ids in (old.get("samples") or {}).items()}
    lost = {d: ids for d, ids in lost.items() if ids}
    if lost:
        held = ", ".join(f"{d}: {len(old['samples'][d])} items" for d in lost)
        raise ResultsError(f"--resume --num-samples {num_samples}: the run already holds more ({held}); resume "
                           f"with --num-samples {old.get('num_samples') or 'unset'} or more (and each NAME@N of "
                           f"{old.get('dataset_counts') or 'none'} or more), or use a new --out")


def fsync_dir(path: Path) -> None:
    """Make a directory entry durable (after an atomic rename into it)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

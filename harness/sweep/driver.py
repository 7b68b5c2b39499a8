"""The sweep driver: the sweep validated whole (spec.py) before any worker starts, the shards
still to do handed to the executor, each finished shard committed to its point exactly once
(store.py). A driver that dies loses at most the shards in flight: `--resume` runs the rest."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from harness.sweep.shards import cut
from harness.sweep.spec import Sweep, load_sweep
from harness.sweep.store import open_sweep


@dataclass
class SweepResult:
    out: Path
    shards: int  # in the sweep
    run: list[str] = field(default_factory=list)  # shard ids decoded by this call
    overhead: list[float] = field(default_factory=list)  # seconds per shard spent outside the shard's own run


def prepare(path: Path, resume: bool = False) -> Sweep:
    """The sweep of a file, validated entirely (a SweepError or `run`'s own user error)."""
    return load_sweep(Path(path), resume)


def run_sweep(sweep: Sweep, executor, resume: bool = False, progress: bool = True) -> SweepResult:
    """Decode every shard not yet committed, on `executor`; commit each as it finishes."""
    stores = open_sweep(sweep, resume)
    try:
        shards = cut(sweep)
        todo = [s for s in shards if s.id not in stores[s.point].done]
        result = SweepResult(sweep.out, len(shards))
        with tqdm(total=len(shards), initial=len(shards) - len(todo), desc=f"sweep ({executor.name})", unit="shard",
                  disable=not progress) as bar:
            for shard, outcome in executor.run(todo):
                stores[shard.point].commit(outcome, shard)
                result.run.append(shard.id)
                bar.update(1)
        result.overhead = list(executor.overhead)
        return result
    finally:
        for store in stores.values():
            store.close()


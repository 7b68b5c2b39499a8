"""Shards and the worker that decodes them.

A shard is a run of a few consecutive samples of one dataset of a grid point (whole batches:
shard_size is a multiple of the point's largest batch size), with every method of the point,
its baseline and A/A control included, so each speedup is paired within the shard, on one
device. A worker loads each model once and decodes shard after shard: each as a `Runner` over
its samples only, in a scratch directory of its own (the untimed warm-up only in a point's first
shard in this process: the process is warm after it); it hands back the records (stamped with the
shard and the hardware they were timed on) and where they were made. Nothing reaches the sweep
directory from a worker: the driver writes it.
"""

from __future__ import annotations

import shutil
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path

from harness.bench.records_io import load_run
from harness.bench.request import run_config
from harness.bench.results import base_manifest, hardware_id
from harness.sweep.spec import Sweep


@dataclass(frozen=True)
class Shard:
    point: str  # the grid point's name
    dataset: str
    index: int  # its place among the dataset's shards
    samples: tuple[str, ...]  # sample ids, in the run's measured order
    options: tuple[tuple[str, object], ...]  # the point's `run` options

    @property
    def id(self) -> str:
        return f"{self.point}/{self.dataset}/{self.index}"


def cut(sweep: Sweep) -> list[Shard]:
    """Every point's measured samples, per dataset, in runs of shard_size (the last may be shorter)."""
    shards = []
    for point in sweep.points:
        options = tuple(sorted(point.options.items()))
        for dataset, items in point.valid.samples.items():
            ids = [s.sample_id for s in items]
            for i in range(0, len(ids), sweep.shard_size):
                shards.append(Shard(point.name, dataset, i // sweep.shard_size, tuple(ids[i:i + sweep.shard_size]),
                                    options))
    return shards


class ShardWorker:
    """Decodes shards (on a Ray cluster, one actor per device: harness/sweep/executors.py)."""

    def __init__(self):
        self._models: dict[tuple, object] = {}  # (model, device, dtype, linear) -> loaded once
        self._warmed: set[tuple] = set()  # points this process has warmed up (later shards skip it)

    def model(self, cfg):
        from harness.core.modelload import load_model

        key = (cfg.model, cfg.device, cfg.dtype, cfg.linear)
        if key not in self._models:
            self._models[key] = load_model(cfg.model, cfg.device, cfg.dtype, cfg.linear)
        return self._models[key]

    def run(self, shard: Shard) -> dict:
        """{shard, records, manifest, provenance} of one shard, decoded in a scratch directory."""
        from harness.bench.runner import Runner

        scratch = Path(tempfile.mkdtemp(prefix="spec-harness-shard-"))
        try:
            cfg = run_config(out=scratch / "run", **dict(shard.options))
            cfg.only = {shard.dataset: list(shard.samples)}
            cfg.warmup = cfg.warmup and shard.options not in self._warmed  # once per point and process
            self._warmed.add(shard.options)
            runner = Runner(cfg, progress=False, lm=self.model(cfg))
            runner.run()
            manifest, records = load_run(runner.out)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        made = base_manifest(manifest["device"])
        provenance = {"host": socket.gethostname(), "hardware": made["hardware"], "libraries": made["libraries"],
                      "git": made["git"], "session": manifest["session"], "warmed_up": cfg.warmup}
        where = hardware_id(made["hardware"])
        records = [{**r, "shard": shard.id, "hardware": where} for r in records]
        return {"shard": shard.id, "records": records, "manifest": manifest, "provenance": provenance}

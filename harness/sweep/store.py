"""A sweep's directory as the driver fills it: sweep.json (the parsed sweep), and per grid point
the usual run directory (manifest.json + records.jsonl, readable by `report`, `figures`,
`regress`).

A shard is committed in two steps, each atomic: its records are appended in one write, flushed
and fsynced; then the point's manifest, rewritten through a rename, enters the shard in its
ledger (`sweep.shards`: samples, host, hardware, libraries, commit). A shard is done when the
ledger holds it. Opening a point again (--resume) drops records of shards the ledger lacks (the
driver died between the two steps; rewritten atomically), so each shard's records appear
exactly once, and a shard is never partly written.
"""

from __future__ import annotations

import json
import os

from harness.bench import rundir
from harness.bench.records_io import read_records
from harness.bench.results import ResultsError, write_json
from harness.bench.runlock import RunLock
from harness.sweep.spec import SWEEP_FILE, Point, Sweep, SweepError


class PointStore:
    """One grid point's run directory, locked while the sweep runs."""

    def __init__(self, sweep: Sweep, point: Point):
        self.point, self.sweep = point, sweep
        self.dir = point.out(sweep.out)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.lock = RunLock(self.dir).acquire()
        self.manifest: dict | None = None
        self.done: set[str] = set()
        if rundir.holds_run(self.dir):
            self._reopen()

    def _reopen(self) -> None:
        """Keep what the ledger holds; records of any other shard go (rewritten atomically)."""
        path = self.dir / "manifest.json"
        self.manifest = json.loads(path.read_text(encoding="utf-8")) if path.exists() else None
        self.done = set(((self.manifest or {}).get("sweep") or {}).get("shards", {}))
        records = read_records(self.dir / "records.jsonl")
        kept = [r for r in records if r.get("shard") in self.done]
        if len(kept) < len(records) or not path.exists():
            tmp = self.dir / "records.tmp"
            tmp.write_text("".join(json.dumps(r) + "\n" for r in kept), encoding="utf-8")
            tmp.replace(self.dir / "records.jsonl")
            rundir.fsync_dir(self.dir)

    def commit(self, result: dict, shard) -> None:
        """A finished shard: its records appended (one write, fsynced), then entered in the ledger."""
        if shard.id in self.done:  # a retried shard whose first attempt did finish: never twice
            return
        with (self.dir / "records.jsonl").open("a", encoding="utf-8") as f:
            f.write("".join(json.dumps(r) + "\n" for r in result["records"]))
            f.flush()
            os.fsync(f.fileno())
        if self.manifest is None:  # the first shard's manifest speaks for the point, with the point's samples
            self.manifest = dict(result["manifest"])
            self.manifest.pop("session", None)
            self.manifest.update(samples={d: [s.sample_id for s in v] for d, v in self.point.valid.samples.items()},
                                 sweep={"file": str(self.sweep.path), "point": self.point.values,
                                        "shard_size": self.sweep.shard_size, "shards": {}})
        self.manifest["sweep"]["shards"][shard.id] = {"dataset": shard.dataset, "samples": list(shard.samples),
                                                      **result["provenance"]}
        write_json(self.dir / "manifest.json", self.manifest)
        self.done.add(shard.id)

    def close(self) -> None:
        self.lock.release()


def open_sweep(sweep: Sweep, resume: bool) -> dict[str, PointStore]:
    """The sweep directory (sweep.json written, or on --resume checked to be this sweep's) and a
    store per point."""
    sweep.out.mkdir(parents=True, exist_ok=True)
    path = sweep.out / SWEEP_FILE
    described = json.loads(json.dumps(sweep.describe(), default=str))
    if path.exists():
        old = json.loads(path.read_text(encoding="utf-8"))
        if not resume:
            raise ResultsError(f"{sweep.out} already holds a sweep; pass --resume to continue it or choose another out")
        if old.get("points") != described["points"] or old.get("shard_size") != sweep.shard_size:
            raise SweepError(f"--resume: {sweep.out} holds a sweep with other grid points or shard_size; "
                             "resume with the same sweep file or choose another out")
    write_json(path, described)
    stores: dict[str, PointStore] = {}
    try:
        for point in sweep.points:
            stores[point.name] = PointStore(sweep, point)
    except BaseException:
        for store in stores.values():
            store.close()
        raise
    return stores

"""Reading records.jsonl: one validating reader, keys that cannot be counted twice, and turns
whose methods were timed in one process.

- Every record is checked field by field against RECORD_TYPES; a wrong type is an error naming
  the file, the line and the field (a torn last line, from a killed run, is dropped).
- A key (method, dataset, sample, turn) is unique: a repeated one keeps its first record, and
  the reader says which keys it dropped.
- A turn is complete when every method of the run has its record; `--resume` drops an incomplete
  turn whole, and the later turns of its sample (they were asked after its baseline answer), so
  that every method decodes it again in one process: a method is never paired with a baseline
  timed by another process (records carry the `session` that wrote them; metrics pair within one).
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

from harness.bench.results import ResultsError

Key = tuple[str, str, str, int, float, int]
SETTINGS = {"temperature": 0.0, "batch_size": 1, "hardware": ""}  # a run's settings: each value its own set of pairs
#                                                                  (hardware: of a sweep's shard; pairs never cross it)
NUMBER, INT, STR, BOOL, LIST, DICT = "number", "int", "str", "bool", "list of ints", "object"
RECORD_TYPES: dict[str, str] = {
    "method": STR, "dataset": STR, "sample_id": STR, "turn": INT, "category": STR, "order": INT,
    "session": STR, "skipped": STR, "new_tokens": INT, "wall_time": NUMBER, "prefill_time": NUMBER,
    "forwards": INT, "accept_lengths": LIST, "draft_sizes": LIST, "positions": LIST, "accepted": LIST,
    "draft_forwards": INT, "syncs": INT, "prefill_syncs": INT, "host_reads": INT, "output_ids": LIST,
    "output_text": STR, "lossless": BOOL, "diverge_at": INT, "divergence": DICT, "rouge2": NUMBER,
    "correct": BOOL, "telemetry": DICT, "prompt_tokens": INT, "stop": STR, "temperature": NUMBER,
    "acceptance": STR, "batch_size": INT, "group": STR, "group_size": INT, "finish_time": NUMBER, "idle_rows": INT,
    "shard": STR, "hardware": STR,
}
REQUIRED = ("method", "dataset", "sample_id", "turn")
MEASURED = ("new_tokens", "wall_time")  # required of every record that is not a skip


def key_of(record: dict) -> Key:
    """(method, dataset, sample, turn, temperature, batch size): unique in a run (records made
    before sampling or batches existed hold neither: 0 and 1)."""
    return (record["method"], record["dataset"], record["sample_id"], record["turn"], *setting_of(record))


def setting_of(record: dict) -> tuple[float, int]:
    """(temperature, batch size) of a record."""
    return float(record.get("temperature") or 0.0), int(record.get("batch_size") or 1)


def group_of(record: dict) -> str:
    """The batch a record's sequence was decoded in (`group`: its samples' ids joined by '+'; a
    sample alone at batch size 1)."""
    return record.get("group") or record["sample_id"]


def group_size(record: dict) -> int:
    """How many sequences the record's batch holds at its turn (`group_size`; 1 at batch size 1)."""
    return int(record.get("group_size") or 1)


def _fits(value, kind: str) -> bool:
    if value is None:
        return True
    if kind == NUMBER:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if kind == INT:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == LIST:
        return isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    return isinstance(value, {STR: str, BOOL: bool, DICT: dict}[kind])


def check_record(record, where: str) -> dict:
    """The record if every field has its type; a ResultsError naming `where` (file:line) and the field."""
    if not isinstance(record, dict):
        raise ResultsError(f"{where}: a record must be a JSON object, got {type(record).__name__}")
    needed = REQUIRED + (() if record.get("skipped") else MEASURED)
    missing = [f for f in needed if record.get(f) is None]
    if missing:
        raise ResultsError(f"{where}: the record lacks {', '.join(missing)}")
    for field, value in record.items():
        kind = RECORD_TYPES.get(field)
        if kind and not _fits(value, kind):
            raise ResultsError(f"{where}: field {field!r} is {value!r} ({type(value).__name__}), expected {kind}")
    if record.get("wall_time") is not None and record["wall_time"] <= 0:
        raise ResultsError(f"{where}: field 'wall_time' is {record['wall_time']!r}, expected a positive number")
    return record


def read_records(path: Path) -> list[dict]:
    """Every complete, valid line of records.jsonl (a torn last line dropped), repeated keys
    dropped with a warning naming them."""
    if not path.exists():
        return []
    records = []
    lines = path.read_text(encoding="utf-8").splitlines()
    for i, line in enumerate(lines):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if i != len(lines) - 1:
                raise ResultsError(f"{path}:{i + 1}: corrupt record (not JSON)") from None
            continue
        records.append(check_record(record, f"{path}:{i + 1}"))
    return unique(records, path)


def unique(records: list[dict], path: Path) -> list[dict]:
    """The first record of every key; the repeated keys named on stderr."""
    seen: dict[Key, dict] = {}
    repeated = []
    for record in records:
        key = key_of(record)
        if key in seen:
            repeated.append(key)
        else:
            seen[key] = record
    if repeated:
        shown = "; ".join("/".join(map(str, k)) for k in repeated[:5]) + (" ..." if len(repeated) > 5 else "")
        print(f"spec-harness: {path}: {len(repeated)} repeated record(s) left out, the first of each key kept: {shown}",
              file=sys.stderr)
    return list(seen.values())


def complete_turns(records: list[dict], names: list[str]) -> tuple[list[dict], list[Key]]:
    """The records of turns every method in `names` has decoded for every sequence of the turn's
    batch, without the later turns of a batch after an incomplete one; and the (dataset, batch,
    turn, methods) of each dropped turn."""
    by_turn: dict[tuple, set] = {}
    unit = lambda r: (r["dataset"], group_of(r), *setting_of(r))
    size: dict[tuple, int] = {}
    for r in records:
        by_turn.setdefault((*unit(r), r["turn"]), set()).add((r["method"], r["sample_id"]))
        size[(*unit(r), r["turn"])] = group_size(r)
    first_gap: dict[tuple, int] = {}  # (dataset, batch, temperature, batch size) -> its first incomplete turn
    for (*where, turn), done in by_turn.items():
        members = {s for _, s in done}
        if len(members) < size[(*where, turn)] or not all((m, s) in done for m in names for s in members):
            first_gap[tuple(where)] = min(turn, first_gap.get(tuple(where), turn))
    late = lambda where, turn: turn >= first_gap.get(tuple(where), math.inf)
    kept = [r for r in records if not late(unit(r), r["turn"])]
    dropped = sorted({(w[0], w[1], t, len({m for m, _ in d})) for (*w, t), d in by_turn.items() if late(w, t)})
    return kept, dropped


def load_run(path: Path) -> tuple[dict, list[dict]]:
    """(manifest, records) of a run directory; a missing or corrupt file is a ResultsError naming it."""
    path = Path(path)
    manifest = path / "manifest.json"
    if not manifest.exists():
        raise ResultsError(f"{path} is not a run directory (no manifest.json)")
    try:
        data = json.loads(manifest.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ResultsError(f"{manifest} is corrupt ({err}); it is not a manifest this harness can read") from None
    if not isinstance(data, dict):
        raise ResultsError(f"{manifest} is corrupt (not a JSON object)")
    return data, read_records(path / "records.jsonl")


class RecordWriter:
    """Appends one JSON line per record, flushed and fsynced at once. Opening an existing file
    repairs it first (rewritten atomically): a torn last line and repeated keys go, and so does
    every turn some method of `names` lacks (see complete_turns), so that it is decoded again."""

    def __init__(self, path: Path, names: list[str]):
        records = read_records(path)
        kept, dropped = complete_turns(records, names)
        if path.exists():
            if dropped:
                shown = "; ".join(f"{d} #{s} turn {t} ({n} of {len(names)} methods)" for d, s, t, n in dropped[:5])
                print(f"spec-harness: {path}: {len(dropped)} turn(s) decoded again, every method in this process "
                      f"(their records were incomplete): {shown}", file=sys.stderr)
            tmp = path.with_suffix(".tmp")
            tmp.write_text("".join(json.dumps(r) + "\n" for r in kept), encoding="utf-8")
            tmp.replace(path)
        self.done = {key_of(r): r for r in kept}
        self._f = path.open("a", encoding="utf-8")

    def write(self, record: dict) -> None:
        self._f.write(json.dumps(record) + "\n")
        self._f.flush()
        os.fsync(self._f.fileno())
        self.done[key_of(record)] = record

    def close(self) -> None:
        self._f.close()

"""A run's files: manifest.json (what ran, where) and records.jsonl (one line per method,
dataset, sample and turn, appended and flushed as produced, so Ctrl-C loses nothing)."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

SCHEMA_VERSION = 3  # 2: order, category, divergence; lossless null without a reference;
#                    3: `accepted` holds the prefill (0) first like every per-forward list; `syncs` replaces `host_reads`
RESULTS_ROOT = Path(__file__).resolve().parents[2] / "results"
RECORD_FIELDS = ("method", "dataset", "sample_id", "turn", "category", "order", "new_tokens", "wall_time",
                 "prefill_time", "forwards", "accept_lengths", "draft_sizes", "positions", "accepted",
                 "draft_forwards", "syncs", "prefill_syncs", "output_ids", "output_text", "lossless", "diverge_at",
                 "divergence", "rouge2", "correct", "telemetry")


class ResultsError(RuntimeError):
    """The output directory or a results file cannot be used as asked; the message says why."""


def write_json(path: Path, data: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    tmp.replace(path)


def read_records(path: Path) -> list[dict]:
    """Every complete line of records.jsonl; a torn last line (killed mid-write) is dropped."""
    if not path.exists():
        return []
    records = []
    lines = path.read_text(encoding="utf-8").splitlines()
    for i, line in enumerate(lines):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if i != len(lines) - 1:
                raise ResultsError(f"{path}:{i + 1}: corrupt record") from None
    return records


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
    """Appends one JSON line per record and flushes it at once."""

    def __init__(self, path: Path):
        records = read_records(path)
        if path.exists():  # rewrite without a torn tail line before appending
            with path.open("w", encoding="utf-8") as f:
                f.writelines(json.dumps(r) + "\n" for r in records)
        self.done = {(r["method"], r["dataset"], r["sample_id"], r["turn"]): r for r in records}
        self._f = path.open("a", encoding="utf-8")

    def write(self, record: dict) -> None:
        self._f.write(json.dumps(record) + "\n")
        self._f.flush()
        os.fsync(self._f.fileno())
        self.done[(record["method"], record["dataset"], record["sample_id"], record["turn"])] = record

    def close(self) -> None:
        self._f.close()


def git_info() -> dict:
    """{commit, dirty} of the project's checkout (None where git cannot tell)."""
    root = Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=5)
        if commit.returncode != 0:
            return {"commit": None, "dirty": None}
        return {"commit": commit.stdout.strip(), "dirty": bool(dirty.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def hardware(device: str) -> dict:
    import psutil
    import torch

    info = {"platform": platform.platform(), "machine": platform.machine(), "cpu": _cpu_name(),
            "cpu_cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "memory_gb": round(psutil.virtual_memory().total / 2**30, 1)}
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(device)
        info["gpu_memory_gb"] = round(torch.cuda.get_device_properties(device).total_memory / 2**30, 1)
    return info


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def library_versions() -> dict:
    out = {"python": sys.version.split()[0]}
    for pkg in ("torch", "transformers", "datasets", "numpy", "pandas", "rouge_score", "spec-harness"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    return out


def base_manifest(device: str) -> dict:
    return {"schema_version": SCHEMA_VERSION, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "command": [Path(sys.argv[0]).name, *sys.argv[1:]], "hardware": hardware(device),
            "libraries": library_versions(), "git": git_info()}

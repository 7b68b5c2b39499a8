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

SCHEMA_VERSION = 4  # 2: order, category, divergence; lossless null without a reference;
#                    3: `accepted` holds the prefill (0) first like every per-forward list; `syncs` replaces `host_reads`
#                    4: batch_size, group, group_size, finish_time, idle_rows (records of older schemas read as batch size 1)
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
        props = torch.cuda.get_device_properties(device)
        info["gpu_memory_gb"] = round(props.total_memory / 2**30, 1)
        info["gpu_uuid"] = str(getattr(props, "uuid", "")) or None
        info["driver"] = _driver_version()
    return info


def hardware_id(hardware: dict) -> str:
    """What makes two timings comparable: the GPU model, else the CPU model and its core count."""
    if hardware.get("gpu"):
        return hardware["gpu"]
    return f"{hardware.get('cpu', 'unknown CPU')} x{hardware.get('cpu_cores')}"


def _driver_version() -> str | None:
    """The NVIDIA driver's version (NVML), or None where NVML cannot be read."""
    try:
        import pynvml

        pynvml.nvmlInit()
        version = pynvml.nvmlSystemGetDriverVersion()
        return version.decode() if isinstance(version, bytes) else version
    except Exception:  # noqa: BLE001 (no NVML, no driver: the manifest says None)
        return None


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

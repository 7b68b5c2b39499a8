"""Snapshots of a drafter's training, so that a run stopped part-way (a session's end, Ctrl-C)
continues where it stopped instead of from step 0: every `every` steps the drafter's weights, the
optimiser's state, both random generators, the losses so far and the elapsed time are written
(atomically) to one file in the cache, named by a digest of everything the run depends on (model,
drafter config, corpus, training config, target path); the same command finds it and resumes, with
the same batches from there on (a resumed run ends with the weights an uninterrupted one has).
The file is removed when the checkpoint is written."""

from __future__ import annotations

import hashlib
import json
import os
import random
from dataclasses import dataclass, field
from pathlib import Path

import torch

from harness.core.modelload import cache_root

EVERY = 25  # steps between snapshots


def snapshot_path(key: dict) -> Path:
    """$SPEC_HARNESS_CACHE/train-resume/<digest>.pt for this run's key (JSON-able)."""
    digest = hashlib.sha1(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return cache_root() / "train-resume" / f"{digest}.pt"


@dataclass
class Progress:
    """Where a training run is: the next step, the losses so far, seconds spent before this process."""

    step: int = 0
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0
    before: list | None = None  # held-out accuracy before training


def save(path: Path, drafter, opt, rng: random.Random, progress: Progress) -> None:
    state = {"drafter": drafter.state_dict(), "opt": opt.state_dict(), "rng": rng.getstate(),
             "torch_rng": torch.get_rng_state(), "step": progress.step, "losses": progress.losses,
             "seconds": progress.seconds, "before": progress.before}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load(path: Path, drafter, opt, rng: random.Random) -> Progress | None:
    """The snapshot at `path` restored into drafter, opt and rng; None when there is none."""
    if not path.exists():
        return None
    state = torch.load(path, map_location="cpu", weights_only=True)
    drafter.load_state_dict(state["drafter"])
    opt.load_state_dict(state["opt"])
    rng.setstate(tuple(tuple(x) if isinstance(x, list) else x for x in state["rng"]))
    torch.set_rng_state(state["torch_rng"])
    return Progress(state["step"], list(state["losses"]), float(state["seconds"]), state["before"])

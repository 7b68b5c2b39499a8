"""The drafter checkpoint format: weights as safetensors, everything else (method, module
config, training data and record) in a JSON sidecar beside them (same name, `.json`).

Checkpoints are untrusted input: a file that is not what it claims to be is refused with
`CheckpointError` naming the file, the method it was asked for and the reason.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file


class CheckpointError(ValueError):
    """A checkpoint file is missing, corrupt or written for another method."""


def save_checkpoint(path: Path, module: torch.nn.Module, sidecar: dict) -> None:
    """Weights (fp32, on the CPU) as safetensors; the sidecar dict as JSON beside them."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu().float() for k, v in module.state_dict().items()}
    save_file(state, str(path))
    path.with_suffix(".json").write_text(json.dumps({**sidecar, "weights": path.name}, indent=2) + "\n")


def load_checkpoint(path: Path, kind: str | None = None) -> tuple[dict[str, torch.Tensor], dict]:
    """(state dict, sidecar) of a checkpoint; `kind` = the method it must have been written for."""
    path = Path(path)
    what = f"{kind} checkpoint" if kind else "checkpoint"

    def refuse(reason: str) -> CheckpointError:
        return CheckpointError(f"{path} is not a valid {what}: {reason}")

    sidecar_path = path.with_suffix(".json")
    if not path.is_file():
        raise refuse("no such file")
    if not sidecar_path.is_file():
        raise refuse(f"its sidecar {sidecar_path.name} is missing")
    try:
        sidecar = json.loads(sidecar_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise refuse(f"its sidecar {sidecar_path.name} is not JSON ({err})") from None
    if not isinstance(sidecar, dict) or not isinstance(sidecar.get("config"), dict):
        raise refuse(f"its sidecar {sidecar_path.name} has no 'config' object")
    written_by = sidecar.get("method")
    if kind is not None and written_by is not None and written_by != kind:
        raise refuse(f"it was written by {written_by} (sidecar 'method')")
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise refuse(f"the weights cannot be read as safetensors ({err})") from None
    return state, sidecar

"""The drafter checkpoint format: weights as safetensors, everything else (method, module
config, training data and record) in a JSON sidecar beside them (same name, `.json`).

Checkpoints are untrusted input: a file that is not what it claims to be is refused with
`CheckpointError` naming the file, the method it was asked for and the reason. Released weight
files of other projects (`read_tensors`) are read as plain tensors only: safetensors, or pickled
`.pt`/`.bin` files through torch's weights-only unpickler, which runs no code from the file.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file


class CheckpointError(ValueError):
    """A checkpoint file is missing, corrupt or written for another method."""


def shown_path(path) -> str:
    """`path` as a manifest records it: relative to the working directory when inside it, so two
    checkouts of one commit describe the same weights alike (and regress does not flag the move)."""
    path = Path(path)
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def save_checkpoint(path: Path, module: torch.nn.Module, sidecar: dict) -> None:
    """Weights (on the CPU) as safetensors; the sidecar dict as JSON beside them. Stored in fp32,
    or in the module's `storage_dtype` (a large drafter keeps the repository small enough to travel
    to a GPU machine; loading casts back to the target's dtype)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    dtype = getattr(module, "storage_dtype", torch.float32)
    state = {k: v.detach().contiguous().cpu().to(dtype) if v.is_floating_point() else v.detach().contiguous().cpu()
             for k, v in module.state_dict().items()}  # index tensors (EAGLE-3's d2t) keep their type
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
    try:
        sidecar = read_json(sidecar_path)
    except CheckpointError as err:
        raise refuse(f"its sidecar {err}") from None
    if not isinstance(sidecar.get("config"), dict):
        raise refuse(f"its sidecar {sidecar_path.name} has no 'config' object")
    written_by = sidecar.get("method")
    if kind is not None and written_by is not None and written_by != kind:
        raise refuse(f"it was written by {written_by} (sidecar 'method')")
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise refuse(f"the weights cannot be read as safetensors ({err})") from None
    return state, sidecar


def read_json(path: Path) -> dict:
    """The JSON object in `path`; CheckpointError naming the file when it is missing or not one."""
    if not path.is_file():
        raise CheckpointError(f"{path} is missing")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{path} is not JSON ({err})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} is not a JSON object")
    return data


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    """A flat name -> tensor dict from a released weights file (.safetensors, .pt or .bin), on the
    CPU. A pickle is read with `torch.load(weights_only=True)`: a file that needs anything but
    tensors and plain containers (code to run, custom classes) is refused with the reason."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as err:
            raise CheckpointError(f"{path} cannot be read as safetensors ({err})") from None
    if path.suffix not in (".pt", ".bin", ".pth"):
        raise CheckpointError(f"{path}: unknown weights format {path.suffix!r} (.safetensors, .pt, .bin)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise _refusal(path, str(err)) from None
    except (RuntimeError, OSError, EOFError, KeyError, ValueError) as err:
        raise CheckpointError(f"{path} cannot be read as a torch weights file ({type(err).__name__}: {err})") from None
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise CheckpointError(f"{path} is not a flat dict of named tensors (a state dict)")
    return state


def _refusal(path: Path, message: str) -> CheckpointError:
    """The weights-only unpickler's verdict in one line: a file naming a callable or class to
    rebuild (code that a full unpickle would run) is refused as such; anything else is unreadable."""
    lines = [line.strip() for line in message.splitlines()]
    why = next((line for line in lines if "Unsupported global" in line), None)
    if why:
        return CheckpointError(f"{path} was refused: it holds more than tensors, and unpickling it would run code "
                               f"or build objects of the file's choosing ({why.split('. Please')[0]})")
    detail = next((line for line in lines if line.startswith("Unsupported")), lines[0])
    return CheckpointError(f"{path} cannot be read as a torch weights file ({detail})")

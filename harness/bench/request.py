"""A run asked for in the `run` command's terms (its option names, values as typed on the command
line) -> RunConfig. One translation, shared by `spec-harness run` and `spec-harness sweep`, so a
grid point of a sweep means exactly what the same `run` command means."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

import methods as registry
from harness.bench.batches import batch_sizes
from harness.bench.sampled import Sampling, temperatures
from harness.bench.validate import RunConfig
from harness.core.lean import DEFAULT_LAYERS
from harness.core.modelload import DEFAULT_MODEL, model_key, resolve_device
from harness.core.options import MethodError

# `run`'s options a request may set: name -> (type, default). Lists and flags as a sweep file
# writes them: method_arg a list of NAME.KEY=VALUE, the flags booleans.
RUN_OPTIONS: dict[str, tuple[type, Any]] = {
    "methods": (str, "ar"), "datasets": (str, "gsm8k,xsum,mt-bench"), "num_samples": (int, 10),
    "max_new_tokens": (int, 128), "model": (str, DEFAULT_MODEL), "device": (str, "auto"), "dtype": (str, None),
    "method_arg": (list, []), "seed": (int, 0), "data_source": (str, "local"), "telemetry": (bool, True),
    "warmup": (bool, True), "control": (bool, False), "temperature": (str, "0"), "top_k": (int, 0),
    "top_p": (float, 1.0), "acceptance": (str, "exact"), "batch_size": (str, "1"), "costmodel": (str, None),
    "linear": (str, "auto"), "layers": (str, DEFAULT_LAYERS),
}


def csv(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def parse_method_args(items) -> dict[str, dict[str, str]]:
    """NAME.KEY=VALUE items -> {name: {key: value}} (values typed later by each method)."""
    out: dict[str, dict[str, str]] = {}
    for item in items:
        head, sep, value = item.partition("=")
        name, dot, key = head.partition(".")
        if not sep or not dot or not name or not key:
            raise MethodError(f"--method-arg {item!r}: expected NAME.KEY=VALUE, e.g. firp.tree=chain")
        out.setdefault(name, {})[key] = value
    return out


def with_costmodel(names: list[str], method_args: dict, costmodel: str | None) -> dict:
    """A run-level `--costmodel PATH` as METHOD.costmodel=PATH for every method that plans, unless
    given for it; method_args, updated."""
    for name in names if costmodel else []:
        if any(o.name == "costmodel" for o in registry.get(name).options):
            method_args.setdefault(name, {}).setdefault("costmodel", str(costmodel))
    return method_args


def method_list(methods: str, model: str, device: str = "auto") -> list[str]:
    """--methods: comma-separated names; `all` = every method with weights for the model; `default`
    = those of them worth timing on the device found (no CUDA-graph baseline on a CPU)."""
    names = csv(methods)
    if "all" in names:
        names = [n for n in names if n != "all"] + registry.runnable(model_key(model))
    if "default" in names:
        kind = torch.device(resolve_device(device)).type
        names = [n for n in names if n != "default"] + registry.for_device(model_key(model), kind)
    return names


def run_config(out: Path | None = None, resume: bool = False, overwrite: bool = False, **options) -> RunConfig:
    """RunConfig from `run`'s option values (RUN_OPTIONS, defaults filled in); a MethodError or
    DataError (from the sampling and batch-size parsers) names what is wrong."""
    o = {k: options.get(k, default) for k, (_, default) in RUN_OPTIONS.items()}
    names = method_list(o["methods"], o["model"], o["device"])
    args = with_costmodel(names, parse_method_args(o["method_arg"]), o["costmodel"])
    return RunConfig(methods=names, datasets=csv(o["datasets"]), model=o["model"], device=o["device"],
                     dtype=o["dtype"], num_samples=o["num_samples"], max_new_tokens=o["max_new_tokens"],
                     seed=o["seed"], data_source=o["data_source"], method_args=args, out=out, resume=resume,
                     overwrite=overwrite, telemetry=o["telemetry"], warmup=o["warmup"], control=o["control"],
                     sampling=Sampling(temperatures(o["temperature"]), o["top_k"], o["top_p"], o["acceptance"]),
                     batch_sizes=batch_sizes(o["batch_size"]), linear=o["linear"], layers=o["layers"])

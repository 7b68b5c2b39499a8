"""Registry of decoding methods: name -> "module:Class", imported only when asked for."""

from __future__ import annotations

import importlib

REGISTRY: dict[str, str] = {
    "ar": "methods.autoregressive:Autoregressive",
    "ar-graph": "methods.ar_graph:ARGraph",
    "firp": "methods.firp:FIRP",
    "medusa": "methods.medusa:Medusa",
    "eagle": "methods.eagle:Eagle",
    "eagle3": "methods.eagle3:Eagle3",
    "self-spec": "methods.self_speculative:SelfSpeculative",
    "lookahead": "methods.lookahead:Lookahead",
    "pld": "methods.pld:PromptLookup",
    "sps": "methods.sps:SpS",
    "hf-generate": "methods.peers:HFGenerate",
    "hf-early-exit": "methods.peers:HFEarlyExit",
    "hf-prompt-lookup": "methods.peers:HFPromptLookup",
    "hf-assisted": "methods.peers:HFAssisted",
}

BASELINE = "ar"


def names() -> list[str]:
    return list(REGISTRY)


def runnable(model_key: str) -> list[str]:
    """`--methods all`: every in-loop method whose trained weights (if it needs any) exist."""
    out = []
    for name in REGISTRY:
        cls = get(name)
        path = cls.default_weights(model_key)
        if not getattr(cls, "external", False) and (path is None or path.exists()):
            out.append(name)
    return out


def for_device(model_key: str, device_kind: str) -> list[str]:
    """`--methods default`: the methods of `all` worth timing on this kind of device (a method
    only worth timing on an accelerator, such as ar-graph's CUDA graphs, left out elsewhere)."""
    return [n for n in runnable(model_key) if get(n).accelerator in (None, device_kind)]


def get(name: str):
    """The method class registered as `name`, or as NAME in a label `NAME:LABEL` (a second
    configuration of a method in the same run); KeyError lists the valid names."""
    base = name.split(":", 1)[0]
    if base not in REGISTRY:
        raise KeyError(f"unknown method {base!r}; valid methods: {', '.join(REGISTRY)}")
    module, cls = REGISTRY[base].split(":")
    return getattr(importlib.import_module(module), cls)

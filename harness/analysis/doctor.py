"""`spec-harness doctor`: can this model be benchmarked here? Loads it (an unsupported
architecture is refused with the reason), checks that the harness baseline equals transformers'
generate() on two prompts, and reports dtype, memory and the forward cost c(1), c(8)/c(1)."""

from __future__ import annotations

import torch

from harness.analysis import costmodel as cm
from harness.analysis.decodecheck import compare_generate, eos_ids
from harness.bench.data import chat_prompt
from harness.core.decoding import decode
from harness.core.engine import Engine
from harness.core.modelload import load_model

PROMPTS = ("What is 17 times 23? Answer with the number.", "Name three rivers in Europe.")


def memory(engine: Engine) -> dict:
    """Weight bytes, and on CUDA the peak allocated by this process and the device's capacity."""
    out = {"weights_mb": sum(p.numel() * p.element_size() for p in engine.model.parameters()) / 2**20}
    if engine.device.type == "cuda":
        out["peak_allocated_mb"] = torch.cuda.max_memory_allocated(engine.device) / 2**20
        out["device_total_mb"] = torch.cuda.get_device_properties(engine.device).total_memory / 2**20
    return out


def doctor(model: str, device: str = "auto", dtype: str | None = None, max_new: int = 32,
           prefix: int = 128, repeats: int = 5) -> dict:
    """Everything `doctor` prints, as a dict; ModelLoadError when the model is refused."""
    import methods as registry

    lm = load_model(model, device, dtype)
    engine = Engine(lm.model)
    eos = eos_ids(lm.model, lm.tokenizer)
    prompts = [chat_prompt(lm.tokenizer, [text], []) for text in PROMPTS]
    ar = registry.get("ar")(engine, lm.key)
    cache = engine.new_cache(max(map(len, prompts)) + max_new + 8)
    refs = [decode(ar, p, max_new, eos, cache).output_ids for p in prompts]
    peer = compare_generate(registry.get("hf-generate")(engine, lm.key), prompts, refs, max_new, eos)
    limit = engine.config.max_position_embeddings
    cost = cm.measure(engine, (1, 8), prefix=min(prefix, limit - 8), repeats=repeats)
    return {"model": lm.name, "source": lm.source, "architecture": engine.config.model_type, "device": lm.device,
            "dtype": lm.dtype, "layers": engine.num_layers, "memory": memory(engine),
            "ar_equals_generate": peer["equal"], "divergence": peer["divergence"],
            "c1_ms": 1000 * cost["seconds"][0], "c8_over_c1": cost["ratio"][1]}


def render(d: dict) -> str:
    mem = d["memory"]
    lines = [f"model        {d['model']} ({d['architecture']}, {d['layers']} layers) from {d['source']}",
             f"device       {d['device']}, dtype {d['dtype']}",
             f"memory       weights {mem['weights_mb']:.0f} MB" + (
                 f", peak allocated {mem['peak_allocated_mb']:.0f} MB of {mem['device_total_mb']:.0f} MB"
                 if "peak_allocated_mb" in mem else ""),
             f"ar == generate() on {len(d['ar_equals_generate'])} prompts: "
             + ("yes" if all(d["ar_equals_generate"]) else f"NO {d['ar_equals_generate']}"),
             f"c(1)         {d['c1_ms']:.2f} ms per one-row forward",
             f"c(8)/c(1)    {d['c8_over_c1']:.2f} (a method verifying 8 rows must accept more than this many "
             "tokens per forward to gain)"]
    div = d["divergence"]
    if div:
        verdict = "a greedy tie in this dtype" if div["tie"] else "NOT a tie: a bug"
        lines.append(f"divergence   at token {div['at']}: baseline margin {div['baseline_margin']:.3g}, "
                     f"gap {div['gap']} ({verdict})")
    return "\n".join(lines)

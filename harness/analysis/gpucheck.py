"""`spec-harness gpu-check`: one short, network-free run that says whether the harness is correct
and lean on a GPU, written as JSON + Markdown (harness/analysis/gpucheck_report.py).

Sections, in order of priority (each timed; one that fails is recorded and the rest still run;
past the time budget the remaining ones are skipped, and say so; a run in which nothing was
checked fails, gpucheck_report.verdict):
1. the CUDA test file (tests/test_cuda.py) in a subprocess;
2. two Llama shapes with random weights, built from a config (no weights to carry): every
   in-loop method lossless against `ar` (or its divergence diagnosed) with its tau, tokens/s,
   host reads and CUDA synchronisations per step; generate() against `ar`; on the larger shape
   the cost model c(n) next to the memory-bandwidth bound and one NVML-metered turn; on the
   smaller one a few FIRP and Medusa training steps (float32 drafters on the target's dtype);
3. the embedded model with its trained drafters, when its converted weights are on the machine.
On the CPU (`--device cpu`) the same run uses tiny shapes: the rehearsal of the GPU command.
"""

from __future__ import annotations

import math
import random
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from harness.analysis import costmodel as cm
from harness.analysis.decodecheck import (
    compare_generate,
    cuda_syncs_per_step,
    evaluate_method,
)
from harness.bench.telemetry import Telemetry, telemetry_info
from harness.core.checkpoint import save_checkpoint
from harness.core.decoding import decode, synchronize
from harness.core.engine import Engine
from harness.train.distill import Sequence
from harness.train.training import TrainConfig, train

ROOT = Path(__file__).resolve().parents[2]
COMMON = dict(max_position_embeddings=4096, rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2, pad_token_id=0)
SHAPES: dict[str, dict] = {
    # Llama-3.2-1B's shape (GQA 32/8, tied embeddings, 128k vocabulary)
    "llama-1b": dict(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                     num_attention_heads=32, num_key_value_heads=8, tie_word_embeddings=True, rope_theta=500000.0),
    # Llama-2-7B's shape (multi-head attention, 32k vocabulary)
    "llama-7b": dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                     num_attention_heads=32, num_key_value_heads=32, tie_word_embeddings=False),
    # the CPU rehearsal's stand-ins for the two (GQA + tied; MHA + untied)
    "tiny-gqa": dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                     num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True),
    "tiny-mha": dict(vocab_size=1024, hidden_size=128, intermediate_size=256, num_hidden_layers=6,
                     num_attention_heads=4, num_key_value_heads=4, tie_word_embeddings=False),
}


@dataclass(frozen=True)
class Sizes:
    """Sizes of one gpu-check run. shapes = (smaller, larger)."""

    shapes: tuple[str, str]
    prompt_len: int
    max_new: int
    prompts: int
    ns: tuple[int, ...]
    train_steps: int
    train_len: int
    copy_mb: int
    repeats: int
    embedded_new: int  # tokens per prompt on the embedded model


GPU_SIZES = Sizes(("llama-1b", "llama-7b"), 128, 128, 2, tuple(range(1, 65)), 6, 128, 2048, 5, 96)
CPU_SIZES = Sizes(("tiny-gqa", "tiny-mha"), 16, 24, 2, (1, 2, 4, 8, 16), 5, 32, 64, 3, 12)


def random_llama(shape: str, dtype: torch.dtype, device: str, seed: int = 0):
    """A LlamaForCausalLM of a named shape with random weights, built on the device."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(**COMMON, **SHAPES[shape], attn_implementation="sdpa")
    torch.manual_seed(seed)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    return model.eval().requires_grad_(False)


def untrained_drafters(engine: Engine, folder: Path) -> dict[str, Path]:
    """Identity-initialised FIRP maps and zero-initialised Medusa heads (valid, weak drafters)
    saved as checkpoints, so the methods run as they would with trained ones."""
    from methods.firp import PseudoChains
    from methods.medusa import MedusaHeads

    mid, last = engine.num_layers // 2, engine.num_layers - 1
    modules = {"firp": PseudoChains(engine.hidden_size, tuple(min(mid + i, last) for i in range(3))),
               "medusa": MedusaHeads(engine.hidden_size, 3, engine.lm_head)}
    paths = {}
    for kind, module in modules.items():
        paths[kind] = folder / f"{kind}-untrained.safetensors"
        save_checkpoint(paths[kind], module, {"method": kind, "model": "random", "config": module.config()})
    return paths


def random_methods(engine: Engine, folder: Path) -> dict:
    """Every in-loop method on a random-weight model (self-spec skips the upper half's odd layers)."""
    import methods as registry

    paths = untrained_drafters(engine, folder)
    skip = ",".join(f"a{i},m{i}" for i in range(engine.num_layers // 2 + 1, engine.num_layers, 2))
    options = {"ar": {}, "ar-graph": {}, "firp": {"checkpoint": str(paths["firp"])},
               "medusa": {"checkpoint": str(paths["medusa"])}, "self-spec": {"skip": skip}, "lookahead": {}}
    return {name: registry.get(name)(engine, "random", **opts) for name, opts in options.items()}


def check_methods(engine: Engine, methods: dict, prompts: list[list[int]], max_new: int, eos: set[int]) -> dict:
    """Every method against `ar` on the prompts, generate() against `ar`, CUDA syncs per step."""
    from methods.peers import HFGenerate

    cache = engine.new_cache(max(map(len, prompts)) + max_new + 128)
    refs = [decode(methods["ar"], p, max_new, eos, cache).output_ids for p in prompts]
    out = {name: evaluate_method(m, prompts, refs, max_new, eos, cache) for name, m in methods.items()}
    for name, m in methods.items():
        out[name]["cuda_syncs_per_step"] = cuda_syncs_per_step(m, prompts[0], max_new, eos, cache)
    return {"methods": out, "hf_generate": compare_generate(HFGenerate(engine, "random"), prompts, refs, max_new, eos)}


def copy_bandwidth(device: str, mb: int, repeats: int) -> float:
    """Device memory bandwidth in bytes/s measured by copying mb MiB (read + write), median."""
    src = torch.empty(mb * 2**20, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    times = []
    for _ in range(repeats + 1):
        synchronize(device)
        t0 = time.perf_counter()
        dst.copy_(src)
        synchronize(device)
        times.append(time.perf_counter() - t0)
    return 2 * src.numel() / sorted(times[1:])[len(times[1:]) // 2]


def costmodel_section(engine: Engine, sizes: Sizes) -> dict:
    """c(n) for the n of the sizes, next to the bound of reading every weight once per forward."""
    weights = sum(p.numel() * p.element_size() for p in engine.model.parameters())
    bandwidth = copy_bandwidth(str(engine.device), sizes.copy_mb, sizes.repeats)
    result = cm.measure(engine, sizes.ns, prefix=min(256, sizes.prompt_len * 2), repeats=sizes.repeats)
    bound = weights / bandwidth
    return {**result, "weight_bytes": weights, "copy_bandwidth_gb_s": bandwidth / 1e9, "bound_seconds": bound,
            "c1_over_bound": result["seconds"][0] / bound}


def telemetry_section(engine: Engine, method, prompt: list[int], max_new: int, eos: set[int]) -> dict:
    """One metered turn of `method` (telemetry as the runner takes it) and the manifest's info."""
    device = str(engine.device)
    info = telemetry_info(device)
    cache = engine.new_cache(len(prompt) + max_new + 8)
    with Telemetry(info["kind"], device) as probe:
        decode(method, prompt, max_new, eos, cache)
        synchronize(device)
    return {"info": info, "turn": probe.result}


def training_section(engine: Engine, sizes: Sizes) -> dict:
    """A few FIRP and Medusa steps on one fixed batch of random sequences: the loss must fall;
    the drafters (and AdamW's state) stay float32 whatever the target's dtype."""
    from methods.firp import PseudoChains
    from methods.medusa import MedusaHeads

    vocab = engine.config.vocab_size
    seqs = [Sequence("random", random.Random(i).choices(range(3, vocab), k=sizes.train_len), 4) for i in range(5)]
    cfg = TrainConfig(steps=sizes.train_steps, batch=4, positions=sizes.train_len, max_len=sizes.train_len,
                      lr=1e-3, warmup=1, eval_sequences=1)
    mid = engine.num_layers // 2
    out = {}
    for kind, module in (("firp", PseudoChains(engine.hidden_size, (mid, mid + 1))),
                         ("medusa", MedusaHeads(engine.hidden_size, 2, engine.lm_head))):
        module = module.to(engine.device)
        record = train(module, engine, seqs, cfg, progress=False)
        dtypes = sorted({str(p.dtype) for p in module.parameters()})
        out[kind] = {"losses": record["loss_curve"], "falling": record["loss_curve"][-1] < record["loss_curve"][0],
                     "param_dtypes": dtypes, "target_dtype": str(engine.dtype)}
    return out


class Sections:
    """Runs named sections under one deadline, recording each one's result, error or skip."""

    def __init__(self, budget_s: float):
        if not (math.isfinite(budget_s) and budget_s > 0):
            raise ValueError(f"a time budget of {budget_s} s: must be a finite number of seconds > 0")
        self.deadline = time.monotonic() + budget_s
        self.results: dict[str, dict] = {}

    def run(self, name: str, fn):
        if time.monotonic() > self.deadline:
            self.results[name] = {"skipped": "the time budget was spent"}
            return None
        t0 = time.perf_counter()
        try:
            value = fn()
        except Exception as err:  # recorded, and the other sections still run
            self.results[name] = {"seconds": time.perf_counter() - t0, "error": f"{type(err).__name__}: {err}",
                                  "trace": traceback.format_exc(limit=-4)}
            return None
        self.results[name] = {"seconds": time.perf_counter() - t0, "result": value}
        return value


def cuda_tests(timeout: int = 240) -> dict:
    """tests/test_cuda.py in a subprocess (they skip themselves without CUDA)."""
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_cuda.py"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    return {"command": " ".join(cmd[1:]), "returncode": proc.returncode, "summary": lines[-1] if lines else "",
            "tail": (proc.stdout + proc.stderr)[-3000:]}


def random_prompts(vocab: int, count: int, length: int) -> list[list[int]]:
    return [random.Random(100 + i).choices(range(3, vocab - 1), k=length) for i in range(count)]


def shape_sections(sections: Sections, shape: str, larger: bool, sizes: Sizes, device: str, dtype: torch.dtype,
                   folder: Path) -> None:
    """Build one random-weight shape, then its decoding checks and its role's extra sections."""
    import methods as registry

    model = sections.run(f"{shape}/build", lambda: random_llama(shape, dtype, device))
    if model is None:
        return
    engine = Engine(model)
    sections.results[f"{shape}/build"]["result"] = {"config": SHAPES[shape], "dtype": str(dtype),
                                                    "parameters": sum(p.numel() for p in model.parameters())}
    prompts = random_prompts(engine.config.vocab_size, sizes.prompts, sizes.prompt_len)
    eos = {engine.config.vocab_size - 1}
    sections.run(f"{shape}/decoding", lambda: check_methods(engine, random_methods(engine, folder), prompts,
                                                           sizes.max_new, eos))
    if larger:
        sections.run(f"{shape}/costmodel", lambda: costmodel_section(engine, sizes))
        ar = registry.get("ar")(engine, "random")
        sections.run(f"{shape}/telemetry", lambda: telemetry_section(engine, ar, prompts[0], sizes.max_new, eos))
    else:
        sections.run(f"{shape}/training", lambda: training_section(engine, sizes))


EMBEDDED_PROMPTS = ("Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
                    "How many clips did Natalia sell altogether in April and May?",
                    "Write three sentences about why the sky is blue.")


def embedded_section(device: str, sizes: Sizes) -> dict:
    """The embedded model (default dtype for the device) with every runnable method and its trained
    drafters, on two fixed chat prompts; skipped when its converted weights are not on the machine."""
    import methods as registry
    from harness.analysis.decodecheck import eos_ids
    from harness.bench.data import chat_prompt
    from harness.core.modelload import EMBEDDED_KEY, cache_root, load_model

    weights = cache_root() / "models" / EMBEDDED_KEY / "model.safetensors"
    if not weights.exists():
        return {"skipped": f"{weights} is not on this machine (SPEC_HARNESS_CACHE points elsewhere?)"}
    lm = load_model("smollm2", device)
    engine = Engine(lm.model)
    methods = {name: registry.get(name)(engine, lm.key) for name in registry.runnable(lm.key)}
    prompts = [chat_prompt(lm.tokenizer, [text], []) for text in EMBEDDED_PROMPTS]
    return {"dtype": lm.dtype, **check_methods(engine, methods, prompts, sizes.embedded_new, eos_ids(lm.model, lm.tokenizer))}


def run_check(device: str, sizes: Sizes, budget_s: float = 420.0, tests: bool = True,
              embedded: bool = True, dtype: torch.dtype = torch.bfloat16) -> dict:
    """Every section in priority order; returns the JSON-ready result (written by the caller)."""
    from harness.bench.results import hardware, library_versions

    sections, t0 = Sections(budget_s), time.perf_counter()
    if tests:
        sections.run("cuda-tests", cuda_tests)
    with tempfile.TemporaryDirectory() as folder:  # the untrained drafters' checkpoints
        for i, shape in enumerate(sizes.shapes):
            shape_sections(sections, shape, i == 1, sizes, device, dtype, Path(folder))
            if torch.device(device).type == "cuda":
                torch.cuda.empty_cache()
    if embedded:
        sections.run("embedded", lambda: embedded_section(device, sizes))
    return {"created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "device": device, "dtype": str(dtype),
            "sizes": asdict(sizes), "budget_s": budget_s, "seconds": time.perf_counter() - t0,
            "hardware": hardware(device), "versions": library_versions(), "telemetry": telemetry_info(device),
            "sections": sections.results}

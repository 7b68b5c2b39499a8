"""What the linear-formulation chooser (harness/core/linear.py) buys on this machine, measured in one
process so that the two sides meet the same machine state (on a shared 2-core VM, c(1) measured in
separate processes moved by up to 30% with the same formulations, and a copy of the loaded model
ran 20% faster than the loaded model itself): four fresh copies of the model, two
with F.linear everywhere (the second an A/A control: their spread is the noise), one with the
formulations chosen for this machine, and one with those and the lean decoder layers
(harness/core/lean.py; the other three call transformers' layer modules), timed in turns
(round-robin, median of the repeats) for c(n) (the cost model's verification forward), the
bare-linear roofline (one row through every linear layer and the LM head, nothing else) and
`ar`'s time per token (a 33-token greedy decode minus a 1-token one, over 32)."""

from __future__ import annotations

import copy
import time

import torch

from harness.core.decoding import decode
from harness.core.engine import Engine
from harness.core.linear import engage, roofline_op
from harness.core.planning.costmodel import DEFAULT_PREFIX, forward_ops
from harness.core.timing import round_robin
from methods.autoregressive import Autoregressive

# copy -> (linear formulations, decoder layers); control: a second F.linear copy, the measurement's own A/A
MODES = {"off": ("off", "modules"), "control": ("off", "modules"), "auto": ("auto", "modules"),
         "lean": ("auto", "lean")}
NAMES = {"off": "F.linear", "control": "F.linear (control copy)", "auto": "chosen", "lean": "chosen, lean layers"}


def decode_op(engine: Engine, prompt: list[int], tokens: int):
    """A greedy `ar` decode of `tokens` tokens after `prompt` (no EOS), in its own cache."""
    method, cache = Autoregressive(engine, "linear-gain"), engine.new_cache(len(prompt) + tokens + 1)
    return lambda: decode(method, prompt, tokens, set(), cache)


@torch.inference_mode()
def compare(model: str, device: str = "auto", dtype: str | None = None, ns=tuple(range(1, 33)),
            prefix: int = DEFAULT_PREFIX, repeats: int = 7) -> dict:
    """{"n", "c_ms": {mode: [...]}, "roofline_ms": {mode}, "ar_token_ms": {mode}, ...}: F.linear
    ("off") against the chosen formulations ("auto"), those with the lean layers ("lean") and a
    second F.linear copy ("control": the spread between identical copies is the measurement's
    noise), timed in turns."""
    from harness.bench.results import hardware
    from harness.core.modelload import linear_table, load_model

    lm = load_model(model, device, dtype, "off")
    copies = {m: copy.deepcopy(lm.model) for m in MODES}  # all freshly allocated, alike in memory
    del lm.model
    table = linear_table(lm.key, lm.device, lm.dtype)
    entries = {m: engage(copies[m], table, linear) for m, (linear, _) in MODES.items() if linear == "auto"}
    entry = entries["auto"]
    engines = {m: Engine(model, MODES[m][1]) for m, model in copies.items()}
    prompt = torch.randint(0, copies['off'].config.vocab_size, (128,), generator=torch.Generator().manual_seed(0)).tolist()
    ops = {}
    for mode, engine in engines.items():
        ops |= {(mode, "c", n): op for n, op in forward_ops(engine, list(ns), prefix).items()}
        ops[(mode, "roofline")] = roofline_op(engine.model)
        ops[(mode, "ar33")], ops[(mode, "ar1")] = decode_op(engine, prompt, 33), decode_op(engine, prompt, 1)
    median = round_robin(ops, engines["off"].device, repeats, 2, "linear formulations, interleaved")
    ms = {key: 1000 * value for key, value in median.items()}
    return {"model": lm.key, "device": lm.device, "dtype": lm.dtype, "hardware": hardware(lm.device),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "prefix": prefix, "repeats": repeats,
            "linear": entry, "layers": {m: e.layer_path for m, e in engines.items()}, "n": list(ns),
            "c_ms": {m: [ms[(m, "c", n)] for n in ns] for m in MODES},
            "roofline_ms": {m: ms[(m, "roofline")] for m in MODES},
            "ar_token_ms": {m: (ms[(m, "ar33")] - ms[(m, "ar1")]) / 32 for m in MODES}}


def render(result: dict) -> str:
    """The comparison as a few lines of text."""
    c, modes = result["c_ms"], [m for m in MODES if m in result["c_ms"]]  # older files: no "lean"
    lines = [f"{'n':>4} {'F.linear ms':>12} " + " ".join(f"{m + '/F.linear':>16}" for m in modes[1:])]
    lines += [f"{n:>4} {c['off'][i]:>12.2f} " + " ".join(f"{c[m][i] / c['off'][i]:>16.2f}" for m in modes[1:])
              for i, n in enumerate(result["n"])]
    for m in modes:
        roof, ar, name = result["roofline_ms"][m], result["ar_token_ms"][m], NAMES[m]
        lines.append(f"{name}: roofline {roof:.2f} ms, ar {ar:.2f} ms per token ({100 * roof / ar:.1f}% of the roofline's speed)")
    return "\n".join(lines)

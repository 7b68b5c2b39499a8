"""Diagnosing a divergence from the baseline: a floating-point tie flip or a real mismatch.

Under greedy decoding every method must reproduce the baseline token for token. Verifying many
rows in one forward changes the order of floating-point sums, so where the baseline's top two
logits are (nearly) equal the argmax can flip: expected in fp16/bf16, not a bug. A verifier bug
picks a token the baseline does not rank (almost) first.

At the first diverging position k, one extra untimed forward of the baseline over prompt +
reference[:k] gives its logits there (fp32); `gap` = logit(baseline's token) - logit(method's
token). The divergence is a `tie` when gap <= TIE_EPSILON[dtype], else a `mismatch` (also when
one side has no token at k). The thresholds are a few units in the last place of a typical
logit (|logit| about 10-30) in each dtype, with room for the error that accumulates through the
layers: float32 1e-3, float16 0.05 (ulp 0.016 at 16-32), bfloat16 0.25 (ulp 0.125 at 16-32).
"""

from __future__ import annotations

import torch

TIE_EPSILON = {"float32": 1e-3, "float16": 0.05, "bfloat16": 0.25}


@torch.inference_mode()
def baseline_logits(engine, ids: list[int]) -> torch.Tensor:
    """The target's fp32 logits after `ids` (one plain causal forward, not counted): [V]."""
    positions = torch.arange(len(ids), device=engine.device)
    h = engine.forward(torch.tensor(ids, device=engine.device), positions, None, engine.new_cache(len(ids)))
    return engine.logits(h[0, -1]).float()


def diagnose(engine, dtype: str, prompt: list[int], reference: list[int], output: list[int], at: int) -> dict:
    """The record's `divergence` entry for a first divergence at index `at`."""
    logits = baseline_logits(engine, prompt + reference[:at])
    top = torch.topk(logits, 2)
    values, tokens = top.values.tolist(), top.indices.tolist()
    entry = {"at": at, "baseline_token": reference[at] if at < len(reference) else None,
             "method_token": output[at] if at < len(output) else None,
             "baseline_top2": tokens, "baseline_margin": values[0] - values[1],
             "epsilon": TIE_EPSILON.get(dtype, TIE_EPSILON["float32"])}
    if entry["baseline_token"] is None or entry["method_token"] is None:
        return {**entry, "gap": None, "kind": "mismatch", "reason": "one output ends before the other"}
    gap = float(logits[entry["baseline_token"]] - logits[entry["method_token"]])
    return {**entry, "gap": gap, "kind": "tie" if gap <= entry["epsilon"] else "mismatch"}

"""Diagnosing a divergence from the baseline: a floating-point tie flip or a real mismatch.

Under greedy decoding every method must reproduce the baseline token for token. Verifying many
rows in one forward changes the order of floating-point sums, so where the baseline's top two
logits are (nearly) equal the argmax can flip: expected in fp16/bf16, not a bug. A verifier bug
picks a token the baseline does not rank (almost) first.

At the first diverging position k, one extra untimed forward of the baseline over prompt +
reference[:k] gives its logits there (fp32 of the model's own): `gap` = logit(baseline's token)
- logit(method's token). The divergence is a `tie` when gap <= TIE_ULPS units in the last place
of the model's dtype at the top logit (ulp = finfo(dtype).eps * max(|top-1 logit|, 1)): bf16 at
a logit of 20 gives an epsilon of 8 * 0.0078 * 20 = 1.25, fp16 0.16, fp32 2e-5. Anything else,
or one output ending before the other, is a `mismatch`. Under exact sampling the same rule
holds for the perturbed scores the sample is the argmax of (logits / T + the position's Gumbel
noise), with the tolerance divided by T. The one rule for runs, doctor and gpu-check.
"""

from __future__ import annotations

import torch

from harness.bench.metrics import first_divergence

TIE_ULPS = 8


@torch.inference_mode()
def baseline_logits(engine, ids: list[int]) -> torch.Tensor:
    """The target's logits after `ids` (one plain causal forward, not timed), in fp32: [V]."""
    positions = torch.arange(len(ids), device=engine.device)
    h = engine.forward(torch.tensor(ids, device=engine.device), positions, None, engine.new_cache(len(ids)))
    return engine.logits(h[0, -1]).float()


def diagnose(engine, prompt: list[int], reference: list[int], output: list[int], at: int, rule=None) -> dict:
    """The `divergence` entry of a record whose output first leaves the reference at index `at`.
    Under sampling (`rule`: the turn's exact rule) the scores compared are the rule's (filtered
    logits / T + the position's noise) and the tie tolerance is the logits' divided by T."""
    logits = baseline_logits(engine, prompt + reference[:at])
    ulp = torch.finfo(engine.dtype).eps * max(abs(float(logits.max())), 1.0)
    scale = 1.0
    if hasattr(rule, "params"):  # sampling: the scores whose argmax the rule takes
        row = torch.full((1,), len(prompt) + at - 1, device=logits.device)  # the row that chose token `at`
        logits, scale = rule.scores(logits[None], row)[0], rule.temperature
    values, tokens = (t.tolist() for t in torch.topk(logits, 2))
    entry = {"at": at, "baseline_token": reference[at] if at < len(reference) else None,
             "method_token": output[at] if at < len(output) else None, "baseline_top2": tokens,
             "baseline_margin": values[0] - values[1], "ulp": ulp, "epsilon": TIE_ULPS * ulp / scale}
    if entry["baseline_token"] is None or entry["method_token"] is None:
        return {**entry, "gap": None, "kind": "mismatch", "tie": False, "reason": "one output ends before the other"}
    gap = float(logits[entry["baseline_token"]] - logits[entry["method_token"]])
    tie = gap <= entry["epsilon"]
    return {**entry, "gap": gap, "kind": "tie" if tie else "mismatch", "tie": tie}


def first_divergence_diagnosed(engine, prompt: list[int], reference: list[int], output: list[int]) -> dict | None:
    """None when output equals reference, else diagnose() at the first differing index."""
    at = first_divergence(output, reference)
    return None if at is None else diagnose(engine, prompt, reference, output, at)

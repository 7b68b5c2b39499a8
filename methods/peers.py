"""Outside peers: transformers' own `generate()` decoders, timed on the same samples in the
same run. They do not use the harness loop, so per-forward counters are not available."""

from __future__ import annotations

import torch

from harness.core.decoding import Decoded
from harness.core.method import Method, MethodError, Option


class HFGenerate(Method):
    """transformers `generate(do_sample=False)`: the reference the harness baseline must match."""

    name = "hf-generate"
    summary = "transformers generate(), greedy (outside peer)"
    external = True

    def generate_kwargs(self) -> dict:
        return {}

    @torch.inference_mode()
    def generate(self, prompt_ids: list[int], max_new_tokens: int, eos_ids: set[int]) -> Decoded:
        model = self.engine.model
        ids = torch.tensor([prompt_ids], device=self.engine.device)
        seq = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                             do_sample=False, eos_token_id=sorted(eos_ids), pad_token_id=sorted(eos_ids)[0],
                             **self.generate_kwargs())
        out = Decoded(output_ids=seq[0, len(prompt_ids):].tolist(), prefill_time=None)
        out.stop = "eos" if out.output_ids and out.output_ids[-1] in eos_ids else "length"
        return out


class HFEarlyExit(HFGenerate):
    """transformers' layer-skip drafting: generate(assistant_early_exit=k), the first k layers
    plus the LM head draft for the full model (the outside counterpart of self-spec)."""

    name = "hf-early-exit"
    summary = "transformers generate(assistant_early_exit=k): early-exit drafting (outside peer)"
    options = (Option("layer", "int", 0, "exit after this many layers to draft (0 = half the model's depth)"),)

    def __init__(self, engine, model_key: str, **values):
        super().__init__(engine, model_key, **values)
        layer = self.config["layer"] or max(1, engine.num_layers // 2)
        if not 1 <= layer <= engine.num_layers:
            raise MethodError(f"hf-early-exit.layer: {layer} is not in 1..{engine.num_layers}")
        self.layer = layer

    def describe(self) -> dict:
        return {**super().describe(), "exit_layer": self.layer}

    def generate_kwargs(self) -> dict:
        return {"assistant_early_exit": self.layer}


class HFPromptLookup(HFGenerate):
    """transformers' prompt-lookup drafting: generate(prompt_lookup_num_tokens=k) drafts the (up to)
    k tokens that followed the first earlier occurrence of the context's last n-gram (n <= 2 by
    default): string matching on the context, no draft model; the outside counterpart of
    lookahead's n-gram pool."""

    name = "hf-prompt-lookup"
    summary = "transformers generate(prompt_lookup_num_tokens=k): prompt-lookup drafting (outside peer)"
    options = (Option("tokens", "int", 10, "prompt_lookup_num_tokens: draft tokens per lookup"),)

    def __init__(self, engine, model_key: str, **values):
        super().__init__(engine, model_key, **values)
        if self.config["tokens"] < 1:
            raise MethodError(f"hf-prompt-lookup.tokens: {self.config['tokens']} must be >= 1")

    def generate_kwargs(self) -> dict:
        return {"prompt_lookup_num_tokens": self.config["tokens"]}

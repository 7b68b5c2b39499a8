"""Outside peers: transformers' own `generate()` decoders, timed on the same samples in the
same run. They do not use the harness loop, so per-forward counters are not available."""

from __future__ import annotations

import torch

from harness.decoding import Decoded
from harness.method import Method


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

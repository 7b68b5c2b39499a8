"""Integration on the embedded model: the harness baseline equals transformers generate()."""

import pytest
import torch

pytestmark = pytest.mark.integration


def test_autoregressive_equals_generate_on_real_text(real, real_prompts, ar_reference):
    eos = real.tokenizer.eos_token_id
    for name, prompt in real_prompts:
        ours = ar_reference(prompt, 48)
        ids = torch.tensor([prompt])
        ref = real.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=48, do_sample=False,
                                  eos_token_id=eos, pad_token_id=eos)[0, len(prompt):].tolist()
        assert ours == ref, f"{name}: diverges at {next(i for i, (a, b) in enumerate(zip(ours, ref)) if a != b)}"

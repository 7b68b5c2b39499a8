"""Outside peers: transformers' own `generate()` decoders, timed on the same samples in the
same run. They do not use the harness loop, so per-forward counters are not available.

Every peer decodes plain greedy: generate() would otherwise fill any option left unset from the
model's own generation_config (a repetition penalty or suppressed tokens of an instruct model
would stay on under do_sample=False). For the call, the model's generation_config is a plain
one holding only its special tokens; what it held is restored after, and recorded.
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext

import torch
from transformers import GenerationConfig

from harness.core.decoding import Decoded
from harness.core.method import Method, MethodError, Option
from methods.sps import UsesDraft

PLAIN_KEYS = ("bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id", "transformers_version",
              "_from_model_config")


@contextmanager
def plain_generation_config(model):
    """The model's generation_config reduced to its special tokens for the duration of a call,
    so that generate() adds no penalty or processor of the model's defaults."""
    saved = model.generation_config
    model.generation_config = GenerationConfig(**{k: getattr(saved, k, None) for k in PLAIN_KEYS[:4]})
    try:
        yield
    finally:
        model.generation_config = saved


class HFGenerate(Method):
    """transformers `generate(do_sample=False)`: the reference the harness baseline must match."""

    name = "hf-generate"
    summary = "transformers generate(), greedy (outside peer)"
    external = True

    def generate_kwargs(self) -> dict:
        return {}

    @staticmethod
    def sampling_kwargs(rule) -> dict:
        """generate()'s sampling settings for a turn's rule (greedy without one, or at T = 0)."""
        params = getattr(rule, "params", None)
        if params is None:
            return {"do_sample": False}
        torch.manual_seed(rule.seed_key & 0x7FFF_FFFF_FFFF_FFFF)  # the turn's key: a reproducible turn
        return {"do_sample": True, "temperature": params.temperature, "top_k": params.top_k or None,
                "top_p": params.top_p}

    def assisting(self):
        """A context giving generate() keyword arguments that are objects, not recorded options
        (an assistant model); none here."""
        return nullcontext({})

    def describe(self) -> dict:
        model_defaults = self.engine.model.generation_config.to_diff_dict()
        overridden = {k: v for k, v in model_defaults.items() if k not in PLAIN_KEYS}
        return {**super().describe(), "generation": "greedy (do_sample=False, num_beams=1), or at T > 0 sampled with the run's "
                                                    "temperature, top-k and top-p; no other logits processors",
                "generate_kwargs": self.generate_kwargs(), "model_generation_config_overridden": overridden}

    @torch.inference_mode()
    def generate(self, prompt_ids: list[int], max_new_tokens: int, eos_ids: set[int], rule=None) -> Decoded:
        """rule: the turn's acceptance rule; a sampling one (temperature > 0) makes generate()
        sample with the same temperature, top-k and top-p, from torch's generator seeded with the
        turn's key (its random numbers are not the harness's: compared on speed and quality only)."""
        model = self.engine.model
        ids = torch.tensor([prompt_ids], device=self.engine.device)
        eos = sorted(eos_ids)
        config = GenerationConfig(num_beams=1, max_new_tokens=max_new_tokens, eos_token_id=eos, pad_token_id=eos[0],
                                  **self.sampling_kwargs(rule), **self.generate_kwargs())
        with plain_generation_config(model), self.assisting() as extra:
            seq = model.generate(ids, attention_mask=torch.ones_like(ids), generation_config=config, **extra)
        out = Decoded(output_ids=seq[0, len(prompt_ids):].tolist(), prefill_time=None, idle_rows=None)
        out.stop = "eos" if out.output_ids and out.output_ids[-1] in eos_ids else "length"
        return out

    @torch.inference_mode()
    def generate_batch(self, prompts: list[list[int]], max_new_tokens: int, eos_ids: set[int], rule=None) -> list[Decoded]:
        """Several prompts in one generate() call, left-padded as transformers expects (the check
        on `ar` at batch B); each output cut after its first EOS (generate pads finished rows)."""
        model, eos = self.engine.model, sorted(eos_ids)
        width = max(map(len, prompts))
        ids = torch.tensor([[eos[0]] * (width - len(p)) + p for p in prompts], device=self.engine.device)  # [B, P]
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=self.engine.device)
        config = GenerationConfig(num_beams=1, max_new_tokens=max_new_tokens, eos_token_id=eos, pad_token_id=eos[0],
                                  **self.sampling_kwargs(rule), **self.generate_kwargs())
        with plain_generation_config(model), self.assisting() as extra:
            seq = model.generate(ids, attention_mask=mask, generation_config=config, **extra)
        outs = []
        for row in seq[:, width:].tolist():
            stop = next((i for i, t in enumerate(row) if t in eos_ids), None)
            out = Decoded(output_ids=row[:stop + 1] if stop is not None else row, prefill_time=None, idle_rows=None)
            out.stop = "eos" if stop is not None else "length"
            outs.append(out)
        return outs


class HFEarlyExit(HFGenerate):
    """transformers' layer-skip drafting: generate(assistant_early_exit=k), the first k layers
    plus the LM head draft for the full model (the outside counterpart of self-spec)."""

    batchable = False  # transformers refuses batched input to assisted decoding
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

    batchable = False  # transformers refuses batched input to assisted decoding
    name = "hf-prompt-lookup"
    summary = "transformers generate(prompt_lookup_num_tokens=k): prompt-lookup drafting (outside peer)"
    options = (Option("tokens", "int", 10, "prompt_lookup_num_tokens: draft tokens per lookup", low=1),)

    def generate_kwargs(self) -> dict:
        return {"prompt_lookup_num_tokens": self.config["tokens"]}


class HFAssisted(UsesDraft, HFGenerate):
    """transformers' assisted generation: generate(assistant_model=<draft>) with the draft `sps`
    uses (the same construction, same options): k draft tokens per step on a constant schedule,
    the same confidence threshold (0 = off). transformers adapts a threshold > 0 over the run when
    scikit-learn is installed; `sps` keeps it fixed. The outside counterpart of `sps`."""

    batchable = False  # transformers refuses batched input to assisted decoding
    name = "hf-assisted"
    summary = "transformers generate(assistant_model=draft): draft-model assisted decoding (outside peer)"

    def __init__(self, engine, model_key: str, **values):
        super().__init__(engine, model_key, **values)
        self.assistant = self.load_draft()

    def assistant_config(self) -> GenerationConfig:
        """The assistant's own generation config for the call: its special tokens and how it drafts."""
        saved = self.assistant.generation_config
        special = {k: getattr(saved, k, None) for k in PLAIN_KEYS[:4]}
        return GenerationConfig(**special, num_assistant_tokens=self.config["k"], num_assistant_tokens_schedule="constant",
                                assistant_confidence_threshold=self.config["threshold"])

    @contextmanager
    def assisting(self):
        saved = self.assistant.generation_config
        self.assistant.generation_config = self.assistant_config()
        try:
            yield {"assistant_model": self.assistant}
        finally:
            self.assistant.generation_config = saved

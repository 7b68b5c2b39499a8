"""The embedded draft model for `sps`: a shallow causal LM built from the target itself.

The draft is a model of the target's own class and config with N decoder layers, initialised
from N of the target's layers (and its final norm), sharing the target's embeddings and LM head,
which stay frozen. Only the draft's own tensors (its layers and norm) are trained and saved, so
a checkpoint is a few MB; loading rebuilds the model around the target's embeddings, in the
target's dtype and device. Trained by self-distillation (`spec-harness train sps-draft`):
KL(target || draft) of the next token at sampled positions of the training-split corpus.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import nn

from harness.core.checkpoint import CheckpointError
from harness.core.drafter import load_frozen
from harness.core.engine import Engine
from harness.core.method import MethodError
from harness.train.training import Batch, gather_rows, step_losses, teacher_pass

KIND = "sps-draft"
PICKS = ("first", "spread")


def pick_layers(num_layers: int, n: int, how: str = "first") -> tuple[int, ...]:
    """N of the target's layers: the first N, or N spread evenly over the depth (first and last
    included)."""
    if not 1 <= n <= num_layers:
        raise ValueError(f"a draft of {n} layers: the target has {num_layers}")
    if how == "first" or n == 1:
        return tuple(range(n))
    if how == "spread":
        return tuple(round(i * (num_layers - 1) / (n - 1)) for i in range(n))
    raise ValueError(f"unknown layer pick {how!r}: use one of {', '.join(PICKS)}")


def draft_config(config, layers: tuple[int, ...]):
    """The target's config with only `layers` (per-layer settings kept for those layers)."""
    cfg = copy.deepcopy(config)
    cfg.num_hidden_layers = len(layers)
    if getattr(cfg, "layer_types", None):
        cfg.layer_types = [config.layer_types[i] for i in layers]
    return cfg


class ShallowDraft(nn.Module):
    """The draft's own tensors (decoder layers, final norm) as parameters; `lm` is the full causal
    LM around them, with the target's embeddings and LM head (not parameters of this module)."""

    kind = KIND
    storage_dtype = torch.float16  # a few million weights: half the bytes in the repository
    steps = 1

    def __init__(self, target: nn.Module, layers: tuple[int, ...]):
        super().__init__()
        total = target.config.num_hidden_layers
        bad = [i for i in layers if not 0 <= i < total]
        if not layers or bad:
            raise ValueError(f"draft layers {list(layers)}: the target has layers 0..{total - 1}")
        self.source_layers, self.target_layers = tuple(int(i) for i in layers), total
        p = next(target.parameters())
        lm = type(target)(draft_config(target.config, self.source_layers)).to(p.device, p.dtype).eval()
        base, tbase = lm.get_decoder(), target.get_decoder()
        for j, i in enumerate(self.source_layers):  # the target's layer i becomes the draft's layer j
            base.layers[j].load_state_dict(tbase.layers[i].state_dict())
        base.norm.load_state_dict(tbase.norm.state_dict())
        lm.set_input_embeddings(target.get_input_embeddings())
        lm.set_output_embeddings(target.get_output_embeddings())
        lm.generation_config = copy.deepcopy(target.generation_config)
        self.layers, self.norm = base.layers, base.norm
        self._lm = [lm]  # a list: the shared, frozen embeddings are not parameters of ours

    @property
    def lm(self) -> nn.Module:
        """The draft as a causal LM (for its own Engine, or generate()'s assistant_model)."""
        return self._lm[0]

    def config(self) -> dict:
        return {"layers": list(self.source_layers), "target_layers": self.target_layers}

    def loss(self, engine: Engine, batch: Batch):
        """Next-token KL(target || draft) at the batch's hang positions; engine = the target."""
        with torch.no_grad():
            final = teacher_pass(engine, batch.ids).final  # [B, T, d]
            teacher = engine.logits(gather_rows(final, batch.hang))  # [B, m, V]
        hidden = self.lm.get_decoder()(input_ids=batch.ids.to(engine.device), use_cache=False).last_hidden_state
        draft = self.lm.get_output_embeddings()(gather_rows(hidden, batch.hang))  # [B, m, V] (hidden is normed)
        return step_losses(teacher[:, None], draft[:, None], batch.hang_ok[:, None])


def load_draft_checkpoint(engine: Engine, path: Path, model_key: str, name: str = "sps") -> ShallowDraft:
    """The trained draft at `path`, rebuilt around the target of `engine`; frozen."""
    def build(eng: Engine, config: dict) -> ShallowDraft:
        if config["target_layers"] != eng.num_layers:
            raise ValueError(f"it was built from a target of {config['target_layers']} layers, "
                             f"this one has {eng.num_layers}")
        return ShallowDraft(eng.model, tuple(config["layers"]))

    try:
        draft, sidecar = load_frozen(engine, path, build, KIND)
    except CheckpointError as err:
        raise MethodError(f"{name}.draft: {err}") from None
    if sidecar.get("model", model_key) != model_key:
        raise MethodError(f"{name}.draft: {path} was trained for model {sidecar['model']}, not {model_key}")
    draft.sidecar = sidecar
    return draft

"""`spec-harness train eagle3`: EAGLE-3's head, trained with training-time test (a command of the
`train` group, added to it in harness/cli/__init__.py)."""

from __future__ import annotations

import click

from harness.cli.common import InputError, check_layers, ints, user_errors
from harness.cli.train import (
    _train_drafter,
    configs,
    corpus_options,
    preflight,
    weights_out,
)
from harness.core.modelload import load_model

DRAFT_VOCAB = 8192  # the embedded model's 49,152 ids: the most frequent 8,192 of the corpus's answers


@click.command("eagle3")
@click.option("--layers", default=None, help="The three target layers whose inputs are fused, low to high, e.g. "
                                             "2,15,27 (default: 2, L // 2, L - 3, as the released heads).")
@click.option("--unroll", type=click.IntRange(1, 16), default=4, show_default=True,
              help="Training-time-test steps: the head is trained on its own outputs for this many draft steps.")
@click.option("--draft-vocab", type=click.IntRange(min=0), default=DRAFT_VOCAB, show_default=True,
              help="Draft vocabulary: the N tokens most frequent in the corpus's answers, with the head's own LM "
                   "head over them (d2t maps them back); 0: the target's LM head over the full vocabulary.")
@click.option("--feature-weight", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="Weight of a feature-regression term (smooth L1 of the head's normed output to the target's "
                   "normed last-layer state, as EAGLE-1) added to the KL; 0: the paper's loss.")
@corpus_options
def train_eagle3_cmd(layers, unroll, draft_vocab, feature_weight, **kw) -> None:
    """EAGLE-3: a head over the target's fused low/mid/high features, unrolled on its own outputs
    while training (weights + JSON sidecar, with the draft vocabulary's coverage of the corpus)."""
    from harness.train.distill import load_corpus
    from methods.eagle3 import Eagle3Head, head_config
    from methods.eagle3_train import coverage, draft_vocabulary, with_vocabulary

    with user_errors():
        config = preflight(kw["model"], weights_out(kw, "eagle3"))
        chosen = ints(layers, "--layers") if layers else None
        if chosen is not None:
            check_layers(config, "--layers", chosen)
            if len(chosen) != 3 or list(chosen) != sorted(chosen):
                raise InputError(f"--layers {layers}: three layers, low to high")
        if draft_vocab > config.vocab_size:
            raise InputError(f"--draft-vocab {draft_vocab}: the model has {config.vocab_size} tokens")
        lm = load_model(kw["model"], kw["device"], kw["dtype"])
    ids = None
    if draft_vocab:
        seqs = load_corpus(lm, configs(kw)[0])
        ids = draft_vocabulary(seqs, draft_vocab, config.vocab_size)
        click.echo(f"draft vocabulary: {draft_vocab} tokens, {100 * coverage(seqs, ids):.1f}% of the corpus's answer tokens")

    def build(engine):
        shape = head_config(engine, chosen, draft_vocab, unroll, feature_weight)
        head = Eagle3Head(engine, shape)
        return with_vocabulary(head, engine, ids) if ids is not None else head

    _train_drafter(lm, kw, "eagle3", build)


COMMAND = train_eagle3_cmd

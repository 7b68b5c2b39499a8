"""Integration on the embedded model: prompt lookup and draft-model speculative decoding equal the
autoregressive output, token for token, on real samples of all three datasets (first turn, 48 new
tokens); sps with an untrained embedded draft built here (no checkpoint needed) and, when it has
been trained, with the shipped one; hf-assisted with the same draft equals the baseline too."""

import pytest
from helpers import assert_reproduces

from harness.core.checkpoint import save_checkpoint
from harness.core.engine import Engine
from methods.peers import HFAssisted
from methods.pld import PromptLookup
from methods.sps import SpS
from methods.sps_draft import ShallowDraft, pick_layers

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def untrained_draft(real, tmp_path_factory):
    """4 of the target's 30 layers, spread over its depth, untrained, as a draft checkpoint."""
    draft = ShallowDraft(real.model, pick_layers(real.model.config.num_hidden_layers, 4, "spread"))
    path = tmp_path_factory.mktemp("sps") / "untrained.safetensors"
    save_checkpoint(path, draft, {"method": "sps-draft", "model": real.key, "config": draft.config()})
    return path


def assert_lossless_on(real, references, method) -> int:
    """Every 48-token reference reproduced; returns the draft tokens accepted."""
    return assert_reproduces(method, references, 48, {real.tokenizer.eos_token_id})


@pytest.mark.parametrize("options", [{}, {"k": "4", "max_ngram": "2"}])
def test_pld_is_lossless_on_real_text(real, references, options):
    method = PromptLookup(Engine(real.model), real.key, **options)
    assert assert_lossless_on(real, references, method) > 0  # drafts were accepted


def test_sps_with_an_untrained_embedded_draft_is_lossless_on_real_text(real, references, untrained_draft):
    method = SpS(Engine(real.model), real.key, draft=str(untrained_draft), k=3)
    assert_lossless_on(real, references, method)
    assert method.engine.counters.draft_forwards > method.engine.counters.forwards  # the draft ran, booked apart


def test_sps_with_the_trained_draft_is_lossless_on_real_text(real, references):
    if not SpS.default_weights(real.key).exists():
        pytest.skip("no trained sps draft yet (spec-harness train sps-draft)")
    method = SpS(Engine(real.model), real.key)
    assert assert_lossless_on(real, references, method) > 0


def test_hf_assisted_with_the_same_draft_equals_the_baseline(real, references, untrained_draft):
    peer = HFAssisted(Engine(real.model), real.key, draft=str(untrained_draft), k=3)
    for name, prompt, ref in references[::2]:
        assert peer.generate(prompt, 48, {real.tokenizer.eos_token_id}).output_ids == ref, name

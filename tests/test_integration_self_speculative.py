"""Integration on the embedded model: self-speculative decoding with a fixed skip set (no searched
artifact needed) equals the autoregressive output, token for token, on real samples."""

import pytest
from helpers import assert_reproduces

from harness.core.engine import Engine
from methods.self_speculative import SelfSpeculative

pytestmark = pytest.mark.integration

# Every other attention and MLP sublayer in the upper two thirds of SmolLM2's 30 layers.
SKIP = "a10,a12,a14,a16,a18,a20,a22,a24,a26,m11,m13,m15,m17,m19,m21,m23,m25,m27"


def test_self_spec_is_lossless_on_real_text(real, references):
    method = SelfSpeculative(Engine(real.model), real.key, skip=SKIP)
    assert_reproduces(method, references, 48, {real.tokenizer.eos_token_id})
    assert 0 < method.accepted < method.drafted  # drafts were accepted and rejected: both paths ran

"""Integration on the embedded model: Lookahead decoding's greedy output equals the autoregressive
output, token for token, on real samples of all three datasets (first turn, 48 new tokens)."""

import pytest
from helpers import assert_reproduces

from harness.core.engine import Engine
from methods.lookahead import Lookahead

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("options", [{}, {"preset": "published"}])
def test_lookahead_is_lossless_on_real_text(real, references, options):
    method = Lookahead(Engine(real.model), real.key, **options)
    # drafts were accepted: the verification branch was exercised
    assert assert_reproduces(method, references, 48, {real.tokenizer.eos_token_id}) > 0

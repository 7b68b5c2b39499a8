"""Integration on the embedded model: Lookahead decoding's greedy output equals the autoregressive
output, token for token, on real samples of all three datasets (first turn, 48 new tokens)."""

import pytest

from harness.core.decoding import decode
from harness.core.engine import Engine
from methods.lookahead import Lookahead

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("options", [{}, {"preset": "published"}])
def test_lookahead_is_lossless_on_real_text(real, references, options):
    engine = Engine(real.model)
    method, cache = Lookahead(engine, real.key, **options), engine.new_cache(2048)
    accepted = 0
    for name, prompt, ref in references:
        got = decode(method, prompt, 48, {real.tokenizer.eos_token_id}, cache)
        diverge = next((i for i, (a, b) in enumerate(zip(got.output_ids, ref)) if a != b), None)
        assert got.output_ids == ref, f"{options} {name}: diverges at {diverge}"
        accepted += len(ref) - len(got.accept_lengths)
    assert accepted > 0  # drafts were accepted: the verification branch was exercised

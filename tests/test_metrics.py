"""Metrics on hand-made records."""

import math

import pytest

from harness.bench import metrics


def rec(method, sid, tokens, wall, forwards, **kw):
    base = {"method": method, "dataset": "gsm8k", "sample_id": sid, "turn": 0, "new_tokens": tokens,
            "wall_time": wall, "forwards": forwards, "accept_lengths": [1] * forwards,
            "draft_sizes": [0] * forwards, "positions": [1] * forwards, "lossless": True,
            "rouge2": None, "correct": None, "telemetry": {}}
    base.update(kw)
    return base


def test_speedup_tau_and_lossless():
    records = [
        rec("ar", "0", 10, 1.0, 10), rec("ar", "1", 20, 4.0, 20),
        rec("x", "0", 10, 0.5, 4, draft_sizes=[0, 3, 3, 3], positions=[9, 4, 4, 4]),
        rec("x", "1", 20, 1.0, 8, lossless=False),
    ]
    s = metrics.summarize(records).set_index("method")
    # mean tok/s: ar = (10 + 5)/2 = 7.5; x = (20 + 20)/2 = 20
    assert s.loc["x", "speedup"] == pytest.approx(20 / 7.5)
    assert s.loc["x", "speedup_median"] == pytest.approx(3.0)  # paired ratios 2 and 4
    assert s.loc["x", "tau"] == pytest.approx(30 / 12)
    assert s.loc["ar", "tau"] == pytest.approx(1.0)
    assert s.loc["x", "draft_size"] == pytest.approx(3 * 3 / 10)  # prefill excluded: [3,3,3] + 7 zeros
    assert s.loc["x", "lossless_rate"] == pytest.approx(0.5)
    assert s.loc["x", "speedup_ci_low"] <= 3.0 <= s.loc["x", "speedup_ci_high"]


def test_rouge2_matches_hand_count():
    # reference bigrams: the cat, cat sat, sat on, on the, the mat (5); prediction: the cat, cat sat, sat down (3)
    # overlap 2 -> P = 2/3, R = 2/5, F1 = 2PR/(P+R) = 0.5
    assert metrics.rouge2("the cat sat down", "the cat sat on the mat") == pytest.approx(0.5)
    assert metrics.rouge2("cats sitting", "cat sits") == pytest.approx(1.0)  # stemmed


def test_gsm8k_correctness():
    assert metrics.gsm8k_correct("so she makes 9 * 2 = $18.\n#### 18", "18")
    assert metrics.gsm8k_correct("The answer is 1,250.", "1250")
    assert not metrics.gsm8k_correct("The answer is 17", "18")
    assert not metrics.gsm8k_correct("no number here", "18")


def test_first_divergence():
    assert metrics.first_divergence([1, 2, 3], [1, 2, 3]) is None
    assert metrics.first_divergence([1, 2, 3], [1, 5, 3]) == 1
    assert metrics.first_divergence([1, 2], [1, 2, 3]) == 2


def test_joules_per_token_only_with_energy():
    records = [rec("ar", "0", 10, 1.0, 10, telemetry={"energy_j": 5.0}),
               rec("ar", "1", 30, 1.0, 30, telemetry={"energy_j": 15.0})]
    assert metrics.summarize(records).loc[0, "joules_per_token"] == pytest.approx(0.5)
    assert math.isnan(metrics.summarize([rec("ar", "0", 10, 1.0, 10)]).loc[0, "joules_per_token"])

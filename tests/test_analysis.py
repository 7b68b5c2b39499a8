"""The FIRP analyses on the tiny model: shapes, ranges, and what must hold by construction."""

import random

import pytest
from helpers import random_sequences

from harness.analysis.analyses import check_disjoint, cosine_by_layer, layer_probe
from harness.bench.data import training_prompts
from harness.train.distill import CorpusConfig
from harness.train.training import TrainConfig, gather_rows, make_batch, teacher_pass
from methods.firp import PseudoChains

CFG = TrainConfig(steps=4, batch=4, positions=8, max_len=64, lr=1e-2, warmup=1, eval_sequences=4)


def test_layer_probe_reports_every_layer(engine):
    result = layer_probe(engine, random_sequences(12), [1, 3], CFG)
    assert set(result) == {"1", "3"}
    assert all(len(row) == 5 and 0 <= row[0] <= row[-1] <= 1 for row in result.values())


def test_cosine_starts_after_each_insertion_layer(engine):
    chains = PseudoChains(engine.hidden_size, (1, 2))
    result = cosine_by_layer(engine, chains, random_sequences(4), CFG)
    assert list(result["step 1"]) == ["2", "3", "4"] and list(result["step 2"]) == ["3", "4"]
    assert all(-1.0 <= v <= 1.0 for step in result.values() for v in step.values())
    assert min(result["step 1"].values()) < 0.99  # a copy of x_t's state is not x_{t+1}'s


def test_cosine_is_one_when_the_pseudo_state_is_the_real_next_state(engine):
    """An oracle chain whose pseudo state is the real state of t + 1 at insertion: it then sees
    exactly what the real token sees, so the two stay identical in every later layer."""

    class Oracle(PseudoChains):
        def inserts(self, real_at, m, steps=None):
            def insert(h):
                return self.next_state
            return {self.layers[0]: insert}

    seqs = random_sequences(4)
    oracle = Oracle(engine.hidden_size, (2,))
    batch = make_batch(seqs, CFG, random.Random(CFG.seed))
    tp = teacher_pass(engine, batch.ids, (2,))
    oracle.next_state = gather_rows(tp.hidden_at[2], (batch.hang + 1).clamp(max=batch.ids.shape[1] - 1))
    result = cosine_by_layer(engine, oracle, seqs, CFG)
    assert all(abs(v - 1.0) < 1e-4 for v in result["step 1"].values()), result


def test_analysis_prompts_must_be_disjoint_from_training_prompts():
    trained = {"firp": {"data": {"per_source": 800}}, "medusa": {"data": {"per_source": 100, "skip": 900}}}
    check_disjoint(CorpusConfig(per_source=100, skip=800), trained)  # rows 800..899: nobody trained there
    with pytest.raises(ValueError, match="overlap medusa's training prompts 900..999"):
        check_disjoint(CorpusConfig(per_source=101, skip=800), trained)
    with pytest.raises(ValueError, match="overlap firp's"):
        check_disjoint(CorpusConfig(per_source=10, skip=795), trained)


def test_training_prompts_skip_reads_the_next_rows():
    first, later = training_prompts(3), training_prompts(2, skip=1)
    gsm = [text for src, text in first if src.startswith("gsm8k")]
    assert [text for src, text in later if src.startswith("gsm8k")] == gsm[1:]
    assert len(later) == 4 and {src for src, _ in later} == {"gsm8k-train", "xsum-validation"}

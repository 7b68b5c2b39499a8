"""Training sources of the drafters' corpus: chat instructions and MBPP join GSM8K and XSum; their
held-back tuning parts are fixed and disjoint from training; the corpus cache is keyed by its
sources; no MT-bench or Spec-Bench item is among them; `--sources` is checked before any work."""

import json
import re
from types import SimpleNamespace

import pytest
from click.testing import CliRunner

from harness.bench.data import TUNING_SETS, all_samples, training_prompts
from harness.bench.jsonl import DataError
from harness.bench.sources import (
    SOURCES,
    parse_sources,
    resolve_mix,
    training_items,
    tuning_items,
)
from harness.cli import main
from harness.train.distill import (
    CorpusConfig,
    corpus_path,
    corpus_summary,
    trained_rows,
)


def test_the_corpus_reads_chat_and_code_prompts():
    pairs = training_prompts(mix={"instructions": 3, "mbpp-train": 2, "gsm8k-train": 1})
    assert [s for s, _ in pairs] == ["instructions"] * 3 + ["mbpp-train"] * 2 + ["gsm8k-train"]
    assert pairs[0][1].startswith("Is there anything I can eat for a breakfast")
    assert pairs[1][1] == "What is the relation between the given pairs?\n\nNight : Day :: Right : Left"  # + its input
    assert "Your code should pass these tests:\nassert min_cost(" in pairs[3][1]
    assert training_prompts(2) == training_prompts(mix={"gsm8k-train": 2, "xsum-validation": 2})  # the old call


@pytest.mark.parametrize("source, tuning, size, held", [("instructions", "chat-train", 427, 61),
                                                        ("mbpp-train", "code-train", 474, 67)])
def test_tuning_parts_are_fixed_and_disjoint_from_training(source, tuning, size, held):
    train, tune = training_items(source), tuning_items(tuning)
    assert len(train) + len(tune) == size and len(tune) == held
    assert not {i for i, _ in train} & {i for i, _ in tune}
    assert tuning_items(tuning) == tune  # fixed: every 7th item, in file order
    samples = all_samples(tuning)
    assert tuning in TUNING_SETS and [s.sample_id for s in samples] == [i for i, _ in tune]
    assert len(training_prompts(mix={source: len(train)})) == len(train)
    with pytest.raises(DataError, match=f"{source} has {len(train)} training prompts"):
        training_prompts(mix={source: len(train) + 1})


def test_the_corpus_cache_is_keyed_by_its_sources():
    lm = SimpleNamespace(key="tiny")
    old, mixed = CorpusConfig(per_source=8), CorpusConfig(per_source=8, mix=(("gsm8k-train", 8), ("instructions", 8)))
    assert corpus_path(lm, old) != corpus_path(lm, mixed)
    assert corpus_path(lm, old).name == "corpus-5751f1d47b.jsonl"  # the tag of corpora cached before mix existed
    side = corpus_summary(mixed, [])
    assert side["mix"] == {"gsm8k-train": 8, "instructions": 8} and "instructions" in side["sources"]
    assert "i % 7 == 6" in side["held_back"]["instructions"]
    assert trained_rows({"data": side}) == range(0, 8)


def _words(text: str) -> str:
    return re.sub(r"\W+", " ", text.lower()).strip()


def test_no_mt_bench_or_spec_bench_item_is_a_training_or_tuning_prompt():
    ours = {_words(t) for s in SOURCES[2:] for _, t in training_items(s)}
    ours |= {_words(t) for name in ("chat-train", "code-train") for _, t in tuning_items(name)}
    for name in ("mt-bench", "spec-bench"):
        for sample in all_samples(name):
            for turn in sample.turns:
                words = _words(turn)
                head = words[:60]
                assert not any(head in text or text[:60] in words for text in ours if len(text) >= 20), \
                    (name, sample.sample_id, turn[:60])


def test_sources_option_is_parsed_and_checked():
    assert parse_sources("gsm8k-train,instructions=10") == (("gsm8k-train", None), ("instructions", 10))
    assert resolve_mix(parse_sources("gsm8k-train,mbpp-train"), 800) == {"gsm8k-train": 800, "mbpp-train": 407}
    for bad, message in [("wiki", "unknown training source"), ("instructions=0", "whole number"),
                         ("mbpp-train=999", "has 407 training prompts"), ("gsm8k-train,gsm8k-train", "once")]:
        with pytest.raises(DataError, match=message):
            parse_sources(bad)
    res = CliRunner().invoke(main, ["train", "medusa", "--sources", "wiki", "--out", "/nonexistent/x"])
    assert res.exit_code == 2 and "unknown training source" in res.output


def test_a_drafter_trains_on_the_four_sources_by_default(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("SPEC_HARNESS_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "medusa.safetensors"
    res = CliRunner().invoke(main, ["train", "medusa", "--model", str(tiny_model_dir), "--per-source", "1",
                                    "--train-steps", "1", "--batch", "2", "--heads", "1", "--out", str(out)])
    assert res.exit_code == 0, res.output
    data = json.loads(out.with_suffix(".json").read_text())["data"]
    assert data["mix"] == {s: 1 for s in SOURCES} and data["sequences"] == 4


def test_the_corpus_is_the_targets_own_answers_and_resumes_after_an_interruption(tiny_model_dir, tmp_path, monkeypatch):
    import harness.train.distill as distill
    from harness.core.decoding import decode
    from harness.core.engine import Engine
    from harness.core.modelload import load_model
    from methods.autoregressive import Autoregressive

    monkeypatch.setenv("SPEC_HARNESS_CACHE", str(tmp_path / "cache"))
    lm = load_model(str(tiny_model_dir), "cpu", "float32", linear="off")
    cfg = CorpusConfig(per_source=3, answer_tokens=6, batch=2, max_prompt_tokens=40)
    path = tmp_path / "corpus.jsonl"
    real, calls = distill.decode_batch, []

    def interrupted(*args):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # the second batch never finishes
        return real(*args)
    monkeypatch.setattr(distill, "decode_batch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        distill.generate_corpus(lm, cfg, path, progress=False)
    assert not path.exists() and len(path.with_suffix(".partial").read_text().splitlines()) == 2
    calls.clear()
    monkeypatch.setattr(distill, "decode_batch", lambda *a: calls.append(1) or real(*a))
    distill.generate_corpus(lm, cfg, path, progress=False)
    assert len(calls) == 2  # 6 prompts in batches of 2: only the two batches not yet written
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(rows) == 6 and not path.with_suffix(".partial").exists()
    engine = Engine(lm.model)
    for row in rows:  # each answer is what the target decodes alone, greedily
        prompt = row["ids"][:row["answer_start"]]
        alone = decode(Autoregressive(engine, "tiny"), prompt, 6, {lm.tokenizer.eos_token_id}, engine.new_cache(64))
        assert row["ids"][row["answer_start"]:] == alone.output_ids

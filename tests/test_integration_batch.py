"""Batches on real text: every method that batches, at B = 4 on gsm8k and mt-bench (two turns),
emits each sequence's own tokens exactly as `ar` does at batch 1 (greedy; sampled batches are
checked on the tiny model, tests/test_batch.py); a peer that cannot batch (transformers' prompt
lookup) is recorded as skipped there (the embedded model, its trained drafters)."""

import pytest

import methods as registry
from harness.bench.batches import ONE_AT_A_TIME
from harness.bench.records_io import read_records
from harness.bench.runner import RunConfig, Runner

pytestmark = pytest.mark.integration


def decoded(tmp_path, name: str, methods: list[str], size: int) -> list[dict]:
    """The records of one run of `methods` (and the baseline) at one batch size."""
    cfg = RunConfig(methods=methods, datasets=["gsm8k", "mt-bench"], num_samples=4, max_new_tokens=24,
                    out=tmp_path / name, telemetry=False, warmup=False, device="cpu", batch_sizes=(size,))
    Runner(cfg, progress=False).run()
    return read_records(tmp_path / name / "records.jsonl")


def test_every_batched_sequence_equals_ar_at_batch_one(tmp_path):
    names = [n for n in registry.runnable("SmolLM2-135M-Instruct-Q4_1")
             if n != "ar" and registry.get(n).batchable] + ["hf-prompt-lookup"]
    # every method at batch 1: the lossless tests and CI's regression run; here only the baseline's
    alone = {(r["dataset"], r["sample_id"], r["turn"], r["temperature"]): r["output_ids"]
             for r in decoded(tmp_path, "one", ["ar"], 1)}
    four = decoded(tmp_path, "four", names, 4)
    batched = {r["method"] for r in four if not r.get("skipped")}
    assert batched == {n for n in ["ar", *names] if n != "hf-prompt-lookup"} and len(batched) >= 9
    assert {r["skipped"] for r in four if r.get("skipped")} == {ONE_AT_A_TIME}
    # gsm8k's 4 and mt-bench's 4, both turns
    assert {r["batch_size"] for r in four} == {r["group_size"] for r in four} == {4}
    bad = [(r["method"], r["dataset"], r["sample_id"], r["turn"], r["temperature"], r.get("divergence"))
           for r in four if not r.get("skipped")
           and r["output_ids"] != alone[(r["dataset"], r["sample_id"], r["turn"], r["temperature"])]]
    assert not bad, bad
    # the runner's own check: each method against the baseline's batch of 4 (the baseline's own
    # batch has no batch-1 run beside it here: the comparison above is its check)
    assert all(r["lossless"] is True for r in four if not r.get("skipped") and r["method"] != "ar")
    assert all(any(sum(r["accepted"]) > 0 for r in four if not r.get("skipped") and r["method"] == name)
               for name in ("firp", "pld", "eagle", "lookahead"))

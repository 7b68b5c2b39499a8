"""Exact sampling on real text: every in-loop method emits the baseline's sampled tokens at
T = 0.7 and 1.0 on gsm8k, xsum and mt-bench (the embedded model, its trained drafters)."""

import pytest

import methods as registry
from harness.bench.records_io import read_records
from harness.bench.runner import RunConfig, Runner
from harness.bench.sampled import Sampling

pytestmark = pytest.mark.integration


def test_every_method_reproduces_the_baselines_sample(tmp_path):
    names = [n for n in registry.runnable("SmolLM2-135M-Instruct-Q4_1") if n != "ar"]
    cfg = RunConfig(methods=names, datasets=["gsm8k", "xsum", "mt-bench"], num_samples=1, max_new_tokens=24,
                    out=tmp_path / "run", telemetry=False, warmup=False, device="cpu",
                    sampling=Sampling(temperatures=(0.7, 1.0)))
    Runner(cfg, progress=False).run()
    records = [r for r in read_records(tmp_path / "run" / "records.jsonl") if r["method"] != "ar"]
    assert {r["temperature"] for r in records} == {0.7, 1.0} and len(records) == len(names) * 4 * 2
    bad = [(r["method"], r["dataset"], r["temperature"], r["divergence"]) for r in records if r["lossless"] is not True]
    assert not bad, bad
    assert any(r["accepted"] and sum(r["accepted"]) > 0 for r in records)  # drafts were accepted while sampling

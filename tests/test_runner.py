"""Runs, resume, Ctrl-C and command-line errors, on a tiny random Llama saved to disk."""

import json

import pytest
from click.testing import CliRunner

from harness.bench import runner as runner_mod
from harness.bench.records_io import read_records
from harness.bench.runner import RunConfig, Runner
from harness.cli import main


def cfg(model_dir, out, **kw):
    base = dict(methods=["ar"], datasets=["gsm8k", "mt-bench"], model=str(model_dir), device="cpu",
                num_samples=2, max_new_tokens=6, out=out, telemetry=True, warmup=False)
    base.update(kw)
    return RunConfig(**base)


def keys(records):
    return sorted((r["method"], r["dataset"], r["sample_id"], r["turn"]) for r in records)


def test_run_writes_schema_and_resume_extends_without_duplicates(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    Runner(cfg(tiny_model_dir, out, num_samples=1), progress=False).run()
    first = read_records(out / "records.jsonl")
    assert keys(first) == [("ar", "gsm8k", "0", 0), ("ar", "mt-bench", "81", 0), ("ar", "mt-bench", "81", 1)]
    rec = first[0]
    from harness.bench.results import RECORD_FIELDS

    for field in RECORD_FIELDS:
        assert field in rec
    assert rec["lossless"] is None and rec["order"] == 0  # the baseline has nothing to compare with
    assert sum(rec["accept_lengths"]) == rec["new_tokens"] == rec["forwards"]
    assert rec["telemetry"]["kind"] == "cpu"
    with (out / "records.jsonl").open("a") as f:
        f.write('{"method": "ar", "dataset": "gsm8k", "sample_i')  # torn line from a killed run
    Runner(cfg(tiny_model_dir, out, resume=True), progress=False).run()
    second = read_records(out / "records.jsonl")
    assert len(keys(second)) == len(set(keys(second))) == 6
    assert second[:3] == first
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["schema_version"] == 4 and manifest["methods"] == ["ar"] and len(manifest["resumes"]) == 1
    assert manifest["samples"] == {"gsm8k": ["0", "1"], "mt-bench": ["81", "91"]}  # stratified: writing, roleplay


def test_resume_warms_up_only_datasets_with_turns_left(tiny_model_dir, tmp_path, monkeypatch):
    out = tmp_path / "run"
    Runner(cfg(tiny_model_dir, out, num_samples=1, warmup=True), progress=False).run()
    lines = (out / "records.jsonl").read_text().splitlines()
    kept = [line for line in lines if json.loads(line)["dataset"] == "gsm8k"]
    (out / "records.jsonl").write_text("\n".join(kept) + "\n")  # MT-bench's two turns to redo
    calls = []
    real_decode = runner_mod.decode_batch

    def counted(method, prompts, *a, **kw):
        calls.append(len(prompts))
        return real_decode(method, prompts, *a, **kw)

    monkeypatch.setattr(runner_mod, "decode_batch", counted)
    Runner(cfg(tiny_model_dir, out, num_samples=1, warmup=True, resume=True), progress=False).run()
    assert len(calls) == 3  # one MT-bench warm-up and its two turns; finished GSM8K is not warmed
    assert len(read_records(out / "records.jsonl")) == 3


def test_interrupt_keeps_records(tiny_model_dir, tmp_path, monkeypatch):
    out = tmp_path / "run"
    calls = {"n": 0}
    real_decode = runner_mod.decode_batch

    def flaky(*a, **kw):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real_decode(*a, **kw)

    monkeypatch.setattr(runner_mod, "decode_batch", flaky)
    with pytest.raises(KeyboardInterrupt):
        Runner(cfg(tiny_model_dir, out), progress=False).run()
    assert len(read_records(out / "records.jsonl")) == 2
    monkeypatch.setattr(runner_mod, "decode_batch", real_decode)
    Runner(cfg(tiny_model_dir, out, resume=True), progress=False).run()
    assert len(read_records(out / "records.jsonl")) == 6


def test_refuses_existing_run_and_mismatched_resume(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    Runner(cfg(tiny_model_dir, out, num_samples=1, datasets=["gsm8k"]), progress=False).run()
    with pytest.raises(Exception, match="already holds a run"):
        Runner(cfg(tiny_model_dir, out), progress=False)
    with pytest.raises(Exception, match="different"):
        Runner(cfg(tiny_model_dir, out, resume=True, max_new_tokens=9), progress=False).run()


def test_prompt_longer_than_context_is_skipped_with_reason(tiny_model_dir, tmp_path):
    data = tmp_path / "long.jsonl"
    data.write_text(json.dumps({"prompt": "word " * 600, "id": "long"}) + "\n" + json.dumps({"prompt": "hi"}) + "\n")
    out = tmp_path / "run"
    Runner(cfg(tiny_model_dir, out, datasets=[f"jsonl:{data}"]), progress=False).run()
    recs = read_records(out / "records.jsonl")
    assert "exceeds context" in recs[0]["skipped"] and recs[1]["new_tokens"] > 0
    res = CliRunner().invoke(main, ["report", str(out)])
    assert res.exit_code == 0 and "1 record(s) skipped" in res.output


@pytest.mark.parametrize("args, message", [
    (["--methods", "nope"], "unknown method 'nope'; valid methods: ar"),
    (["--datasets", "nope"], "unknown dataset 'nope'; valid: gsm8k, xsum, mt-bench, spec-bench"),
    (["--method-arg", "ar"], "expected NAME.KEY=VALUE"),
    (["--method-arg", "ar.window=3"], "unknown option(s) window"),
])
def test_cli_errors_are_clear(tiny_model_dir, tmp_path, args, message):
    res = CliRunner().invoke(main, ["run", "--model", str(tiny_model_dir), "--out", str(tmp_path / "o"), *args])
    assert res.exit_code == 2, res.output
    assert message in res.output


def test_cli_malformed_data_names_file_and_line(tiny_model_dir, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "ok"}\n{"prompt": oops}\n')
    res = CliRunner().invoke(main, ["run", "--model", str(tiny_model_dir), "--out", str(tmp_path / "o"),
                                    "--datasets", f"jsonl:{bad}"])
    assert res.exit_code == 2 and f"{bad}:2: not valid JSON" in res.output


def test_cli_run_then_report(tiny_model_dir, tmp_path):
    out = tmp_path / "o"
    res = CliRunner().invoke(main, ["run", "--model", str(tiny_model_dir), "--out", str(out), "--datasets", "gsm8k",
                                    "--num-samples", "1", "--max-new-tokens", "4", "--no-warmup"])
    assert res.exit_code == 0, res.output
    assert "| ar " in res.output and (out / "summary.md").exists()
    res = CliRunner().invoke(main, ["report", str(out)])
    assert res.exit_code == 0 and "gsm8k" in res.output


def test_method_labels_run_two_configurations(tiny_model_dir, tmp_path):
    out = tmp_path / "o"
    res = CliRunner().invoke(main, ["run", "--model", str(tiny_model_dir), "--out", str(out), "--datasets", "gsm8k",
                                    "--num-samples", "1", "--max-new-tokens", "4", "--no-warmup",
                                    "--methods", "ar,ar:second", "--method-arg", "ar:second.nothing=1"])
    assert res.exit_code == 2 and "unknown option(s) nothing" in res.output
    res = CliRunner().invoke(main, ["run", "--model", str(tiny_model_dir), "--out", str(out), "--datasets", "gsm8k",
                                    "--num-samples", "1", "--max-new-tokens", "4", "--no-warmup", "--methods", "ar,ar:second"])
    assert res.exit_code == 0, res.output
    records = read_records(out / "records.jsonl")
    assert {r["method"]: r["order"] for r in records} in ({"ar": 0, "ar:second": 1}, {"ar": 1, "ar:second": 0})
    assert [r["lossless"] for r in records if r["method"] == "ar:second"] == [True]

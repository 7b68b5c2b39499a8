"""Every command refuses what it cannot use before doing any work, with one `error:` line (or
click's usage error) and exit status 2: numbers out of range, layers the model lacks, an
unusable cache directory; and gpu-check fails a run that checked nothing."""

import json
import os

import pytest
from click.testing import CliRunner

from harness.analysis import gpucheck
from harness.analysis.gpucheck_report import verdict, write
from harness.cli import main

# the modules that bind load_model at import first, so that none imports the stand-in (core's, last)
LOADERS = ("harness.cli.train.load_model", "harness.cli.analyze.load_model", "harness.analysis.doctor.load_model",
           "harness.bench.runner.load_model", "harness.analysis.draftsize.load_model",
           "harness.core.modelload.load_model")


@pytest.fixture
def work(monkeypatch, tmp_path):
    """Records any model load, corpus build or model conversion (none must happen); the cache is fresh."""
    monkeypatch.setenv("SPEC_HARNESS_CACHE", str(tmp_path / "cache"))
    started = []

    def record(what):
        return lambda *a, **k: started.append(what) or pytest.fail(f"{what} started")

    for target in LOADERS:
        monkeypatch.setattr(target, record("load_model"))
    monkeypatch.setattr("harness.train.distill.generate_corpus", record("corpus"))
    monkeypatch.setattr("harness.core.modelload.convert_gguf", record("conversion"))
    return started


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


# -- gpu-check: the budget, and a verdict that needs something checked ----------------------------
@pytest.mark.parametrize("budget", ["-5", "0", "nan", "inf"])
def test_gpu_check_refuses_a_budget_that_is_not_a_positive_finite_number(tmp_path, budget):
    res = invoke("gpu-check", "--device", "cpu", "--budget", budget, "--out", tmp_path / "gc")
    assert res.exit_code == 2 and "Invalid value for '--budget'" in res.output, res.output
    assert not (tmp_path / "gc").exists()
    with pytest.raises(ValueError, match="must be a finite number of seconds > 0"):
        gpucheck.Sections(float(budget))


def test_gpu_check_that_checked_nothing_fails(tmp_path):
    res = invoke("gpu-check", "--device", "cpu", "--budget", "1e-9", "--no-embedded", "--out", tmp_path / "gc")
    assert res.exit_code == 1, res.output
    assert "FAILED: nothing was checked (3 of 3 section(s) skipped)" in res.output
    saved = json.loads((tmp_path / "gc" / "gpu_check.json").read_text())
    assert saved["ok"] is False and "all checks pass" not in (tmp_path / "gc" / "summary.md").read_text()


def test_verdict_needs_a_check_that_ran():
    assert verdict([]) == (False, "FAILED: nothing was checked (0 of 0 section(s) skipped)")
    assert not verdict([("a", "skipped", "budget"), ("b", "n/a", "no GPU")])[0]
    assert verdict([("a", "skipped", "budget"), ("b", "pass", "")]) == (True, "all checks pass")
    assert verdict([("a", "tie", ""), ("b", "fail", "")]) == (False, "FAILED: 1 check(s)")


def test_an_empty_gpu_check_result_is_written_as_failed(tmp_path):
    result = {"device": "cpu", "dtype": "bfloat16", "created": "now", "seconds": 0.0, "budget_s": 1.0,
              "hardware": {"cpu": "x"}, "versions": {}, "telemetry": {}, "sections": {}}
    _, rows = write(result, tmp_path)
    assert rows == [] and result["ok"] is False and "FAILED: nothing was checked" in (tmp_path / "summary.md").read_text()


# -- the cache directory ------------------------------------------------------------------------
@pytest.mark.parametrize("where, why", [("file", "is a file, not a directory"),
                                        ("file/sub", "is a file, so no directory can be made"),
                                        ("readonly", "is not writable")])
@pytest.mark.parametrize("command", [["train", "firp", "--train-steps", "1"], ["plan", "--methods", "pld"],
                                     ["costmodel", "--n", "1,2"], ["setup"]])
def test_an_unusable_cache_directory_is_refused_before_any_work(tiny_model_dir, tmp_path, work, monkeypatch,
                                                                 where, why, command):
    (tmp_path / "file").write_text("not a directory")
    (tmp_path / "readonly").mkdir()
    access = os.access  # as root, chmod cannot make a directory read-only: os.access stands in for it
    monkeypatch.setattr(os, "access", lambda p, mode: False if str(p).endswith("readonly") else access(p, mode))
    monkeypatch.setenv("SPEC_HARNESS_CACHE", str(tmp_path / where))
    model = [] if command == ["setup"] else ["--model", tiny_model_dir]
    res = invoke(*command, *model)
    assert res.exit_code == 2, res.output
    assert f"error: SPEC_HARNESS_CACHE={tmp_path / where}: " in res.output and why in res.output
    assert len(res.output.strip().splitlines()) == 1 and not work
    assert not list((tmp_path / "readonly").iterdir())


# -- every subcommand checks its inputs first ---------------------------------------------------
@pytest.mark.parametrize("args, message", [
    (["train", "firp", "--train-steps", "0"], "Invalid value for '--train-steps': 0 is not in the range x>=1"),
    (["train", "firp", "--batch", "-1"], "Invalid value for '--batch': -1 is not in the range x>=1"),
    (["train", "firp", "--positions", "0"], "Invalid value for '--positions'"),
    (["train", "firp", "--lr", "nan"], "Invalid value for '--lr': nan is not a finite number"),
    (["train", "firp", "--lr", "0"], "Invalid value for '--lr'"),
    (["train", "firp", "--per-source", "0"], "Invalid value for '--per-source'"),
    (["train", "firp", "--layers", "99"], "error: --layers 99: the model has layers 0..2 (3 in all)"),
    (["train", "firp", "--layers", "2,1"], "error: --layers 2,1: must not decrease"),
    (["train", "firp", "--layers", "x"], "error: --layers 'x': expected comma-separated integers"),
    (["train", "firp", "--layers", "1,2", "--steps", "3"], "error: --steps 3 but 2 layers given"),
    (["train", "medusa", "--heads", "0"], "Invalid value for '--heads': 0 is not in the range x>=1"),
    (["train", "eagle", "--feature-weight", "0", "--token-weight", "0"], "error: --feature-weight and --token-weight"),
    (["train", "eagle", "--noise", "-1"], "Invalid value for '--noise'"),
    (["train", "sps-draft", "--layers", "99"], "error: --layers 99: a draft of 99 layers: the target has 3"),
    (["train", "sps-draft", "--from-layers", "0,7"], "error: --from-layers 0,7: the model has layers 0..2"),
    (["train", "self-spec", "--trials", "1"], "Invalid value for '--trials': 1 is not in the range x>=2"),
    (["train", "self-spec", "--max-new-tokens", "400"], "error: --max-new-tokens 400: with 256 slots for drafts"),
    (["analyze", "layers", "--layers", "0..9"], "error: --layers 0,1,2,3,4,5,6,7,8,9: the model has layers 0..2"),
    (["analyze", "layers", "--layers", "0..2:0"], "error: --layers '0..2:0': the step must be at least 1"),
    (["analyze", "firp", "--layers", "1,2", "--firp", "nowhere"], "error: --firp nowhere: no checkpoint at"),
    (["analyze", "sps-draft", "--drafts", "d", "--k", "0"], "Invalid value for '--k'"),
    (["tune", "pld", "--num-prompts", "0"], "Invalid value for '--num-prompts'"),
    (["tune", "pld", "--k", "2,x"], "error: --k '2,x': expected comma-separated integers"),
    (["tune", "profile", "ar"], "error: ar has no draft shape to plan"),
    (["tune", "profile", "pld", "--max-new-tokens", "0"], "Invalid value for '--max-new-tokens'"),
    (["tune", "profile", "pld", "--method-arg", "pld.k=many"], "error: pld.k: 'many' is not a valid int"),
    (["costmodel", "--repeats", "0"], "Invalid value for '--repeats'"),
    (["costmodel", "--n", "0,2"], "error: --n '0,2': row counts must be at least 1"),
    (["costmodel", "--n", "1,400"], "error: --prefix 256 + 400 rows exceeds the model's context of 512"),
    (["costmodel", "--drafts", "nosuch"], "error: unknown method 'nosuch'"),
    (["doctor", "--max-new-tokens", "0"], "Invalid value for '--max-new-tokens'"),
    (["doctor", "--max-new-tokens", "300"], "error: --max-new-tokens 300: with 256 slots for drafts"),
    (["plan", "--methods", "nosuch"], "error: unknown method 'nosuch'"),
    (["plan", "--methods", "pld", "--method-arg", "pld.k=0"], "error: pld.k: 0 must be at least 1"),
])
def test_bad_inputs_are_refused_before_any_work(tiny_model_dir, tmp_path, work, args, message):
    res = invoke(*args, "--model", tiny_model_dir)
    assert res.exit_code == 2 and message in res.output, res.output
    assert not work and not (tmp_path / "cache" / "distill").exists()


def test_an_unwritable_output_is_refused_before_training(tiny_model_dir, tmp_path, work):
    (tmp_path / "file").write_text("x")
    res = invoke("train", "medusa", "--model", tiny_model_dir, "--out", tmp_path / "file" / "m.safetensors")
    assert res.exit_code == 2 and f"error: --out {tmp_path / 'file' / 'm.safetensors'}: " in res.output, res.output
    res = invoke("train", "medusa", "--model", tiny_model_dir, "--out", tmp_path)
    assert res.exit_code == 2 and "is a directory; give a file path" in res.output and not work


def test_figures_and_regress_check_their_inputs(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"n": [1, 2], "ratio": [1.0, -3.0]}))
    res = invoke("figures", tmp_path, "--costmodel", bad, "--out", tmp_path / "fig")
    assert res.exit_code == 2 and f"error: {bad}: ratio at n=2 = -3.0" in res.output and not (tmp_path / "fig").exists()
    (tmp_path / "file").write_text("x")
    res = invoke("figures", tmp_path, "--out", tmp_path / "file" / "fig")
    assert res.exit_code == 2 and f"error: --out {tmp_path / 'file' / 'fig'}: {tmp_path / 'file'} is a file" in res.output
    res = invoke("regress", tmp_path, "--baseline", tmp_path, "--speedup-margin", "inf")
    assert res.exit_code == 2 and "Invalid value for '--speedup-margin': inf is not a finite number" in res.output


def test_plan_refuses_a_cost_model_of_another_model_before_loading(tiny_model_dir, tmp_path, work):
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"model": "another-model", "n": [1, 2], "ratio": [1.0, 1.5]}))
    res = invoke("plan", "--model", tiny_model_dir, "--methods", "pld", "--costmodel", other)
    assert res.exit_code == 2 and f"error: {other} is a cost model of another-model, not of " in res.output
    assert not work

"""`spec-harness train` / `analyze` end to end on a tiny model: corpus, training, artifacts, runs."""

import json

import pytest
from click.testing import CliRunner

from harness.cli import main

TINY_TRAIN = ["--train-steps", "3", "--batch", "2", "--positions", "4", "--per-source", "2", "--device", "cpu"]


@pytest.fixture
def isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SPEC_HARNESS_CACHE", str(tmp_path / "cache"))
    return tmp_path


def test_train_firp_writes_weights_and_sidecar_then_runs(tiny_model_dir, isolated_cache):
    out = isolated_cache / "firp-tiny.safetensors"
    res = CliRunner().invoke(main, ["train", "firp", "--model", str(tiny_model_dir), "--layers", "1,2",
                                    "--out", str(out), *TINY_TRAIN])
    assert res.exit_code == 0, res.output
    side = json.loads(out.with_suffix(".json").read_text())
    assert side["config"] == {"layers": [1, 2], "steps": 2, "mask": "serial", "source": "previous"}
    assert side["data"]["splits"].startswith("training only") and side["data"]["sequences"] == 4
    assert len(side["heldout_topk"]) == 2 and side["train_seconds"] >= 0
    run = CliRunner().invoke(main, ["run", "--model", str(tiny_model_dir), "--methods", "firp", "--datasets", "gsm8k",
                                    "--num-samples", "1", "--max-new-tokens", "6", "--no-warmup",
                                    "--out", str(isolated_cache / "run"), "--method-arg", f"firp.checkpoint={out}",
                                    "--method-arg", "firp.tree=chain-2"])
    assert run.exit_code == 0, run.output
    assert "100%" in run.output  # lossless


def test_train_medusa_and_missing_weights_message(tiny_model_dir, isolated_cache):
    out = isolated_cache / "medusa-tiny.safetensors"
    res = CliRunner().invoke(main, ["train", "medusa", "--model", str(tiny_model_dir), "--heads", "2",
                                    "--out", str(out), *TINY_TRAIN])
    assert res.exit_code == 0, res.output
    assert json.loads(out.with_suffix(".json").read_text())["config"]["heads"] == 2
    run = CliRunner().invoke(main, ["run", "--model", str(tiny_model_dir), "--methods", "medusa",
                                    "--out", str(isolated_cache / "run2")])
    assert run.exit_code == 2 and "spec-harness train medusa" in run.output
    assert not (isolated_cache / "run2").exists()  # nothing written for a run that could not start


def test_analyze_firp_reuses_a_layer_sweep(tiny_model_dir, isolated_cache):
    firp = isolated_cache / "firp-tiny.safetensors"
    res = CliRunner().invoke(main, ["train", "firp", "--model", str(tiny_model_dir), "--layers", "1,2",
                                    "--out", str(firp), *TINY_TRAIN])
    assert res.exit_code == 0, res.output
    twin = isolated_cache / "firp-tiny-parallel.safetensors"
    res = CliRunner().invoke(main, ["train", "firp", "--model", str(tiny_model_dir), "--layers", "1,2", "--mask", "parallel",
                                    "--out", str(twin), *TINY_TRAIN])
    assert res.exit_code == 0, res.output
    key = json.loads(firp.with_suffix(".json").read_text())["model"]
    sweep = isolated_cache / "sweep.json"
    sweep.write_text(json.dumps({"model": key, "topk_by_layer": {"1": [0.25, 0.5], "2": [0.75, 0.8]}}))
    out = isolated_cache / "analysis.json"
    args = ["analyze", "firp", "--model", str(tiny_model_dir), "--firp", str(firp), "--sweep", str(sweep),
            "--out", str(out), "--also", str(twin), *TINY_TRAIN]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    result = json.loads(out.read_text())
    assert result["layer_sweep"] == {"1": 0.25, "2": 0.75} and result["layer_sweep_source"] == str(sweep)
    assert set(result["topk_accuracy"]) == {"firp", "firp-tiny-parallel", "early-exit (layer 1)"} and result["cosine"]
    tiny = {"steps": 3, "batch": 2, "positions": 4}
    trained_on = json.loads(twin.with_suffix(".json").read_text())["train_sequences"]
    assert result["training_budget"]["firp-tiny-parallel"] == {**tiny, "sequences": trained_on}
    assert result["training_budget"]["early-exit (layer 1)"]["steps"] == 3
    assert result["data"]["skip"] == 2  # by default past the 2 prompts per split FIRP trained on
    overlapping = CliRunner().invoke(main, [*args, "--skip", "1"])
    assert overlapping.exit_code == 1 and "overlap firp's training prompts 0..1" in overlapping.output
    sweep.write_text(json.dumps({"model": "another-model", "topk_by_layer": {}}))
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 2 and "is not a layer sweep of" in res.output
    res = CliRunner().invoke(main, [*args, "--also", str(isolated_cache / "nope.safetensors")])
    assert res.exit_code == 2 and "no checkpoint at" in res.output and "nope.safetensors" in res.output
    res = CliRunner().invoke(main, [*args, "--medusa", str(isolated_cache / "no-medusa.safetensors")])
    assert res.exit_code == 2 and "no-medusa.safetensors" in res.output  # asked for, so not silently dropped

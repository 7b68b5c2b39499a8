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


def train_tiny(model_dir, method, out, *options) -> dict:
    """`spec-harness train METHOD` on the tiny model with a tiny budget; returns the sidecar."""
    res = CliRunner().invoke(main, ["train", method, "--model", str(model_dir), *options, "--out", str(out), *TINY_TRAIN])
    assert res.exit_code == 0, res.output
    return json.loads(out.with_suffix(".json").read_text())


def run_tiny(model_dir, method, out_dir, *method_args):
    """One gsm8k sample, 6 tokens, of METHOD with `--method-arg` options; the CliRunner result."""
    args = [a for arg in method_args for a in ("--method-arg", f"{method}.{arg}")]
    return CliRunner().invoke(main, ["run", "--model", str(model_dir), "--methods", method, "--datasets", "gsm8k",
                                     "--num-samples", "1", "--max-new-tokens", "6", "--no-warmup",
                                     "--out", str(out_dir), *args])


def test_train_firp_writes_weights_and_sidecar_then_runs(tiny_model_dir, isolated_cache):
    out = isolated_cache / "firp-tiny.safetensors"
    side = train_tiny(tiny_model_dir, "firp", out, "--layers", "1,2")
    assert side["config"] == {"layers": [1, 2], "steps": 2, "mask": "serial", "source": "previous"}
    assert side["data"]["splits"].startswith("training only") and side["data"]["sequences"] == 8  # 2 from each of the 4 sources
    assert len(side["heldout_topk"]) == 2 and side["train_seconds"] >= 0
    run = run_tiny(tiny_model_dir, "firp", isolated_cache / "run", f"checkpoint={out}", "tree=chain-2")
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


def test_train_eagle_then_run_it_with_its_tree_options(tiny_model_dir, isolated_cache):
    out = isolated_cache / "eagle-tiny.safetensors"
    side = train_tiny(tiny_model_dir, "eagle", out, "--token-weight", "0.5")
    assert side["method"] == "eagle" and side["config"]["loss"] == {"feature": 1.0, "token": 0.5, "noise": 0.2}
    assert side["data"]["splits"].startswith("training only") and len(side["heldout_topk"]) == 1
    run = run_tiny(tiny_model_dir, "eagle", isolated_cache / "run", f"checkpoint={out}", "depth=2", "total_tokens=5")
    assert run.exit_code == 0, run.output
    assert "100%" in run.output  # lossless
    too_many = run_tiny(tiny_model_dir, "eagle", isolated_cache / "run2", f"checkpoint={out}", "depth=1")
    assert too_many.exit_code == 2 and "total_tokens <= the 4 nodes drafted" in too_many.output

"""`spec-harness tune lookahead` on a tiny model: training prompts only, CSV + JSON, grid errors;
lookahead and hf-prompt-lookup in a benchmark run."""

import csv
import json

import pytest
from click.testing import CliRunner

import harness.bench.data
from harness.cli import main
from harness.train.tuning import parse_grid


def test_parse_grid():
    assert parse_grid("3x3x3, 5X4x5,published,3x3x3") == ((3, 3, 3), (5, 4, 5), (7, 5, 7))
    with pytest.raises(ValueError, match="expected WxNxG"):
        parse_grid("3x3")
    with pytest.raises(ValueError, match="ngram"):
        parse_grid("3x1x3")


def test_tune_lookahead_writes_csv_and_json_from_training_prompts_only(tiny_model_dir, tmp_path, monkeypatch):
    def no_test_files(name):
        raise AssertionError(f"tuning read the evaluation file of {name}")

    monkeypatch.setattr(harness.bench.data, "_local_rows", no_test_files)
    res = CliRunner().invoke(main, ["tune", "lookahead", "--model", str(tiny_model_dir), "--device", "cpu",
                                    "--grid", "2x2x1,3x3x2", "--num-prompts", "2", "--max-new-tokens", "8",
                                    "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    stem = f"{tiny_model_dir.name}-cpu"
    rows = list(csv.DictReader((tmp_path / f"{stem}.csv").open()))
    assert [(r["window"], r["ngram"], r["guess"]) for r in rows] == [("2", "2", "1"), ("3", "3", "2")]
    assert all(float(r["lossless_rate"]) == 1.0 and float(r["tau"]) >= 1.0 and float(r["speedup"]) > 0 for r in rows)
    result = json.loads((tmp_path / f"{stem}.json").read_text())
    assert result["ar"]["tau"] == 1.0 and result["ar"]["positions"] == 1.0 and result["budget"]["prompts"] == 4  # one per tuning set
    assert result["best"] in result["rows"] and float(rows[1]["positions"]) > float(rows[1]["draft_size"]) + 1
    assert "best: W=" in res.output


def test_tune_lookahead_rejects_a_bad_grid_before_loading(tmp_path):
    res = CliRunner().invoke(main, ["tune", "lookahead", "--model", str(tmp_path / "missing"), "--grid", "0x3x3"])
    assert res.exit_code == 2 and "lookahead.window" in res.output


def test_run_with_lookahead_and_prompt_lookup_is_lossless(tiny_model_dir, tmp_path):
    res = CliRunner().invoke(main, ["run", "--model", str(tiny_model_dir), "--methods", "lookahead,hf-prompt-lookup",
                                    "--datasets", "gsm8k", "--num-samples", "1", "--max-new-tokens", "8",
                                    "--no-warmup", "--no-telemetry", "--out", str(tmp_path / "run"),
                                    "--method-arg", "lookahead.preset=published"])
    assert res.exit_code == 0, res.output
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["method_configs"]["lookahead"]["options"]["window"] == 7
    records = [json.loads(line) for line in (tmp_path / "run" / "records.jsonl").read_text().splitlines()]
    assert {r["method"]: r["lossless"] for r in records} == {"ar": None, "lookahead": True, "hf-prompt-lookup": True}


def test_tune_pld_sweeps_k_through_the_runner(tiny_model_dir, tmp_path):
    res = CliRunner().invoke(main, ["tune", "pld", "--model", str(tiny_model_dir), "--device", "cpu", "--k", "1,3",
                                    "--num-prompts", "2", "--max-new-tokens", "8", "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    rows = list(csv.DictReader((tmp_path / f"{tiny_model_dir.name}-cpu.csv").open()))
    assert [r["k"] for r in rows] == ["1", "3"] and all(float(r["lossless_rate"]) == 1.0 for r in rows)
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["datasets"] == ["gsm8k-train", "xsum-train", "chat-train", "code-train"]
    assert "pld:k3" in manifest["methods"]
    assert "best: k=" in res.output

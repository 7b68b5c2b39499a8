"""Runs at several batch sizes (--batch-size): fixed groups of samples, the same for every method;
each record carries its batch and the batch's wall time; pairs are made per batch (the group is
the bootstrap cluster); the baseline at B > 1 is checked against its own output at B = 1; a
method that cannot batch is skipped there with the reason; resume redoes a group's whole turn;
the report, figures and plan show each batch size apart; drafts are planned per batch size."""

import json

import pandas as pd
import pytest
from click.testing import CliRunner

from harness.bench import metrics
from harness.bench.batches import ONE_AT_A_TIME
from harness.bench.records_io import read_records
from harness.cli import main


def run_cli(model_dir, out, *args, methods="pld,hf-prompt-lookup", samples="3"):
    base = ["run", "--model", str(model_dir), "--out", str(out), "--methods", methods, "--datasets", "mt-bench",
            "--num-samples", samples, "--max-new-tokens", "6", "--no-warmup", "--no-telemetry", "--control",
            "--batch-size", "1,2"]
    return CliRunner().invoke(main, base + list(args))


@pytest.fixture(scope="module")
def batched_run(tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("batched") / "run"
    res = run_cli(tiny_model_dir, out)
    assert res.exit_code == 0, res.output
    return out, res.output


def test_groups_are_fixed_and_records_carry_their_batch(batched_run):
    out, _ = batched_run
    records = read_records(out / "records.jsonl")
    two = [r for r in records if r["batch_size"] == 2]
    ids = json.loads((out / "manifest.json").read_text())["samples"]["mt-bench"]  # in measured order
    assert {r["group"] for r in two} == {f"{ids[0]}+{ids[1]}", ids[2]}
    decoded = [r for r in two if not r.get("skipped")]
    for (method, group, turn), g in pd.DataFrame(decoded).groupby(["method", "group", "turn"]):
        assert g["wall_time"].nunique() == 1 and (g["group_size"] == len(g)).all()  # one timed decode per batch
    assert all(r["finish_time"] is not None and 0 < r["finish_time"] <= r["wall_time"] for r in decoded)
    assert {r["skipped"] for r in two if r["method"] == "hf-prompt-lookup"} == {ONE_AT_A_TIME}
    assert all(not r.get("skipped") for r in records if r["batch_size"] == 1)


def test_every_batched_sequence_equals_the_baseline_at_batch_one(batched_run):
    out, _ = batched_run
    records = read_records(out / "records.jsonl")
    one = {(r["sample_id"], r["turn"]): r["output_ids"] for r in records if r["method"] == "ar" and r["batch_size"] == 1}
    for r in records:
        if r["batch_size"] == 2 and not r.get("skipped"):
            assert r["lossless"] is True and r["output_ids"] == one[(r["sample_id"], r["turn"])], r["method"]


def test_pairs_are_made_per_batch_and_the_report_shows_each_batch_size(batched_run):
    out, output = batched_run
    records = read_records(out / "records.jsonl")
    summary = metrics.summarize(records)
    pld = summary[summary["method"] == "pld"].set_index("batch_size")
    assert list(pld["n"]) == [6, 4]  # 3 samples x 2 turns alone; 2 groups x 2 turns in pairs at B = 2
    assert (pld["throughput"] > 0).all() and (pld["tpot_ms"] > 0).all()
    assert "batch_size" in output and "throughput" in output and "TPOT ms (p90)" in output
    assert "2 cluster(s) (samples, or batches of samples): fewer than 5" in output  # B = 2: two groups, not judged
    res = CliRunner().invoke(main, ["report", str(out), "--by", "batch_size"])
    assert res.exit_code == 0 and "batch_size" in res.output.splitlines()[0]


def test_a_pair_is_the_batchs_tokens_over_its_one_wall_time():
    rows = [{"method": m, "dataset": "d", "sample_id": s, "turn": 0, "group": "a+b", "batch_size": 2,
             "new_tokens": n, "wall_time": w, "session": "x"}
            for m, w in (("ar", 4.0), ("fast", 2.0)) for s, n in (("a", 10), ("b", 30))]
    pairs = metrics.pairs_of(metrics.records_frame(rows), "fast", {"dataset": "d"}, "ar")
    assert len(pairs) == 1 and pairs["cluster"].tolist() == ["a+b"]
    assert pairs["tps"].tolist() == [20.0] and pairs["tps_base"].tolist() == [10.0]


def test_resume_redoes_a_groups_whole_turn(batched_run, tmp_path, tiny_model_dir):
    src, _ = batched_run
    out = tmp_path / "run"
    out.mkdir()
    (out / "manifest.json").write_text((src / "manifest.json").read_text())
    lines = (src / "records.jsonl").read_text().splitlines()
    cut = next(i for i, line in enumerate(lines) if json.loads(line)["batch_size"] == 2
               and "+" in json.loads(line).get("group", "") and json.loads(line)["turn"] == 0)
    (out / "records.jsonl").write_text("\n".join(lines[:cut] + lines[cut + 1:]) + "\n")  # one sequence's record lost
    res = run_cli(tiny_model_dir, out, "--resume")
    assert res.exit_code == 0, res.output
    assert "decoded again, every method in this process" in res.output
    records = read_records(out / "records.jsonl")
    assert len(records) == len(lines)
    group = json.loads(lines[cut])["group"]
    redone = {r["session"] for r in records if r.get("group") == group}
    assert len(redone) == 1  # every sequence and turn of that group: one process


def test_batch_sizes_are_checked_before_work(tiny_model_dir, tmp_path):
    for bad, why in (("0", "each at least 1"), ("4,1", "increasing order"), ("2,2", "distinct"), ("x", "whole numbers")):
        res = run_cli(tiny_model_dir, tmp_path / "o", "--batch-size", bad)
        assert res.exit_code == 2 and why in res.output, (bad, res.output)
        assert not (tmp_path / "o").exists()


def test_figures_draw_speedup_and_throughput_by_batch_size(batched_run, tmp_path):
    out, _ = batched_run
    res = CliRunner().invoke(main, ["figures", str(out), "--out", str(tmp_path / "fig")])
    assert res.exit_code == 0, res.output
    for stem in ("speedup_by_batch_size", "throughput_by_batch_size"):
        assert (tmp_path / "fig" / f"{stem}.png").stat().st_size > 0
        data = pd.read_csv(tmp_path / "fig" / f"{stem}.csv")
        assert sorted(data["batch_size"].unique()) == [1, 2]
    assert "pld" in set(pd.read_csv(tmp_path / "fig" / "speedup_by_batch_size.csv")["method"])

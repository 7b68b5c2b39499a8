"""Runs whose data cannot be mixed or mis-paired: one writer per run directory (a live holder
refused by name, a dead one's lock taken over), records that cannot be counted twice, a turn's
pairs always timed in one process, every record read through one validating reader, and
acceptance counted from committed tokens only."""

import json
import os
import signal
import socket
import subprocess
import sys

import torch
from click.testing import CliRunner

from harness.bench.records_io import read_records
from harness.cli import main
from harness.core.decoding import decode
from harness.core.method import Method
from harness.core.tree import Tree
from methods.autoregressive import Autoregressive


def run_cli(model_dir, out, *args, methods="ar", datasets="gsm8k"):
    base = ["run", "--model", str(model_dir), "--out", str(out), "--methods", methods, "--datasets", datasets,
            "--num-samples", "2", "--max-new-tokens", "4", "--no-warmup", "--no-telemetry"]
    return CliRunner().invoke(main, base + list(args))


def files(path):
    return {p.name: p.read_bytes() for p in sorted(path.iterdir()) if p.is_file()}


def holding_process(out):
    """Another process holding `out`'s run lock (until killed)."""
    code = ("import sys, time; from pathlib import Path; from harness.bench.runlock import RunLock; "
            "lock = RunLock(Path(sys.argv[1])).acquire(); print('held', flush=True); time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(out)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_writer_is_refused_and_a_dead_writers_lock_taken_over(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    assert run_cli(tiny_model_dir, out).exit_code == 0
    before = files(out)
    proc = holding_process(out)
    try:
        for extra in (["--resume"], ["--overwrite"]):
            res = run_cli(tiny_model_dir, out, *extra)
            assert res.exit_code == 2, res.output
            assert f"being written by another run (pid {proc.pid} on {socket.gethostname()}" in res.output
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert {k: v for k, v in files(out).items() if k != ".lock"} == \
        {k: v for k, v in before.items() if k != ".lock"}
    res = run_cli(tiny_model_dir, out, "--resume")  # the holder died without releasing: taken over
    assert res.exit_code == 0 and f"took over the lock left by pid {proc.pid}" in res.output


def test_a_run_holds_its_lock_while_it_decodes(tiny_model_dir, tmp_path, monkeypatch):
    from harness.bench import runner as runner_mod

    out, seen = tmp_path / "run", []
    real = runner_mod.Runner.decode_turn

    def spy(self, method, prompts, rule=None):
        if not seen:
            seen.append(run_cli(tiny_model_dir, out, "--resume"))  # a second writer, mid-run
        return real(self, method, prompts, rule)
    monkeypatch.setattr(runner_mod.Runner, "decode_turn", spy)
    assert run_cli(tiny_model_dir, out).exit_code == 0
    assert seen[0].exit_code == 2 and f"pid {os.getpid()}" in seen[0].output
    assert len(read_records(out / "records.jsonl")) == 2  # one writer's records only


def test_a_repeated_record_is_not_counted_and_resume_repairs_the_file(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    assert run_cli(tiny_model_dir, out, "--control").exit_code == 0
    lines = (out / "records.jsonl").read_text().splitlines()
    with (out / "records.jsonl").open("a") as f:
        f.write(lines[0] + "\n")  # the same key twice
    key = "/".join(str(json.loads(lines[0])[k]) for k in ("method", "dataset", "sample_id", "turn"))
    res = CliRunner().invoke(main, ["report", str(out)])
    assert res.exit_code == 0 and "1 repeated record(s) left out" in res.output and key in res.output
    assert "|   2 |" in res.output and "|   3 |" not in res.output  # n counts each pair once
    assert run_cli(tiny_model_dir, out, "--control", "--resume").exit_code == 0
    assert (out / "records.jsonl").read_text().splitlines() == lines  # repaired, nothing decoded again


def test_an_incomplete_turn_is_decoded_again_by_every_method_in_one_process(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    args = dict(methods="pld", datasets="mt-bench")
    assert run_cli(tiny_model_dir, out, "--control", **args).exit_code == 0
    records = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    first = records[0]["session"]
    sample = records[0]["sample_id"]
    kept = [r for r in records if not (r["method"] == "pld" and r["sample_id"] == sample and r["turn"] == 0)]
    (out / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in kept))  # pld's turn 0 lost
    res = run_cli(tiny_model_dir, out, "--control", "--resume", **args)
    assert res.exit_code == 0 and "decoded again, every method in this process" in res.output
    after = read_records(out / "records.jsonl")
    assert len(after) == len(records)
    redone = {(r["method"], r["turn"]) for r in after if r["sample_id"] == sample}
    assert redone == {(m, t) for m in ("ar", "pld", "ar:control") for t in (0, 1)}
    sessions = {r["session"] for r in after if r["sample_id"] == sample}
    assert len(sessions) == 1 and first not in sessions  # the whole sample's turns: one new process
    assert {r["session"] for r in after if r["sample_id"] != sample} == {first}  # the rest untouched


def test_pairs_are_never_made_across_sessions():
    from harness.bench import metrics

    rec = lambda m, session, tps: {"method": m, "dataset": "d", "sample_id": "0", "turn": 0,  # noqa: E731
                                   "new_tokens": 10, "wall_time": 10 / tps, "session": session}
    same = metrics.summarize([rec("ar", "a", 10.0), rec("x", "a", 20.0)]).set_index("method")
    split = metrics.summarize([rec("ar", "a", 10.0), rec("x", "b", 20.0)]).set_index("method")
    assert same.loc["x", "n"] == 1 and split.loc["x", "n"] == 0


def test_a_wrong_typed_field_is_named_with_its_file_and_line(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    assert run_cli(tiny_model_dir, out).exit_code == 0
    lines = (out / "records.jsonl").read_text().splitlines()
    bad = json.loads(lines[1])
    bad["wall_time"] = "fast"
    (out / "records.jsonl").write_text("\n".join([lines[0], json.dumps(bad)]) + "\n")
    for command in (["report", str(out)], ["regress", str(out), "--baseline", str(out)]):
        res = CliRunner().invoke(main, command)
        assert res.exit_code == 2 and "records.jsonl:2: field 'wall_time' is 'fast' (str), expected number" \
            in res.output, res.output


class Oracle(Method):
    """Drafts the baseline's own next k tokens: every draft is accepted, so only the budget cuts."""

    def __init__(self, engine, reference, k=5):
        super().__init__(engine, "tiny")
        self.reference, self.k = reference, k

    def begin(self, prompts):
        self.done = 0

    def observe(self, hidden, tree, step):
        self.done += len(step.tokens[0])

    def propose(self, pending, cache):
        draft = self.reference[self.done:self.done + self.k]
        return Tree.chain(torch.cat([pending, self.engine.upload(draft)])[None] if draft else pending[None])


def test_accepted_counts_only_committed_drafts(engine):
    prompt = [5, 6, 7, 8]
    reference = decode(Autoregressive(engine, "tiny"), prompt, 40, set(), engine.new_cache(128)).output_ids
    for budget in range(1, 12):
        out = decode(Oracle(engine, reference), prompt, budget, set(), engine.new_cache(128))
        assert out.output_ids == reference[:budget] and out.accepted[0] == 0
        # 5 drafts per step, all right: a step commits them and the next token, the last step what fits
        assert out.accepted == [0] + [min(n, 5) for n in out.accept_lengths[1:]]


def test_the_control_is_judged_against_a_declared_resolution(tmp_path):
    from helpers import write_synthetic_run

    from harness.bench.metrics import control_holds

    assert control_holds(0.983, 0.999)  # the reference's GSM8K control: excludes 1.00, well within 3%
    assert not control_holds(0.875, 0.967) and not control_holds(0.96, 1.05)  # drifting, or too wide to time
    run = write_synthetic_run(tmp_path / "run", methods={"ar": (1, 1.0, 0, 1), "ar:control": (1, 1.0, 0, 1),
                                                         "medusa": (2, 1.5, 4, 5)}, samples=24)
    res = CliRunner().invoke(main, ["report", str(run)])
    assert res.exit_code == 0 and "A/A ±" in res.output
    reach = [line.split("|")[5].strip() for line in res.output.splitlines() if line.startswith("| medusa")]
    assert reach and all(r != "-" and 0 < float(r) < 0.2 for r in reach)  # every speedup shows its run's resolution


def test_report_by_category_counts_data_without_categories(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    assert run_cli(tiny_model_dir, out, "--control", datasets="gsm8k,mt-bench").exit_code == 0
    res = CliRunner().invoke(main, ["report", str(out), "--by", "category"])
    assert res.exit_code == 0 and "--by category: gsm8k has no category" in res.output
    rows = [line.split("|") for line in res.output.splitlines() if line.startswith("| ar:control")]
    assert {(r[2].strip(), r[3].strip(), r[4].strip()) for r in rows} >= {("gsm8k", "(none)", "2")}  # n, not 0


def test_resume_with_fewer_samples_is_refused_and_the_manifest_stays_true(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    assert run_cli(tiny_model_dir, out, "--num-samples", "3").exit_code == 0
    before = files(out)
    res = run_cli(tiny_model_dir, out, "--num-samples", "1", "--resume")
    assert res.exit_code == 2 and "the run already holds more (gsm8k: 3 items)" in res.output, res.output
    assert files(out) == before
    assert run_cli(tiny_model_dir, out, "--num-samples", "4", "--resume").exit_code == 0  # extending is fine
    manifest = json.loads((out / "manifest.json").read_text())
    held = {r["sample_id"] for r in read_records(out / "records.jsonl")}
    assert set(manifest["samples"]["gsm8k"]) == held and len(held) == 4


def test_a_bad_cost_model_is_refused_before_the_model_loads(tmp_path, monkeypatch):
    from harness.bench import runner as runner_mod

    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"model": "SmolLM2-135M-Instruct-Q4_1", "n": [1, 2], "ratio": [1.0, -3.0]}))
    monkeypatch.setattr(runner_mod, "load_model", lambda *a, **k: (_ for _ in ()).throw(AssertionError("loaded")))
    res = CliRunner().invoke(main, ["run", "--methods", "pld", "--datasets", "gsm8k", "--costmodel", str(bad),
                                    "--out", str(tmp_path / "o"), "--no-telemetry"])
    assert res.exit_code == 2 and "pld.costmodel:" in res.output and "ratio at n=2 = -3.0" in res.output, res.output
    assert not (tmp_path / "o").exists()

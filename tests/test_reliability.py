"""Bad input is refused before anything is touched (exit 2, one line naming the file, line or
option); no record is lost, dropped or mixed. One test per problem found by probing the CLI."""

import json
import os
import random
import shutil

import pytest
from click.testing import CliRunner

from harness.bench import rundir
from harness.bench.records_io import read_records
from harness.bench.runner import RunConfig, Runner
from harness.cli import main


def run_cli(model_dir, out, *args):
    base = ["run", "--model", str(model_dir), "--out", str(out), "--datasets", "gsm8k", "--num-samples", "1",
            "--max-new-tokens", "4", "--no-warmup", "--no-telemetry"]
    return CliRunner().invoke(main, base + list(args))


def snapshot(path):
    """Every file under path with its bytes (what must not change)."""
    if not path.exists():
        return None
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def jsonl(tmp_path, *lines, name="data.jsonl"):
    path = tmp_path / name
    path.write_text("".join(line + "\n" for line in lines))
    return path


@pytest.fixture
def old_run(tiny_model_dir, tmp_path):
    out = tmp_path / "old"
    assert run_cli(tiny_model_dir, out).exit_code == 0
    (out / "figures").mkdir()
    (out / "figures" / "fig.png").write_bytes(b"png")
    return out


def test_overwrite_keeps_the_old_run_when_anything_is_invalid(tiny_model_dir, old_run):
    before = snapshot(old_run)
    res = run_cli(tiny_model_dir, old_run, "--datasets", "gsm8k,typo", "--overwrite")
    assert res.exit_code == 2 and "unknown dataset 'typo'" in res.output
    assert snapshot(old_run) == before


def test_overwrite_removes_all_of_the_old_run(tiny_model_dir, old_run):
    (old_run / "summary-category.md").write_text("| by category |")  # what `report --by category` writes
    assert run_cli(tiny_model_dir, old_run, "--overwrite").exit_code == 0
    assert not (old_run / "figures").exists() and (old_run / "records.jsonl").exists()
    assert not (old_run / "summary-category.md").exists()


def test_overwrite_refuses_a_directory_with_foreign_files(tiny_model_dir, old_run):
    (old_run / "notes.txt").write_text("mine")
    before = snapshot(old_run)
    res = run_cli(tiny_model_dir, old_run, "--overwrite")
    assert res.exit_code == 2 and "notes.txt" in res.output and snapshot(old_run) == before


@pytest.mark.parametrize("args, key", [
    (["--methods", "ar,ar:b"], "methods"),
    (["--max-new-tokens", "5"], "max_new_tokens"),
    (["--seed", "3"], "seed"),
    (["--control"], "methods"),
])
def test_resume_refuses_any_difference_naming_it(tiny_model_dir, old_run, args, key):
    before = snapshot(old_run)
    res = run_cli(tiny_model_dir, old_run, "--resume", *args)
    assert res.exit_code == 2, res.output
    assert key in res.output.split("started with different ")[1].split(" (")[0].split(", ")
    assert snapshot(old_run) == before


def test_resume_refuses_different_method_options(tiny_model_dir, tmp_path):
    out = tmp_path / "o"
    assert run_cli(tiny_model_dir, out, "--methods", "lookahead", "--method-arg", "lookahead.window=2").exit_code == 0
    before = snapshot(out)
    res = run_cli(tiny_model_dir, out, "--methods", "lookahead", "--method-arg", "lookahead.window=3", "--resume")
    assert res.exit_code == 2 and "method_options" in res.output and snapshot(out) == before


def test_resume_keeps_provenance_and_appends_an_entry(tiny_model_dir, old_run):
    first = json.loads((old_run / "manifest.json").read_text())
    assert run_cli(tiny_model_dir, old_run, "--resume", "--num-samples", "2").exit_code == 0
    after = json.loads((old_run / "manifest.json").read_text())
    for key in ("created", "command", "hardware", "git", "libraries"):
        assert after[key] == first[key]
    assert len(after["resumes"]) == 1 and after["resumes"][0]["num_samples"] == [1, 2]
    assert len(read_records(old_run / "records.jsonl")) == 2


@pytest.mark.parametrize("lines, message", [
    (['{"prompt": "a", "id": 1}', '{"prompt": "b", "id": 1}'], ":2: duplicate id '1' (first on line 1)"),
    (['{"prompt": "a", "reference": 3}'], ":1: field 'reference' must be a string, a list of strings or null"),
    (['{"prompt": null}'], ":1: field 'prompt' must be a non-empty string, got null"),
    (['{"prompt": 42}'], ":1: field 'prompt' must be a non-empty string, got int"),
    (['{"prompt": ""}'], ":1: field 'prompt' must be a non-empty string"),
    ([], "holds no records (empty file)"),
    (['[1, 2]'], ":1: expected a JSON object, got list"),
])
def test_bad_data_files_are_refused_before_anything(tiny_model_dir, tmp_path, lines, message):
    data = jsonl(tmp_path, *lines)
    res = run_cli(tiny_model_dir, tmp_path / "o", "--datasets", f"jsonl:{data}")
    assert res.exit_code == 2 and message in res.output, res.output
    assert not (tmp_path / "o").exists()


def test_latin1_file_and_directory_as_data(tiny_model_dir, tmp_path):
    latin = tmp_path / "latin.jsonl"
    latin.write_bytes('{"prompt": "caf\u00e9"}\n'.encode("latin-1"))
    res = run_cli(tiny_model_dir, tmp_path / "o", "--datasets", f"jsonl:{latin}")
    assert res.exit_code == 2 and f"{latin}:1: not UTF-8" in res.output
    res = run_cli(tiny_model_dir, tmp_path / "o", "--datasets", f"jsonl:{tmp_path}")
    assert res.exit_code == 2 and "is not a file" in res.output and not (tmp_path / "o").exists()


def test_list_references_are_scored_against_the_best(tiny_model_dir, tmp_path):
    data = jsonl(tmp_path, json.dumps({"prompt": "hello there", "reference": ["zzz qqq", "the the the"]}))
    assert run_cli(tiny_model_dir, tmp_path / "o", "--datasets", f"jsonl:{data}").exit_code == 0
    rec = read_records(tmp_path / "o" / "records.jsonl")[0]
    assert rec["rouge2"] is not None and rec["rouge2"] >= 0


@pytest.mark.parametrize("args, message", [
    (["--num-samples", "-1"], "--num-samples -1: must be at least 1"),
    (["--num-samples", "0"], "--num-samples 0: must be at least 1"),
    (["--datasets", ""], "--datasets is empty"),
    (["--max-new-tokens", "0"], "--max-new-tokens 0: must be at least 1"),
    (["--max-new-tokens", "-5"], "--max-new-tokens -5: must be at least 1"),
    (["--max-new-tokens", "100000"], "exceeds the model's context of 512 tokens"),
    (["--seed", "-1"], "--seed -1: must be 0 or more"),
])
def test_bad_numbers_are_refused(tiny_model_dir, tmp_path, args, message):
    res = run_cli(tiny_model_dir, tmp_path / "o", *args)
    assert res.exit_code == 2 and message in res.output, res.output
    assert not (tmp_path / "o").exists()


def test_long_prompts_are_skipped_before_any_work_and_the_warmup_fits(tiny_model_dir, tmp_path, monkeypatch):
    data = jsonl(tmp_path, json.dumps({"prompt": "word " * 20000, "id": "long"}), json.dumps({"prompt": "hi", "id": "s"}))
    seen = []
    original = Runner.decode_turn

    def spy(self, method, prompts, rule=None):
        seen.extend(len(p) for p in prompts)
        return original(self, method, prompts, rule)

    monkeypatch.setattr(Runner, "decode_turn", spy)
    cfg = RunConfig(methods=["ar"], datasets=[f"jsonl:{data}"], model=str(tiny_model_dir), device="cpu",
                    num_samples=1, max_new_tokens=4, out=tmp_path / "o", telemetry=False)
    Runner(cfg, progress=False).run()
    assert seen and max(seen) < 100  # the warm-up used the short item; the long one was never decoded
    (rec,) = read_records(tmp_path / "o" / "records.jsonl")
    assert rec["sample_id"] == "long" and "exceeds context" in rec["skipped"]


@pytest.mark.parametrize("where, message", [
    ("f", "is a file, not a directory"),
    ("f/run", "is a file, so no directory can be made"),
    ("/proc/spec-harness-run", "cannot write under /proc"),
])
def test_bad_output_directories(tiny_model_dir, tmp_path, where, message):
    (tmp_path / "f").write_text("a file")
    res = run_cli(tiny_model_dir, tmp_path / where)
    assert res.exit_code == 2 and message in res.output, res.output


def test_two_default_run_directories_in_one_second_differ(tmp_path, monkeypatch):
    monkeypatch.setattr(rundir, "DEFAULT_ROOT", tmp_path / "runs")
    (a, lock_a), (b, lock_b) = rundir.create(None, False), rundir.create(None, False)
    assert a != b and a.is_dir() and b.is_dir()
    lock_a.release()
    lock_b.release()


def test_unknown_dataset_is_reported_before_the_model_loads(tmp_path):
    res = CliRunner().invoke(main, ["run", "--model", str(tmp_path / "no-such-model"), "--datasets", "typo",
                                    "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "unknown dataset 'typo'" in res.output and not (tmp_path / "o").exists()


def test_offline_hub_id_fails_at_once(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    res = CliRunner().invoke(main, ["run", "--model", "nobody/not-cached-model", "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "hub cannot be reached" in res.output and not (tmp_path / "o").exists()


@pytest.mark.parametrize("sidecar", [True, False])
def test_garbage_checkpoint_is_named(tiny_model_dir, tmp_path, sidecar):
    ckpt = tmp_path / "heads.safetensors"
    ckpt.write_bytes(b"not a safetensors file at all")
    if sidecar:
        ckpt.with_suffix(".json").write_text(json.dumps({"method": "medusa", "config": {"heads": 2}}))
    res = run_cli(tiny_model_dir, tmp_path / "o", "--methods", "medusa", "--method-arg", f"medusa.checkpoint={ckpt}")
    assert res.exit_code == 2 and f"{ckpt} is not a valid medusa checkpoint" in res.output, res.output
    assert not (tmp_path / "o").exists()


def test_foreign_checkpoint_names_its_method(tiny_model_dir, tmp_path):
    from harness.core.checkpoint import save_checkpoint
    from methods.firp import PseudoChains

    ckpt = tmp_path / "firp.safetensors"
    chains = PseudoChains(32, (1, 2))
    save_checkpoint(ckpt, chains, {"method": "firp", "config": chains.config()})
    res = run_cli(tiny_model_dir, tmp_path / "o", "--methods", "medusa", "--method-arg", f"medusa.checkpoint={ckpt}")
    assert res.exit_code == 2 and "is not a valid medusa checkpoint: it was written by firp" in res.output


def test_corrupt_manifest_in_report_and_regress(old_run, tmp_path):
    (old_run / "manifest.json").write_text("{not json")
    res = CliRunner().invoke(main, ["report", str(old_run)])
    assert res.exit_code == 2 and f"{old_run / 'manifest.json'} is corrupt" in res.output
    res = CliRunner().invoke(main, ["regress", str(old_run), "--baseline", str(old_run)])
    assert res.exit_code == 2 and f"{old_run / 'manifest.json'} is corrupt" in res.output


def test_resume_after_kills_at_random_points_equals_an_uninterrupted_run(tiny_model_dir, tmp_path):
    """Kill between appends or mid-line (the records file cut there), resume: the same keys and
    outputs as the run that was never interrupted, no duplicates."""
    def cfg(out, resume=False):
        return RunConfig(methods=["ar", "ar:b"], datasets=["gsm8k", "mt-bench"], model=str(tiny_model_dir),
                         device="cpu", num_samples=2, max_new_tokens=5, out=out, resume=resume, telemetry=False,
                         warmup=False)

    full = tmp_path / "full"
    Runner(cfg(full), progress=False).run()
    reference = {(r["method"], r["dataset"], r["sample_id"], r["turn"]): r["output_ids"]
                 for r in read_records(full / "records.jsonl")}
    data = (full / "records.jsonl").read_bytes()
    rng = random.Random(0)
    ends = [i + 1 for i, b in enumerate(data) if b == ord("\n")]
    cuts = rng.sample(ends[:-1], 3) + [rng.randrange(1, len(data) - 1) for _ in range(3)]  # boundaries, mid-line
    for cut in cuts:
        out = tmp_path / f"cut{cut}"
        shutil.copytree(full, out)
        with open(out / "records.jsonl", "r+b") as f:
            f.truncate(cut)
        Runner(cfg(out, resume=True), progress=False).run()
        records = read_records(out / "records.jsonl")
        got = [((r["method"], r["dataset"], r["sample_id"], r["turn"]), r["output_ids"]) for r in records]
        assert len(got) == len(dict(got)) == len(reference), f"cut at byte {cut}: duplicates or missing records"
        assert dict(got) == reference, f"cut at byte {cut}"
        assert os.path.getsize(out / "records.jsonl") > 0

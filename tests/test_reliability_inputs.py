"""Odd inputs found by probing `spec-harness run`: each is refused (exit 2, one line naming the
file and line or the option, nothing loaded or written) or, where it is meaningful, run with a
notice and recorded as it ran."""

import json

import pytest
from click.testing import CliRunner

from harness.bench import runner
from harness.bench.data import all_samples, measured
from harness.cli import main
from harness.core.checkpoint import save_checkpoint
from harness.core.method import MethodError
from harness.core.tree import NAMED_TREES, resolve_tree
from methods.firp import FIRP, PseudoChains
from methods.medusa import Medusa

BAD_TREES = ["0;;1", "0;1;", "", "chain-0", "chain--1", "chain-x", "0;-1", "0;a", "0.0", "0;0", "tinny"]


def run_cli(model_dir, out, *args):
    base = ["run", "--model", str(model_dir), "--out", str(out), "--num-samples", "1", "--max-new-tokens", "4",
            "--no-warmup", "--no-telemetry"]
    return CliRunner().invoke(main, base + list(args))


def jsonl(tmp_path, *rows, name="data.jsonl"):
    path = tmp_path / name
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def no_model(monkeypatch):
    """Fails the test if the run gets as far as loading the model."""
    def refuse(*_, **__):
        raise AssertionError("the model was loaded before the input was refused")
    monkeypatch.setattr(runner, "load_model", refuse)


@pytest.mark.parametrize("kind, row, used, other", [
    ("jsonl", {"prompt": "a", "turns": ["b", "c"]}, "prompt", "turns"),
    ("specbench", {"question_id": 1, "turns": ["b"], "prompt": "a"}, "turns", "prompt"),
    ("jsonl", {"prompt": "a", "id": "x", "question_id": 3}, "id", "question_id"),
])
def test_an_item_with_two_fields_for_one_thing_is_refused(tiny_model_dir, tmp_path, no_model, kind, row, used, other):
    data = jsonl(tmp_path, {"prompt": "ok"} if kind == "jsonl" else {"question_id": 0, "turns": ["ok"]}, row)
    res = run_cli(tiny_model_dir, tmp_path / "out", "--datasets", f"{kind}:{data}")
    assert res.exit_code == 2, res.output
    assert f"{data}:2: ambiguous item with both {used!r} and {other!r}" in res.output
    assert not (tmp_path / "out").exists()


def test_a_null_field_is_absent_not_ambiguous(tmp_path):
    data = jsonl(tmp_path, {"prompt": "a", "turns": None})
    assert [s.turns for s in all_samples(f"jsonl:{data}")] == [["a"]]


def test_more_samples_than_items_measures_all_with_a_notice(tiny_model_dir, tmp_path):
    data = jsonl(tmp_path, {"prompt": "one"}, {"prompt": "two"})
    out = tmp_path / "out"
    res = run_cli(tiny_model_dir, out, "--methods", "ar", "--datasets", f"jsonl:{data}", "--num-samples", "5")
    assert res.exit_code == 0, res.output
    notice = [line for line in res.stderr.splitlines() if line.startswith("notice:")]
    assert notice == [f"notice: dataset jsonl:{data} has 2 item(s), fewer than the 5 asked for: measuring all 2"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["samples"] == {f"jsonl:{data}": ["0", "1"]}
    assert len((out / "records.jsonl").read_text().splitlines()) == 2


def test_the_notice_only_when_short(tmp_path, capsys):
    items = all_samples(f"jsonl:{jsonl(tmp_path, {'prompt': 'one'}, {'prompt': 'two'})}")
    assert len(measured("d", items, 2)) == 2 and len(measured("d", items, None)) == 2
    assert capsys.readouterr().err == ""
    assert len(measured("d", items, 3)) == 2
    assert capsys.readouterr().err == "notice: dataset d has 2 item(s), fewer than the 3 asked for: measuring all 2\n"


@pytest.mark.parametrize("method", ["firp", "medusa:x"])
@pytest.mark.parametrize("spec", BAD_TREES)
def test_a_bad_tree_is_refused_before_anything_loads(tiny_model_dir, tmp_path, no_model, method, spec):
    res = run_cli(tiny_model_dir, tmp_path / "out", "--datasets", "gsm8k", "--methods", method,
                  "--method-arg", f"{method}.tree={spec}")
    assert res.exit_code == 2, res.output
    line = res.output.strip()
    assert line.startswith(f"error: {method.split(':')[0]}.tree: ") and repr(spec) in line and "\n" not in line
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("spec, paths", [
    ("chain", [(0,), (0, 0), (0, 0, 0)]), ("chain-2", [(0,), (0, 0)]), ("tiny", NAMED_TREES["tiny"]),
    ("0;1;0.0", [(0,), (1,), (0, 0)]), ("0; 1", [(0,), (1,)]),
])
def test_good_trees_still_resolve(spec, paths):
    assert resolve_tree(spec, 3) == paths
    FIRP.resolve_options({"tree": spec})
    Medusa.resolve_options({"tree": spec})


def test_tree_options_are_checked_when_resolved():
    with pytest.raises(MethodError, match=r"^firp\.tree: '0;;1': path 2 \(''\) is empty"):
        FIRP.resolve_options({"tree": "0;;1"})
    assert FIRP.resolve_options({})["tree"] == "auto"


def test_a_rank_beyond_the_vocabulary_is_refused_with_the_checkpoint(engine, tmp_path):
    chains = PseudoChains(engine.hidden_size, (1, 2, 2), True)
    path = tmp_path / "firp.safetensors"
    save_checkpoint(path, chains, {"config": chains.config()})
    with pytest.raises(MethodError, match="rank 97 but the vocabulary has 97 tokens"):
        FIRP(engine, "tiny", checkpoint=str(path), tree="0;97")

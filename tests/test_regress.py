"""`spec-harness regress` on synthetic runs: exact tau and lossless rate, speedup against the
reference's bootstrap interval, missing methods, and the likely cause of a tau change."""

import json

import pytest
from click.testing import CliRunner
from helpers import write_synthetic_run

from harness.bench import regress
from harness.bench.records_io import read_records
from harness.bench.runner import summary_of
from harness.cli import main


@pytest.fixture
def ref(tmp_path):
    return write_synthetic_run(tmp_path / "ref")


def edited(src, dst, record=lambda r: r, manifest=lambda m: m):
    """A copy of run src with each record passed through `record` (None drops it)."""
    dst.mkdir()
    (dst / "manifest.json").write_text(json.dumps(manifest(json.loads((src / "manifest.json").read_text()))))
    kept = [r for r in map(record, read_records(src / "records.jsonl")) if r is not None]
    (dst / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in kept))
    return dst


def slower(method, dataset, factor):
    def edit(r):
        if r["method"] == method and r["dataset"] == dataset:
            r["wall_time"] *= factor
        return r
    return edit


def invoke(run, ref, *extra):
    return CliRunner().invoke(main, ["regress", str(run), "--baseline", str(ref), *extra])


def test_identical_runs_pass(ref, tmp_path):
    same = edited(ref, tmp_path / "same")
    res = invoke(same, ref)
    assert res.exit_code == 0, res.output
    assert "no regression" in res.output and "REGRESSION" not in res.output
    assert res.output.count("| ok ") == 8


def test_changed_tau_fails_naming_method_dataset_and_values(ref, tmp_path):
    def one_more_forward(r):
        if (r["method"], r["dataset"], r["sample_id"]) == ("firp", "gsm8k", "0"):
            r["accept_lengths"] = r["accept_lengths"][:-1] + [1, r["accept_lengths"][-1] - 1]
            r["forwards"] += 1
        return r

    run = edited(ref, tmp_path / "run", one_more_forward)
    old = summary_of(ref)[0].set_index(["method", "dataset"]).loc[("firp", "gsm8k"), "tau"]
    new = summary_of(run)[0].set_index(["method", "dataset"]).loc[("firp", "gsm8k"), "tau"]
    assert new < old
    res = invoke(run, ref)
    assert res.exit_code == 1, res.output
    assert f"firp / gsm8k: tau {old:.9f} -> {new:.9f}" in res.output
    assert "model, run settings and method config unchanged" in res.output
    assert "firp / xsum" not in res.output.split("REGRESSION (")[1]  # only the changed pair fails


def test_tau_change_points_at_changed_config(ref, tmp_path):
    def chain_tree(m):
        m["method_configs"]["firp"]["options"]["tree"] = "chain"
        return m

    def drop_last_forward(r):
        if r["method"] == "firp" and r["dataset"] == "xsum" and r["sample_id"] == "1":
            r["accept_lengths"] = r["accept_lengths"][:-2] + [sum(r["accept_lengths"][-2:])]
            r["forwards"] -= 1
        return r

    res = invoke(edited(ref, tmp_path / "run", drop_last_forward, chain_tree), ref)
    assert res.exit_code == 1
    assert "firp / xsum: tau" in res.output and "likely cause: firp config options.tree: None -> 'chain'" in res.output


def test_changed_lossless_rate_fails(ref, tmp_path):
    def diverge(r):
        if r["method"] == "medusa" and r["sample_id"] == "2" and r["dataset"] == "gsm8k":
            r["lossless"], r["diverge_at"] = False, 5
        return r

    res = invoke(edited(ref, tmp_path / "run", diverge), ref)
    assert res.exit_code == 1 and "medusa / gsm8k: lossless rate 1.0000 -> 0.8750" in res.output


def test_speedup_far_below_the_interval_fails(ref, tmp_path):
    res = invoke(edited(ref, tmp_path / "run", slower("medusa", "xsum", 3.0)), ref)
    assert res.exit_code == 1, res.output
    line = next(l for l in res.output.splitlines() if l.strip().startswith("medusa / xsum"))
    assert "speedup" in line and "below reference interval" in line
    assert "medusa / gsm8k" not in res.output.split("REGRESSION (")[1]


def test_small_slowdown_within_the_margin_passes_and_fails_without_it(ref, tmp_path):
    s = summary_of(ref)[0].set_index(["method", "dataset"]).loc[("firp", "gsm8k")]
    factor = s.speedup_median / (s.speedup_ci_low - regress.DEFAULT_MARGIN / 2)  # new median just under ci_low
    run = edited(ref, tmp_path / "run", slower("firp", "gsm8k", factor))
    new = summary_of(run)[0].set_index(["method", "dataset"]).loc[("firp", "gsm8k"), "speedup_median"]
    assert s.speedup_ci_low - regress.DEFAULT_MARGIN < new < s.speedup_ci_low
    res = invoke(run, ref)
    assert res.exit_code == 0, res.output
    res = invoke(run, ref, "--speedup-margin", "0")
    assert res.exit_code == 1 and "firp / gsm8k: speedup" in res.output


def test_missing_method_fails_and_new_method_is_listed(ref, tmp_path):
    def swap(r):
        if r["method"] == "firp:parallel":
            return None
        if r["method"] == "medusa":
            r["method"] = "medusa:big"
        return r

    res = invoke(edited(ref, tmp_path / "run", swap), ref)
    assert res.exit_code == 1
    assert "firp:parallel / gsm8k: missing from the new run" in res.output
    assert "medusa / xsum: missing from the new run" in res.output
    assert "new (not in reference)" in res.output


def test_model_change_is_noted(ref, tmp_path):
    def other_model(m):
        m["model_key"] = "other"
        return m

    cmp = regress.compare(edited(ref, tmp_path / "run", manifest=other_model), ref)
    assert cmp.ok and cmp.notes == ["model changed: 'tiny' -> 'other'"]


def test_not_a_run_is_a_user_error(ref, tmp_path):
    (tmp_path / "empty").mkdir()
    res = invoke(tmp_path / "empty", ref)
    assert res.exit_code == 2 and "not a run directory" in res.output

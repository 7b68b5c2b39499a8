"""Figures from a synthetic run directory, cost-model and analysis JSON; the cost model itself
on the tiny random Llama."""

import json

import pandas as pd
import pytest
from click.testing import CliRunner
from helpers import write_synthetic_run

from harness.analysis import costmodel, figures
from harness.bench.runner import summary_of
from harness.cli import main

NS = [1, 2, 4, 8, 16, 32, 64]
ANALYSIS = {
    "model": "tiny",
    "topk_accuracy": {"early-exit (layer 2)": {"2": [.2, .3, .35, .38, .4], "3": [.1, .15, .2, .22, .24]},
                      "medusa": {"2": [.4, .5, .55, .58, .6], "3": [.2, .3, .35, .38, .4], "4": [.1, .2, .22, .25, .27]},
                      "firp": {"2": [.5, .6, .65, .68, .7], "3": [.3, .4, .45, .48, .5], "4": [.2, .3, .32, .35, .37],
                               "5": [.1, .1, .1, .1, .1]}},
    "cosine": {"step 1": {"3": 0.5, "4": 0.6}, "step 2": {"4": 0.4}},
    "layer_sweep": {"1": 0.2, "2": 0.35, "3": 0.3},
    "training_budget": {"firp": {"steps": 450, "batch": 4, "positions": 160, "sequences": 1552},
                        "medusa": {"steps": None, "batch": None, "positions": None, "sequences": None}},
    "notes": "synthetic",
}


def linear_ratio(n):
    return 1 + 0.1 * (n - 1)


@pytest.fixture
def run_dir(tmp_path):
    return write_synthetic_run(tmp_path / "run")


@pytest.fixture
def cost_json(tmp_path):
    path = tmp_path / "cost.json"
    path.write_text(json.dumps({"model": "tiny", "device": "cpu", "dtype": "float32", "hardware": {"cpu": "Synthetic CPU"},
                                "prefix": 256, "n": NS, "seconds": [0.01 * linear_ratio(n) for n in NS],
                                "ratio": [linear_ratio(n) for n in NS]}))
    return path


@pytest.fixture
def analysis_json(tmp_path):
    path = tmp_path / "analysis.json"
    path.write_text(json.dumps(ANALYSIS))
    return path


def keyed(df, cols=("method", "dataset")):
    return df.set_index(list(cols)).sort_index()


def test_make_all_writes_every_figure_as_png_and_csv(run_dir, cost_json, analysis_json, tmp_path):
    out = tmp_path / "figs"
    written = figures.make_all(run_dir, out, cost_json, analysis_json)
    stems = {"fig1a_speedup_vs_draft_size", "fig1b_tau", "costmodel", "ablation_serial_vs_parallel",
             "fig3_topk_accuracy", "fig4_cosine_by_layer", "fig5_layer_sweep"}
    assert {p.name for p in written} == {f"{s}.{ext}" for s in stems for ext in ("png", "csv")} | {"costmodel_curve.csv"}
    for path in written:
        assert path.exists() and path.stat().st_size > 0
        if path.suffix == ".png":
            assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_run_figure_csvs_equal_the_summary(run_dir, cost_json, tmp_path):
    out = tmp_path / "figs"
    figures.make_all(run_dir, out, cost_json)
    summary = keyed(summary_of(run_dir)[0])
    cols = ["draft_size", "speedup_median", "speedup_ci_low", "speedup_ci_high", "speedup"]

    fig1a = keyed(pd.read_csv(out / "fig1a_speedup_vs_draft_size.csv"))
    assert "ar" not in fig1a.index.get_level_values("method")  # the baseline is the dashed line
    assert len(fig1a) == 6
    pd.testing.assert_frame_equal(fig1a[cols], summary.loc[fig1a.index, cols], rtol=1e-12)
    assert fig1a.loc[("firp", "gsm8k"), "draft_size"] == pytest.approx(3.0)

    fig1b = keyed(pd.read_csv(out / "fig1b_tau.csv"))
    assert len(fig1b) == 8
    pd.testing.assert_series_equal(fig1b["tau"], summary["tau"], rtol=1e-12)

    cost = keyed(pd.read_csv(out / "costmodel.csv"))
    assert len(cost) == 6
    for key, r in cost.iterrows():
        s = summary.loc[key]
        assert r.positions == pytest.approx(s.positions)
        assert r.tau == pytest.approx(s.tau) and r.speedup_median == pytest.approx(s.speedup_median)
        assert r.ratio == pytest.approx(linear_ratio(s.positions))  # linear c(n): interpolation is exact
        assert r.bound == pytest.approx(s.tau / linear_ratio(s.positions))
    curve = pd.read_csv(out / "costmodel_curve.csv")
    assert curve["n"].tolist() == NS and curve["ratio"].tolist() == pytest.approx([linear_ratio(n) for n in NS])

    ablation = keyed(pd.read_csv(out / "ablation_serial_vs_parallel.csv"))
    assert sorted(ablation.index) == [(m, d) for m in ("firp", "firp:parallel") for d in ("gsm8k", "xsum")]
    pd.testing.assert_frame_equal(ablation[["tau", "speedup_median", "speedup_ci_low", "speedup_ci_high"]],
                                  summary.loc[ablation.index, ["tau", "speedup_median", "speedup_ci_low", "speedup_ci_high"]],
                                  rtol=1e-12)
    assert ablation.loc[("firp", "gsm8k"), "tau"] > ablation.loc[("firp:parallel", "gsm8k"), "tau"]


def test_analysis_figure_csvs_equal_the_json(analysis_json, tmp_path):
    out = tmp_path / "figs"
    figures.make_all(None, out, analysis_json=analysis_json)
    top = pd.read_csv(out / "fig3_topk_accuracy.csv")
    assert sorted(set(top["N"])) == [2, 3, 4]  # N = 5 is not a Fig 3 panel
    for r in top.itertuples():
        assert r.accuracy == pytest.approx(ANALYSIS["topk_accuracy"][r.predictor][str(r.N)][r.k - 1])
    assert len(top) == 5 * (2 + 3 + 3)
    labels = dict(zip(top["predictor"], top["label"]))  # the budget shows where it is known
    assert labels == {"firp": "firp [450 x 4 x 160]", "medusa": "medusa", "early-exit (layer 2)": "early-exit (layer 2)"}
    cos = pd.read_csv(out / "fig4_cosine_by_layer.csv")
    assert {(r.variant, r.layer, r.cosine) for r in cos.itertuples()} == {("step 1", 3, 0.5), ("step 1", 4, 0.6), ("step 2", 4, 0.4)}
    sweep = pd.read_csv(out / "fig5_layer_sweep.csv")
    assert sweep["layer"].tolist() == [1, 2, 3] and sweep["top1_accuracy"].tolist() == [0.2, 0.35, 0.3]


def test_ablation_prefers_an_explicit_serial_twin(tmp_path):
    """A run with firp:serial and firp:parallel (an equal-budget pair) draws that pair, not firp."""
    methods = {"ar": (1, 1.0, 0, 1), "firp": (3, 2.0, 3, 12), "firp:serial": (2, 1.6, 3, 12),
               "firp:parallel": (2, 1.4, 3, 12)}
    run = write_synthetic_run(tmp_path / "run", methods=methods)
    figures.make_all(run, tmp_path / "figs")
    drawn = pd.read_csv(tmp_path / "figs" / "ablation_serial_vs_parallel.csv")
    assert set(drawn["method"]) == {"firp:serial", "firp:parallel"}


def test_missing_inputs_skip_their_figure_with_a_note(tmp_path, capsys):
    run = write_synthetic_run(tmp_path / "run", methods={"ar": (1, 1.0, 0, 1), "firp": (2, 1.5, 3, 8)})
    partial = tmp_path / "analysis.json"
    partial.write_text(json.dumps({"model": "tiny", "layer_sweep": {"2": 0.3}}))
    written = figures.make_all(run, tmp_path / "figs", analysis_json=partial)
    names = {p.name for p in written}
    assert "fig5_layer_sweep.png" in names and "fig1a_speedup_vs_draft_size.png" in names
    assert not any(n.startswith(("ablation", "fig3", "fig4", "costmodel")) for n in names)
    said = capsys.readouterr().out
    assert "ablation skipped: method(s) firp:parallel not in the run" in said
    assert "no 'cosine'" in said and "no 'topk_accuracy'" in said


def test_cli_figures(run_dir, cost_json, analysis_json):
    res = CliRunner().invoke(main, ["figures", str(run_dir), "--costmodel", str(cost_json), "--analysis", str(analysis_json)])
    assert res.exit_code == 0, res.output
    assert (run_dir / "figures" / "costmodel.png").exists() and "wrote" in res.output
    res = CliRunner().invoke(main, ["figures", str(run_dir / "nope")])
    assert res.exit_code == 2


def test_ratio_at_interpolates_and_extrapolates():
    cost = {"n": [1, 2, 4], "ratio": [1.0, 1.5, 2.5]}
    assert costmodel.ratio_at(cost, 1) == 1.0
    assert costmodel.ratio_at(cost, 3) == pytest.approx(2.0)
    assert costmodel.ratio_at(cost, 6) == pytest.approx(3.5)  # slope 0.5 beyond the last point


def test_costmodel_on_tiny_model(engine):
    result = costmodel.measure(engine, ns=(8, 2, 4), prefix=16, repeats=2, warmup=1)
    assert result["n"] == [1, 2, 4, 8]  # 1 added, sorted
    assert all(s > 0 for s in result["seconds"])
    assert result["ratio"][0] == 1.0 and result["ratio"] == pytest.approx([s / result["seconds"][0] for s in result["seconds"]])
    with pytest.raises(ValueError, match="exceeds the model's context"):
        costmodel.measure(engine, ns=(64,), prefix=500)


def test_cli_costmodel_writes_json(tiny_model_dir, tmp_path):
    out = tmp_path / "cm.json"
    res = CliRunner().invoke(main, ["costmodel", "--model", str(tiny_model_dir), "--device", "cpu", "--prefix", "8",
                                    "--repeats", "1", "--n", "1,2,4", "--out", str(out)])
    assert res.exit_code == 0, res.output
    data = json.loads(out.read_text())
    assert {"model", "device", "dtype", "hardware", "prefix", "n", "seconds", "ratio"} <= set(data)
    assert data["n"] == [1, 2, 4] and data["prefix"] == 8 and data["device"] == "cpu"


def test_ablation_title_names_the_checkpoints_when_the_run_set_them():
    configs = {"firp:serial": {"options": {"checkpoint": "a"}}, "firp:parallel": {"options": {"checkpoint": "b"}}}
    assert figures._checkpoints_line({"method_configs": configs}, ("firp:serial", "firp:parallel")) == "\ncheckpoints: a vs b"
    assert figures._checkpoints_line({"method_configs": configs}, ("firp", "firp:parallel")) == ""

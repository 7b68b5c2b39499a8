"""gpu-check on the CPU: its sections run under a budget and survive a failing one, its verdicts
fail what must fail, and a reduced rehearsal runs end to end (what `make gpu-check DEVICE=cpu`
runs with larger sizes)."""

import json
import warnings
from dataclasses import replace

from click.testing import CliRunner

from harness.analysis.decodecheck import warnings_per_step
from harness.analysis.gpucheck import CPU_SIZES, Sections, run_check
from harness.analysis.gpucheck_report import checks, write
from harness.cli import main
from methods.autoregressive import Autoregressive


def test_sections_record_errors_and_skip_past_the_budget():
    sections = Sections(budget_s=60)
    assert sections.run("fine", lambda: 3) == 3
    assert sections.run("broken", lambda: 1 / 0) is None
    sections.deadline = 0
    assert sections.run("late", lambda: 1) is None
    res = sections.results
    assert res["fine"]["result"] == 3 and res["broken"]["error"].startswith("ZeroDivisionError")
    assert res["late"] == {"skipped": "the time budget was spent"}


def row(lossless=True, tie=False, reads=1.0, syncs=None):
    div = None if lossless else {"at": 3, "baseline_token": 5, "method_token": 6, "baseline_margin": 0.5,
                                 "gap": 0.5, "epsilon": 0.08, "tie": tie, "kind": "tie" if tie else "mismatch"}
    return {"lossless": lossless, "divergence": div, "tau": 1.5, "tokens_per_s": 10.0,
            "syncs_per_step": reads, "cuda_syncs_per_step": syncs}


def test_verdicts_fail_a_real_divergence_an_extra_read_and_a_broken_section():
    decoding = {"methods": {"ar": row(), "firp": row(lossless=False), "medusa": row(reads=2.0),
                            "ar-graph": row(syncs=1.5), "lookahead": row(lossless=False, tie=True, reads=2.0),
                            "self-spec": row(reads=3.0)},
                "hf_generate": {"equal": [True, False], "divergence": row(lossless=False, tie=True)["divergence"],
                                "tokens_per_s": 5.0}}
    result = {"device": "cuda:0", "sections": {"m/decoding": {"seconds": 1, "result": decoding},
                                               "m/training": {"seconds": 1, "error": "RuntimeError: boom"}}}
    status = {name: s for name, s, _ in checks(result)}
    assert status["m/decoding: ar lossless"] == "pass" and status["m/decoding: ar one sync per step"] == "pass"
    assert status["m/decoding: firp lossless"] == "fail"
    assert status["m/decoding: medusa one sync per step"] == "fail"
    assert status["m/decoding: ar-graph one sync per step"] == "fail"
    assert status["m/decoding: lookahead lossless"] == "tie"
    assert status["m/decoding: lookahead one sync per step"] == "fail"  # its window guesses ride on the step's read
    assert "m/decoding: self-spec one sync per step" not in status  # a read per draft token, by design
    assert status["m/decoding: ar == hf-generate"] == "tie" and status["m/training"] == "error"


def test_reduced_cpu_rehearsal_end_to_end(tmp_path):
    sizes = replace(CPU_SIZES, prompt_len=8, max_new=10, prompts=1, ns=(1, 2), train_steps=3, train_len=16,
                   copy_mb=8, repeats=2)
    result = run_check("cpu", sizes, budget_s=600, tests=False, embedded=False)
    out, rows = write(result, tmp_path / "gpu")
    bad = [r for r in rows if r[1] in ("fail", "error", "skipped")]
    assert not bad, bad
    names = {name for name, _, _ in rows}
    for method in ("ar", "ar-graph", "firp", "medusa", "self-spec", "lookahead"):
        assert f"tiny-gqa/decoding: {method} lossless" in names and f"tiny-mha/decoding: {method} lossless" in names
    assert {"tiny-gqa/training: firp training loss falls", "tiny-mha/costmodel: c(1) not below the bandwidth bound",
            "tiny-mha/telemetry: NVML telemetry", "tiny-gqa/decoding: ar == hf-generate"} <= names
    saved = json.loads((out / "gpu_check.json").read_text())
    assert saved["ok"] and saved["sections"]["tiny-mha/costmodel"]["result"]["bound_seconds"] > 0
    assert "| check | status | detail |" in (out / "summary.md").read_text()


def test_cli_refuses_unknown_shapes():
    res = CliRunner().invoke(main, ["gpu-check", "--device", "cpu", "--shapes", "tiny-gqa,huge"])
    assert res.exit_code == 2 and "two of" in res.output


class Warns(Autoregressive):
    """Stands for a GPU: warns like torch's sync debug mode in the prefill and twice per step."""

    def prefill(self, ids, cache):
        warnings.warn("called a synchronizing CUDA operation (prefill)")
        return super().prefill(ids, cache)

    def step(self, pending, cache):
        warnings.warn("called a synchronizing CUDA operation")
        warnings.warn("called a synchronizing CUDA operation")
        warnings.warn("an unrelated warning")
        return super().step(pending, cache)


class WarnsDrafting(Warns):
    """The same through the drafting path (a one-node tree per step)."""

    drafts = True

    def verify(self, tree, cache):
        return self.step(tree.tokens[:, 0], cache)[:, None]


def test_syncs_are_counted_per_step_without_the_prefill(engine):
    for method in (Warns(engine, "tiny"), WarnsDrafting(engine, "tiny")):
        assert warnings_per_step(method, [5, 6, 7], 20, set(), engine.new_cache(64)) == 2.0
        assert "propose" not in vars(method) and "step" not in vars(method)  # the instance is left as it was

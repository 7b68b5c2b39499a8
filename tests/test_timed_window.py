"""What a timed turn holds and what it does not: every cache (target, draft model, graphs) is made
before timing starts, each method is built from the options the run's validation resolved (once),
NVML is set up once per run, and a turn's energy is read at the turn's own clocks."""

import time

import pytest
from conftest import tiny_model
from test_telemetry import H200, FakeNVML

from harness.bench import runner as runner_mod
from harness.bench.runner import RunConfig, Runner
from harness.bench.telemetry import Telemetry
from harness.core import cache as cache_mod
from methods.pld import PromptLookup


@pytest.fixture
def draft_dir(tmp_path):
    """A one-layer random Llama with the embedded tokenizer's vocabulary: an sps draft."""
    tiny_model(seed=1, vocab=49152, layers=1).save_pretrained(tmp_path / "draft")
    return tmp_path / "draft"


def test_no_cache_is_made_inside_a_run(tiny_model_dir, tmp_path, draft_dir, monkeypatch):
    cfg = RunConfig(methods=["ar-graph", "sps", "pld", "lookahead"], datasets=["mt-bench"], model=str(tiny_model_dir),
                    device="cpu", num_samples=2, max_new_tokens=12, out=tmp_path / "o", telemetry=False,
                    method_args={"sps": {"draft": str(draft_dir), "k": "2"}, "pld": {"k": "3"}}, batch_sizes=(1, 2))
    runner = Runner(cfg, progress=False)
    made = []
    real_init = cache_mod.KVCache.__init__

    def counted(self, *a, **kw):
        made.append(a)
        real_init(self, *a, **kw)
    monkeypatch.setattr(cache_mod.KVCache, "__init__", counted)
    targets = dict(runner.caches)
    runner.run()  # warm-up and two-turn samples: the second turns' prompts hold the first answers
    assert not made and runner.caches == targets and sorted(targets) == [1, 2]
    assert all(t.max_len >= runner.longest_prompt() + cfg.max_new_tokens for t in targets.values())


def test_methods_are_built_from_the_validated_options(tiny_model_dir, tmp_path, monkeypatch):
    calls = []
    real = PromptLookup.resolve_options.__func__

    def spy(cls, values):
        calls.append(dict(values))
        return real(cls, values)
    monkeypatch.setattr(PromptLookup, "resolve_options", classmethod(spy))
    cfg = RunConfig(methods=["pld"], datasets=["gsm8k"], model=str(tiny_model_dir), device="cpu", num_samples=1,
                    max_new_tokens=4, out=tmp_path / "o", telemetry=False, warmup=False,
                    method_args={"pld": {"k": "3", "max_ngram": "2"}})
    runner = Runner(cfg, progress=False)
    assert calls == [{"k": "3", "max_ngram": "2"}]  # resolved once, by the validation
    assert runner.methods["pld"].k == 3 and runner.methods["pld"].config.given == {"k", "max_ngram"}


def test_telemetry_is_set_up_once_per_run(tiny_model_dir, tmp_path, monkeypatch):
    made = []
    real = runner_mod.TelemetrySource

    def counted(*a, **kw):
        made.append(a)
        return real(*a, **kw)
    monkeypatch.setattr(runner_mod, "TelemetrySource", counted)
    cfg = RunConfig(methods=["ar"], datasets=["gsm8k"], model=str(tiny_model_dir), device="cpu", num_samples=2,
                    max_new_tokens=4, out=tmp_path / "o", telemetry=True, control=True)
    Runner(cfg, progress=False).run()
    assert len(made) == 1


class ClockNVML(FakeNVML):
    """A board drawing a constant 200 W: its energy counter follows the clock."""

    def nvmlDeviceGetTotalEnergyConsumption(self, handle):
        return time.perf_counter() * 200_000.0  # mJ


def test_a_turns_energy_is_read_at_its_own_clocks():
    probe = Telemetry("nvml", "cuda:0", interval=0.05, nvml=ClockNVML(), props=H200)
    t0 = probe.start()
    time.sleep(0.08)
    t1 = probe.stop()  # the sampler thread is joined after the clock and the counter are read
    assert probe.result["seconds"] == pytest.approx(t1 - t0)
    assert probe.result["energy_j"] == pytest.approx(200.0 * (t1 - t0), rel=0.02)

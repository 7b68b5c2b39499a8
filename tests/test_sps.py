"""Draft-model speculative decoding: losslessness with a second tiny random Llama as draft, the
draft cache rollback, draft-forward booking, the vocabulary check, options, the embedded shallow
draft (build, checkpoint, loading, training loss) and the hf-assisted peer."""

import json
import random

import pytest
import torch
from conftest import tiny_model
from helpers import (
    assert_cache_is_committed_sequence,
    assert_lossless,
    random_sequences,
)

import methods as registry
from harness.core.checkpoint import save_checkpoint
from harness.core.decoding import decode
from harness.core.engine import Engine
from harness.core.method import MethodError
from harness.train.training import TrainConfig, train
from methods.autoregressive import Autoregressive
from methods.peers import HFAssisted
from methods.sps import SpS
from methods.sps_draft import ShallowDraft, pick_layers

PROMPT = [3, 1, 4, 1, 5, 9, 2, 6]
PROMPTS = [random.Random(seed).sample(range(3, 97), 7) for seed in range(3)]  # as assert_lossless's


@pytest.fixture
def draft_dir(tmp_path):
    """A second tiny random Llama (same vocabulary, 2 layers, other weights) as an HF directory."""
    path = tmp_path / "draft"
    tiny_model(seed=1, layers=2).save_pretrained(path)
    return path


def shallow_checkpoint(engine, tmp_path, layers, name="draft", model="tiny"):
    """An untrained embedded draft made of `layers` of the target, saved as a checkpoint."""
    draft = ShallowDraft(engine.model, layers)
    path = tmp_path / f"{name}.safetensors"
    save_checkpoint(path, draft, {"method": "sps-draft", "model": model, "config": draft.config()})
    return path


@pytest.mark.parametrize("options", [{"k": "1"}, {"k": "3"}, {"k": "6"}, {"k": "4", "threshold": "0.5"}])
def test_sps_with_another_tiny_llama_is_lossless(engine, draft_dir, options):
    method = SpS(engine, "tiny", draft=str(draft_dir), **options)
    assert assert_lossless(engine, method) > 1.0  # some drafts were accepted
    assert_cache_is_committed_sequence(engine, method, PROMPT)


def test_a_draft_equal_to_the_target_is_always_accepted(engine, tmp_path):
    path = shallow_checkpoint(engine, tmp_path, tuple(range(engine.num_layers)))
    method = SpS(engine, "tiny", draft=str(path), k=4)
    out = decode(method, PROMPT, 41, set(), engine.new_cache(256))
    assert out.accept_lengths == [1] + [5] * 8
    assert out.draft_forwards == 1 + 4 * 8  # the draft's prefill, then k forwards per step
    assert engine.counters.forwards == 9  # target forwards: tau counts only these


class CheckedRollback(SpS):
    """After every step, the draft cache's valid slots equal a fresh draft prefill of the
    committed sequence up to there."""

    def begin(self, prompts):
        super().begin(prompts)
        self.committed, self.checks = list(prompts[0]), 0

    def observe(self, hidden, tree, step):
        super().observe(hidden, tree, step)
        if tree is None:
            return
        self.committed += [tree.tokens[0, i].item() for i in step.paths[0]]
        n = self.dcache.length
        assert n + self._has_unfed[0] == len(self.committed)
        fresh = self.draft.new_cache(self.dcache.max_len)
        self.draft.forward(torch.tensor(self.committed[:n]), torch.arange(n), None, fresh)
        torch.testing.assert_close(self.dcache.buf[..., :n, :], fresh.buf[..., :n, :], atol=1e-5, rtol=1e-5)
        self.checks += 1


@pytest.mark.parametrize("k", [1, 3])
def test_draft_cache_rollback_equals_a_fresh_draft_cache(engine, draft_dir, k):
    method = CheckedRollback(engine, "tiny", draft=str(draft_dir), k=k)
    accepted = []
    for prompt in PROMPTS:
        out = decode(method, prompt, 40, set(), engine.new_cache(256))
        assert method.checks == len(out.accept_lengths) - 2  # every step but the last
        accepted += out.accepted[1:]  # the decoding steps'
    assert 0 in accepted and k in accepted  # rejected and fully accepted drafts both rolled back
    assert k == 1 or any(0 < a < k for a in accepted)  # and partly accepted ones


def test_the_draft_fits_the_cache(engine, draft_dir):
    method = SpS(engine, "tiny", draft=str(draft_dir), k=6)
    prompt, budget = PROMPTS[1], 30
    ar = decode(Autoregressive(engine, "tiny"), prompt, budget, set(), engine.new_cache(256))
    out = decode(method, prompt, budget, set(), engine.new_cache(len(prompt) + budget))  # no slack
    assert out.output_ids == ar.output_ids
    assert out.draft_sizes[-1] < 6  # the last steps drafted fewer than k: the room ran out


def test_vocabulary_mismatch_is_refused(engine, tmp_path):
    other = tmp_path / "other-vocab"
    tiny_model(seed=1, vocab=50).save_pretrained(other)
    with pytest.raises(MethodError, match="vocabulary of 50 tokens, the target's has 97"):
        SpS(engine, "tiny", draft=str(other))
    eos = tmp_path / "other-eos"
    model = tiny_model(seed=1)
    model.config.eos_token_id = 5
    model.save_pretrained(eos)
    with pytest.raises(MethodError, match="eos_token_id=5"):
        SpS(engine, "tiny", draft=str(eos))


def test_options_and_missing_draft(engine, tmp_path):
    cls = registry.get("sps")
    assert cls is SpS and cls.resolve_options({"k": "7"})["k"] == 7
    for bad, message in [({"k": "0"}, "at least 1"), ({"threshold": "1.5"}, r"not in \[0, 1\]")]:
        with pytest.raises(MethodError, match=message):
            cls.resolve_options(bad)
    with pytest.raises(MethodError, match="spec-harness train sps-draft"):
        SpS(engine, "tiny")  # no embedded draft trained for model "tiny"
    assert registry.runnable("tiny").count("sps") == 0  # so `--methods all` leaves it out
    with pytest.raises(MethodError, match="cannot load"):
        SpS(engine, "tiny", draft=str(tmp_path / "nowhere"))


# -- the embedded shallow draft ---------------------------------------------------------------------
def test_pick_layers():
    assert pick_layers(30, 3) == (0, 1, 2)
    assert pick_layers(30, 4, "spread") == (0, 10, 19, 29) and pick_layers(30, 1, "spread") == (0,)
    with pytest.raises(ValueError):
        pick_layers(4, 5)


def test_shallow_draft_checkpoint_holds_its_own_tensors_and_loads_back(engine, tmp_path):
    path = shallow_checkpoint(engine, tmp_path, (0, 3))
    from safetensors.torch import load_file

    state = load_file(str(path))
    assert all(k.startswith(("layers.", "norm.")) for k in state)  # no embeddings, no LM head
    assert sum(v.numel() for v in state.values()) < sum(p.numel() for p in engine.model.parameters()) / 2
    method = SpS(engine, "tiny", draft=str(path))
    lm = method.draft.model
    assert lm.get_input_embeddings() is engine.model.get_input_embeddings()  # shared, not copied
    assert method.describe()["draft"]["layers"] == [0, 3]
    stored = engine.model.model.layers[3].mlp.up_proj.weight.half().float()  # kept in fp16 (storage_dtype)
    torch.testing.assert_close(lm.model.layers[1].mlp.up_proj.weight, stored)
    assert all(v.dtype == torch.float16 for v in state.values())


def test_foreign_or_mismatched_draft_checkpoints_are_refused(engine, tmp_path):
    other_model = shallow_checkpoint(engine, tmp_path, (0,), name="for-other", model="another-model")
    with pytest.raises(MethodError, match="trained for model another-model"):
        SpS(engine, "tiny", draft=str(other_model))
    deeper = Engine(tiny_model(layers=6))
    too_deep = shallow_checkpoint(deeper, tmp_path, (5,), name="deep")
    with pytest.raises(MethodError, match="target of 6 layers"):
        SpS(engine, "tiny", draft=str(too_deep))
    medusa = shallow_checkpoint(engine, tmp_path, (0,), name="medusa")
    sidecar = medusa.with_suffix(".json")
    sidecar.write_text(json.dumps({**json.loads(sidecar.read_text()), "method": "medusa"}))
    with pytest.raises(MethodError, match="written by medusa"):
        SpS(engine, "tiny", draft=str(medusa))


def test_distillation_lowers_the_draft_loss(engine):
    draft = ShallowDraft(engine.model, (0,))
    record = train(draft, engine, random_sequences(), TrainConfig(steps=25, batch=4, positions=8, lr=3e-3,
                                                                   warmup=2, eval_sequences=4), progress=False)
    assert record["final_loss"] < record["loss_curve"][0]
    assert all(not p.requires_grad for p in engine.model.parameters())  # the target stayed frozen


# -- the outside peer -------------------------------------------------------------------------------
def test_hf_assisted_peer_equals_the_baseline_with_the_same_draft(engine, draft_dir):
    peer = HFAssisted(engine, "tiny", draft=str(draft_dir), k=3)
    assert registry.get("hf-assisted") is HFAssisted and peer.external
    saved = peer.assistant.generation_config
    calls = []
    engine.model.register_forward_hook(lambda *_: calls.append(1))
    ar, cache = Autoregressive(engine, "tiny"), engine.new_cache(256)
    ref = decode(ar, PROMPTS[1], 30, {96}, cache).output_ids
    calls.clear()
    assert peer.generate(PROMPTS[1], 30, {96}).output_ids == ref
    assert len(calls) < len(ref)  # drafts were accepted: fewer target calls than tokens
    assert peer.assistant.generation_config is saved  # restored after the call
    assert peer.assistant_config().num_assistant_tokens == 3
    assert peer.assistant_config().num_assistant_tokens_schedule == "constant"
    with pytest.raises(MethodError, match="at least 1"):
        HFAssisted(engine, "tiny", draft=str(draft_dir), k="0")


# -- the commands -----------------------------------------------------------------------------------
def test_train_sps_draft_then_run_and_measure_it(tiny_model_dir, tmp_path, monkeypatch):
    from click.testing import CliRunner

    from harness.cli import main

    monkeypatch.setenv("SPEC_HARNESS_CACHE", str(tmp_path / "cache"))
    out, model = tmp_path / "sps-draft-tiny.safetensors", ["--model", str(tiny_model_dir)]
    tiny_train = ["--train-steps", "3", "--batch", "2", "--positions", "4", "--per-source", "2", "--device", "cpu"]
    res = CliRunner().invoke(main, ["train", "sps-draft", *model, "--layers", "2", "--pick", "spread",
                                    "--out", str(out), *tiny_train])
    assert res.exit_code == 0, res.output
    side = json.loads(out.with_suffix(".json").read_text())
    assert side["method"] == "sps-draft" and side["config"] == {"layers": [0, 2], "target_layers": 3}
    assert side["data"]["splits"].startswith("training only") and len(side["heldout_top1"]) == 1
    run = CliRunner().invoke(main, ["run", *model, "--methods", "sps", "--datasets", "gsm8k", "--num-samples", "1",
                                    "--max-new-tokens", "6", "--no-warmup", "--out", str(tmp_path / "run"),
                                    "--method-arg", f"sps.draft={out}"])
    assert run.exit_code == 0, run.output
    assert "100%" in run.output  # lossless
    size = tmp_path / "size.json"
    res = CliRunner().invoke(main, ["analyze", "sps-draft", *model, "--device", "cpu", "--drafts", str(out),
                                    "--num-prompts", "1", "--max-new-tokens", "4", "--out", str(size)])
    assert res.exit_code == 0, res.output
    row = json.loads(size.read_text())["rows"][0]
    assert row["layers"] == [0, 2] and row["c_d_ms"] > 0 and row["lossless_rate"] == 1.0
    bad = CliRunner().invoke(main, ["train", "sps-draft", *model, "--from-layers", "0,7", *tiny_train])
    assert bad.exit_code == 2 and "layers 0..2" in bad.output

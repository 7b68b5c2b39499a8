"""EAGLE-3: the fused low/mid/high input, the training-time-test unroll (the head's own outputs, in
the geometry of drafting), a reduced draft vocabulary mapped back through d2t, the released layout,
losslessness and training on the tiny random Llama."""

import json
import random

import pytest
import torch
from helpers import assert_lossless, assert_training_reduces_loss
from safetensors.torch import save_file

from harness.core.checkpoint import CheckpointError, save_checkpoint
from harness.core.decoding import decode
from harness.train.training import Batch
from methods.eagle3 import Eagle3, Eagle3Head, default_layers, head_config
from methods.eagle3_train import draft_vocabulary, unroll, with_vocabulary

VOCAB_IDS = torch.tensor([3, 10, 11, 40, 60, 61, 62, 63, 70, 80, 90, 95])


def make_head(engine, draft_vocab=0, layers=(0, 1, 3), unroll=3, seed=0, feature=0.0):
    torch.manual_seed(seed)
    head = Eagle3Head(engine, head_config(engine, layers, draft_vocab, unroll, feature))
    return with_vocabulary(head, engine, VOCAB_IDS[:draft_vocab]) if draft_vocab else head


def make_eagle3(engine, tmp_path, head=None, **options):
    head = head or make_head(engine)
    path = tmp_path / "eagle3.safetensors"
    save_checkpoint(path, head, {"method": "eagle3", "config": head.config()})
    return Eagle3(engine, "tiny", checkpoint=str(path), **options)


def test_default_layers_are_low_middle_high():
    assert default_layers(30) == (2, 15, 27) and default_layers(4) == (1, 2, 2)


def test_the_head_reads_the_named_layers_fused(engine, tmp_path):
    eagle = make_eagle3(engine, tmp_path, depth=2, top_k=2, total_tokens=3)
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    cache = engine.new_cache(64)
    eagle.prefill(ids, cache)
    hidden_at, _ = engine.capture_pass(ids, (0, 1, 3), None)
    assert eagle._fused.shape == (1, 5, 3 * engine.hidden_size)
    torch.testing.assert_close(eagle._fused, torch.cat([hidden_at[0], hidden_at[1], hidden_at[3]], dim=-1))


def test_lossless_with_an_untrained_head(engine, tmp_path):
    assert_lossless(engine, make_eagle3(engine, tmp_path, depth=3, top_k=2, total_tokens=5))
    assert_lossless(engine, make_eagle3(engine, tmp_path, make_head(engine, draft_vocab=12), depth=2, top_k=3,
                                        total_tokens=4))


def batch_of(engine, length=20, hang=(4, 9)):
    ids = torch.tensor([random.Random(1).choices(range(3, 97), k=length)])
    return Batch(ids, torch.tensor([length]), torch.tensor([list(hang)]), torch.ones(1, len(hang), dtype=torch.bool))


@torch.no_grad()
def test_the_unroll_drafts_on_its_own_outputs_as_decoding_does(engine):
    """Step j of the unroll equals a chain drafted from committed rows 0..h in a head cache, fed
    the head's own previous output: not the target's features (teacher forcing) at any step."""
    head, batch = make_head(engine, unroll=4), batch_of(engine)
    hidden_at, _ = engine.capture_pass(batch.ids, (0, 1, 3), None)
    fused = torch.cat([hidden_at[i] for i in (0, 1, 3)], dim=-1)
    outs = unroll(head, engine, fused, batch)
    for i, h in enumerate(batch.hang[0].tolist()):
        cache = head.new_cache(64, engine.device, engine.dtype)
        ctx = engine.context(torch.arange(h + 1), None, cache)
        out = head(head.fuse(fused[:, : h + 1]), batch.ids[:, 1 : h + 2], ctx)[:, -1:]  # committed rows 0..h
        cache.advance(h + 1)
        for j in range(1, 4):  # drafted row j at position h + j, after the chain's earlier rows
            torch.testing.assert_close(outs[j - 1][:, i : i + 1], out, atol=1e-5, rtol=1e-5)
            forced = head(head.fuse(fused[:, h + j : h + j + 1]), batch.ids[:, h + j + 1 : h + j + 2],
                          engine.context(torch.tensor([h + j]), None, cache, offset=j - 1))
            ctx = engine.context(torch.tensor([h + j]), None, cache, offset=j - 1)
            out = head(out, batch.ids[:, h + j + 1 : h + j + 2], ctx)
            if j >= 2:
                assert not torch.allclose(outs[j][:, i : i + 1], forced, atol=1e-3)  # teacher forcing differs
        torch.testing.assert_close(outs[3][:, i : i + 1], out, atol=1e-5, rtol=1e-5)


def test_a_reduced_vocabulary_maps_drafts_back_through_d2t(engine):
    head = make_head(engine, draft_vocab=5)  # target ids 3, 10, 11, 40, 60
    assert head.d2t.tolist() == [3, 9, 9, 37, 56] and head.t2d.nonzero().flatten().tolist() == [3, 10, 11, 40, 60]
    with torch.no_grad():
        head.lm_head.weight.zero_()
        head.lm_head.weight[3, 0] = 1.0  # draft id 3 = target id 40
        out = torch.zeros(2, engine.hidden_size)
        out[:, 0] = 5.0
        logits = head.decode(out)
    assert logits.shape == (2, engine.config.vocab_size) and logits.argmax(-1).tolist() == [40, 40]
    assert torch.isfinite(logits).sum(-1).tolist() == [5, 5] and torch.isfinite(logits[0, [3, 10, 11, 40, 60]]).all()


def test_the_draft_vocabulary_is_the_corpus_most_frequent_tokens():
    from harness.train.distill import Sequence

    seqs = [Sequence("x", [1, 2, 7, 7, 7, 5, 5, 9], 2), Sequence("x", [3, 3, 3, 5, 9, 9], 3)]
    assert draft_vocabulary(seqs, 3, 12).tolist() == [5, 7, 9]  # 3 (prompt only) and 1, 2 are not counted


def write_released(head, directory, **config):
    directory.mkdir()
    state = {k: v.contiguous() for k, v in head.state_dict().items()}
    save_file(state, str(directory / "model.safetensors"))
    (directory / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLMEagle3"], "hidden_size": 32,
                                                       "vocab_size": 97, "draft_vocab_size": 12,
                                                       "num_attention_heads": 4, "num_key_value_heads": 2,
                                                       "intermediate_size": 64, **config}))


def test_a_released_eagle3_directory_loads_and_drafts(engine, tmp_path):
    head = make_head(engine, draft_vocab=12, layers=default_layers(engine.num_layers))
    write_released(head, tmp_path / "released")
    eagle = Eagle3(engine, "tiny", checkpoint=str(tmp_path / "released"), depth=2, top_k=2, total_tokens=3)
    assert eagle.describe()["training"]["data"]["format"].endswith("(EAGLE-3)")
    assert torch.equal(eagle.head.d2t, head.d2t) and eagle.head.shapes["layers"] == list(default_layers(4))
    assert_lossless(engine, eagle)
    out = decode(eagle, [5, 6, 7, 8], 8, set(), engine.new_cache(64))
    assert out.draft_forwards > 0
    write_released(head, tmp_path / "other", hidden_size=64)
    with pytest.raises(CheckpointError, match="hidden_size 64, the target model's is 32"):
        Eagle3(engine, "tiny", checkpoint=str(tmp_path / "other"), depth=2, top_k=2, total_tokens=3)


def test_a_checkpoint_keeps_its_vocabulary_map(engine, tmp_path):
    head = make_head(engine, draft_vocab=12)
    eagle = make_eagle3(engine, tmp_path, head, depth=2, top_k=2, total_tokens=3)
    assert eagle.head.d2t.dtype == torch.long and torch.equal(eagle.head.d2t.cpu(), head.d2t)


@pytest.mark.parametrize("draft_vocab, feature", [(0, 0.0), (12, 0.0), (12, 1.0)])
def test_training_reduces_the_loss(engine, draft_vocab, feature):
    head = make_head(engine, draft_vocab=draft_vocab, unroll=2, feature=feature)
    record = assert_training_reduces_loss(head, engine, lr=3e-3)
    assert len(record["heldout_top1"]) == 2


def test_the_feature_term_is_an_optional_weighted_addition_recorded_in_the_sidecar(engine, tmp_path):
    from helpers import random_sequences

    from harness.train.training import TrainConfig, make_batch

    seqs, cfg = random_sequences(4), TrainConfig(batch=4, positions=8, max_len=64)

    def loss(weight):  # the same head and batch at every weight
        return make_head(engine, unroll=2, feature=weight).loss(engine, make_batch(seqs, cfg, random.Random(0)))[0]
    with torch.no_grad():
        plain, half, whole = loss(0.0), loss(0.5), loss(1.0)
    assert half > plain
    torch.testing.assert_close(whole - plain, 2 * (half - plain))
    loaded = make_eagle3(engine, tmp_path, make_head(engine, feature=0.5), depth=2, top_k=2, total_tokens=3)
    assert loaded.head.feature_weight == 0.5
    assert make_head(engine).config()["loss"] == {"feature": 0.0}
    older = {k: v for k, v in head_config(engine, (0, 1, 3)).items() if k != "loss"}  # a sidecar before the option
    assert Eagle3Head(engine, older).feature_weight == 0.0


def test_cached_teacher_rows_give_the_same_loss(engine):
    from helpers import random_sequences

    from harness.train.training import FinalCache, TrainConfig, make_batch

    head, seqs = make_head(engine, unroll=2), random_sequences(4)
    cfg = TrainConfig(batch=4, positions=8, max_len=64)
    with torch.no_grad():
        plain = head.loss(engine, make_batch(seqs, cfg, random.Random(0)))[0]
        exact = FinalCache(engine, head.reads_layers, torch.float32).fill(make_batch(seqs, cfg, random.Random(0)), seqs)
        half = FinalCache(engine, head.reads_layers).fill(make_batch(seqs, cfg, random.Random(0)), seqs)
        torch.testing.assert_close(head.loss(engine, exact)[0], plain)
        torch.testing.assert_close(head.loss(engine, half)[0], plain, atol=2e-2, rtol=2e-2)  # bfloat16 layer rows


def test_training_stopped_part_way_resumes_to_the_same_weights(engine, tmp_path):
    from helpers import random_sequences

    from harness.train import resume
    from harness.train.training import TrainConfig, train

    cfg = TrainConfig(steps=2 * resume.EVERY + 5, batch=2, positions=6, max_len=32, warmup=3, eval_sequences=2)
    seqs = random_sequences(12, length=32)
    whole = make_head(engine)
    record = train(whole, engine, seqs, cfg, progress=False)
    part, snapshot, calls = make_head(engine), tmp_path / "run.pt", []
    real = part.loss

    def stopped(*args):
        calls.append(1)
        if len(calls) > resume.EVERY + 3:
            raise KeyboardInterrupt  # the session ends part-way
        return real(*args)
    part.loss = stopped
    with pytest.raises(KeyboardInterrupt):
        train(part, engine, seqs, cfg, progress=False, snapshot=snapshot)
    assert snapshot.exists()
    again = make_head(engine)  # a new process: fresh weights, then the snapshot
    resumed = train(again, engine, seqs, cfg, progress=False, snapshot=snapshot)
    for (name, a), b in zip(whole.state_dict().items(), again.state_dict().values()):
        torch.testing.assert_close(a, b, msg=name)
    assert resumed["loss_curve"] == record["loss_curve"] and resumed["heldout_topk"] == record["heldout_topk"]

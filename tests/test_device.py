"""Devices and dtypes without a GPU: the one --device parser, the default dtype rule, and
everything the loop, training and analyses build on the engine's device. The last is checked
with torch's default device set to `meta`: a tensor made without an explicit device lands there,
and mixing it with the engine's tensors fails, as a CPU tensor would on CUDA."""

import pytest
import torch
from click.testing import CliRunner
from conftest import tiny_model
from helpers import assert_lossless, random_sequences
from test_eagle import make_eagle
from test_firp import make_firp
from test_medusa import make_medusa

from harness.analysis.analyses import cosine_by_layer
from harness.cli import main
from harness.core.engine import Engine
from harness.core.modelload import (
    ModelLoadError,
    config_dtype,
    resolve_device,
    resolve_dtype,
)
from harness.train.training import TrainConfig, train
from methods.ar_graph import ARGraph
from methods.autoregressive import Autoregressive
from methods.firp import PseudoChains
from methods.lookahead import Lookahead
from methods.medusa import MedusaHeads
from methods.pld import PromptLookup
from methods.self_speculative import SelfSpeculative

CFG = TrainConfig(steps=3, batch=4, positions=48, max_len=48, lr=1e-2, warmup=1, eval_sequences=1)


def fake_gpus(monkeypatch, count=2, bf16=True):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)


def test_device_parser_without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("cpu") == resolve_device("auto") == resolve_device(" CPU ") == "cpu"
    for bad, reason in (("cuda", "no CUDA device"), ("cuda:1", "no CUDA device"), ("gpu", "expected auto, cpu"),
                        ("cuda:x", "expected auto, cpu"), ("cuda1", "expected auto, cpu")):
        with pytest.raises(ModelLoadError, match=reason):
            resolve_device(bad)


def test_device_parser_names_the_ordinal(monkeypatch):
    fake_gpus(monkeypatch)
    assert resolve_device("auto") == resolve_device("cuda") == "cuda:0"
    assert resolve_device("cuda:1") == "cuda:1"
    with pytest.raises(ModelLoadError, match="CUDA_VISIBLE_DEVICES"):
        resolve_device("cuda:2")


def test_default_dtype_follows_the_model_on_cuda(monkeypatch):
    fake_gpus(monkeypatch, bf16=True)
    assert resolve_dtype(None, "cpu", "bfloat16") == "float32"
    assert resolve_dtype(None, "cuda:0", "bfloat16") == "bfloat16"
    assert resolve_dtype(None, "cuda:0", "float16") == "float16"
    assert resolve_dtype(None, "cuda:0", "float32") == "bfloat16"
    assert resolve_dtype(None, "cuda:0", None) == "bfloat16"
    assert resolve_dtype("float32", "cuda:0", "bfloat16") == "float32"
    fake_gpus(monkeypatch, bf16=False)
    assert resolve_dtype(None, "cuda:0", "float32") == "float32"  # never float16 unless the model says so
    with pytest.raises(ModelLoadError, match="unknown dtype"):
        resolve_dtype("fp8", "cpu")


def test_config_dtype_reads_either_spelling():
    cfg = tiny_model().config
    cfg.dtype = torch.bfloat16
    assert config_dtype(cfg) == "bfloat16"
    cfg.dtype = "float16"
    assert config_dtype(cfg) == "float16"
    cfg.dtype = None
    assert config_dtype(cfg) is None


@pytest.mark.parametrize("command", [["costmodel"], ["run", "--methods", "ar"], ["train", "medusa"],
                                     ["tune", "lookahead"], ["doctor", "--model", "x"], ["gpu-check"]])
def test_every_command_validates_device(command):
    res = CliRunner().invoke(main, [*command, "--device", "gpu0"])
    assert res.exit_code == 2 and "expected auto, cpu, cuda or cuda:N" in res.output, res.output


BUILDERS = {
    "ar": lambda e, tmp: Autoregressive(e, "tiny"),
    "ar-graph": lambda e, tmp: ARGraph(e, "tiny"),
    "firp": lambda e, tmp: make_firp(e, tmp),
    "medusa": lambda e, tmp: make_medusa(e, tmp, perturb=0.3),
    "self-spec": lambda e, tmp: SelfSpeculative(e, "tiny", skip="a1,m2"),
    "lookahead": lambda e, tmp: Lookahead(e, "tiny"),
    "pld": lambda e, tmp: PromptLookup(e, "tiny", k=3),
    "eagle": lambda e, tmp: make_eagle(e, tmp),
}


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_decoding_makes_no_tensor_off_the_engine_device(engine, tmp_path, name):
    method = BUILDERS[name](engine, tmp_path)
    with torch.device("meta"):
        assert_lossless(engine, method, prompts=1, max_new=16)


@pytest.mark.parametrize("kind", ["firp", "medusa", "eagle"])
def test_training_makes_no_tensor_off_the_engine_device(engine, kind):
    """(Medusa and EAGLE train from the FinalCache's host rows.)"""
    from methods.eagle import EagleHead, target_shapes

    module = {"firp": lambda: PseudoChains(32, (1, 2)), "medusa": lambda: MedusaHeads(32, 2, engine.lm_head),
              "eagle": lambda: EagleHead(engine, target_shapes(engine))}[kind]()
    with torch.device("meta"):
        record = train(module, engine, random_sequences(5), CFG, progress=False)
    assert len(record["loss_curve"]) == CFG.steps


def test_analyses_make_no_tensor_off_the_engine_device(engine):
    chains = PseudoChains(32, (1, 2))
    with torch.device("meta"):
        cosine_by_layer(engine, chains, random_sequences(4), CFG)  # (layer probe, early exit: train(), above)


@pytest.mark.parametrize("kind", ["firp", "medusa"])
def test_drafter_trains_in_float32_on_a_bfloat16_target(kind):
    engine = Engine(tiny_model().to(torch.bfloat16))
    module = PseudoChains(32, (1, 2)) if kind == "firp" else MedusaHeads(32, 2, engine.lm_head)
    record = train(module, engine, random_sequences(5), CFG, progress=False)
    assert {p.dtype for p in module.parameters()} == {torch.float32}
    assert all(torch.isfinite(torch.tensor(record["loss_curve"])))
    assert record["loss_curve"][-1] < record["loss_curve"][0]
    assert engine.lm_head.weight.dtype == torch.bfloat16  # the target untouched

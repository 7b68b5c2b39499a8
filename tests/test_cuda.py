"""The GPU path on a tiny random Llama: every in-loop method lossless on CUDA (float32, and
bfloat16 up to diagnosed greedy ties), ar-graph replaying a CUDA graph, one device
synchronisation per step as torch itself counts them, a drafter training step with float32
drafters on a bfloat16 target, and NVML found by PCI bus id. Skipped without CUDA; gpu-check
runs this file first."""

import random

import pytest
import torch
from conftest import tiny_model
from helpers import assert_lossless, random_sequences
from test_device import BUILDERS
from test_sync import BUILDERS as ONE_WAIT

from harness.analysis.decodecheck import cuda_syncs_per_step, divergence
from harness.bench.telemetry import Telemetry, nvml_handle, telemetry_info
from harness.core.decoding import decode
from harness.core.engine import Engine
from harness.core.modelload import resolve_device, resolve_dtype
from harness.train.training import TrainConfig, train
from methods.ar_graph import ARGraph
from methods.autoregressive import Autoregressive
from methods.firp import PseudoChains
from methods.medusa import MedusaHeads

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def cuda_engine(dtype=torch.float32):
    return Engine(tiny_model().to("cuda", dtype))


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_every_method_is_lossless_on_cuda(tmp_path, name):
    engine = cuda_engine()
    assert_lossless(engine, BUILDERS[name](engine, tmp_path), prompts=3, max_new=40)


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_bfloat16_decoding_is_lossless_up_to_diagnosed_ties(tmp_path, name):
    engine = cuda_engine(torch.bfloat16)
    method, ar = BUILDERS[name](engine, tmp_path), Autoregressive(engine, "tiny")
    cache = engine.new_cache(256)
    for seed in range(3):
        prompt = random.Random(seed).sample(range(3, 97), 7)
        ref = decode(ar, prompt, 40, {96}, cache).output_ids
        got = decode(method, prompt, 40, {96}, cache).output_ids
        diff = divergence(engine, prompt, ref, got)
        assert diff is None or diff["tie"], f"{name}, prompt {seed}: {diff}"


def test_ar_graph_replays_a_captured_graph_equal_to_the_eager_static_step():
    engine = cuda_engine()
    graphed, eager = ARGraph(engine, "tiny"), ARGraph(engine, "tiny", graph=False)
    cache = engine.new_cache(256)
    a = decode(graphed, [5, 6, 7, 8], 30, set(), cache).output_ids
    assert graphed._step.graphs  # every window's graph, captured by prepare
    assert decode(eager, [5, 6, 7, 8], 30, set(), cache).output_ids == a


@pytest.mark.parametrize("name", sorted(ONE_WAIT))
def test_one_device_synchronisation_per_step(tmp_path, name):
    engine = cuda_engine()
    method = ONE_WAIT[name](engine, tmp_path)
    cache = engine.new_cache(256)
    decode(method, [5, 6, 7, 8], 8, set(), cache)  # warm-up (graph capture)
    syncs = cuda_syncs_per_step(method, [5, 6, 7, 8, 9], 60, set(), cache)
    assert syncs <= 1.0, f"{name}: {syncs:.2f} synchronisations per step"


@pytest.mark.parametrize("kind", ["firp", "medusa"])
def test_training_step_float32_drafter_on_bfloat16_target(kind):
    engine = cuda_engine(torch.bfloat16)
    module = (PseudoChains(32, (1, 2)) if kind == "firp" else MedusaHeads(32, 2, engine.lm_head)).to("cuda")
    cfg = TrainConfig(steps=4, batch=4, positions=48, max_len=48, warmup=1, eval_sequences=1, lr=1e-2)
    record = train(module, engine, random_sequences(5), cfg, progress=False)
    assert all(p.dtype == torch.float32 and p.is_cuda for p in module.parameters())
    assert record["loss_curve"][-1] < record["loss_curve"][0]


def test_device_and_dtype_defaults_on_cuda():
    device = resolve_device("cuda")
    assert device == f"cuda:{torch.cuda.current_device()}"
    assert resolve_device(device) == device
    expected = "bfloat16" if torch.cuda.is_bf16_supported() else "float32"
    assert resolve_dtype(None, device, "float32") == expected
    assert resolve_dtype(None, device, "float16") == "float16"


def test_nvml_device_is_the_torch_device():
    device = resolve_device("cuda")
    info = telemetry_info(device)
    if info["kind"] != "nvml":
        pytest.skip("no NVML on this machine")
    assert nvml_handle(device) is not None
    assert info["gpu_name"] == torch.cuda.get_device_name(device)
    engine = cuda_engine()
    with Telemetry("nvml", device) as probe:
        decode(Autoregressive(engine, "tiny"), [5, 6, 7], 40, set(), engine.new_cache(128))
        torch.cuda.synchronize(device)
    assert probe.result["energy_j"] >= 0 and probe.result["mem_peak_mb"] > 0


def test_the_sampling_noise_is_the_same_on_cuda_and_on_the_cpu():
    from harness.core.sampling import device_keys, reference_uniform, turn_key, uniform

    keys = [turn_key(0, "81", 1), turn_key(3, "x", 0)]
    t, v = torch.arange(0, 5000, 7), torch.arange(0, 50000, 13)
    cpu = uniform(device_keys(keys, "cpu")[:, None, None], t[None, :, None], v)
    gpu = uniform(device_keys(keys, "cuda")[:, None, None], t.cuda()[None, :, None], v.cuda()).cpu()
    assert torch.equal(cpu, gpu) and cpu[1, 3, 5].item() == reference_uniform(keys[1], 21, 65)


@pytest.mark.parametrize("name", sorted(ONE_WAIT))
def test_exact_sampling_is_lossless_on_cuda(tmp_path, name):
    from harness.core.sampling import SamplingParams

    engine = cuda_engine()
    assert_lossless(engine, ONE_WAIT[name](engine, tmp_path), prompts=2, max_new=32, sampling=SamplingParams(1.0))

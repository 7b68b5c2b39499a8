"""Checks shared by the method tests."""

import random

import torch

from harness.core.decoding import decode
from methods.autoregressive import Autoregressive


def assert_cache_is_committed_sequence(engine, method, prompt, max_new=30):
    """After decoding, the cache holds exactly prompt + output (minus the pending last token),
    equal to a plain prefill of that sequence."""
    cache = engine.new_cache(256)
    out = decode(method, prompt, max_new, set(), cache)
    seq = prompt + out.output_ids[:-1]
    assert cache.length == len(seq)
    ref = engine.new_cache(256)
    engine.forward(torch.tensor(seq), torch.arange(len(seq)), None, ref)
    torch.testing.assert_close(cache.buf[..., : len(seq), :], ref.buf[..., : len(seq), :], atol=1e-4, rtol=1e-4)
    return out


def rule_for(engine, sampling, prompt_id: int):
    """Greedy (sampling None), or exact sampling keyed by the prompt's id."""
    if sampling is None:
        return None
    from harness.core.sampling import Exact, device_keys, turn_key

    return Exact(sampling, device_keys([turn_key(0, str(prompt_id), 0)], engine.device))


def assert_lossless(engine, method, prompts=3, max_new=40, eos=96, sampling=None):
    """The output equals the autoregressive baseline's, greedy or (sampling: SamplingParams) the
    same position-keyed sample; returns the mean tokens per forward."""
    ar = Autoregressive(engine, "tiny")
    cache = engine.new_cache(256)
    taus = []
    for seed in range(prompts):
        prompt = random.Random(seed).sample(range(3, 97), 7)
        ref = decode(ar, prompt, max_new, {eos}, cache, rule=rule_for(engine, sampling, seed)).output_ids
        got = decode(method, prompt, max_new, {eos}, cache, rule=rule_for(engine, sampling, seed))
        assert got.output_ids == ref, f"prompt {seed}: diverges"
        assert sum(got.accept_lengths) == len(ref)
        taus.append(len(ref) / len(got.accept_lengths))
    return sum(taus) / len(taus)


def assert_reproduces(method, references, max_new: int, eos: set[int], label: str = "") -> int:
    """Each (name, prompt, reference) decoded by `method` with `max_new` new tokens equals the
    reference token for token (a failure names the first divergence); returns the draft tokens
    accepted over all prompts (tokens minus steps: each step adds one token of the target's own)."""
    cache, accepted = method.engine.new_cache(2048), 0
    for name, prompt, ref in references:
        got = decode(method, prompt, max_new, eos, cache)
        pairs = zip(got.output_ids, ref)
        diverge = next((i for i, (a, b) in enumerate(pairs) if a != b), min(len(ref), len(got.output_ids)))
        assert got.output_ids == ref, f"{label or method.name} {name}: diverges at token {diverge}"
        accepted += len(ref) - len(got.accept_lengths)
    return accepted


def assert_training_reduces_loss(module, engine, lr):
    """30 steps of the shared training loop on random sequences cut the module's loss on a fixed
    batch by at least 15%; returns the training record."""
    from harness.train.training import TrainConfig, make_batch, train

    seqs = random_sequences()
    cfg = TrainConfig(steps=30, batch=4, positions=16, max_len=64, lr=lr, warmup=5, eval_sequences=4)
    fixed = make_batch(seqs[4:8], cfg, random.Random(0))
    with torch.no_grad():
        before = float(module.loss(engine, fixed)[0])
    record = train(module, engine, seqs, cfg, progress=False)
    with torch.no_grad():
        after = float(module.loss(engine, fixed)[0])
    assert after < 0.85 * before, (before, after)
    return record


def random_sequences(n=24, length=48, vocab=97):
    from harness.train.distill import Sequence

    return [Sequence("tiny", random.Random(i).choices(range(3, vocab), k=length), 4) for i in range(n)]


# (tau-ish tokens per forward, speed factor over the baseline, draft size, positions per forward)
SYNTHETIC_METHODS = {"ar": (1, 1.0, 0, 1), "medusa": (2, 1.5, 4, 5), "firp": (3, 2.0, 3, 12),
                     "firp:parallel": (2, 1.4, 3, 12)}


def write_synthetic_run(path, methods=SYNTHETIC_METHODS, datasets=("gsm8k", "xsum"), samples=8, seed=0,
                        model_key="tiny", method_configs=None):
    """A run directory (manifest.json + records.jsonl in the results schema) with hand-set
    acceptance and timing, seeded noise on the wall times; returns the path."""
    import json
    from pathlib import Path

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    manifest = {"schema_version": 1, "model": model_key, "model_key": model_key, "dtype": "float32",
                "device": "cpu", "hardware": {"cpu": "Synthetic CPU", "cpu_cores": 2}, "methods": list(methods),
                "method_configs": method_configs or {m: {"name": m.split(":")[0], "options": {}} for m in methods},
                "datasets": list(datasets), "num_samples": samples, "max_new_tokens": 32, "seed": 0,
                "data_source": "local", "baseline": "ar"}
    (path / "manifest.json").write_text(json.dumps(manifest))
    with (path / "records.jsonl").open("w") as f:
        for dataset in datasets:
            for i in range(samples):
                tokens = 20 + 3 * i
                base_time = tokens * 0.01 * (1.5 if dataset == "xsum" else 1.0)
                for method, (per_fwd, speed, draft, positions) in methods.items():
                    accept = [1] + [per_fwd] * ((tokens - 1) // per_fwd)
                    if sum(accept) < tokens:
                        accept.append(tokens - sum(accept))
                    n = len(accept)
                    rec = {"method": method, "dataset": dataset, "sample_id": str(i), "turn": 0,
                           "new_tokens": tokens, "wall_time": base_time / speed * rng.uniform(0.9, 1.1),
                           "prefill_time": 0.001, "forwards": n, "accept_lengths": accept,
                           "draft_sizes": [0] + [draft] * (n - 1), "positions": [30] + [positions] * (n - 1),
                           "output_ids": list(range(tokens)), "output_text": "", "lossless": True,
                           "diverge_at": None, "rouge2": 0.1 if dataset == "xsum" else None,
                           "correct": (i % 2 == 0) if dataset == "gsm8k" else None,
                           "telemetry": {"kind": "cpu"}}
                    f.write(json.dumps(rec) + "\n")
    return path

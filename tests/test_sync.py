"""Device waits per decoding step: on a GPU every read of a tensor on the host waits for the
device, and so does a host-to-device copy from pageable memory (`torch.tensor(list,
device=...)`). The shared loop and the drafting hooks of ar, ar-graph, firp, medusa, eagle, pld,
sps (threshold 0) and lookahead wait at most once per step; host data reaches the device only
through Engine.upload (pinned, non-blocking on CUDA).

Counted on the CPU with a dispatch mode: reads are the aten ops behind .item(), int(), float(),
bool() and .nonzero(), plus every Tensor.tolist()/numpy() call (which Engine.host uses); uploads
are tensors made from host data (aten::lift_fresh: torch.tensor / as_tensor), each of which is a
copy on CUDA. An upload that did not go through Engine.upload is a hidden wait. So a read or a
copy added anywhere in the loop fails here, whether or not it goes through the engine.
"""

import random

import pytest
import torch
from conftest import tiny_model
from test_eagle import make_eagle
from test_firp import make_firp
from test_medusa import make_medusa
from torch.utils._python_dispatch import TorchDispatchMode

from harness.core.decoding import decode
from methods.ar_graph import ARGraph
from methods.autoregressive import Autoregressive
from methods.lookahead import Lookahead
from methods.pld import PromptLookup
from methods.sps import SpS

READ_OPS = {"aten::_local_scalar_dense", "aten::item", "aten::nonzero", "aten::is_nonzero", "aten::masked_select",
            "aten::equal", "aten::allclose", "aten::_unique2", "aten::unique_consecutive"}
UPLOAD_OPS = {"aten::lift_fresh"}


class DeviceWaits(TorchDispatchMode):
    """Counts the operations that copy a device value to the host, and tensors made from host data."""

    def __init__(self):
        super().__init__()
        self.reads = self.uploads = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func._schema.name
        self.reads += name in READ_OPS
        self.uploads += name in UPLOAD_OPS
        return func(*args, **(kwargs or {}))


def count_syncs(method, monkeypatch, prompt, max_new=24):
    """(host reads, uploads not made through Engine.upload, decoding steps, Decoded) of one decode."""
    waits = DeviceWaits()
    for name in ("tolist", "numpy"):
        original = getattr(torch.Tensor, name)

        def counted(self, *a, _original=original, **kw):
            waits.reads += 1
            return _original(self, *a, **kw)
        monkeypatch.setattr(torch.Tensor, name, counted)
    cache = method.engine.new_cache(256)
    method.prepare(cache)
    uploads = method.engine.counters.uploads
    with waits:
        out = decode(method, prompt, max_new, set(), cache)
    monkeypatch.undo()
    hidden = waits.uploads - (method.engine.counters.uploads - uploads)
    return waits.reads, hidden, out.steps, out


BUILDERS = {
    "ar": lambda engine, tmp: Autoregressive(engine, "tiny"),
    "ar-graph": lambda engine, tmp: ARGraph(engine, "tiny"),
    "firp": lambda engine, tmp: make_firp(engine, tmp),
    "medusa": lambda engine, tmp: make_medusa(engine, tmp, perturb=0.3),
    "eagle": lambda engine, tmp: make_eagle(engine, tmp),
    "pld": lambda engine, tmp: PromptLookup(engine, "tiny", k=4),
    "sps": lambda engine, tmp: SpS(engine, "tiny", draft=str(draft_model(tmp)), k=3),
    "lookahead": lambda engine, tmp: Lookahead(engine, "tiny", window=3, ngram=3, guess=3),
}


def draft_model(tmp):
    """A second tiny random Llama as an HF directory (the draft of sps)."""
    tiny_model(seed=1, layers=2).save_pretrained(tmp / "draft")
    return tmp / "draft"


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_one_device_wait_per_decoding_step(engine, tmp_path, monkeypatch, name):
    method = BUILDERS[name](engine, tmp_path)
    prompt = random.Random(0).sample(range(3, 97), 9) * 2  # a repeat, so that pld and lookahead draft
    reads, hidden, steps, out = count_syncs(method, monkeypatch, prompt)
    assert steps > 5
    assert reads <= steps + 1, f"{name}: {reads} host reads for {steps} steps and the prefill"
    assert hidden == 0, f"{name}: {hidden} host-to-device copies outside Engine.upload"
    assert out.syncs == reads and out.syncs - out.prefill_syncs == steps  # the loop's own count agrees
    if name in ("pld", "lookahead"):
        assert max(out.draft_sizes) > 0  # its drafts went through Engine.upload


class ReadsTooMuch(Autoregressive):
    """A method that peeks at the device in its step, as a careless drafter would."""

    def step(self, pending, cache):
        hidden = super().step(pending, cache)
        hidden[0, 0].item()
        return hidden


class CopiesTooMuch(PromptLookup):
    """A drafter that sends its host draft with torch.tensor(list, device=...): on CUDA a copy
    from pageable memory, which waits for the device."""

    def propose(self, pending, cache):
        draft = self.index.lookup(self.k)
        tokens = torch.tensor([self.index.tokens[-1], *draft], device=self.engine.device)
        return type(super().propose(pending, cache)).chain(tokens[None])


def test_a_planted_read_is_caught(engine, monkeypatch):
    reads, hidden, steps, _ = count_syncs(ReadsTooMuch(engine, "tiny"), monkeypatch, [5, 6, 7, 8])
    assert reads > steps + 1 and hidden == 0


def test_a_planted_blocking_copy_is_caught(engine, monkeypatch):
    reads, hidden, steps, out = count_syncs(CopiesTooMuch(engine, "tiny", k=3), monkeypatch, [5, 6, 7, 8] * 3)
    assert reads <= steps + 1 and hidden >= steps  # one hidden upload per step

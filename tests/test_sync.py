"""Host reads per decoding step: on a GPU every read of a tensor on the host waits for the device,
so the shared loop and the drafting hooks of ar, firp, medusa, eagle, pld and sps (threshold 0)
read at most once per step.

Counted on the CPU with a dispatch mode (the aten ops behind .item(), int(), float(), bool() and
.nonzero()) plus every Tensor.tolist()/numpy() call (which Engine.host uses), so a read added
anywhere in the loop fails here, whether or not it goes through Engine.host.
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
from methods.autoregressive import Autoregressive
from methods.pld import PromptLookup
from methods.sps import SpS

SYNC_OPS = {"aten::_local_scalar_dense", "aten::item", "aten::nonzero", "aten::is_nonzero", "aten::masked_select",
            "aten::equal", "aten::allclose", "aten::_unique2", "aten::unique_consecutive"}


class HostReads(TorchDispatchMode):
    """Counts the operations that copy a device value to the host."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func._schema.name in SYNC_OPS:
            self.count += 1
        return func(*args, **(kwargs or {}))


def count_reads(method, monkeypatch, prompt, max_new=24):
    """(host reads, decoding steps) of one decode."""
    reads = HostReads()
    for name in ("tolist", "numpy"):
        original = getattr(torch.Tensor, name)

        def counted(self, *a, _original=original, **kw):
            reads.count += 1
            return _original(self, *a, **kw)
        monkeypatch.setattr(torch.Tensor, name, counted)
    cache = method.engine.new_cache(256)
    with reads:
        out = decode(method, prompt, max_new, set(), cache)
    monkeypatch.undo()
    return reads.count, len(out.accept_lengths) - 1, out


BUILDERS = {
    "ar": lambda engine, tmp: Autoregressive(engine, "tiny"),
    "firp": lambda engine, tmp: make_firp(engine, tmp),
    "medusa": lambda engine, tmp: make_medusa(engine, tmp, perturb=0.3),
    "eagle": lambda engine, tmp: make_eagle(engine, tmp),
    "pld": lambda engine, tmp: PromptLookup(engine, "tiny", k=4),
    "sps": lambda engine, tmp: SpS(engine, "tiny", draft=str(draft_model(tmp)), k=3),
}


def draft_model(tmp):
    """A second tiny random Llama as an HF directory (the draft of sps)."""
    tiny_model(seed=1, layers=2).save_pretrained(tmp / "draft")
    return tmp / "draft"


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_one_host_read_per_decoding_step(engine, tmp_path, monkeypatch, name):
    method = BUILDERS[name](engine, tmp_path)
    prompt = random.Random(0).sample(range(3, 97), 9)
    reads, steps, out = count_reads(method, monkeypatch, prompt)
    assert steps > 5
    assert reads <= steps + 1, f"{name}: {reads} host reads for {steps} steps and the prefill"
    assert out.host_reads == steps + 1  # the loop's own count agrees: one per step, one for the prefill


class ReadsTooMuch(Autoregressive):
    """A method that peeks at the device in its observe hook, as a careless drafter would."""

    def observe(self, hidden, tree, path):
        if tree is not None:
            hidden[path[-1], 0].item()


def test_a_new_item_in_the_loop_is_caught(engine, monkeypatch):
    reads, steps, _ = count_reads(ReadsTooMuch(engine, "tiny"), monkeypatch, [5, 6, 7, 8])
    assert reads > steps + 1

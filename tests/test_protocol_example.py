"""The README's example method, run as it is written there: lossless on the tiny random Llama,
drafts accepted on a repetitive prompt, one device wait per step, options checked."""

import re
from pathlib import Path

import pytest
from helpers import assert_lossless
from test_sync import count_syncs

from harness.core.decoding import decode
from harness.core.method import MethodError

README = Path(__file__).resolve().parents[1] / "README.md"


def example_code() -> str:
    """The python block of the README's "The method protocol" section."""
    section = README.read_text().split("## The method protocol", 1)[1].split("\n## ", 1)[0]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_readme_example_is_lossless_and_drafts(engine, monkeypatch):
    code = example_code()
    namespace: dict = {}
    exec(compile(code, str(README), "exec"), namespace)
    cls = namespace["RepeatLast"]
    assert len(code.strip().splitlines()) <= 35
    assert assert_lossless(engine, cls(engine, "tiny")) >= 1.0
    out = decode(cls(engine, "tiny"), [5, 6, 7, 8] * 4, 40, set(), engine.new_cache(128))
    assert sum(out.accepted) > 0
    reads, hidden, steps, _ = count_syncs(cls(engine, "tiny", k=4), monkeypatch, [5, 6, 7, 8] * 4)
    assert reads <= steps + 1 and hidden == 0
    with pytest.raises(MethodError, match="repeat-last.k: 0 must be at least 1"):
        cls(engine, "tiny", k="0")


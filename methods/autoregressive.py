"""Plain greedy autoregressive decoding: the baseline every speedup is measured against."""

from __future__ import annotations

from harness.core.method import Method


class Autoregressive(Method):
    """One token per target forward: the shared loop's one-row step, no draft."""

    name = "ar"
    summary = "autoregressive greedy decoding (the baseline)"
    drafts = False

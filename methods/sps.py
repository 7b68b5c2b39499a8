"""Speculative sampling with a draft model (Leviathan et al. 2023, arXiv 2211.17192; Chen et al.
2023, arXiv 2302.01318), greedy: a separate, smaller causal LM with its own KV cache drafts k
tokens one by one from the pending root; one target forward verifies the chain.

The draft (`sps.draft`) is any causal LM with the target's tokenizer, or by default the embedded
draft trained for the target (methods/sps_draft.py, `spec-harness train sps-draft`). It runs
through its own Engine and KVCache. Its cache holds the committed sequence up to a point:
drafting feeds it the tokens it has not seen (the root, after a fully accepted draft also the
last draft token) and then each draft token but the last; after verification it is truncated to
the accepted prefix (the K/V of accepted draft tokens stay valid, nothing is recomputed).

Every draft forward is booked with engine.count_draft() on the target engine (records:
`draft_forwards`); tau counts target forwards only. With `threshold` > 0 drafting stops after a
token whose top-1 draft probability is below it (as transformers' assistant does), which costs
one host read per draft token; with threshold 0 the draft tokens stay on the device and the loop
reads once per step. k = auto (the default) plans k for the hardware from the draft's chain
profile and the cost model, a draft forward (c_d(1), timed on this machine) charged per token.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch

from harness.core.accept import Greedy
from harness.core.cache import KVCache
from harness.core.checkpoint import shown_path
from harness.core.engine import Engine
from harness.core.method import AUTO, CHECKPOINT_ROOT, Method, MethodError, Option, Step
from harness.core.planning.costmodel import DEFAULT_PREFIX
from harness.core.planning.shapes import PLANNING_OPTIONS, chain_k, draft_cost
from harness.core.sampling import Rejection, gumbel
from harness.core.tree import ChainLayouts, Tree
from methods.sps_draft import KIND, load_draft_checkpoint

DEFAULT_DRAFT = f"{KIND}.safetensors"
SPECIAL_TOKENS = ("bos_token_id", "eos_token_id")


DRAFT_OPTIONS = (
    Option("draft", "str", "", f"draft model: an HF directory or hub id with the target's tokenizer, or a trained "
                               f"draft (name under methods/checkpoints/<model>/ or .safetensors path); empty = {KIND}"),
    Option("k", "int", 4, "draft tokens per step (most; a low-confidence stop may draft fewer)", low=1),
    Option("threshold", "float", 0.0, "stop drafting after a token whose draft top-1 probability is below "
                                      "this (0 = off; > 0 costs a host read per draft token)", low=0, high=1),
)


def _ids(value) -> set:
    return set(value) if isinstance(value, (list, tuple)) else {value}


def check_vocabulary(target_config, draft_config, label: str, name: str = "sps") -> None:
    """The draft must share the target's vocabulary: same size, same special tokens."""
    t, d = target_config.vocab_size, draft_config.vocab_size
    if t != d:
        raise MethodError(f"{name}.draft: {label} has a vocabulary of {d} tokens, the target's has {t}; "
                          "the draft must use the target's tokenizer")
    for key in SPECIAL_TOKENS:
        a, b = getattr(target_config, key, None), getattr(draft_config, key, None)
        if a is not None and b is not None and _ids(a) != _ids(b):
            raise MethodError(f"{name}.draft: {label} has {key}={b}, the target {a}; "
                              "the draft must use the target's tokenizer")


def draft_checkpoint(model_key: str, spec: str) -> Path | None:
    """The trained-draft checkpoint that `sps.draft=spec` names; None when it names an HF model."""
    if not spec:
        return CHECKPOINT_ROOT / model_key / DEFAULT_DRAFT
    if spec.endswith(".safetensors"):
        return Path(spec)
    named = CHECKPOINT_ROOT / model_key / f"{spec}.safetensors"
    return named if named.exists() and not Path(spec).exists() else None


def load_draft(engine: Engine, model_key: str, spec: str, name: str = "sps") -> tuple[torch.nn.Module, dict]:
    """(the draft causal LM in the target's dtype and device, what it is) for `<name>.draft=spec`."""
    own = draft_checkpoint(model_key, spec)
    if own is not None:
        if not own.exists():
            raise MethodError(f"{name}: no trained draft for model {model_key} at {own}; train one with "
                              f"`spec-harness train sps-draft --model <model>` or pass --method-arg {name}.draft=ID|DIR")
        draft = load_draft_checkpoint(engine, own, model_key, name)
        training = {k: draft.sidecar.get(k) for k in ("data", "train_seconds", "heldout_top1", "commit")}
        return draft.lm, {"source": shown_path(own), "layers": list(draft.source_layers), "training": training}
    from transformers import AutoModelForCausalLM

    try:
        lm = AutoModelForCausalLM.from_pretrained(spec, dtype=engine.dtype, attn_implementation="sdpa")
    except (OSError, ValueError) as err:
        raise MethodError(f"{name}.draft: cannot load {spec!r} as a causal LM ({str(err).splitlines()[0]})") from None
    check_vocabulary(engine.config, lm.config, spec, name)
    lm.to(engine.device).eval().requires_grad_(False)
    return lm, {"source": spec, "layers": lm.config.num_hidden_layers}


class UsesDraft:
    """What `sps` and its outside peer `hf-assisted` share (mixed in before their Method base):
    the draft options and their checks, the default weights, the draft's description."""

    weights_file = DEFAULT_DRAFT
    trainer = KIND
    options = DRAFT_OPTIONS
    draft_info: dict

    def load_draft(self) -> torch.nn.Module:
        lm, self.draft_info = load_draft(self.engine, self.model_key, self.config["draft"], self.name)
        return lm

    def describe(self) -> dict:
        return {**super().describe(), "draft": self.draft_info}


STATIC_K = 4  # without a profile
SAMPLE_DRAFTS = Option("sample_drafts", "bool", False, "under --acceptance rejection (T > 0): draw draft tokens from "
                       "the draft's distribution and verify by speculative sampling's rule; false: the draft's own "
                       "sample with the target's noise (coupled), verified as a deterministic draft")


class SpS(UsesDraft, Method):
    """Draft-model speculative decoding on the shared loop (greedy)."""

    name = "sps"
    summary = "speculative sampling (SpS), greedy: a small draft model with its own KV cache drafts a chain"
    options = tuple(Option("k", "int", AUTO, f"draft tokens per step: auto (planned from the draft's profile and "
                                             f"this hardware's cost model; {STATIC_K} without a profile)", low=1)
                    if o.name == "k" else o for o in DRAFT_OPTIONS) + PLANNING_OPTIONS + (SAMPLE_DRAFTS,)
    profile_family = "chain"
    profile_k_max = 8  # the k a profile is measured with (threshold 0): auto chooses among 1..8

    def __init__(self, engine: Engine, model_key: str, **values):
        super().__init__(engine, model_key, **values)
        lm = self.load_draft()
        try:
            self.draft = Engine(lm)
        except TypeError as err:
            raise MethodError(f"{self.name}.draft: {err}") from None
        self.k = chain_k(self, STATIC_K, lambda cost: draft_cost(cost, self.draft_cost_key(), self.draft_probe))
        self._dcaches: dict[int, KVCache] = {}  # the draft's cache per batch size
        self.dcache: KVCache | None = None  # the one of the current turn
        self._unfed = torch.zeros(1, dtype=torch.long, device=engine.device)  # [B] a committed token not yet fed
        self._has_unfed: list[bool] = []  # per sequence: whether _unfed holds one (host, from the step's read)
        self._lengths: list[int] = []  # the prompts' lengths
        self._root_slots: list[int] = []  # per sequence: the slot of the last root
        self._fed = 0  # tree tokens fed to the draft, root first (the same for every sequence)
        self._chains = ChainLayouts()

    def profile_file(self) -> Path:
        """Beside a trained draft's checkpoint; per model and draft for an HF draft."""
        source = Path(self.draft_info["source"])
        if source.suffix == ".safetensors":
            return source.with_name(source.stem + ".profile.json")
        return CHECKPOINT_ROOT / self.model_key / f"sps--{source.name}.profile.json"

    def draft_cost_key(self) -> str:
        return f"sps:{Path(self.draft_info['source']).name}"

    def draft_probe(self):
        """One draft forward of one row after DEFAULT_PREFIX positions (what a draft token costs)."""
        cache = self.draft.new_cache(DEFAULT_PREFIX + 1)
        cache.truncate(DEFAULT_PREFIX)
        ids = torch.ones(1, dtype=torch.long, device=self.engine.device)
        at = torch.full((1,), DEFAULT_PREFIX, device=self.engine.device)

        def op():
            return self.draft.logits(self.draft.forward(ids, at, None, cache)[0, -1]).argmax()
        return op

    def _draft_forward(self, ids: torch.Tensor, counts: list[int] | None = None) -> torch.Tensor:
        """Feed ids [B, c] to the draft at each sequence's next slots; sequence b's first counts[b]
        rows are real (default: all c; the rest padding, overwritten later). Logits [B, V] of
        each sequence's last real row."""
        cache, c = self.dcache, ids.shape[1]
        h = self.draft.forward(ids, cache.lengths[:, None] + cache.arange(c), None, cache)  # [B, c, d]
        self.engine.count_draft()
        counts = counts or [c] * ids.shape[0]
        if len(set(counts)) == 1:
            cache.advance(counts[0])
            return self.draft.logits(h[:, counts[0] - 1])
        for b, n in enumerate(counts):
            cache.set_length(b, cache.seen[b] + n)
        last = self.engine.upload([n - 1 for n in counts])  # [B]
        return self.draft.logits(h.gather(1, last[:, None, None].expand(-1, 1, h.shape[-1]))[:, 0])

    # -- the decoding hooks ------------------------------------------------------------------
    def prepare(self, cache: KVCache) -> None:
        """The draft's own cache, as long as the target's and for as many sequences."""
        have = self._dcaches.get(cache.batch)
        if have is None or have.max_len < cache.max_len:
            self._dcaches[cache.batch] = self.draft.new_cache(cache.max_len, cache.batch)

    def begin(self, prompts: list[list[int]]) -> None:
        self._lengths = [len(p) for p in prompts]

    def prefill(self, ids: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """The target's prefill, then the draft's over the same prompts (a fresh draft cache,
        each sequence at its own prompt length). ids: [B, P], right-padded."""
        hidden = super().prefill(ids, cache)
        self.prepare(cache)
        self.dcache = self._dcaches[cache.batch]
        self.dcache.reset()
        self._draft_forward(ids)
        self.dcache.set_lengths(self._lengths)
        self._has_unfed = [False] * ids.shape[0]
        return hidden

    def _first_feed(self, pending: torch.Tensor) -> tuple[torch.Tensor, list[int]]:
        """What the first draft forward of a step feeds: per sequence its unfed token (if any) and
        the root; [B, 1] or [B, 2] (a sequence with nothing unfed padded with its root)."""
        counts = [1 + u for u in self._has_unfed]
        if max(counts) == 1:
            return pending[:, None], counts
        first = torch.where(self.engine.upload(self._has_unfed, torch.bool), self._unfed, pending) if min(counts) == 1 \
            else self._unfed
        return torch.stack([first, pending], dim=1), counts

    def propose(self, pending: torch.Tensor, cache: KVCache) -> Tree:
        """root, d1 .. dk per sequence: d1 from feeding the unseen committed tokens and the root,
        d(j+1) from feeding dj; dk is not fed (it may be rejected). pending: [B]. With a
        threshold, drafting stops once every sequence's last draft token is below it."""
        k = min(self.k, cache.max_len - cache.length - 1)  # verify needs 1 + k slots
        tokens, probs = [pending], []  # each [B]; the draws' distributions when drafts are sampled
        self._root_slots = list(cache.seen)
        feed, counts = self._first_feed(pending)
        for j in range(max(0, k)):
            logits = self._draft_forward(feed, counts if j == 0 else None).float()  # [B, V]
            drafted = self.draft_token(logits, cache.lengths + j, probs)  # [B] the next draft tokens
            tokens.append(drafted)
            feed = drafted[:, None]
            threshold = self.config["threshold"]
            if threshold and self.engine.host(logits.softmax(-1).max(dim=-1).values.max()) < threshold:  # a read per draft token
                break
        self._fed = len(tokens) - 1
        tree = Tree.chain(torch.stack(tokens, dim=1), self._chains)
        if probs:  # [B, n, V], row 0 (the root) unused
            tree = replace(tree, probs=torch.stack([torch.zeros_like(probs[0])] + probs, dim=1))
        return tree

    def draft_token(self, logits: torch.Tensor, row: torch.Tensor, probs: list) -> torch.Tensor:
        """The draft's token after a row standing at `row` [1]: greedy, its argmax; under exact
        sampling, its own sample with the target's noise at that position (coupled: it agrees with
        the target's sample as often as the two distributions allow); with sample_drafts under
        rejection acceptance, a draw from its filtered distribution q (kept in `probs`), verified by
        speculative sampling's rule."""
        rule = self.rule or Greedy()
        if self.config["sample_drafts"] and isinstance(rule, Rejection):
            q = rule.distribution(logits)  # [B, V]
            probs.append(q)
            return (q.log() + gumbel(rule.draft_keys, row + 1, q.shape[-1])).argmax(dim=-1)
        return rule.choose(logits, row)

    def observe(self, hidden: torch.Tensor, tree: Tree | None, step: Step) -> None:
        """Roll each sequence's draft cache back to its accepted prefix; what was committed but
        never fed (the root when nothing was drafted, the last draft token when all were accepted:
        the chain's last token either way) waits for the next step."""
        if tree is None:
            return
        self._has_unfed = []
        for b, path in enumerate(step.paths):
            kept = min(len(path), self._fed)  # root + accepted draft tokens, those the draft saw
            self.dcache.set_length(b, self._root_slots[b] + kept)
            self._has_unfed.append(len(path) > kept)
        self._unfed = tree.tokens[:, -1]  # [B], on the device

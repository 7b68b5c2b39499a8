"""Sampling (temperature > 0) that stays checkable token for token: Gumbel-max with noise that is a
pure function of (seed, sample, turn, position, token), computed on the device.

The target's token at absolute position t is argmax(filtered(logits) / T + g_t) with g_t[v] =
-log(-log(u(key, t, v))), u from a counter-based generator (splitmix64 over 64-bit integers):
no RNG state, nothing that depends on how many calls came before. Every method sees the same
noise at the same position, so a draft node is accepted iff its token is the target's sample
there, and by induction every method emits the baseline's sampled text (the `Exact` rule).
Top-k and top-p mask the logits first (the mask depends only on the logits).

Integer arithmetic wraps (modulo 2**64 for int64, 2**32 for int32) on the CPU and on CUDA alike,
and logical shifts are arithmetic shifts masked, so the integers are the same everywhere;
`reference_uniform` is the same generator in plain Python, which the tests hold the device
version to.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import torch

from harness.core.accept import Accepted, Greedy, longest_path

M64, M32 = (1 << 64) - 1, (1 << 32) - 1
GOLDEN, MIX1, MIX2 = 0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB
LOW1, LOW2 = 0x21F0AAAD, 0x735A2D97  # a 32-bit finaliser's multipliers (Wellons' lowbias32 family)


def _signed(x: int, bits: int = 64) -> int:
    """A bit pattern as the signed integer torch holds it."""
    return x - (1 << bits) if x >= 1 << (bits - 1) else x


def splitmix64(x: int) -> int:
    """splitmix64's step on Python ints (the reference the device version is checked against)."""
    x = (x + GOLDEN) & M64
    x = ((x ^ (x >> 30)) * MIX1) & M64
    x = ((x ^ (x >> 27)) * MIX2) & M64
    return x ^ (x >> 31)


def mix32(x: int) -> int:
    """The 32-bit finaliser on Python ints."""
    x ^= x >> 16
    x = (x * LOW1) & M32
    x ^= x >> 15
    x = (x * LOW2) & M32
    return x ^ (x >> 15)


def turn_key(seed: int, sample: str, turn: int, stream: int = 0) -> int:
    """The 64-bit key of one turn's noise: (seed, sample id, turn) mixed, a stable hash of the id;
    `stream` separates independent noises of one turn (the target's, a draft's, acceptance tests)."""
    sample_hash = int.from_bytes(hashlib.blake2b(str(sample).encode(), digest_size=8).digest(), "little")
    key = splitmix64(splitmix64(splitmix64(seed & M64) ^ sample_hash) ^ (turn & M64))
    return splitmix64(key ^ stream) if stream else key


def reference_uniform(key: int, t: int, v: int) -> float:
    """u(key, t, v) in (0, 1), in plain Python: a 64-bit mix per position, a 32-bit one per token."""
    row = splitmix64(key ^ (t & M64)) & M32
    return ((mix32(row ^ v) >> 9) + 0.5) / 2.0**23


def _shift(x: torch.Tensor, k: int, bits: int) -> torch.Tensor:
    """Logical right shift of `bits`-bit patterns held as signed integers."""
    return (x >> k) & ((1 << (bits - k)) - 1)


def _mix64(x: torch.Tensor) -> torch.Tensor:
    """splitmix64 on int64 tensors (wrapping arithmetic)."""
    x = x + _signed(GOLDEN)
    x = (x ^ _shift(x, 30, 64)) * _signed(MIX1)
    x = (x ^ _shift(x, 27, 64)) * _signed(MIX2)
    return x ^ _shift(x, 31, 64)


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """The 32-bit finaliser on int32 tensors (wrapping arithmetic)."""
    x = (x ^ _shift(x, 16, 32)) * _signed(LOW1, 32)
    x = (x ^ _shift(x, 15, 32)) * _signed(LOW2, 32)
    return x ^ _shift(x, 15, 32)


def uniform(keys: torch.Tensor, t: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """u(key, t, v) in (0, 1) as float32 (23 random bits, so that the value is exact in float32),
    broadcasting keys (int64: one per sequence), t and v (integer tensors on one device). A 64-bit
    mix per position, then a cheap 32-bit one per (position, token): the noise of a whole
    vocabulary costs a few int32 operations per token."""
    row = _mix64(t.long() ^ keys)
    row = ((row & M32) - ((row & M32) >= 1 << 31).long() * (1 << 32)).int()  # its low 32 bits, as int32
    x = _mix32(row ^ v.int())
    return (_shift(x, 9, 32).float() + 0.5) * (1.0 / 2**23)


def per_row(keys: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """keys [B] shaped to broadcast against t [B, ...]."""
    return keys.view(-1, *([1] * (t.dim() - 1)))


def gumbel(keys: torch.Tensor, t: torch.Tensor, vocab: int) -> torch.Tensor:
    """g[b, ..., v] = -log(-log u(keys[b], t[b, ...], v)): t [B, ...] -> [B, ..., vocab] float32."""
    v = torch.arange(vocab, dtype=torch.int32, device=t.device)
    return -torch.log(-torch.log(uniform(per_row(keys, t)[..., None], t[..., None], v)))


def device_keys(keys: list[int], device) -> torch.Tensor:
    """64-bit keys (one per sequence) as an int64 tensor on the device: made once per turn,
    before it is timed."""
    return torch.tensor([_signed(k) for k in keys], dtype=torch.long, device=device)


def filtered(logits: torch.Tensor, temperature: float, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """logits [..., V] -> scores in float32: logits / T, tokens outside the top k or the top-p
    nucleus at -inf (the most probable token is always kept)."""
    scores = logits.float() / temperature
    if 0 < top_k < scores.shape[-1]:
        kth = scores.topk(top_k, dim=-1).values[..., -1:]
        scores = scores.masked_fill(scores < kth, -math.inf)
    if top_p < 1.0:
        ordered, order = scores.sort(dim=-1, descending=True)
        probs = ordered.softmax(dim=-1)
        drop = probs.cumsum(dim=-1) - probs > top_p  # the nucleus: mass before a token below top_p
        scores = scores.scatter(-1, order, ordered.masked_fill(drop, -math.inf))
    return scores


@dataclass(frozen=True)
class SamplingParams:
    """What a sampled decode is asked for: T > 0, top-k (0 = off), top-p (1 = off)."""

    temperature: float
    top_k: int = 0
    top_p: float = 1.0


class Exact(Greedy):
    """Sampling that reproduces the baseline token for token: the target's token at the position
    after a row is argmax(filtered scores + that position's Gumbel noise). Acceptance is greedy's
    walk over these tokens, so every method emits exactly `ar`'s sample for the same key. For a
    deterministic draft (top-k trees, chains, n-gram copies) a node is accepted with probability
    p(its token): what recursive rejection sampling gives such drafts."""

    name = "exact"

    def __init__(self, params: SamplingParams, keys: torch.Tensor):
        """keys: [B] int64 on the device, each sequence's turn key (turn_key, device_keys)."""
        self.params, self.keys = params, keys
        self.temperature = params.temperature

    def scores(self, logits: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """The perturbed scores whose argmax is the sample: logits [B, ..., V] at rows standing at
        `positions` [B, ...] (the tokens they produce stand one further)."""
        p = self.params
        noise = gumbel(self.keys, positions + 1, logits.shape[-1])
        return filtered(logits, p.temperature, p.top_k, p.top_p) + noise

    def choose(self, logits: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
        return self.scores(logits, positions).argmax(dim=-1)


class Rejection(Exact):
    """Speculative sampling's acceptance (Leviathan et al. 2023; Chen et al. 2023) for chain drafts
    drawn from a draft distribution q (Tree.probs [B, n, V], row i the distribution node i was
    drawn from; None: one-hot, a deterministic draft). Draft token d_i is accepted with
    probability min(1, p(d_i) / q(d_i)), p the target's filtered distribution after node i - 1;
    at the first rejection the next token is drawn from the residual max(0, p - q), renormalised;
    after a fully accepted chain, from p. Distribution-lossless, not token-exact: a method decoded
    this way emits a sample of the target's distribution, not the baseline's sample. The uniforms
    are position-keyed like the target's noise (their own streams), so a turn is reproducible.
    Drafts with probabilities must be chains (a tree of sampled drafts needs the recursive
    multi-draft rule, not implemented)."""

    name = "rejection"

    def __init__(self, params: SamplingParams, keys: torch.Tensor, accept_keys: torch.Tensor,
                 residual_keys: torch.Tensor):
        super().__init__(params, keys)
        self.accept_keys, self.residual_keys = accept_keys, residual_keys

    def distribution(self, logits: torch.Tensor) -> torch.Tensor:
        """The target's filtered distribution p: logits [..., V] -> probabilities [..., V]."""
        p = self.params
        return filtered(logits, p.temperature, p.top_k, p.top_p).softmax(dim=-1)

    def accept_test(self, u: torch.Tensor, p_d: torch.Tensor, q_d: torch.Tensor) -> torch.Tensor:
        """u < min(1, p(d) / q(d)), without dividing."""
        return u * q_d < p_d

    def residual(self, p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        """What the next token is drawn from after a rejection: max(0, p - q), renormalised."""
        r = (p - q).clamp(min=0)
        return r / r.sum(dim=-1, keepdim=True).clamp(min=1e-30)

    @staticmethod
    def draw(dist: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """Inverse-CDF draw: dist [B, V] (normalised), u [B] -> tokens [B]."""
        cdf = dist.cumsum(dim=-1)
        return torch.searchsorted(cdf, u[:, None]).clamp(max=dist.shape[-1] - 1)[:, 0]

    def accept(self, tree, logits: torch.Tensor, positions: torch.Tensor) -> Accepted:
        """A chain drawn from q (tree.probs) by the rule above; a draft without probabilities (a
        deterministic tree or chain) exactly, which in law is recursive rejection sampling with
        one-hot q (tests/test_sampling.py)."""
        if tree.probs is None:
            return super().accept(tree, logits, positions)
        B, n, V = logits.shape
        p = self.distribution(logits)  # [B, n, V] the target's distribution after each node
        q = tree.probs
        d = tree.tokens[:, 1:, None]  # [B, n-1, 1] the draft tokens
        p_d, q_d = p[:, :-1].gather(2, d)[..., 0], q[:, 1:].gather(2, d)[..., 0]  # [B, n-1]
        u = uniform(per_row(self.accept_keys, positions[:, 1:]), positions[:, 1:], torch.zeros_like(d[..., 0]))
        ok = self.accept_test(u, p_d, q_d)
        if tree.valid is not None:
            ok = ok & tree.valid[:, 1:]
        best = ok.long().cumprod(dim=1).sum(dim=1)  # [B] accepted drafts: the chain's deepest accepted node
        rows = torch.arange(B, device=p.device)
        p_best = p[rows, best]  # [B, V]
        rejected = best < n - 1
        q_next = q[rows, (best + 1).clamp(max=n - 1)] * rejected[:, None]  # [B, V]: 0 after a full chain
        dist = torch.where(rejected[:, None], self.residual(p_best, q_next), p_best)
        u_next = uniform(self.residual_keys, positions[rows, best] + 1, torch.zeros_like(best))
        on_path = tree.mask[rows, best]
        return Accepted(on_path, best, self.draw(dist, u_next))


class Typical(Exact):
    """Medusa's typical acceptance (Cai et al. 2024, Medusa-2): a draft node is accepted when the
    target's probability of its token exceeds min(epsilon, alpha * exp(-H)), H the entropy of
    the target's distribution after its parent; the longest such path is kept and the next token
    is the target's position-keyed sample after it. Lossy by design: it does not sample the
    target's distribution, so its records are not compared with the baseline (lossless null)
    and its quality metric is what tells what it costs. Medusa's defaults: epsilon 0.09, alpha 0.3."""

    name = "typical"

    def __init__(self, params: SamplingParams, keys: torch.Tensor, epsilon: float = 0.09, alpha: float = 0.3):
        super().__init__(params, keys)
        self.epsilon, self.alpha = epsilon, alpha

    def accept(self, tree, logits: torch.Tensor, positions: torch.Tensor) -> Accepted:
        p = filtered(logits, self.params.temperature, self.params.top_k, self.params.top_p).softmax(dim=-1)
        entropy = -(p * torch.log(p.clamp(min=1e-30))).sum(dim=-1)  # [B, n]
        threshold = torch.clamp(self.alpha * torch.exp(-entropy), max=self.epsilon)  # [B, n]
        parents = tree.parents.clamp(min=0)
        p_token = p.gather(1, parents[..., None].expand(-1, -1, p.shape[-1])).gather(2, tree.tokens[..., None])[..., 0]
        ok = (p_token > threshold.gather(1, parents)) | (tree.parents < 0)
        best, on_path = longest_path(tree, ok)
        rows = torch.arange(best.shape[0], device=best.device)
        nxt = self.choose(logits[rows, best], positions[rows, best])
        return Accepted(on_path, best, nxt)

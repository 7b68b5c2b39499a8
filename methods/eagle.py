"""EAGLE (Li et al. 2024) with EAGLE-2's dynamic draft tree: a one-decoder-layer head drafts by
autoregressing on the target's features, decoding each predicted feature with the target's frozen
LM head; the most confident draft nodes are verified as one tree by the shared loop.

The head, as released by SafeAILab/EAGLE (EAGLE-1/2: eagle/model/cnets1.py `Model`, used by
eagle/model/ea_model.py `EaModel`):
- the feature is the target's last hidden state AFTER its final norm (`outputs[0]` of the base
  model's LlamaModel in ea_model.py, which applies `self.norm` last in modeling_llama_kv.py);
- head row t takes (feature f_t, embedding of token t + 1), concatenated in the order
  [embedding; feature] and projected by `fc` (2d -> d, bias unless config.json says
  `"bias": false`); its output is the predicted feature f_{t+1};
- one Llama decoder layer whose layer 0 has NO input norm (cnets1.py builds `input_layernorm`
  only for index != 0); the post-attention norm and the MLP are standard;
- the output goes to the target's LM head directly, with no norm in between (the head predicts
  a normed feature);
- keys: fc.weight, fc.bias, layers.0.self_attn.{q,k,v,o}_proj.weight,
  layers.0.mlp.{gate,up,down}_proj.weight, layers.0.post_attention_layernorm.weight, and
  optionally embed_tokens.weight (a copy of the target's embedding), in pytorch_model.bin or
  model.safetensors beside a config.json of the layer's shapes.
Our checkpoints use the same key names (without the embedding: the head shares the target's).

Decoding: the verify forward's hidden states of the accepted nodes are the next features (no
extra target forward). propose() first runs the head over the rows committed since the last step
(their features, the next tokens: the accepted drafts and the new pending token) into the head's
own KV cache, then grows the dynamic tree (methods/eagle_tree.py), one head forward per extra
level over the top_k frontier rows, written past the committed slots; the next step overwrites
them, so the head cache is rolled back to the accepted path for free. Head forwards per step:
`depth`. Host reads: none; the frontier choice, the rerank and the tree mask stay on the device,
so the loop's one read per step is all. In a batch every sequence has its own head-cache length
(the target's); the committed rows are padded to the most any sequence committed (padding is
written past a sequence's committed slots, where no real row looks), and every sequence grows a
tree of the same shape.

depth and total_tokens = auto (the defaults) plan them for the hardware from the head's grid
profile (tokens per step, rows per forward and head forwards per step measured at each (depth,
top_k, total_tokens) point) and the cost model, a head forward of top_k rows timed on this machine.

Training (`spec-harness train eagle`): teacher-forced on the target's own features as the paper
trains: smooth L1 to the next feature plus KL of the decoded draft to the target's distribution
(weights 1.0 / 0.1, eagle/train/main.py), with uniform noise on the input features.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from transformers import LlamaConfig
from transformers.models.llama.modeling_llama import LlamaDecoderLayer

from harness.core.cache import KVCache
from harness.core.checkpoint import shown_path
from harness.core.drafter import frozen_module, load_frozen
from harness.core.engine import Context, Engine, region_mask
from harness.core.method import AUTO, Method, Option, Step
from harness.core.planning.costmodel import DEFAULT_PREFIX
from harness.core.planning.shapes import PLANNING_OPTIONS, draft_cost, grid_point
from harness.core.tree import Tree
from harness.train.training import Batch, gather_rows, step_losses, teacher_final
from methods.eagle_released import released_head
from methods.eagle_tree import TREE_SIZES, DraftTree, check_sizes, committed, path_rows

SHAPES = ("intermediate_size", "num_attention_heads", "num_key_value_heads", "rms_norm_eps", "hidden_act")
LOSS = {"feature": 1.0, "token": 0.1, "noise": 0.2}  # EAGLE's v_w, p_w and uniform noise std
STATIC = {"depth": 4, "total_tokens": 8}  # auto without a profile
PROFILE_GRID = tuple({"depth": d, "top_k": 4, "total_tokens": t} for d in (2, 3, 4, 6) for t in (2, 4, 8, 16))


def target_shapes(engine: Engine) -> dict:
    """The head's layer shapes when it copies the target's (our own heads)."""
    cfg = engine.config
    return {"fc_bias": True, "embedding": False, **{k: getattr(cfg, k) for k in SHAPES}}


class EagleHead(nn.Module):
    """fc over [embedding; feature] -> one Llama decoder layer without input norm -> features."""

    kind = "eagle"
    storage_dtype = torch.float16  # a few million weights: half the bytes in the repository
    steps = 1  # trained teacher-forced, one feature ahead
    reads_final_only = True  # training caches the target's last-layer output per sequence (FinalCache)

    def __init__(self, engine: Engine, config: dict, loss: dict | None = None):
        super().__init__()
        t, d = engine.config, engine.hidden_size
        self.shapes = {k: config[k] for k in ("fc_bias", "embedding", *SHAPES)}
        self.loss_weights = dict(loss or LOSS)
        layer_cfg = LlamaConfig(vocab_size=t.vocab_size, hidden_size=d, num_hidden_layers=1,
                                head_dim=getattr(t, "head_dim", d // t.num_attention_heads),
                                attn_implementation=t._attn_implementation,
                                **{k: config[k] for k in SHAPES})
        self.fc = nn.Linear(2 * d, d, bias=config["fc_bias"])
        self.layers = nn.ModuleList([LlamaDecoderLayer(layer_cfg, layer_idx=0)])
        self.layers[0].input_layernorm = nn.Identity()  # EAGLE's layer 0 has no input norm
        if config["embedding"]:  # a released head may carry its own copy of the embedding
            self.embed_tokens = nn.Embedding(t.vocab_size, d)
        self._frozen = [engine.embed_tokens, engine.lm_head]  # lists: the target's, not ours

    def config(self) -> dict:
        return {**self.shapes, "loss": self.loss_weights}

    def new_cache(self, max_len: int, device, dtype, batch: int = 1) -> KVCache:
        attn = self.layers[0].self_attn
        return KVCache(1, batch, attn.config.num_key_value_heads, attn.head_dim, max_len, dtype, device)

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        return (self.embed_tokens if self.shapes["embedding"] else self._frozen[0])(tokens)

    def decode(self, out: torch.Tensor) -> torch.Tensor:
        """The head's outputs [..., d] -> draft logits over the target's vocabulary [..., V]."""
        return self._frozen[1](out)

    def forward(self, features: torch.Tensor, tokens: torch.Tensor, ctx: Context) -> torch.Tensor:
        """features: [B, n, d] normed target features f_t; tokens: [B, n] token t + 1 -> [B, n, d]
        predicted features f_{t + 1}."""
        x = self.fc(torch.cat([self.embed(tokens), features], dim=-1))  # [B, n, d]
        rope, mask = ctx.view(x.shape[1])
        return self.layers[0](x, attention_mask=mask, position_embeddings=rope, cache=ctx.cache)

    def loss(self, engine: Engine, batch: Batch):
        """Row t (feature f_t, token t + 1) against the target's f_{t + 1} at every hung position:
        smooth L1 on the feature + KL of the decoded draft to the target's distribution."""
        (B, T), w = batch.ids.shape, self.loss_weights
        with torch.no_grad():
            feats = engine.norm(teacher_final(engine, batch))  # [B, T, d]
        inputs = feats[:, :-1]
        if torch.is_grad_enabled() and w["noise"]:  # training only (evaluation runs without grad)
            inputs = inputs + (torch.rand_like(inputs) - 0.5) * w["noise"] * 512 / inputs.shape[-1]
        ctx = engine.context(torch.arange(T - 1, device=engine.device).expand(B, T - 1), None, None)
        pred = gather_rows(self(inputs, batch.ids[:, 1:].to(engine.device), ctx), batch.hang)  # [B, m, d]
        real = gather_rows(feats, batch.hang + 1)  # [B, m, d]
        ok = batch.hang_ok & (batch.hang + 1 < batch.lengths[:, None])  # [B, m]
        with torch.no_grad():
            teacher = self.decode(real)
        kl, hits, counted = step_losses(teacher[:, None], self.decode(pred)[:, None], ok[:, None])
        l1 = nn.functional.smooth_l1_loss(pred.float(), real.float(), reduction="none").mean(-1)  # [B, m]
        l1 = (l1 * ok).sum() / ok.sum().clamp(min=1)
        return w["feature"] * l1 + w["token"] * kl, hits, counted


def build_head(engine: Engine, config: dict) -> EagleHead:
    return EagleHead(engine, config, config.get("loss"))


def load_head(engine: Engine, path: Path) -> tuple[EagleHead, dict]:
    """Our checkpoint (safetensors + sidecar), or a released EAGLE directory."""
    if not Path(path).is_dir():
        return load_frozen(engine, path, build_head, "eagle")
    state, sidecar = released_head(engine, Path(path), target_shapes(engine))
    return frozen_module(engine, build_head, state, sidecar, f"{path} is not a valid EAGLE draft"), sidecar


class Eagle(Method):
    """Drafts a dynamic tree with an EagleHead each step (see the module docstring)."""

    name = "eagle"
    summary = "EAGLE-2: one-layer feature head, dynamic draft tree, tree-verified"
    weights_file = "eagle.safetensors"
    options = (
        Option("checkpoint", "str", "eagle", "checkpoint name under methods/checkpoints/<model>/, a path, "
               "or a released EAGLE directory (config.json + pytorch_model.bin or model.safetensors)"),
        Option("depth", "int", AUTO, "draft tree depth: head forwards per step (EAGLE's code counts one less); "
                                     f"auto: planned with total_tokens ({STATIC['depth']} without a profile)"),
        Option("top_k", "int", 4, "children per expanded node, and nodes expanded per level"),
        Option("total_tokens", "int", AUTO, "draft nodes verified per step, root excluded (EAGLE counts the root); "
                                            f"auto: planned ({STATIC['total_tokens']} without a profile)"),
        *PLANNING_OPTIONS,
    )
    profile_family = "grid"
    profile_grid = PROFILE_GRID

    @classmethod
    def validate(cls, config: dict) -> None:
        if AUTO not in (config["depth"], config["total_tokens"]):
            check_sizes(config, cls.name)

    def __init__(self, engine: Engine, model_key: str, **values):
        super().__init__(engine, model_key, **values)
        self.weights = self.weights_path()
        self.head, self.sidecar = self.load_head(engine, self.weights)
        fixed = {k: self.config[k] for k in TREE_SIZES if self.config[k] != AUTO}
        if len(fixed) < len(TREE_SIZES):
            per_forward = lambda cost: draft_cost(cost, self.draft_cost_key(), self.draft_probe)  # noqa: E731
            self.config.update(grid_point(self, fixed, STATIC, per_forward))
            check_sizes(self.config, self.name)
        self._caches: dict[int, KVCache] = {}  # the head's cache per batch size
        self._cache: KVCache | None = None  # the one of the current turn
        self._feats = self._tokens = self._prompt = None  # [B, a, d], [B, a - 1], [B, P]
        self._counts: list[int] = []  # per sequence: rows committed since the head last ran

    @staticmethod
    def load_head(engine: Engine, path: Path) -> tuple[nn.Module, dict]:
        return load_head(engine, path)

    def describe(self) -> dict:
        out = super().describe()
        out.update(weights=shown_path(self.weights), module=self.head.config(),
                   training={k: self.sidecar.get(k) for k in ("data", "train_seconds", "heldout_top1", "commit")})
        return out

    def profile_file(self) -> Path:
        """Beside the checkpoint (file or released directory): <checkpoint>.profile.json."""
        return Path(self.weights).with_name(Path(self.weights).stem + ".profile.json")

    def draft_cost_key(self) -> str:
        return f"{self.name}:{Path(self.weights).name}:top_k{self.config['top_k']}"

    def draft_probe(self):
        """One head forward of top_k rows after DEFAULT_PREFIX positions, decoded and ranked."""
        eng, k = self.engine, self.config["top_k"]
        cache = self.head.new_cache(DEFAULT_PREFIX + k, eng.device, eng.dtype)
        feats = torch.zeros(1, k, eng.hidden_size, dtype=eng.dtype, device=eng.device)  # [1, k, d]
        tokens = torch.ones(1, k, dtype=torch.long, device=eng.device)  # [1, k]
        positions = torch.full((k,), DEFAULT_PREFIX, device=eng.device)

        cache.truncate(DEFAULT_PREFIX)

        def op():
            ctx = eng.context(positions, None, cache)
            return self.head.decode(self.head(feats, tokens, ctx)).topk(k, dim=-1)
        return op

    def prepare(self, cache: KVCache) -> None:
        """The head's own cache, one per batch size: the target's positions plus a draft tree's rows."""
        room = cache.max_len + self.config["depth"] * self.config["top_k"]
        have = self._caches.get(cache.batch)
        if have is None or have.max_len < room:
            self._caches[cache.batch] = self.head.new_cache(room, self.engine.device, self.engine.dtype, cache.batch)

    def prefill(self, ids: torch.Tensor, cache: KVCache) -> torch.Tensor:
        self.start(ids, cache)
        return super().prefill(ids, cache)

    def start(self, ids: torch.Tensor, cache: KVCache) -> None:
        """A turn's head state: its cache for this batch size, emptied; the prompts [B, P] (right-padded)."""
        self.prepare(cache)
        self._cache = self._caches[cache.batch]
        self._cache.reset()
        self._prompt = ids

    def features(self, hidden: torch.Tensor, rows: torch.Tensor | None, top: int) -> torch.Tensor:
        """[B, top, d] the head's input features of the committed rows: rows [B, top] of the last
        forward (None: its first top rows, a prefill); EAGLE-1/2's are the target's normed output."""
        return self.engine.norm(committed(hidden, rows, top))

    def observe(self, hidden: torch.Tensor, tree: Tree | None, step: Step) -> None:
        """Keep the features of each sequence's newly committed rows and their next tokens (but the
        pending token, which propose() receives), padded to the most rows. hidden: [B, n, d]."""
        self._counts = [len(p) if tree is not None else p[-1] + 1 for p in step.paths]  # rows per sequence
        top = max(self._counts)
        if tree is None:  # the prompts: every row
            self._feats, self._tokens = self.features(hidden, None, top), self._prompt[:, 1:top]
            return
        rows = path_rows(step.on_path, top)  # [B, top] each path's nodes first, on the device
        self._feats = self.features(hidden, rows, top)  # [B, top, d]
        self._tokens = tree.tokens.gather(1, rows[:, 1:])  # [B, top - 1]

    def _head(self, feats: torch.Tensor, tokens: torch.Tensor, positions: torch.Tensor, offset: int,
              mask: torch.Tensor | None = None) -> torch.Tensor:
        """One head forward of rows [B, n] at head-cache slots lengths[b] + offset + i -> outputs [B, n, d]."""
        ctx = self.engine.context(positions, None, self._cache, offset=offset, full_mask=mask)
        self.engine.count_draft()
        return self.head(feats, tokens, ctx)

    def _commit(self, pending: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """The head over each sequence's rows committed since the last step (their features, next
        tokens: accepted drafts and the pending token) -> [B, d] its output at the last of them."""
        hc, counts = self._cache, self._counts
        top = max(counts)
        new = torch.cat([self._tokens, pending[:, None]], dim=1)  # [B, top] tokens t + 1 of those rows
        positions = hc.lengths[:, None] + hc.arange(top)  # [B, top]
        if min(counts) == top:
            out = self._head(self._feats, new, positions, 0)  # [B, top, d]
            hc.follow(cache)  # each sequence's head rows 0 .. C_b - 1 now hold real features
            return out[:, -1]
        last = self.engine.upload([c - 1 for c in counts])[:, None]  # [B, 1] each sequence's last real row
        out = self._head(self._feats, new.scatter(1, last, pending[:, None]), positions, 0)  # padding rows past it
        hc.follow(cache)  # (a finished sequence's too: its cache is frozen, the head's with it)
        return out.gather(1, last[:, :, None].expand(-1, 1, out.shape[-1]))[:, 0]

    def propose(self, pending: torch.Tensor, cache: KVCache) -> Tree:
        """pending: [B]. Each sequence's committed rows into the head, then its tree grown level by
        level over its top_k frontier rows (rows at head slots C_b + level * top_k + i)."""
        hc, B = self._cache, pending.shape[0]
        depth, k = self.config["depth"], self.config["top_k"]
        out = self._commit(pending, cache)  # [B, d]
        draft = DraftTree(pending, torch.log_softmax(self.head.decode(out).float(), -1), k)
        hidden = out[:, None].expand(B, k, -1)  # [B, k, d] the frontier's input features
        eye = torch.eye(k, dtype=torch.bool, device=self.engine.device).expand(B, k, k)
        seen = eye  # [B, k, k * (level + 1)] the draft rows each frontier row sees
        for level in range(depth - 1):
            mask = region_mask(hc, seen) if len(set(hc.seen)) > 1 else \
                torch.cat([seen.new_ones(B, k, hc.length), seen], dim=2)[:, None]
            positions = (hc.lengths[:, None] + level).expand(B, k)  # [B, k]
            out = self._head(hidden, draft.frontier_tokens, positions, level * k, mask)  # [B, k, d]
            rows = draft.grow(torch.log_softmax(self.head.decode(out).float(), -1))[:, :, None]  # [B, k, 1]
            hidden = out.gather(1, rows.expand(-1, -1, out.shape[-1]))
            seen = torch.cat([seen.gather(1, rows.expand(-1, -1, seen.shape[2])), eye], dim=2)
        return draft.tree(self.config["total_tokens"])

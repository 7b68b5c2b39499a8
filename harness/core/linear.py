"""The fastest equivalent formulation of each linear layer for the row count at hand.

On a CPU the BLAS picks its matrix kernel per shape, so one product costs very different times
written as `x @ W.T` (F.linear) or as `W @ x.T` (the weights on the left), and not smoothly in
the rows: on the 2-core EPYC the embedded model's LM head (49152 x 576) took 15-23 ms for 2-11
rows as F.linear and 2.5-8.7 ms with the weights on the left. `choose` times each formulation
once per (weight shape, row count of the cost model) on this machine and keeps the fastest (a switch only when it
is at least MARGIN faster than F.linear, so that noise does not flip it); `apply` puts a
ChosenLinear, the same weight with the chosen product per row count, in place of every bias-free
nn.Linear of the model (the decoder layers' projections and the LM head), so every method and
the baseline run the same layers. Row counts past the measured ones use F.linear. The products
are equal up to float rounding (a changed token is diagnosed as a tie by the divergence rule).
`engage` (called by load_model for every command) applies the table cached for this machine, or
puts F.linear back (`--linear off`); `digest` names the formulations in use, which a cost model
records, so one measured with others is measured again; `roofline` times one pass of a few rows
through every linear layer, nothing else.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from harness.core.timing import DEFAULT_NS, round_robin

Form = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x [..., in], W [out, in]) -> [..., out]
MARGIN = 0.95  # another formulation replaces F.linear only when it takes at most this share of its time
MODES = ("auto", "off")  # auto: the chosen formulations (timed once, cached); off: F.linear everywhere
PLAIN = "F.linear"  # the digest of a model that uses F.linear everywhere


def weights_left(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """W @ x.T, transposed back: the same product with the weight as the left operand."""
    flat = x.reshape(-1, x.shape[-1])  # [n, in]
    return torch.mm(w, flat.t()).t().reshape(*x.shape[:-1], w.shape[0])


FORMS: dict[str, Form] = {"linear": F.linear, "left": weights_left}


class ChosenLinear(nn.Module):
    """A bias-free linear layer computed with the formulation chosen for its row count."""

    def __init__(self, linear: nn.Linear, choice: dict[int, str], forms: dict[str, Form] = FORMS):
        super().__init__()
        self.weight = linear.weight  # the same Parameter (a tied LM head stays tied)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.choice = dict(choice)
        self._by_rows = [forms[choice.get(n, "linear")] for n in range(max(choice, default=0) + 1)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return form_for(self._by_rows, x)(x, self.weight)

    def bound(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """forward as a plain function over this weight, bound now (harness/core/lean.py calls it
        without nn.Module's call machinery)."""
        by_rows, weight = self._by_rows, self.weight
        return lambda x: form_for(by_rows, x)(x, weight)


def form_for(by_rows: list[Form], x: torch.Tensor) -> Form:
    """The formulation for x's row count (F.linear past the measured ones)."""
    rows = x.numel() // x.shape[-1]
    return by_rows[rows] if rows < len(by_rows) else F.linear


def linear_shapes(model: nn.Module) -> set[tuple[int, int]]:
    """(out, in) of every bias-free nn.Linear of the model."""
    return {tuple(m.weight.shape) for m in model.modules() if isinstance(m, nn.Linear) and m.bias is None}


@torch.inference_mode()
def choose(shapes: set[tuple[int, int]], device, dtype, rows=DEFAULT_NS, repeats: int = 5,
           forms: dict[str, Form] = FORMS) -> dict[str, dict[str, str]]:
    """{"OUTxIN": {"n": formulation}} for every shape and row count (the cost model's): the fastest
    formulation, timed in turns as the cost model times (median of `repeats`), F.linear unless
    another takes at most MARGIN of its time."""
    table = {}
    for out, inp in sorted(shapes):
        w = torch.randn(out, inp, device=device, dtype=dtype)
        picks = {}
        for n in rows:
            x = torch.randn(n, inp, device=device, dtype=dtype)
            times = round_robin({name: lambda f=form: f(x, w) for name, form in forms.items()}, device, repeats, 1, None)
            best = min(times, key=times.get)
            picks[str(n)] = best if times[best] <= MARGIN * times["linear"] else "linear"
        table[f"{out}x{inp}"] = picks
    return table


def apply(model: nn.Module, table: dict[str, dict[str, str]], forms: dict[str, Form] = FORMS) -> int:
    """Every bias-free nn.Linear whose shape the table holds replaced by its ChosenLinear (the
    output embedding through set_output_embeddings); the number replaced."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None

    def chosen(layer) -> ChosenLinear | None:
        key = f"{layer.weight.shape[0]}x{layer.weight.shape[1]}" if isinstance(layer, nn.Linear) else None
        if key not in table or layer.bias is not None:
            return None
        return ChosenLinear(layer, {int(n): f for n, f in table[key].items()}, forms)

    replaced = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            new = chosen(child) if child is not head else None
            if new is not None:
                setattr(parent, name, new)
                replaced += 1
    new_head = chosen(head)
    if new_head is not None:
        model.set_output_embeddings(new_head)
        replaced += 1
    return replaced


def load_or_choose(path, shapes: set[tuple[int, int]], device, dtype, timing: bool = True,
                   forms: dict[str, Form] = FORMS) -> dict[str, dict[str, str]]:
    """The table cached at `path` (JSON) when it covers `shapes`; else, with timing, chosen now and
    cached there; without timing, an empty table (F.linear everywhere)."""
    path = Path(path)
    if path.exists():
        table = json.loads(path.read_text())
        if all(f"{o}x{i}" in table for o, i in shapes):
            return table
    if not timing:
        return {}
    print(f"spec-harness: timing the linear formulations of {len(shapes)} weight shapes once, for {path} (delete "
          "the file to time them again, on an idle machine)", file=sys.stderr)
    table = choose(shapes, device, dtype, forms=forms)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(table, indent=1, sort_keys=True))
    tmp.replace(path)
    return table


def chosen_layers(model: nn.Module) -> list[ChosenLinear]:
    return [m for m in model.modules() if isinstance(m, ChosenLinear)]


def table_of(model: nn.Module) -> dict[str, dict[str, str]]:
    """The formulations the model uses other than F.linear: {"OUTxIN": {"n": formulation}}."""
    table: dict[str, dict[str, str]] = {}
    for layer in chosen_layers(model):
        other = {str(n): f for n, f in sorted(layer.choice.items()) if f != "linear"}
        if other:
            table[f"{layer.out_features}x{layer.in_features}"] = other
    return table


def digest(model: nn.Module) -> str:
    """What a cost model measured with this model must match: PLAIN, or `chosen-<hash>` of table_of."""
    table = table_of(model)
    if not table:
        return PLAIN
    return "chosen-" + hashlib.sha1(json.dumps(table, sort_keys=True).encode()).hexdigest()[:10]


def restore(model: nn.Module) -> int:
    """Every ChosenLinear back to an nn.Linear over the same weight; the number restored."""
    plain = {}
    for layer in chosen_layers(model):
        new = nn.Linear(layer.in_features, layer.out_features, bias=False, device="meta")
        new.weight = layer.weight
        plain[id(layer)] = new
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if id(child) in plain and child is not head:
                setattr(parent, name, plain[id(child)])
    if head is not None and id(head) in plain:
        model.set_output_embeddings(plain[id(head)])
    return len(plain)


def engage(model: nn.Module, path, mode: str = "auto") -> dict:
    """The model's linear layers set up for `mode` (MODES): auto applies the table cached at
    `path` (timed there first when missing); off puts F.linear back. What the manifest records."""
    if mode not in MODES:
        raise ValueError(f"linear formulations: {mode!r} is not one of {', '.join(MODES)}")
    restore(model)
    replaced = 0
    if mode == "auto":
        p = next(model.parameters())
        table = load_or_choose(path, linear_shapes(model), p.device, p.dtype)
        replaced = apply(model, table)
    return {"mode": mode, "file": str(path) if mode == "auto" else None, "layers": replaced,
            "digest": digest(model), "not_f_linear": table_of(model)}


def roofline_op(model: nn.Module, rows: int = 1) -> Callable[[], None]:
    """`rows` rows through every linear layer of the model in order (the LM head last), each with
    its own formulation, and nothing else: what a decoding step of that many rows cannot beat."""
    layers = [m for m in model.modules() if isinstance(m, ChosenLinear)
              or (isinstance(m, nn.Linear) and m.bias is None)]
    p = next(model.parameters())
    inputs = [torch.randn(rows, layer.in_features, device=p.device, dtype=p.dtype) for layer in layers]

    @torch.inference_mode()
    def once():
        for layer, x in zip(layers, inputs):
            layer(x)
    return once


def roofline(model: nn.Module, rows: int = 1, repeats: int = 9) -> float:
    """Median seconds of roofline_op."""
    return round_robin({"all": roofline_op(model, rows)}, next(model.parameters()).device, repeats, 2, None)["all"]

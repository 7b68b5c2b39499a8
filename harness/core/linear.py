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
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from harness.core.planning.costmodel import DEFAULT_NS, round_robin

Form = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x [..., in], W [out, in]) -> [..., out]
MARGIN = 0.95  # another formulation replaces F.linear only when it takes at most this share of its time


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
        rows = x.numel() // x.shape[-1]
        form = self._by_rows[rows] if rows < len(self._by_rows) else F.linear
        return form(x, self.weight)


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
    table = choose(shapes, device, dtype, forms=forms)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(table, indent=1, sort_keys=True))
    tmp.replace(path)
    return table

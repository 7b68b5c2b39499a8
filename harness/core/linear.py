"""The fastest equivalent formulation of each linear layer for the row count at hand.

On a CPU the BLAS picks its matrix kernel per shape, so one product costs very different times
written as `x @ W.T` (F.linear) or as `W @ x.T` (the weights on the left), and not smoothly in
the rows: on the 2-core EPYC the embedded model's LM head (49152 x 576) took 15-23 ms for 2-11
rows as F.linear and 2.5-8.7 ms with the weights on the left. `choose` times each formulation
once per (weight shape, row count) on this machine and keeps the fastest (a switch only when it
is at least MARGIN faster than F.linear, so that noise does not flip it); `apply` puts a
ChosenLinear, the same weight with the chosen product per row count, in place of every bias-free
nn.Linear of the model (the decoder layers' projections and the LM head), so every method and
the baseline run the same layers. Row counts past the measured ones use F.linear. The products
are equal up to float rounding (a changed token is diagnosed as a tie by the divergence rule).
"""

from __future__ import annotations

import statistics
import time
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

Form = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x [..., in], W [out, in]) -> [..., out]
ROWS = tuple(range(1, 17)) + (20, 24, 28, 32, 48, 64)  # row counts timed (the cost model's, up to 64)
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


def time_form(form: Form, x: torch.Tensor, w: torch.Tensor, repeats: int) -> float:
    """Median seconds of `form(x, w)` over `repeats` runs after one warm-up."""
    form(x, w)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        form(x, w)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


@torch.inference_mode()
def choose(shapes: set[tuple[int, int]], device, dtype, rows=ROWS, repeats: int = 5,
           forms: dict[str, Form] = FORMS) -> dict[str, dict[str, str]]:
    """{"OUTxIN": {"n": formulation}} for every shape and row count: the fastest formulation,
    F.linear unless another takes at most MARGIN of its time."""
    table = {}
    for out, inp in sorted(shapes):
        w = torch.randn(out, inp, device=device, dtype=dtype)
        picks = {}
        for n in rows:
            x = torch.randn(n, inp, device=device, dtype=dtype)
            times = {name: time_form(form, x, w, repeats) for name, form in forms.items()}
            best = min(times, key=times.get)
            picks[str(n)] = best if times[best] <= MARGIN * times["linear"] else "linear"
        table[f"{out}x{inp}"] = picks
    return table


def apply(model: nn.Module, table: dict[str, dict[str, str]], forms: dict[str, Form] = FORMS) -> int:
    """Every bias-free nn.Linear whose shape the table holds replaced by its ChosenLinear (the
    output embedding through set_output_embeddings); the number replaced."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    replaced = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            key = f"{child.weight.shape[0]}x{child.weight.shape[1]}" if isinstance(child, nn.Linear) else None
            if key in table and child.bias is None and child is not head:
                setattr(parent, name, ChosenLinear(child, {int(n): f for n, f in table[key].items()}, forms))
                replaced += 1
    if isinstance(head, nn.Linear) and head.bias is None:
        key = f"{head.weight.shape[0]}x{head.weight.shape[1]}"
        if key in table:
            model.set_output_embeddings(ChosenLinear(head, {int(n): f for n, f in table[key].items()}, forms))
            replaced += 1
    return replaced


def load_or_choose(path, shapes: set[tuple[int, int]], device, dtype, timing: bool = True,
                   forms: dict[str, Form] = FORMS) -> dict[str, dict[str, str]]:
    """The table cached at `path` (JSON) when it covers `shapes`; else, with timing, chosen now and
    cached there; without timing, an empty table (F.linear everywhere)."""
    import json
    from pathlib import Path

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

"""A run's sampling settings and the acceptance rule of each decoded turn.

Temperature 0 is greedy decoding. At T > 0 the target's token at each position is the Gumbel-max
sample keyed by (seed, sample, turn, position) (harness/core/sampling.py): `exact` acceptance
(the default) makes every method emit the baseline's sample token for token, so losslessness is
checked as under greedy; `rejection` acceptance (speculative sampling's rule, for drafts drawn
from a draft distribution) is lossless in distribution only, and its records are not compared
with the baseline's text (lossless null).
"""

from __future__ import annotations

from dataclasses import dataclass

from harness.bench.data import DataError
from harness.core.accept import Greedy
from harness.core.sampling import (
    Exact,
    Rejection,
    SamplingParams,
    Typical,
    device_keys,
    turn_key,
)

ACCEPTANCE = ("exact", "rejection")
ACCEPT_STREAM, RESIDUAL_STREAM, DRAFT_STREAM = 1, 2, 3  # independent noises of one turn


def temperatures(text: str) -> tuple[float, ...]:
    """'0,0.7,1' -> (0.0, 0.7, 1.0); a DataError naming the option otherwise."""
    try:
        return tuple(float(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise DataError(f"--temperature {text!r}: expected numbers, e.g. 0 or 0,1") from None


@dataclass(frozen=True)
class Sampling:
    """--temperature (one or several: each is its own set of pairs), --top-k, --top-p, --acceptance."""

    temperatures: tuple[float, ...] = (0.0,)
    top_k: int = 0
    top_p: float = 1.0
    acceptance: str = "exact"

    def check(self) -> str | None:
        """None, or what is wrong with these settings (for a one-line user error)."""
        if not self.temperatures or any(not 0.0 <= t < float("inf") for t in self.temperatures):
            return f"--temperature {','.join(map(str, self.temperatures))}: each must be a finite number >= 0"
        if len(set(self.temperatures)) != len(self.temperatures):
            return f"--temperature {','.join(map(str, self.temperatures))}: a temperature is given twice"
        if self.top_k < 0:
            return f"--top-k {self.top_k}: must be 0 (off) or more"
        if not 0.0 < self.top_p <= 1.0:
            return f"--top-p {self.top_p}: must be in (0, 1] (1 = off)"
        if self.acceptance not in ACCEPTANCE:
            return f"--acceptance {self.acceptance!r}: one of {', '.join(ACCEPTANCE)}"
        return None

    def params(self, temperature: float) -> SamplingParams:
        return SamplingParams(temperature, self.top_k, self.top_p)

    def rule(self, temperature: float, seed: int, samples: list[str], turn: int, device, drafts: bool = True,
             typical: bool = False):
        """The rule of one turn of one method over a batch of samples (made before the turn is
        timed; each sequence keyed by its own sample): greedy at T = 0; else exact, rejection for a
        method that drafts when the run asks for it, or typical for a method that asks for it
        (medusa.acceptance=typical)."""
        if temperature == 0.0:
            return Greedy()
        streams = (0, ACCEPT_STREAM, RESIDUAL_STREAM, DRAFT_STREAM)
        keys = [[turn_key(seed, sample, turn, stream) for sample in samples] for stream in streams]
        target, accept, residual, draft = (device_keys(k, device) for k in keys)
        if typical:
            rule = Typical(self.params(temperature), target)
        elif self.acceptance == "rejection" and drafts:
            rule = Rejection(self.params(temperature), target, accept, residual)
        else:
            rule = Exact(self.params(temperature), target)
        rule.draft_keys, rule.seed_key = draft, keys[0][0]  # a draft's own stream; the key on the host (peers)
        return rule

    def compared(self, temperature: float, external: bool, drafts: bool, typical: bool = False) -> bool:
        """Whether a method's text at this temperature is compared with the baseline's token for
        token: always under greedy; under sampling for in-loop methods decoded with exact
        acceptance (under `rejection`, those that draft nothing are); never for outside peers,
        whose random numbers are their own."""
        if temperature == 0.0:
            return True
        return not external and not typical and (self.acceptance == "exact" or not drafts)

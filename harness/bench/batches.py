"""Batches of a run (--batch-size): which samples decode together, and what their records carry.

At batch size B each dataset's measured samples are cut, in their measured order, into groups
of B consecutive samples (the last group may be smaller). The groups are the same for every
method, so a method at batch B is paired with the baseline at batch B on the same group and the
same turn; the group is the bootstrap cluster. A turn of a group decodes every sample of the
group that has that turn (and whose earlier turns were decoded) as one batch.
"""

from __future__ import annotations

from dataclasses import dataclass

from harness.bench.data import DataError, Sample

ONE_AT_A_TIME = "decodes one sequence at a time (its drafting state is per turn): not run at batch size > 1"


def batch_sizes(text: str) -> tuple[int, ...]:
    """'1,4,8' -> (1, 4, 8); a DataError naming the option otherwise (ranges checked with the run)."""
    try:
        return tuple(int(b) for b in text.split(",") if b.strip())
    except ValueError:
        raise DataError(f"--batch-size {text!r}: expected whole numbers, e.g. 1 or 1,4,8") from None


def groups(items: list[Sample], size: int) -> list[list[Sample]]:
    """Consecutive samples in groups of `size` (the last may be smaller)."""
    return [items[i:i + size] for i in range(0, len(items), size)]


def label(group: list[Sample]) -> str:
    """A group's name: its samples' ids joined by '+' (records' `group`; one sample: its id)."""
    return "+".join(s.sample_id for s in group)


@dataclass
class Batch:
    """One turn of one group at one temperature: the samples decoding together and their prompts."""

    samples: list[Sample]
    prompts: list[list[int]]
    turn: int
    temperature: float
    size: int  # the run's batch size B (the group may hold fewer samples at this turn)
    group: str

    @property
    def ids(self) -> list[str]:
        return [s.sample_id for s in self.samples]

    def fields(self) -> dict:
        """What every record of this turn carries beside its own measurements."""
        extra = {"group": self.group, "group_size": len(self.samples)} if self.size > 1 else {}
        return {"temperature": self.temperature, "batch_size": self.size, **extra}


def batchable(method) -> bool:
    """Whether a method decodes several sequences together (in-loop methods in the shared loop,
    hf-generate in one generate() call)."""
    return method.batchable

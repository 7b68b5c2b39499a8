"""Training sources of the drafters' self-distillation corpus, and the parts of them held back for
tuning. Training splits only: nothing here is an evaluation set.

- gsm8k-train (GSM8K train questions) and xsum-validation (XSum validation documents): read from
  the start of their files; their tuning sets (gsm8k-train, xsum-train in TUNING_SETS) are read
  from the end, far past any training range.
- instructions (Self-Instruct's 175 seed tasks, then its 252 user-oriented instructions: chat-style
  requests) and mbpp-train (MBPP's 474 training tasks: code): small, so a fixed, interleaved part
  of each (every HOLD_EVERY-th item) is held back as a tuning set (chat-train, code-train) and
  never trained on; training reads the rest in file order.
"""

from __future__ import annotations

from pathlib import Path

from harness.bench.jsonl import DataError, read_jsonl

DATA_ROOT = Path(__file__).resolve().parents[2] / "datasets"
ORIGINAL = ("gsm8k-train", "xsum-validation")  # the corpus's sources before chat and code joined
SOURCES = (*ORIGINAL, "instructions", "mbpp-train")
HELD_BACK = {"instructions": "chat-train", "mbpp-train": "code-train"}  # source -> its tuning set
SOURCE_FILES = {"gsm8k-train": "datasets/gsm8k/train.jsonl", "xsum-validation": "datasets/xsum/validation-1000.jsonl",
                "instructions": "datasets/instructions/{seed_tasks,user_oriented_instructions}.jsonl",
                "mbpp-train": "datasets/mbpp/train.jsonl"}
HOLD_EVERY = 7  # item i of a small source is held back when i % HOLD_EVERY == HOLD_EVERY - 1
GSM8K_INSTRUCTION = "{question}\nSolve the problem step by step, then give the final answer as a number."
XSUM_INSTRUCTION = "Summarize the following article in one sentence.\n\nArticle:\n{document}"
MBPP_INSTRUCTION = "{text}\nYour code should pass these tests:\n{tests}"


def instruction_prompt(row: dict) -> str:
    """A Self-Instruct task as a chat request: its instruction, then its first instance's input."""
    first = (row.get("instances") or [{}])[0].get("input") or ""
    return row["instruction"] + (f"\n\n{first}" if first.strip() else "")


def _items(source: str) -> list[tuple[str, str]]:
    """(id, user prompt) of every item of a source, in file order."""
    if source == "gsm8k-train":
        rows = read_jsonl(DATA_ROOT / "gsm8k" / "train.jsonl", ("question", "answer"))
        return [(str(i), GSM8K_INSTRUCTION.format(question=r["question"])) for i, r in enumerate(rows)]
    if source == "xsum-validation":
        rows = read_jsonl(DATA_ROOT / "xsum" / "validation-1000.jsonl", ("document", "summary", "id"))
        return [(str(r["id"]), XSUM_INSTRUCTION.format(document=r["document"])) for r in rows]
    if source == "instructions":
        rows = [r for name in ("seed_tasks.jsonl", "user_oriented_instructions.jsonl")
                for r in read_jsonl(DATA_ROOT / "instructions" / name, ("id", "instruction"))]
        return [(r["id"], instruction_prompt(r)) for r in rows]
    if source == "mbpp-train":
        rows = read_jsonl(DATA_ROOT / "mbpp" / "train.jsonl", ("task_id", "text", "test_list"))
        return [(str(r["task_id"]), MBPP_INSTRUCTION.format(text=r["text"], tests="\n".join(r["test_list"])))
                for r in rows]
    raise DataError(f"unknown training source {source!r}; valid: {', '.join(SOURCES)}")


def held_back(index: int) -> bool:
    return index % HOLD_EVERY == HOLD_EVERY - 1


def training_items(source: str) -> list[tuple[str, str]]:
    """The items of a source drafters may train on (a small source without its tuning part)."""
    items = _items(source)
    return [it for i, it in enumerate(items) if not held_back(i)] if source in HELD_BACK else items


def tuning_items(tuning_set: str) -> list[tuple[str, str]]:
    """The held-back items of a small source (chat-train, code-train), in file order."""
    source = next(s for s, t in HELD_BACK.items() if t == tuning_set)
    return [it for i, it in enumerate(_items(source)) if held_back(i)]


def source_prompts(mix: dict[str, int | None], skip: int = 0) -> list[tuple[str, str]]:
    """(source, user prompt) pairs: `mix[source]` items (None: all) of each source's training part
    from item `skip` on; a DataError when a source has fewer."""
    out = []
    for source, count in mix.items():
        items = training_items(source)[skip:None if count is None else skip + count]
        if count is not None and len(items) < count:
            raise DataError(f"training source {source} has {len(items)} training prompts from item {skip} on; "
                            f"asked for {count}")
        out += [(source, text) for _, text in items]
    return out


def parse_sources(text: str) -> tuple[tuple[str, int | None], ...]:
    """`gsm8k-train,instructions=200,...` -> ((source, prompts or None), ...); a DataError naming
    an unknown source, a bad count or one past the source's training part."""
    out = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        name, _, count = part.partition("=")
        if name not in SOURCES:
            raise DataError(f"unknown training source {name!r}; valid: {', '.join(SOURCES)}")
        if not count:
            out.append((name, None))
            continue
        if not count.isdigit() or int(count) < 1:
            raise DataError(f"{part!r}: the prompts of a source must be a whole number >= 1")
        have = len(training_items(name))
        if int(count) > have:
            raise DataError(f"{part!r}: {name} has {have} training prompts")
        out.append((name, int(count)))
    if not out or len({n for n, _ in out}) < len(out):
        raise DataError(f"{text!r}: name each training source once, at least one")
    return tuple(out)


def resolve_mix(spec: tuple[tuple[str, int | None], ...], per_source: int) -> dict[str, int]:
    """Prompts per source: as given, else `per_source` (at most the source's training part)."""
    return {name: count or min(per_source, len(training_items(name))) for name, count in spec}

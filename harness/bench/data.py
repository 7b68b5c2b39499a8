"""Benchmark datasets: bundled JSONL files (or the hub, on request), stratified subsets, chat prompts.

Evaluation reads test sets only (GSM8K test, XSum test, MT-bench, Spec-Bench); drafter training
reads `training_prompts()` (training splits: harness/bench/sources.py) and tuning reads
TUNING_SETS, parts of the same splits that training never reads. Every file is checked strictly
before any model is loaded (harness/bench/jsonl.py).
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path

from harness.bench.jsonl import (
    DataError,
    read_jsonl,
    reference_field,
    text_field,
    turns_field,
    unique_ids,
)
from harness.bench.sources import (
    DATA_ROOT,
    GSM8K_INSTRUCTION,
    HELD_BACK,
    ORIGINAL,
    XSUM_INSTRUCTION,
    source_prompts,
    tuning_items,
)

__all__ = ["DataError", "Sample", "load_samples", "all_samples", "select", "measured", "parse_entry", "chat_prompt",
           "training_prompts"]

DATASETS = ("gsm8k", "xsum", "mt-bench", "spec-bench")
PATH_KINDS = ("jsonl:", "specbench:")  # a user's file: prompt/reference/id/category, or Spec-Bench's format
WITH_CATEGORIES = ("mt-bench", "spec-bench")  # NAME#CATEGORY: the items of one category, a dataset of its own
# Tuning sets (method defaults, tree shapes, acceptance profiles), never for evaluation: GSM8K
# train and XSum validation read from the end (drafter training reads them from the start); chat
# and code: the parts of the instruction and MBPP sources held back from training (sources.py).
TUNING_SETS = ("gsm8k-train", "xsum-train", "chat-train", "code-train")

# Fields that say one thing two ways: an item with both is refused (one would be ignored unread).
SAME_THING = (("prompt", "turns"), ("id", "question_id"))



@dataclass
class Sample:
    """One benchmark item: the user turns (MT-bench has two), an optional reference (a string or
    several, scored against the best) and the item's category, if the data has categories."""

    dataset: str
    sample_id: str
    turns: list[str]
    reference: str | list[str] | None = None
    meta: dict = field(default_factory=dict)

    @property
    def category(self) -> str | None:
        return self.meta.get("category")


def gsm8k_answer(text: str) -> str:
    """The reference number after '####' in a GSM8K answer."""
    return text.split("####")[-1].strip().replace(",", "")


def category_parts(name: str) -> tuple[str, str] | None:
    """(dataset, category) of a one-category name such as `mt-bench#coding`; None for any other."""
    base, hashed, category = name.partition("#")
    return (base, category) if hashed and base in WITH_CATEGORIES else None


def known(name: str) -> bool:
    parts = category_parts(name)
    if parts:
        return bool(parts[1])
    return name in DATASETS or name in TUNING_SETS or name.startswith(PATH_KINDS)


def parse_entry(entry: str) -> tuple[str, int | None]:
    """A --datasets entry -> (dataset name, the items it measures or None for --num-samples):
    `NAME@N` measures N items of NAME (e.g. spec-bench@39 is 3 per category while the others
    measure --num-samples). A user's file whose own name ends in @N is read as named."""
    match = re.fullmatch(r"(.+)@(\d+)", entry)
    if not match or (entry.startswith(PATH_KINDS) and Path(entry.split(":", 1)[1]).is_file()):
        return entry, None
    if int(match[2]) < 1:
        raise DataError(f"--datasets {entry}: the count after @ must be at least 1")
    return match[1], int(match[2])


def all_samples(name: str, source: str = "local") -> list[Sample]:
    """Every item of a dataset, in file order (tuning sets: from the end of the file).

    name: gsm8k | xsum | mt-bench | spec-bench | a tuning set | jsonl:PATH | specbench:PATH.
    """
    if not known(name):
        raise DataError(f"unknown dataset {name!r}; valid: {', '.join(DATASETS + TUNING_SETS)}, "
                        f"jsonl:PATH, specbench:PATH, {'|'.join(WITH_CATEGORIES)}#CATEGORY, any of them @N")
    if category_parts(name):
        return _one_category(name, source)
    if name.startswith("jsonl:"):
        return _user_jsonl(name, Path(name[6:]))
    if name.startswith("specbench:") or name == "spec-bench":
        path = Path(name[10:]) if name.startswith("specbench:") else DATA_ROOT / "spec_bench" / "question.jsonl"
        return _conversations(name, path)
    if name in HELD_BACK.values():
        return [Sample(name, sid, [text]) for sid, text in tuning_items(name)]
    if name in TUNING_SETS:
        rows = _training_rows(name)
        return [_to_sample(name, i, rows[i]) for i in reversed(range(len(rows)))]
    if name == "mt-bench":
        return _hub_mt_bench() if source == "hub" else _conversations(name, DATA_ROOT / "mt_bench" / "question.jsonl")
    rows = _hub_rows(name) if source == "hub" else _local_rows(name)
    return [_to_sample(name, i, r) for i, r in enumerate(rows)]


def _one_category(name: str, source: str) -> list[Sample]:
    """`mt-bench#coding`: the items of one category, as a dataset named so in the results."""
    base, category = category_parts(name)
    items = all_samples(base, source)
    chosen = [replace(s, dataset=name) for s in items if s.category == category]
    if not chosen:
        raise DataError(f"{name}: {base} has no category {category!r}; its categories: "
                        f"{', '.join(dict.fromkeys(s.category for s in items))}")
    return chosen


def select(samples: list[Sample], n: int | None) -> list[Sample]:
    """A deterministic subset of n items, stratified by category where items have one: round-robin
    over the categories in order of first appearance, each category's items in file order.
    Without categories: the first n items. n = None: every item."""
    if n is None or n >= len(samples):
        return list(samples)
    if any(s.category is None for s in samples):
        return samples[:n]
    by_cat: dict[str, list[Sample]] = {}
    for s in samples:
        by_cat.setdefault(s.category, []).append(s)
    picked: list[Sample] = []
    depth = 0
    while len(picked) < n:
        picked += [items[depth] for items in by_cat.values() if depth < len(items)][: n - len(picked)]
        depth += 1
    order = {id(s): i for i, s in enumerate(samples)}
    return sorted(picked, key=lambda s: order[id(s)])


def measured(name: str, samples: list[Sample], n: int | None) -> list[Sample]:
    """`select(samples, n)`, saying on stderr (one line) when the dataset has fewer than the n
    items asked for: every item is measured then, and the run records the ids it measured."""
    if n is not None and n > len(samples):
        print(f"notice: dataset {name} has {len(samples)} item(s), fewer than the {n} asked for: "
              f"measuring all {len(samples)}", file=sys.stderr)
    return select(samples, n)


def load_samples(name: str, num_samples: int | None = None, source: str = "local") -> list[Sample]:
    """`measured(name, all_samples(name), num_samples)`: the items a run measures."""
    return measured(name, all_samples(name, source), num_samples)


def _rows(path: Path, required: tuple[str, ...], reads: tuple[str, ...]) -> list[dict]:
    """The items of a data file (read_jsonl), each also checked to be unambiguous: none holds
    both fields of a SAME_THING pair (`reads`: the one of each pair this format uses)."""
    rows = read_jsonl(path, required)
    for row in rows:
        for pair in SAME_THING:
            if all(row.get(k) is not None for k in pair):  # null = absent
                used, other = pair if pair[0] in reads else pair[::-1]
                raise DataError(f"{path}:{row['_line']}: ambiguous item with both {used!r} and {other!r}: "
                                f"this format reads {used!r} and would ignore {other!r}; keep one")
    return rows


def _user_jsonl(name: str, path: Path) -> list[Sample]:
    """A user's file: `prompt` (required), optional `reference`, `id` (unique), `category`."""
    rows = _rows(path, ("prompt",), ("prompt", "id"))
    ids = [str(r.get("id", i)) for i, r in enumerate(rows)]
    unique_ids(path, rows, ids)
    out = []
    for sid, r in zip(ids, rows):
        meta = {"category": str(r["category"])} if r.get("category") is not None else {}
        out.append(Sample(name, sid, [text_field(path, r, "prompt")], reference_field(path, r), meta))
    return out


def _conversations(name: str, path: Path) -> list[Sample]:
    """MT-bench / Spec-Bench format: `question_id`, `category`, `turns`; references not scored."""
    rows = _rows(path, ("question_id", "turns"), ("turns", "question_id"))
    ids = [str(r["question_id"]) for r in rows]
    unique_ids(path, rows, ids)
    return [Sample(name, sid, turns_field(path, r), None, {"category": r.get("category")})
            for sid, r in zip(ids, rows)]


def _local_rows(name: str) -> list[dict]:
    if name == "gsm8k":
        return read_jsonl(DATA_ROOT / "gsm8k" / "test.jsonl", ("question", "answer"))
    return read_jsonl(DATA_ROOT / "xsum" / "test-1000.jsonl", ("document", "summary", "id"))


def _training_rows(name: str) -> list[dict]:
    if name.startswith("gsm8k"):
        return read_jsonl(DATA_ROOT / "gsm8k" / "train.jsonl", ("question", "answer"))
    return read_jsonl(DATA_ROOT / "xsum" / "validation-1000.jsonl", ("document", "summary", "id"))


def _hub_rows(name: str) -> list[dict]:
    """Full GSM8K / XSum test splits from the Hugging Face hub (needs network access)."""
    from datasets import load_dataset

    try:
        if name == "gsm8k":
            return list(load_dataset("openai/gsm8k", "main", split="test"))
        return list(load_dataset("EdinburghNLP/xsum", split="test"))
    except Exception as err:  # the hub is optional: say what failed and how to avoid it
        raise DataError(f"could not load {name} from the hub ({err}); use --data-source local") from err


def _hub_mt_bench() -> list[Sample]:
    from datasets import load_dataset

    try:
        rows = load_dataset("HuggingFaceH4/mt_bench_prompts", split="train")
    except Exception as err:
        raise DataError(f"could not load mt-bench from the hub ({err}); use --data-source local") from err
    return [Sample("mt-bench", str(r["question_id"]), list(r["prompt"]), None, {"category": r["category"]})
            for r in rows]


def _to_sample(name: str, index: int, row: dict) -> Sample:
    if name.startswith("gsm8k"):
        turn = GSM8K_INSTRUCTION.format(question=row["question"])
        return Sample(name, str(index), [turn], gsm8k_answer(row["answer"]))
    turn = XSUM_INSTRUCTION.format(document=row["document"])
    return Sample(name, str(row["id"]), [turn], row["summary"])


def chat_prompt(tokenizer, turns: list[str], answers: list[str]) -> list[int]:
    """Token ids of a conversation through the model's chat template, ending with the
    generation prompt for the next answer. turns[i] was answered by answers[i]."""
    messages = []
    for i, turn in enumerate(turns):
        messages.append({"role": "user", "content": turn})
        if i < len(answers):
            messages.append({"role": "assistant", "content": answers[i]})
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return tokenizer(text, add_special_tokens=False).input_ids
    text = "\n\n".join(m["content"] for m in messages)  # base models without a template
    return tokenizer(text).input_ids


def training_prompts(limit_per_source: int | None = None, skip: int = 0,
                     mix: dict[str, int] | None = None) -> list[tuple[str, str]]:
    """(source, user prompt) pairs from the training splits only (harness/bench/sources.py):
    `mix[source]` prompts of each, or `limit_per_source` of GSM8K train and XSum validation (all
    of them when None), from item `skip` on in file order. Never reads an evaluation file."""
    return source_prompts(mix or {s: limit_per_source or None for s in ORIGINAL}, skip)


_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def extract_number(text: str) -> str | None:
    """The final numeric answer of a GSM8K response: after '####' if present, else the last number."""
    tail = text.split("####")[-1] if "####" in text else text
    found = _NUMBER.findall(tail)
    if not found:
        return None
    return found[-1].replace(",", "").rstrip(".")

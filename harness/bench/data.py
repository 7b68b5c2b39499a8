"""Benchmark datasets: bundled JSONL files (or the hub, on request), turned into chat prompts.

Evaluation reads test splits only; drafter training reads `training_prompts()`, which reads the
training splits only (GSM8K train, XSum validation).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

DATA_ROOT = Path(__file__).resolve().parents[2] / "datasets"
DATASETS = ("gsm8k", "xsum", "mt-bench")
# Tuning sets (method defaults, tree shapes): training splits read from the end, so that they do
# not overlap the drafter-training prompts, which are read from the start. Never for evaluation.
TUNING_SETS = ("gsm8k-train", "xsum-train")

XSUM_INSTRUCTION = "Summarize the following article in one sentence.\n\nArticle:\n{document}"
GSM8K_INSTRUCTION = "{question}\nSolve the problem step by step, then give the final answer as a number."


class DataError(ValueError):
    """A dataset is unknown, missing or malformed; the message names the file and line."""


@dataclass
class Sample:
    """One benchmark item: the user turns (MT-bench has two) and an optional reference."""

    dataset: str
    sample_id: str
    turns: list[str]
    reference: str | None = None
    meta: dict = field(default_factory=dict)


def read_jsonl(path: Path, required: tuple[str, ...]) -> list[dict]:
    """Check every line parses and has the required fields (errors name file and line),
    then load the file with the `datasets` library."""
    if not path.exists():
        raise DataError(f"data file not found: {path}")
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(f"{path}:{lineno}: not valid JSON ({err.msg})") from None
            if not isinstance(row, dict):
                raise DataError(f"{path}:{lineno}: expected a JSON object")
            missing = [k for k in required if k not in row]
            if missing:
                raise DataError(f"{path}:{lineno}: missing field(s) {', '.join(missing)}")
    from datasets import load_dataset

    return list(load_dataset("json", data_files=str(path), split="train"))


def gsm8k_answer(text: str) -> str:
    """The reference number after '####' in a GSM8K answer."""
    return text.split("####")[-1].strip().replace(",", "")


def load_samples(name: str, num_samples: int | None = None, source: str = "local") -> list[Sample]:
    """The first `num_samples` items of a benchmark dataset, in file order (deterministic).

    name: gsm8k | xsum | mt-bench | jsonl:PATH (fields `prompt`, optional `reference`, `id`).
    """
    if name.startswith("jsonl:"):
        rows = read_jsonl(Path(name[6:]), ("prompt",))
        samples = [Sample(name, str(r.get("id", i)), [r["prompt"]], r.get("reference")) for i, r in enumerate(rows)]
    elif name in TUNING_SETS:
        rows = _training_rows(name)
        samples = [_to_sample(name, i, rows[i]) for i in reversed(range(len(rows)))]
    elif name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; valid: {', '.join(DATASETS + TUNING_SETS)}, jsonl:PATH")
    else:
        rows = _hub_rows(name) if source == "hub" else _local_rows(name)
        samples = [_to_sample(name, i, r) for i, r in enumerate(rows)]
    return samples if num_samples is None else samples[:num_samples]


def _local_rows(name: str) -> list[dict]:
    if name == "gsm8k":
        return read_jsonl(DATA_ROOT / "gsm8k" / "test.jsonl", ("question", "answer"))
    if name == "xsum":
        return read_jsonl(DATA_ROOT / "xsum" / "test-1000.jsonl", ("document", "summary", "id"))
    return read_jsonl(DATA_ROOT / "mt_bench" / "question.jsonl", ("question_id", "turns"))


def _training_rows(name: str) -> list[dict]:
    if name.startswith("gsm8k"):
        return read_jsonl(DATA_ROOT / "gsm8k" / "train.jsonl", ("question", "answer"))
    return read_jsonl(DATA_ROOT / "xsum" / "validation-1000.jsonl", ("document", "summary", "id"))


def _hub_rows(name: str) -> list[dict]:
    """Full test splits from the Hugging Face hub (needs network access)."""
    from datasets import load_dataset

    try:
        if name == "gsm8k":
            return list(load_dataset("openai/gsm8k", "main", split="test"))
        if name == "xsum":
            return list(load_dataset("EdinburghNLP/xsum", split="test"))
        rows = load_dataset("HuggingFaceH4/mt_bench_prompts", split="train")
        return [{"question_id": r["question_id"], "turns": r["prompt"], "category": r["category"]} for r in rows]
    except Exception as err:  # the hub is optional: say what failed and how to avoid it
        raise DataError(f"could not load {name} from the hub ({err}); use --data-source local") from err


def _to_sample(name: str, index: int, row: dict) -> Sample:
    if name.startswith("gsm8k"):
        turn = GSM8K_INSTRUCTION.format(question=row["question"])
        return Sample(name, str(index), [turn], gsm8k_answer(row["answer"]))
    if name.startswith("xsum"):
        turn = XSUM_INSTRUCTION.format(document=row["document"])
        return Sample(name, str(row["id"]), [turn], row["summary"])
    return Sample(name, str(row["question_id"]), list(row["turns"]), None, {"category": row.get("category")})


def chat_prompt(tokenizer, turns: list[str], answers: list[str]) -> list[int]:
    """Token ids of a conversation through the model's chat template, ending with the
    generation prompt for the next answer. turns[i] was answered by answers[i] (the model's own)."""
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


def training_prompts(limit_per_source: int | None = None, skip: int = 0) -> list[tuple[str, str]]:
    """(source, user prompt) pairs from the training splits only: GSM8K train questions and
    XSum validation documents, from row `skip` on in file order. Never reads an evaluation file."""
    end = skip + limit_per_source if limit_per_source else None
    gsm, xsum = _training_rows("gsm8k")[skip:end], _training_rows("xsum")[skip:end]
    out = [("gsm8k-train", GSM8K_INSTRUCTION.format(question=r["question"])) for r in gsm]
    out += [("xsum-validation", XSUM_INSTRUCTION.format(document=r["document"])) for r in xsum]
    return out


_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def extract_number(text: str) -> str | None:
    """The final numeric answer of a GSM8K response: after '####' if present, else the last number."""
    tail = text.split("####")[-1] if "####" in text else text
    found = _NUMBER.findall(tail)
    if not found:
        return None
    value = found[-1].replace(",", "").rstrip(".")
    return value

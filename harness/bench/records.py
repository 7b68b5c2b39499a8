"""Building one results record (the schema in harness/bench/results.py) from a decoded turn."""

from __future__ import annotations

from harness.bench import metrics
from harness.bench.data import Sample
from harness.core.decoding import Decoded


def make_record(key: tuple, sample: Sample, out: Decoded, wall: float, telemetry: dict, tokenizer,
                reference_ids: list[int] | None, prompt_tokens: int) -> dict:
    """key = (method, dataset, sample_id, turn); reference_ids = the baseline's output of the
    same turn (None for the baseline itself, which is lossless by definition)."""
    method, dataset, sample_id, turn = key
    text = tokenizer.decode(out.output_ids, skip_special_tokens=True)
    diverge = None if reference_ids is None else metrics.first_divergence(out.output_ids, reference_ids)
    scored = sample.reference is not None and turn == 0
    gsm = dataset.startswith("gsm8k")
    rec = {
        "method": method, "dataset": dataset, "sample_id": sample_id, "turn": turn,
        "new_tokens": len(out.output_ids), "wall_time": wall, "prefill_time": out.prefill_time,
        "forwards": len(out.accept_lengths) if out.accept_lengths else None,
        "accept_lengths": out.accept_lengths, "draft_sizes": out.draft_sizes, "positions": out.positions,
        "accepted": out.accepted, "draft_forwards": out.draft_forwards, "host_reads": out.host_reads,
        "output_ids": out.output_ids, "output_text": text,
        "lossless": diverge is None, "diverge_at": diverge,
        "rouge2": metrics.rouge2(text, sample.reference) if scored and not gsm else None,
        "correct": metrics.gsm8k_correct(text, sample.reference) if scored and gsm else None,
        "telemetry": telemetry, "prompt_tokens": prompt_tokens, "stop": out.stop,
    }
    return rec


def skipped_record(key: tuple, reason: str) -> dict:
    method, dataset, sample_id, turn = key
    return {"method": method, "dataset": dataset, "sample_id": sample_id, "turn": turn, "skipped": reason}

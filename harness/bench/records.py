"""Building one results record (the schema in harness/bench/results.py) from a decoded turn.

`lossless`, `diverge_at` and `divergence` are filled in by the runner once the baseline's output of
the same turn is known; a record with nothing to compare with (the baseline itself) keeps
`lossless: null`.
"""

from __future__ import annotations

from harness.bench import metrics
from harness.bench.data import Sample
from harness.core.decoding import Decoded


def make_record(key: tuple, sample: Sample, out: Decoded, wall: float, telemetry: dict, tokenizer,
                prompt_tokens: int, order: int) -> dict:
    """key = (method, dataset, sample_id, turn); order = the method's position in the sample's
    permutation."""
    method, dataset, sample_id, turn = key
    text = tokenizer.decode(out.output_ids, skip_special_tokens=True)
    scored = sample.reference is not None and turn == 0
    gsm = dataset.startswith("gsm8k")
    return {
        "method": method, "dataset": dataset, "sample_id": sample_id, "turn": turn,
        "category": sample.category, "order": order,
        "new_tokens": len(out.output_ids), "wall_time": wall, "prefill_time": out.prefill_time,
        "finish_time": out.finish_time, "idle_rows": out.idle_rows,
        "forwards": len(out.accept_lengths) if out.accept_lengths else None,
        "accept_lengths": out.accept_lengths, "draft_sizes": out.draft_sizes, "positions": out.positions,
        "accepted": out.accepted, "draft_forwards": out.draft_forwards, "syncs": out.syncs, "prefill_syncs": out.prefill_syncs,
        "output_ids": out.output_ids, "output_text": text,
        "lossless": None, "diverge_at": None, "divergence": None,
        "rouge2": metrics.rouge2(text, sample.reference) if scored and not gsm else None,
        "correct": metrics.gsm8k_correct(text, sample.reference) if scored and gsm else None,
        "telemetry": telemetry, "prompt_tokens": prompt_tokens, "stop": out.stop,
    }


def skipped_record(key: tuple, reason: str, category: str | None = None) -> dict:
    method, dataset, sample_id, turn = key
    return {"method": method, "dataset": dataset, "sample_id": sample_id, "turn": turn,
            "category": category, "skipped": reason}

"""The turns of a run: one group of samples (one sample at batch size 1) through every method,
turn after turn, at every temperature; records written once every method has decoded a turn.

Turn t of every method is asked after the baseline's answers (at that temperature and batch
size) to turns < t, so each pair times the same prompts. Methods decode in a seeded permutation
per group (the same for every turn; recorded as `order`). A turn's records are written once all
are known: then losslessness is known, and a divergence is diagnosed.
"""

from __future__ import annotations

import random

import methods as registry
from harness.bench import metrics
from harness.bench.batches import ONE_AT_A_TIME, Batch, batchable, label
from harness.bench.data import Sample, chat_prompt
from harness.bench.divergence import diagnose
from harness.bench.records import make_record, skipped_record
from harness.bench.records_io import RecordWriter


def permutation(names: list[str], seed: int, dataset: str, group: str) -> list[str]:
    """The seeded order in which a group's methods decode (the same for every turn)."""
    return random.Random(f"{seed}:{dataset}:{group}").sample(names, len(names))


class Turns:
    """Decodes a run's groups with the runner's model, methods and settings."""

    def __init__(self, runner):
        self.runner = runner
        self.names, self.methods = runner.names, runner.methods

    def run_group(self, group: list[Sample], size: int, writer: RecordWriter, bar) -> None:
        """The group's turns at every temperature; turn t asked after the baseline's answers to the
        earlier turns. A sample whose turn was skipped (too long) takes no later turns."""
        r, name, self.bar = self.runner, label(group), bar
        order = permutation(self.names, r.cfg.seed, group[0].dataset, name)
        for temp in r.cfg.sampling.temperatures:
            answers: dict[str, list[str]] = {s.sample_id: [] for s in group}
            live = list(group)
            for turn in range(max(len(s.turns) for s in group)):
                live = [s for s in live if turn < len(s.turns)]
                if not live:
                    break
                prompts = [chat_prompt(r.lm.tokenizer, s.turns[: turn + 1], answers[s.sample_id]) for s in live]
                done = self.run_turn(Batch(live, prompts, turn, temp, size, name), order, writer, bar)
                for s in list(live):
                    base = done[registry.BASELINE][s.sample_id]
                    if base.get("skipped"):
                        bar.update(len(self.names) * (len(s.turns) - turn - 1))
                        live.remove(s)
                    else:
                        answers[s.sample_id].append(base["output_text"])

    def run_turn(self, batch: Batch, order: list[str], writer: RecordWriter, bar) -> dict[str, dict[str, dict]]:
        """Every method on one turn of a batch, in `order`: method -> sample id -> record; new
        records written once all are known. A method that cannot batch is skipped at B > 1."""
        r, done, fresh = self.runner, {}, []
        reasons = {s.sample_id: r.fits(p) for s, p in zip(batch.samples, batch.prompts)}
        fit = [i for i, s in enumerate(batch.samples) if reasons[s.sample_id] is None]
        for position, name in enumerate(order):
            keys = {s.sample_id: (name, s.dataset, s.sample_id, batch.turn, batch.temperature, batch.size)
                    for s in batch.samples}
            if all(k in writer.done for k in keys.values()):  # resumed: reuse what was written
                done[name] = {sid: writer.done[k] for sid, k in keys.items()}
            else:
                done[name] = self.decode(name, batch, position, fit, reasons)
                fresh.append(name)
            bar.update(len(batch.samples))
        self.judge(done, fresh, batch, writer.done)
        for name in fresh:
            for record in done[name].values():
                writer.write({**record, "session": r.session})
        return done

    def decode(self, name: str, batch: Batch, position: int, fit: list[int], reasons: dict) -> dict[str, dict]:
        """One method's records of a batch turn: the prompts that fit decoded together (one timed
        decode: each record holds the batch's wall time), the others skipped with their reason."""
        r, method = self.runner, self.runner.by_size[batch.size][name]
        records = {}
        if batch.size > 1 and not batchable(method):
            reasons = {sid: ONE_AT_A_TIME for sid in reasons}
            fit = []
        decoded = {batch.samples[i].sample_id for i in fit}
        for s in batch.samples:
            if s.sample_id not in decoded:
                records[s.sample_id] = {**skipped_record((name, s.dataset, s.sample_id, batch.turn),
                                                         reasons[s.sample_id], s.category), **batch.fields()}
        if fit:
            samples, prompts = [batch.samples[i] for i in fit], [batch.prompts[i] for i in fit]
            self.bar.set_postfix_str(f"{samples[0].dataset} #{label(samples)} t{batch.turn} T={batch.temperature:g} "
                       f"B={batch.size} {name}")
            rule = r.rule(name, batch.temperature, samples, batch.turn)
            outs, wall, tel = r.decode_turn(method, prompts, rule)
            for s, p, out in zip(samples, prompts, outs):
                records[s.sample_id] = {
                    **make_record((name, s.dataset, s.sample_id, batch.turn), s, out, wall, tel, r.lm.tokenizer,
                                  len(p), position),
                    **batch.fields(), "acceptance": self.acceptance_of(name, rule)}
        return records

    def acceptance_of(self, name: str, rule) -> str:
        """What decided a record's tokens: greedy, exact, rejection, typical, or generate() (a peer's own)."""
        sampled = getattr(rule, "params", None) is not None
        return "generate" if sampled and getattr(self.methods[name], "external", False) else rule.name

    def judge(self, done: dict[str, dict[str, dict]], fresh: list[str], batch: Batch, written: dict) -> None:
        """Losslessness of the new records against the baseline's output of the same turn at the
        same batch size (the baseline itself at B > 1 against its record at B = 1, where the run
        has one), and a diagnosis of each divergence under the baseline's rule (one extra untimed
        forward)."""
        r = self.runner
        for sample, prompt in zip(batch.samples, batch.prompts):
            one = (registry.BASELINE, sample.dataset, sample.sample_id, batch.turn, batch.temperature, 1)
            for name in fresh:
                rec = done[name][sample.sample_id]
                base = written.get(one) if name == registry.BASELINE and batch.size > 1 \
                    else None if name == registry.BASELINE else done[registry.BASELINE][sample.sample_id]
                reference = (base or {}).get("output_ids")
                method = self.methods[name]
                compared = r.cfg.sampling.compared(batch.temperature, getattr(method, "external", False),
                                                   method.drafts, method.config.get("acceptance") == "typical")
                if rec.get("skipped") or reference is None or not compared:
                    continue
                at = metrics.first_divergence(rec["output_ids"], reference)
                rec["lossless"], rec["diverge_at"] = at is None, at
                if at is not None:
                    rule = r.rule(registry.BASELINE, batch.temperature, [sample], batch.turn)
                    rec["divergence"] = diagnose(r.engine, prompt, reference, rec["output_ids"], at, rule)

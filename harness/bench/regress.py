"""Regression check of a run against a reference run (CI: `spec-harness regress RUN --baseline REF`).

The rule, per (method, dataset) of the reference:

- tau (rounded to 1e-9) and the lossless rate must be equal exactly: under greedy decoding on
  the same model, weights, dtype and device they are deterministic, so any change is a change
  of behaviour, not noise;
- speed: the new run's speedup (ratio of mean tokens/s) must not fall below the reference's 95%
  cluster-bootstrap interval of the same statistic by more than a margin: fail when new speedup <
  reference ci_low - margin (margin in speedup units, default 0.05); the margin absorbs a slightly
  slower machine;
- a (method, dataset) of the reference missing from the new run fails;
- the A/A control (`ar:control`, `run --control`): a new run whose control interval reaches
  beyond 1.00 +- metrics.CONTROL_RESOLUTION fails, whatever the reference says: a run that
  cannot time itself cannot time the methods.

When tau or the lossless rate changed, the manifests are compared for the usual explanations
(model key, dtype, device, budget, sample count, and the method's configuration).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from harness.bench.metrics import CONTROL_RESOLUTION, MIN_CLUSTERS, control_holds
from harness.bench.records_io import load_run
from harness.bench.runner import summary_of
from harness.bench.validate import CONTROL

DEFAULT_MARGIN = 0.05
TAU_DIGITS = 9
# Manifest keys whose change changes tau or the lossless rate for every method.
RUN_KEYS = ("model_key", "dtype", "device", "max_new_tokens", "num_samples", "dataset_counts", "data_source")


@dataclass
class Comparison:
    rows: list[dict] = field(default_factory=list)  # one per (method, dataset) of either run
    failures: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures


def _equal(a: float, b: float, digits: int = TAU_DIGITS) -> bool:
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return round(a, digits) == round(b, digits)


def _flatten(d, prefix: str = "") -> dict:
    if not isinstance(d, dict):
        return {prefix: d}
    out = {}
    for k, v in d.items():
        out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def _config_diff(ref: dict, new: dict, method: str) -> list[str]:
    """What differs between the two manifests that would explain a changed tau of `method`."""
    out = [f"{k} {ref.get(k)!r} -> {new.get(k)!r}" for k in RUN_KEYS if ref.get(k) != new.get(k)]
    a = _flatten(ref.get("method_configs", {}).get(method, {}))
    b = _flatten(new.get("method_configs", {}).get(method, {}))
    out += [f"{method} config {k}: {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(a.keys() | b.keys())
            if a.get(k) != b.get(k)]
    return out


def _code_change(ref: dict, new: dict) -> str:
    a, b = (m.get("git", {}).get("commit") for m in (ref, new))
    return f" (code {a[:10]} -> {b[:10]})" if a and b and a != b else ""


def _fmt(x: float, spec: str = ".4f") -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def _check(r: pd.Series, n: pd.Series, margin: float) -> list[str]:
    """Failures of one (method, dataset) present in both runs."""
    out = []
    if not _equal(r.tau, n.tau):
        out.append(f"tau {r.tau:.{TAU_DIGITS}f} -> {n.tau:.{TAU_DIGITS}f}")
    if not _equal(r.lossless_rate, n.lossless_rate):
        out.append(f"lossless rate {_fmt(r.lossless_rate)} -> {_fmt(n.lossless_rate)}")
    floor = r.speedup_ci_low - margin
    if not math.isnan(floor) and not n.speedup >= floor:
        out.append(f"speedup {_fmt(n.speedup, '.3f')} below reference interval "
                   f"[{_fmt(r.speedup_ci_low, '.3f')}, {_fmt(r.speedup_ci_high, '.3f')}] - margin {margin:g} "
                   f"(reference speedup {_fmt(r.speedup, '.3f')})")
    return out


def per_setting(summary: pd.DataFrame) -> pd.DataFrame:
    """A run at several temperatures or batch sizes compared per value: its datasets labelled
    'gsm8k (T=1)', 'gsm8k (B=4)'."""
    for column, tag in (("temperature", "T"), ("batch_size", "B")):
        if not summary.empty and column in summary:
            labels = [f"{d} ({tag}={v:g})" for d, v in zip(summary["dataset"], summary[column])]
            summary = summary.assign(dataset=labels)
    return summary


def compare(run_dir: Path, ref_dir: Path, margin: float = DEFAULT_MARGIN) -> Comparison:
    ref_manifest, _ = load_run(ref_dir)
    new_manifest, _ = load_run(run_dir)
    ref, new = (per_setting(summary_of(d)[0]) for d in (ref_dir, run_dir))
    if ref.empty:
        raise ValueError(f"reference {ref_dir} holds no decoded records")
    new_index = {(m, d): row for (m, d), row in new.set_index(["method", "dataset"]).iterrows()} if not new.empty else {}
    cmp = Comparison()
    for key, r in ref.set_index(["method", "dataset"]).iterrows():
        method, dataset = key
        n = new_index.pop(key, None)
        row = {"method": method, "dataset": dataset, "tau_ref": r.tau, "lossless_ref": r.lossless_rate,
               "speedup_ref": r.speedup, "ci_low_ref": r.speedup_ci_low, "ci_high_ref": r.speedup_ci_high}
        if n is None:
            problems = ["missing from the new run"]
        else:
            row.update(tau_new=n.tau, lossless_new=n.lossless_rate, speedup_new=n.speedup)
            problems = _check(r, n, margin)
            if any(p.startswith(("tau", "lossless")) for p in problems):
                explained = _config_diff(ref_manifest, new_manifest, method)
                problems.append("likely cause: " + "; ".join(explained) if explained
                                else "model, run settings and method config unchanged" + _code_change(ref_manifest, new_manifest))
        row["status"] = "REGRESSION" if problems else "ok"
        cmp.rows.append(row)
        if problems:
            cmp.failures.append(f"{method} / {dataset}: " + "; ".join(problems))
    for method, dataset in new_index:
        cmp.rows.append({"method": method, "dataset": dataset, "status": "new (not in reference)",
                         "tau_new": new_index[(method, dataset)].tau,
                         "lossless_new": new_index[(method, dataset)].lossless_rate,
                         "speedup_new": new_index[(method, dataset)].speedup})
    cmp.failures += [f"{CONTROL} / {line}" for line in _control_failures(new)]
    if ref_manifest.get("model_key") != new_manifest.get("model_key"):
        cmp.notes.append(f"model changed: {ref_manifest.get('model_key')!r} -> {new_manifest.get('model_key')!r}")
    return cmp


def _control_failures(summary: pd.DataFrame) -> list[str]:
    """Datasets where the new run's A/A control breaks the control rule (metrics.control_holds)."""
    if summary.empty:
        return []
    rows = summary[summary["method"] == CONTROL]
    wide = [f"{r.dataset}: control speedup {r.speedup:.3f} [{r.speedup_ci_low:.3f}, {r.speedup_ci_high:.3f}] "
            f"reaches beyond 1.00 +- {CONTROL_RESOLUTION:g}: the run cannot time itself" for r in rows.itertuples()
            if not control_holds(r.speedup_ci_low, r.speedup_ci_high)]
    few = [f"{r.dataset}: control interval from {r.clusters} cluster(s), fewer than {MIN_CLUSTERS}: not one to judge by"
           for r in rows.itertuples() if getattr(r, "clusters", MIN_CLUSTERS) < MIN_CLUSTERS]
    return wide + few


def render(cmp: Comparison, margin: float) -> str:
    """The diff table, then the failures in words."""
    table = pd.DataFrame([{
        "method": r["method"], "dataset": r["dataset"],
        "tau ref": _fmt(r.get("tau_ref", math.nan)), "tau new": _fmt(r.get("tau_new", math.nan)),
        "lossless ref": _fmt(r.get("lossless_ref", math.nan), ".2f"),
        "lossless new": _fmt(r.get("lossless_new", math.nan), ".2f"),
        "speedup ref [95% CI]": f"{_fmt(r.get('speedup_ref', math.nan), '.2f')} "
                                f"[{_fmt(r.get('ci_low_ref', math.nan), '.2f')}, {_fmt(r.get('ci_high_ref', math.nan), '.2f')}]"
        if "speedup_ref" in r else "-",
        "speedup new": _fmt(r.get("speedup_new", math.nan), ".2f"),
        "status": r["status"],
    } for r in cmp.rows])
    lines = [table.to_markdown(index=False, disable_numparse=True), "",
             f"rule: tau (to 1e-{TAU_DIGITS}) and lossless rate equal; speedup >= reference "
             f"95% CI low - {margin:g}; an A/A control interval inside 1.00 +- {CONTROL_RESOLUTION:g}"]
    lines += [f"note: {n}" for n in cmp.notes]
    if cmp.failures:
        lines += ["", f"REGRESSION ({len(cmp.failures)}):"] + [f"  {f}" for f in cmp.failures]
    else:
        lines += ["", "no regression"]
    return "\n".join(lines)


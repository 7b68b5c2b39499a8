"""gpu-check's verdicts and its files: every check as (name, status, detail), a short Markdown
summary, and where the run is written (results/gpu/<gpu-name>-<date>/ on CUDA)."""

from __future__ import annotations

import re
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ONE_READ = ("ar", "ar-graph", "firp", "medusa", "eagle", "pld", "sps", "lookahead")  # held to one device wait per step
SYNC_SLACK = 1.0  # CUDA synchronisations per decoding step allowed for them (the prefill's are not counted)


def default_out(result: dict) -> Path:
    """results/gpu/<gpu-name>-<date>/ on CUDA; build/gpu-check/cpu-<date>/ for the CPU rehearsal."""
    day = time.strftime("%Y%m%d")
    gpu = result["hardware"].get("gpu")
    if gpu:
        return ROOT / "results" / "gpu" / f"{re.sub(r'[^A-Za-z0-9]+', '-', gpu).strip('-')}-{day}"
    return ROOT / "build" / "gpu-check" / f"cpu-{day}"


def _method_status(row: dict) -> str:
    if row["lossless"]:
        return "pass"
    return "tie" if row["divergence"]["tie"] else "fail"


def _diverged(div: dict | None) -> str:
    if not div:
        return ""
    return f"; diverges at {div['at']} (baseline margin {div['baseline_margin']:.3g}, gap {div['gap']} vs {div['epsilon']:.3g})"


def decoding_checks(name: str, res: dict) -> list[tuple[str, str, str]]:
    out = []
    for method, row in res["methods"].items():
        syncs = row.get("cuda_syncs_per_step")
        detail = (f"tau {row['tau']:.2f}, {row['tokens_per_s']:.1f} tok/s, syncs/step "
                  f"{row['syncs_per_step']:.2f}" + (f", CUDA syncs/step {syncs:.2f}" if syncs is not None else ""))
        out.append((f"{name}: {method} lossless", _method_status(row), detail + _diverged(row["divergence"])))
        if method in ONE_READ:
            ok = row["syncs_per_step"] <= 1.0 and (syncs is None or syncs <= SYNC_SLACK)
            out.append((f"{name}: {method} one sync per step", "pass" if ok else "fail", detail))
    hf = res["hf_generate"]
    status = "pass" if all(hf["equal"]) else ("tie" if hf["divergence"] and hf["divergence"]["tie"] else "fail")
    out.append((f"{name}: ar == hf-generate", status,
                f"{sum(hf['equal'])}/{len(hf['equal'])} prompts equal, generate() {hf['tokens_per_s']:.1f} tok/s"
                + _diverged(hf["divergence"])))
    return out


def costmodel_checks(name: str, res: dict, cuda: bool = True) -> list[tuple[str, str, str]]:
    """c(1) against the time to read every weight once at the measured copy bandwidth (on the CPU
    rehearsal's tiny shapes the weights sit in cache, so there it is reported, not judged)."""
    ratio = dict(zip(res["n"], res["ratio"]))
    detail = (f"c(1) {1000 * res['seconds'][0]:.2f} ms vs bound {1000 * res['bound_seconds']:.2f} ms "
              f"({res['weight_bytes'] / 1e9:.2f} GB at {res['copy_bandwidth_gb_s']:.0f} GB/s): "
              f"{res['c1_over_bound']:.2f}x the bound; c(n)/c(1): "
              + ", ".join(f"n={n} {ratio[n]:.2f}" for n in (8, 16, 32, 64) if n in ratio))
    status = ("pass" if res["c1_over_bound"] >= 0.8 else "fail") if cuda else "n/a"
    return [(f"{name}: c(1) not below the bandwidth bound", status, detail)]


def telemetry_checks(name: str, res: dict) -> list[tuple[str, str, str]]:
    info, turn = res["info"], res["turn"]
    if info["kind"] != "nvml":
        return [(f"{name}: NVML telemetry", "n/a", "no NVIDIA GPU: CPU telemetry")]
    limit, peak = info["power_limit_w"], turn["power_sampled_max_w"]
    return [(f"{name}: NVML energy > 0", "pass" if turn["energy_j"] > 0 else "fail",
             f"{turn['energy_j']:.1f} J ({turn['energy_source']}) in {turn['seconds']:.2f} s"),
            (f"{name}: NVML power within the board limit", "pass" if 0 < peak <= 1.05 * limit else "fail",
             f"sampled max {peak:.0f} W, limit {limit:.0f} W; peak allocated {turn['mem_peak_mb']:.0f} MB")]


def training_checks(name: str, res: dict) -> list[tuple[str, str, str]]:
    out = []
    for kind, row in res.items():
        losses = ", ".join(f"{x:.4f}" for x in row["losses"])
        out.append((f"{name}: {kind} training loss falls", "pass" if row["falling"] else "fail", losses))
        fp32 = row["param_dtypes"] == ["torch.float32"]
        out.append((f"{name}: {kind} drafter float32 on a {row['target_dtype']} target", "pass" if fp32 else "fail",
                    ", ".join(row["param_dtypes"])))
    return out


def section_checks(name: str, section: dict, cuda: bool) -> list[tuple[str, str, str]]:
    if "skipped" in section:
        return [(name, "skipped", section["skipped"])]
    if "error" in section:
        return [(name, "error", section["error"])]
    res, kind = section["result"], name.rsplit("/", 1)[-1]
    if name == "cuda-tests":
        status = "pass" if res["returncode"] == 0 and "passed" in res["summary"] else (
            "n/a" if res["returncode"] == 0 else "fail")
        return [(name, status, res["summary"])]
    if isinstance(res, dict) and "skipped" in res:
        return [(name, "skipped", res["skipped"])]
    if kind in ("decoding", "embedded"):
        return decoding_checks(name, res)
    if kind == "costmodel":
        return costmodel_checks(name, res, cuda)
    handlers = {"telemetry": telemetry_checks, "training": training_checks}
    return handlers[kind](name, res) if kind in handlers else []


def checks(result: dict) -> list[tuple[str, str, str]]:
    cuda = result["device"].startswith("cuda")
    return [c for name, sec in result["sections"].items() for c in section_checks(name, sec, cuda)]


def verdict(rows: list[tuple[str, str, str]]) -> tuple[bool, str]:
    """(passed, headline): a failed or broken check fails the run, and so does a run that
    checked nothing (no check at all, or every one skipped or n/a): a check that ran nothing
    must not pass."""
    failed = sum(status in ("fail", "error") for _, status, _ in rows)
    if failed:
        return False, f"FAILED: {failed} check(s)"
    if not any(status in ("pass", "tie") for _, status, _ in rows):
        skipped = sum(status == "skipped" for _, status, _ in rows)
        return False, f"FAILED: nothing was checked ({skipped} of {len(rows)} section(s) skipped)"
    return True, "all checks pass"


def markdown(result: dict, rows: list[tuple[str, str, str]]) -> str:
    hw, v = result["hardware"], result["versions"]
    lines = [f"# gpu-check: {hw.get('gpu') or hw.get('cpu')} ({result['device']}, {result['dtype']})", "",
             f"{result['created']}; torch {v.get('torch')}, transformers {v.get('transformers')}, "
             f"python {v.get('python')}; {result['seconds']:.0f} s of a {result['budget_s']:.0f} s budget; "
             f"telemetry: {result['telemetry'].get('kind')} {result['telemetry'].get('nvml_driver', '')}".rstrip(), "",
             f"**{verdict(rows)[1]}** "
             f"({sum(r[1] == 'tie' for r in rows)} greedy tie(s) diagnosed)", "",
             "| check | status | detail |", "| --- | --- | --- |"]
    lines += [f"| {name} | {status} | {detail.replace('|', '/')} |" for name, status, detail in rows]
    times = ", ".join(f"{name} {sec['seconds']:.0f} s" for name, sec in result["sections"].items() if "seconds" in sec)
    return "\n".join(lines + ["", f"Section times: {times}.", ""])


def write(result: dict, out: Path | None = None) -> tuple[Path, list[tuple[str, str, str]]]:
    """gpu_check.json (the result with its checks) and summary.md under `out`; returns (out, checks)."""
    from harness.bench.results import write_json

    out = Path(out) if out else default_out(result)
    out.mkdir(parents=True, exist_ok=True)
    rows = checks(result)
    result["checks"] = [{"check": n, "status": s, "detail": d} for n, s, d in rows]
    result["ok"], result["verdict"] = verdict(rows)
    write_json(out / "gpu_check.json", result)
    (out / "summary.md").write_text(markdown(result, rows))
    return out, rows

"""Everything a run is asked to do, checked in one place before any model is loaded and before
the output directory is created or emptied: methods and their options, datasets (files read and
validated, the measured subset and the warm-up item chosen), numbers, the model's context, and
the output directory (writable; an existing run only with --resume or --overwrite; a resumed
run only with the same request)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import methods as registry
from harness.bench import rundir
from harness.bench.data import DataError, Sample, all_samples, measured, parse_entry
from harness.bench.sampled import Sampling
from harness.core.lean import DEFAULT_LAYERS, LAYER_PATHS
from harness.core.linear import MODES
from harness.core.modelload import check_supported, load_config, model_key
from harness.core.options import MethodError, Options
from harness.core.planning import costmodel

CACHE_SLACK = 256  # KV slots past prompt + budget for draft rows
CONTROL = f"{registry.BASELINE}:control"  # the A/A control: the baseline decoded a second time


@dataclass
class RunConfig:
    methods: list[str]
    datasets: list[str]
    model: str = "smollm2"
    device: str = "auto"
    dtype: str | None = None
    num_samples: int | None = 10
    max_new_tokens: int = 128
    seed: int = 0
    data_source: str = "local"
    method_args: dict[str, dict[str, str]] = field(default_factory=dict)
    out: Path | None = None
    resume: bool = False
    overwrite: bool = False
    telemetry: bool = True
    warmup: bool = True
    control: bool = False
    sampling: Sampling = field(default_factory=Sampling)
    batch_sizes: tuple[int, ...] = (1,)  # each its own set of pairs (--batch-size)
    only: dict[str, list[str]] | None = None  # a shard of a sweep: the sample ids per dataset it decodes
    linear: str = "auto"  # linear formulations: auto (fastest here per row count) or off (F.linear)
    layers: str = DEFAULT_LAYERS  # decoder layers: lean (harness/core/lean.py) or modules (transformers' own)


@dataclass
class ValidRun:
    """A validated run: method names in registry order, their typed options (each method is built
    from them), the samples each
    dataset measures, one unmeasured warm-up item per dataset (None when every item is measured),
    the request that --resume must match, and the manifest of the run being resumed."""

    names: list[str]
    options: dict[str, dict]
    samples: dict[str, list[Sample]]
    warmup: dict[str, Sample | None]
    request: dict
    context: int
    resumed: dict | None = None
    counts: dict[str, int] = field(default_factory=dict)  # datasets given their own count (NAME@N)


def method_names(cfg: RunConfig) -> list[str]:
    """The baseline first (added when not requested), the others as given, then the control."""
    names = [registry.BASELINE] + [m for m in dict.fromkeys(cfg.methods) if m not in (registry.BASELINE, CONTROL)]
    return names + ([CONTROL] if cfg.control else [])


def check_numbers(cfg: RunConfig) -> None:
    if not cfg.datasets:
        raise DataError("--datasets is empty: name at least one dataset")
    if cfg.num_samples is not None and cfg.num_samples < 1:
        raise DataError(f"--num-samples {cfg.num_samples}: must be at least 1")
    if cfg.max_new_tokens < 1:
        raise DataError(f"--max-new-tokens {cfg.max_new_tokens}: must be at least 1")
    if cfg.seed < 0:
        raise DataError(f"--seed {cfg.seed}: must be 0 or more")
    if cfg.linear not in MODES:
        raise DataError(f"--linear {cfg.linear!r}: one of {', '.join(MODES)}")
    if cfg.layers not in LAYER_PATHS:
        raise DataError(f"--layers {cfg.layers!r}: one of {', '.join(LAYER_PATHS)}")
    problem = cfg.sampling.check()
    if problem:
        raise DataError(problem)
    sizes = ",".join(map(str, cfg.batch_sizes))
    if not cfg.batch_sizes or any(b < 1 for b in cfg.batch_sizes) or len(set(cfg.batch_sizes)) < len(cfg.batch_sizes):
        raise DataError(f"--batch-size {sizes}: distinct batch sizes, each at least 1")
    if list(cfg.batch_sizes) != sorted(cfg.batch_sizes):
        raise DataError(f"--batch-size {sizes}: give them in increasing order (batch 1 first: the baseline at "
                        "B > 1 is checked against its own output at B = 1)")


def check_methods(cfg: RunConfig, names: list[str]) -> dict[str, Options]:
    """Typed, checked options per method (the runner builds each method from them: resolved
    once); unknown methods/options and --method-arg for absent methods refused."""
    for name in names:
        registry.get(name)
    unknown = set(cfg.method_args) - set(names)
    if unknown:
        raise MethodError(f"--method-arg names method(s) not in --methods: {', '.join(sorted(unknown))}")
    options = {n: registry.get(n).resolve_options(dict(cfg.method_args.get(n, {}))) for n in names}
    check_costmodels(cfg.model, options)
    return options


def check_costmodels(model: str, options: dict[str, Options]) -> None:
    """Every cost model a method is given (METHOD.costmodel, --costmodel) is read and checked now:
    valid, and of this model (harness/core/planning/costmodel.py), before anything loads."""
    key = model_key(model)
    for name, values in options.items():
        path = values.get("costmodel")
        if path:
            try:
                costmodel.check_model(costmodel.read(Path(path)), path, key)
            except costmodel.CostModelError as err:
                raise MethodError(f"{name}.costmodel: {err}") from None


def as_json(options: dict[str, Options]) -> dict[str, dict]:
    """Options as the request records them (tuples as lists)."""
    return {n: {k: list(v) if isinstance(v, tuple) else v for k, v in o.items()} for n, o in options.items()}


def dataset_counts(cfg: RunConfig) -> dict[str, int | None]:
    """Each dataset of --datasets, in order, with the items it measures: its own NAME@N or
    --num-samples. A dataset given twice with different counts is refused."""
    counts: dict[str, int | None] = {}
    for entry in cfg.datasets:
        name, count = parse_entry(entry)
        count = count or cfg.num_samples
        if counts.get(name, count) != count:
            raise DataError(f"--datasets: {name} is given twice, with {counts[name]} and {count} items; give it once")
        counts[name] = count
    return counts


def choose_samples(cfg: RunConfig, counts: dict[str, int | None]) -> tuple[dict[str, list[Sample]],
                                                                           dict[str, Sample | None]]:
    """The measured subset of every dataset (`counts`: dataset_counts; a notice on stderr where it
    has fewer items than asked for: all are measured, and the manifest lists them) and an
    unmeasured item for its warm-up."""
    samples, warmup = {}, {}
    for name, count in counts.items():
        items = all_samples(name, cfg.data_source)
        samples[name] = measured(name, items, count)
        chosen = {id(s) for s in samples[name]}
        warmup[name] = next((s for s in items if id(s) not in chosen), None)
    if cfg.only is not None:  # a shard: its samples of the measured subset (the warm-up item is the run's)
        samples = {d: [s for s in v if s.sample_id in cfg.only[d]] for d, v in samples.items() if d in cfg.only}
    return samples, warmup


def make_request(cfg: RunConfig, names: list[str], options: dict, datasets: list[str]) -> dict:
    """What the records of a run depend on: --resume continues only the same request. The number
    of samples is not part of it: a larger --num-samples (or NAME@N) extends a run (the stratified
    subset of N items is the start of the subset of N + k)."""
    return {"model": cfg.model, "device": cfg.device, "dtype": cfg.dtype, "methods": names,
            "method_options": options, "datasets": datasets,
            "max_new_tokens": cfg.max_new_tokens, "seed": cfg.seed, "data_source": cfg.data_source,
            "control": cfg.control, **sampling_request(cfg.sampling),
            **({"batch_sizes": list(cfg.batch_sizes)} if cfg.batch_sizes != (1,) else {}),
            **({"linear": cfg.linear} if cfg.linear != "auto" else {}),
            **({"layers": cfg.layers} if cfg.layers != DEFAULT_LAYERS else {})}


def sampling_request(sampling: Sampling) -> dict:
    """The sampling settings as the request records them (greedy runs: temperatures [0.0] only, as
    runs made before sampling existed are read)."""
    if sampling == Sampling():
        return {}
    return {"temperatures": list(sampling.temperatures), "top_k": sampling.top_k, "top_p": sampling.top_p,
            "acceptance": sampling.acceptance}


def model_context(model: str) -> int:
    """The model's context length, from its config (an unsupported architecture is refused here)."""
    config = load_config(model)
    check_supported(config)
    return int(getattr(config, "max_position_embeddings", None) or 1 << 30)


def check_budget(context: int, max_new_tokens: int, option: str = "--max-new-tokens") -> None:
    """A token budget, with room for draft rows, fits the model's context (DataError otherwise)."""
    if max_new_tokens + CACHE_SLACK + 1 > context:
        raise DataError(f"{option} {max_new_tokens}: with {CACHE_SLACK} slots for drafts it exceeds the model's "
                        f"context of {context} tokens; use at most {context - CACHE_SLACK - 1}")


def validate(cfg: RunConfig) -> ValidRun:
    """The run, validated, or the first problem as a user error (nothing loaded, nothing written)."""
    check_numbers(cfg)
    names = method_names(cfg)
    options = check_methods(cfg, names)
    counts = dataset_counts(cfg)
    samples, warmup = choose_samples(cfg, counts)
    rundir.check_out(cfg.out, cfg.resume, cfg.overwrite)
    request = make_request(cfg, names, as_json(options), list(counts))
    resumed = rundir.check_resume(cfg.out, request) if cfg.resume else None
    if resumed is not None:
        rundir.check_resumed_samples(resumed, {d: [s.sample_id for s in v] for d, v in samples.items()}, cfg.num_samples)
    context = model_context(cfg.model)
    check_budget(context, cfg.max_new_tokens)
    own = {d: n for d, n in counts.items() if n != cfg.num_samples}
    return ValidRun(names, options, samples, warmup, request, context, resumed, own)

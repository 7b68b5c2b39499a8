"""Timing primitives shared by the decode loop, the cost model and the linear-formulation chooser:
one operation timed device-synchronised, several timed in turns (so a drifting machine affects them
alike), the row counts the measurements take, and the machine a measurement is valid for."""

from __future__ import annotations

import re
import time
from typing import Callable

import numpy as np
import torch
from tqdm import tqdm

# Every n up to 16, then every 4th: c(n) is not smooth in n (on a 2-core CPU with MKL, c(3) = 1.9 c(1)
# but c(4) = 1.4 c(1): the BLAS kernel chosen per row count), so small trees need their own points.
DEFAULT_NS = (*range(1, 17), *range(20, 65, 4))


def synchronize(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def machine(device: torch.device | str, dtype: torch.dtype) -> dict:
    """What a measurement on this machine is valid for besides the model: device kind, dtype, and
    the CPU threads torch uses or the GPU's name."""
    kind = torch.device(device).type
    where = torch.cuda.get_device_name(device) if kind == "cuda" else f"threads={torch.get_num_threads()}"
    return {"device": kind, "dtype": str(dtype).removeprefix("torch."), "where": where}


def cache_name(model_key: str, device: torch.device | str, dtype: torch.dtype) -> str:
    """<model>-<device>-<dtype>-<threads or GPU>: the name of a measurement cached for this machine."""
    m = machine(device, dtype)
    where = re.sub(r"[^A-Za-z0-9._-]+", "-", m["where"]).strip("-")
    return f"{model_key}-{m['device']}-{m['dtype']}-{where}"


def timed(fn: Callable[[], object], device) -> float:
    """Seconds of one call of fn, the device synchronised before and after."""
    synchronize(device)
    t0 = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - t0


def round_robin(ops: dict, device, repeats: int, warmup: int, desc: str | None) -> dict:
    """Median seconds of each op, timed in turns (warm-up rounds dropped)."""
    times: dict = {key: [] for key in ops}
    for rep in tqdm(range(warmup + repeats), desc=desc, unit="round", disable=desc is None, leave=False):
        for key, op in ops.items():
            took = timed(op, device)
            if rep >= warmup:
                times[key].append(took)
    return {key: float(np.median(t)) for key, t in times.items()}

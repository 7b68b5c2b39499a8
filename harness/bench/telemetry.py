"""Hardware telemetry sampled in a background thread while a method decodes.

With an NVIDIA GPU (NVML via nvidia-ml-py): utilisation, memory, power and energy (so joules per
generated token). Without one: this process's CPU utilisation and resident memory (psutil).
"""

from __future__ import annotations

import threading
import time

import psutil


def _nvml_handle(device_index: int):
    try:
        import pynvml

        pynvml.nvmlInit()
        return pynvml.nvmlDeviceGetHandleByIndex(device_index)
    except Exception:  # no driver, no GPU, or no NVML: fall back to CPU telemetry
        return None


def telemetry_kind(device: str) -> str:
    """'nvml' when an NVIDIA GPU can be read, else 'cpu'."""
    if device.startswith("cuda") and _nvml_handle(_index(device)) is not None:
        return "nvml"
    return "cpu"


def _index(device: str) -> int:
    return int(device.split(":")[1]) if ":" in device else 0


class Telemetry:
    """Context manager: `with Telemetry(kind) as t: ...` then `t.result` is a dict."""

    def __init__(self, kind: str = "cpu", device: str = "cpu", interval: float = 0.05):
        self.kind, self.interval = kind, interval
        self.handle = _nvml_handle(_index(device)) if kind == "nvml" else None
        self.samples: list[tuple[float, float, float]] = []
        self.result: dict = {}
        self._stop = threading.Event()
        self._proc = psutil.Process()

    def _read(self) -> tuple[float, float, float]:
        if self.handle is not None:
            import pynvml

            util = pynvml.nvmlDeviceGetUtilizationRates(self.handle).gpu
            mem = pynvml.nvmlDeviceGetMemoryInfo(self.handle).used / 2**20
            power = pynvml.nvmlDeviceGetPowerUsage(self.handle) / 1000.0
            return float(util), float(mem), power
        return self._proc.cpu_percent(None), self._proc.memory_info().rss / 2**20, 0.0

    def _energy_mj(self) -> float | None:
        if self.handle is None:
            return None
        import pynvml

        try:
            return float(pynvml.nvmlDeviceGetTotalEnergyConsumption(self.handle))
        except pynvml.NVMLError:
            return None

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.samples.append(self._read())

    def __enter__(self) -> "Telemetry":
        self._proc.cpu_percent(None)  # prime the CPU counter
        self._e0, self._t0 = self._energy_mj(), time.perf_counter()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.samples.append(self._read())
        seconds = time.perf_counter() - self._t0
        util = [s[0] for s in self.samples]
        mem = [s[1] for s in self.samples]
        if self.handle is not None:
            power = [s[2] for s in self.samples]
            e1 = self._energy_mj()
            energy = (e1 - self._e0) / 1000.0 if e1 is not None and self._e0 is not None else sum(power) / len(power) * seconds
            self.result = {"kind": "nvml", "gpu_util_mean": sum(util) / len(util), "gpu_mem_max_mb": max(mem),
                           "power_mean_w": sum(power) / len(power), "energy_j": energy, "samples": len(util)}
        else:
            self.result = {"kind": "cpu", "cpu_util_mean": sum(util) / len(util), "rss_max_mb": max(mem),
                           "energy_j": None, "samples": len(util)}

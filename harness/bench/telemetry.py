"""Hardware telemetry of one decoded turn, sampled in a background thread.

On an NVIDIA GPU (NVML, via nvidia-ml-py):
- the NVML device is the one at the PCI bus id of the torch device: CUDA ordinals and NVML
  indices differ under CUDA_VISIBLE_DEVICES (and with CUDA_DEVICE_ORDER), so an index is no key;
- NVML is initialised and the GPU found once per run (TelemetrySource);
- a turn's energy is the difference of the board's energy counter (mJ, Volta and later) read
  right beside the turn's own start and end clocks; its mean power is that energy over the
  turn's seconds;
- GPU utilisation is NVML's: each reading covers the driver's sample period (1/6 s to 1 s), not
  the turn, and is named so (`gpu_util_nvml_window`);
- sampled power is not reported per turn: on Ampere GA10x, Ada, Hopper and later, NVML's power
  reading is a 1-second average, so in a turn shorter than that it mostly measures the turn (or
  the method) before. The sampled maximum is kept only to check it against the board's limit;
- peak memory is torch.cuda.max_memory_allocated over the turn (reset at its start): what this
  process's tensors needed, not what the whole device had in use.
Without a GPU: this process's CPU utilisation and peak resident memory (psutil); no energy.
"""

from __future__ import annotations

import threading
import time

import psutil
import torch


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def load_nvml():
    """pynvml, initialised, or None when there is no NVIDIA driver (or no nvidia-ml-py)."""
    try:
        import pynvml

        pynvml.nvmlInit()
        return pynvml
    except Exception:  # no driver, no GPU, no library: CPU telemetry instead
        return None


def pci_bus_id(props) -> str | None:
    """NVML's form of a device's PCI address (domain:bus:device.function) from torch's device
    properties (torch.cuda.get_device_properties); None where torch does not expose it."""
    if not hasattr(props, "pci_bus_id"):
        return None
    return f"{props.pci_domain_id:08X}:{props.pci_bus_id:02X}:{props.pci_device_id:02X}.0"


def _by_uuid(nvml, props):
    """The NVML device whose UUID is torch's (the fallback where torch has no PCI ids)."""
    want = str(getattr(props, "uuid", "")).lower().removeprefix("gpu-")
    for i in range(nvml.nvmlDeviceGetCount() if want else 0):
        handle = nvml.nvmlDeviceGetHandleByIndex(i)
        if _text(nvml.nvmlDeviceGetUUID(handle)).lower().removeprefix("gpu-") == want:
            return handle
    return None


def nvml_handle(device: str, nvml=None, props=None):
    """The NVML handle of the GPU torch calls `device` ('cuda:N'), by PCI bus id (by UUID where
    torch lacks PCI ids); None if there is none."""
    if not str(device).startswith("cuda"):
        return None
    nvml = nvml or load_nvml()
    if nvml is None:
        return None
    try:
        props = props or torch.cuda.get_device_properties(torch.device(device))
        bus = pci_bus_id(props)
        return nvml.nvmlDeviceGetHandleByPciBusId(bus) if bus else _by_uuid(nvml, props)
    except Exception:
        return None


def telemetry_kind(device: str) -> str:
    """'nvml' when the GPU behind `device` can be read, else 'cpu'."""
    return "nvml" if nvml_handle(device) is not None else "cpu"


def power_is_averaged(capability: tuple[int, int]) -> bool:
    """NVML power usage is a 1 s average on Ampere GA10x (8.6) and every later architecture;
    GA100 (8.0) and older report it instantaneously."""
    return tuple(capability) >= (8, 6)


def telemetry_info(device: str, nvml=None, props=None) -> dict:
    """What the manifest says about telemetry: kind; for NVML the driver, GPU, PCI bus id, the
    enforced power limit, whether the energy counter works and how power readings are averaged."""
    handle = nvml_handle(device, nvml, props)
    if handle is None:
        return {"kind": "cpu", "energy": None}
    nvml = nvml or load_nvml()
    props = props or torch.cuda.get_device_properties(torch.device(device))
    info = {"kind": "nvml", "nvml_driver": _text(nvml.nvmlSystemGetDriverVersion()),
            "gpu_name": _text(nvml.nvmlDeviceGetName(handle)), "pci_bus_id": pci_bus_id(props),
            "power_limit_w": nvml.nvmlDeviceGetEnforcedPowerLimit(handle) / 1000.0}
    try:
        nvml.nvmlDeviceGetTotalEnergyConsumption(handle)
        info["energy"] = "board energy counter, difference across each turn"
    except nvml.NVMLError:
        info["energy"] = "sampled power x time (this GPU has no energy counter)"
    averaged = power_is_averaged((props.major, props.minor))
    info["power_reading"] = ("1 s average: not attributed to turns" if averaged else "instantaneous")
    info["gpu_util"] = ("gpu_util_nvml_window: mean of NVML utilisation readings during the turn; each covers "
                        "the driver's sample period (1/6 s to 1 s), so a short turn's value includes time before it")
    info["window"] = "energy read at the turn's own start and end clocks"
    return info


class TelemetrySource:
    """Where a run's telemetry comes from, set up once per run: NVML initialised and the GPU's
    handle found (per turn this would cost the first turns their accuracy and the run its time)."""

    def __init__(self, kind: str = "cpu", device: str = "cpu", nvml=None, props=None):
        self.kind, self.device = kind, str(device)
        self.nvml = (nvml or load_nvml()) if kind == "nvml" else None
        self.handle = nvml_handle(self.device, self.nvml, props) if self.nvml is not None else None
        self.cuda_memory = self.device.startswith("cuda") and torch.cuda.is_available()

    def energy_mj(self) -> float | None:
        """The board's energy counter (mJ), or None without one."""
        if self.handle is None:
            return None
        try:
            return float(self.nvml.nvmlDeviceGetTotalEnergyConsumption(self.handle))
        except self.nvml.NVMLError:
            return None


class Telemetry:
    """One turn's telemetry over exactly its timed window: `t0 = probe.start()` and
    `t1 = probe.stop()` are the turn's clocks, read right beside the energy counter; then
    `probe.result` is a dict. Also a context manager (`with Telemetry(...) as t:`)."""

    def __init__(self, kind: str = "cpu", device: str = "cpu", interval: float = 0.05, nvml=None, props=None,
                 source: TelemetrySource | None = None):
        self.source = source or TelemetrySource(kind, device, nvml, props)
        self.kind, self.device, self.interval = self.source.kind, self.source.device, interval
        self.nvml, self.handle = self.source.nvml, self.source.handle
        self.samples: list[tuple[float, float, float]] = []
        self.result: dict = {}
        self._stop = threading.Event()
        self._proc = psutil.Process()

    def _read(self) -> tuple[float, float, float]:
        """(utilisation %, memory MB, power W) now: the GPU's with NVML, else this process's."""
        if self.handle is not None:
            util = self.nvml.nvmlDeviceGetUtilizationRates(self.handle).gpu
            power = self.nvml.nvmlDeviceGetPowerUsage(self.handle) / 1000.0
            return float(util), 0.0, power
        return self._proc.cpu_percent(None), self._proc.memory_info().rss / 2**20, 0.0

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.samples.append(self._read())

    def start(self) -> float:
        """Start sampling; returns the turn's start clock, read right after the energy counter."""
        self._proc.cpu_percent(None)  # prime the CPU counter
        if self.source.cuda_memory:
            torch.cuda.reset_peak_memory_stats(self.device)
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        self._e0 = self.source.energy_mj()
        self._t0 = time.perf_counter()
        return self._t0

    def stop(self) -> float:
        """Stop sampling; returns the turn's end clock, read right before the energy counter."""
        t1 = time.perf_counter()
        e1 = self.source.energy_mj()
        self._stop.set()
        self._thread.join()
        self.samples.append(self._read())
        seconds = t1 - self._t0
        util = [s[0] for s in self.samples]
        if self.handle is not None:
            self.result = self._gpu_result(seconds, util, e1)
        else:
            self.result = {"kind": "cpu", "cpu_util_mean": sum(util) / len(util),
                           "rss_max_mb": max(s[1] for s in self.samples), "energy_j": None, "samples": len(util)}
        return t1

    def __enter__(self) -> "Telemetry":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def _gpu_result(self, seconds: float, util: list[float], e1: float | None) -> dict:
        power = [s[2] for s in self.samples]
        if e1 is not None and self._e0 is not None:
            energy, source = (e1 - self._e0) / 1000.0, "counter"
        else:
            energy, source = sum(power) / len(power) * seconds, "power-samples"
        peak = torch.cuda.max_memory_allocated(self.device) / 2**20 if self.source.cuda_memory else None
        own_power = energy / seconds if source == "counter" and seconds > 0 else None  # the turn's own, from the counter
        # NVML's utilisation covers the driver's own sample period (1/6 s to 1 s), not the turn
        return {"kind": "nvml", "gpu_util_nvml_window": sum(util) / len(util), "energy_j": energy,
                "energy_source": source, "power_mean_w": own_power, "power_sampled_max_w": max(power),
                "mem_peak_mb": peak, "seconds": seconds, "samples": len(util)}

"""Hardware telemetry of one decoded turn, sampled in a background thread.

On an NVIDIA GPU (NVML, via nvidia-ml-py):
- the NVML device is the one at the PCI bus id of the torch device: CUDA ordinals and NVML
  indices differ under CUDA_VISIBLE_DEVICES (and with CUDA_DEVICE_ORDER), so an index is no key;
- a turn's energy is the difference of the board's energy counter (mJ, Volta and later) across
  the turn; its mean power is that energy over the turn's seconds;
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
    return info


class Telemetry:
    """Context manager: `with Telemetry(kind, device) as t: ...`, then `t.result` is a dict."""

    def __init__(self, kind: str = "cpu", device: str = "cpu", interval: float = 0.05, nvml=None, props=None):
        self.kind, self.device, self.interval = kind, str(device), interval
        self.nvml = (nvml or load_nvml()) if kind == "nvml" else None
        self.handle = nvml_handle(self.device, self.nvml, props) if self.nvml is not None else None
        self.cuda_memory = self.device.startswith("cuda") and torch.cuda.is_available()
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

    def _energy_mj(self) -> float | None:
        try:
            return float(self.nvml.nvmlDeviceGetTotalEnergyConsumption(self.handle))
        except self.nvml.NVMLError:
            return None

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.samples.append(self._read())

    def __enter__(self) -> "Telemetry":
        self._proc.cpu_percent(None)  # prime the CPU counter
        if self.cuda_memory:
            torch.cuda.reset_peak_memory_stats(self.device)
        self._e0 = self._energy_mj() if self.handle is not None else None
        self._t0 = time.perf_counter()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.samples.append(self._read())
        seconds = time.perf_counter() - self._t0
        util = [s[0] for s in self.samples]
        if self.handle is not None:
            self.result = self._gpu_result(seconds, util)
        else:
            self.result = {"kind": "cpu", "cpu_util_mean": sum(util) / len(util),
                           "rss_max_mb": max(s[1] for s in self.samples), "energy_j": None, "samples": len(util)}

    def _gpu_result(self, seconds: float, util: list[float]) -> dict:
        power = [s[2] for s in self.samples]
        e1 = self._energy_mj()
        if e1 is not None and self._e0 is not None:
            energy, source = (e1 - self._e0) / 1000.0, "counter"
        else:
            energy, source = sum(power) / len(power) * seconds, "power-samples"
        peak = torch.cuda.max_memory_allocated(self.device) / 2**20 if self.cuda_memory else None
        own_power = energy / seconds if source == "counter" and seconds > 0 else None  # the turn's own, from the counter
        return {"kind": "nvml", "gpu_util_mean": sum(util) / len(util), "energy_j": energy, "energy_source": source,
                "power_mean_w": own_power, "power_sampled_max_w": max(power),
                "mem_peak_mb": peak, "seconds": seconds, "samples": len(util)}

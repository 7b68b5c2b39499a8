"""Telemetry logic against a fake pynvml: the NVML device is found by the torch device's PCI bus
id (not its ordinal), a turn's energy is the counter's difference, sampled power is never
reported as a turn's own, and the manifest's telemetry_info."""

import time
from types import SimpleNamespace

import pytest

from harness.bench.telemetry import (
    Telemetry,
    nvml_handle,
    pci_bus_id,
    power_is_averaged,
    telemetry_info,
)

H200 = SimpleNamespace(pci_domain_id=0, pci_bus_id=0x3B, pci_device_id=0, major=9, minor=0)


class FakeNVML:
    """Two boards; under CUDA_VISIBLE_DEVICES=1 torch's cuda:0 is NVML's second one (bus 3B)."""

    class NVMLError(Exception):
        pass

    def __init__(self, counter=True, milliwatts=250_000, step_mj=1500.0):
        self.by_bus = {"00000000:18:00.0": "board-0", "00000000:3B:00.0": "board-1"}
        self.counter, self.milliwatts, self.step_mj = counter, milliwatts, step_mj
        self.energy = {"board-0": 0.0, "board-1": 0.0}

    def nvmlDeviceGetHandleByPciBusId(self, bus):
        if bus not in self.by_bus:
            raise self.NVMLError("not found")
        return self.by_bus[bus]

    def nvmlDeviceGetTotalEnergyConsumption(self, handle):
        if not self.counter:
            raise self.NVMLError("not supported")
        self.energy[handle] += self.step_mj
        return self.energy[handle]

    def nvmlDeviceGetPowerUsage(self, handle):
        return self.milliwatts

    def nvmlDeviceGetUtilizationRates(self, handle):
        return SimpleNamespace(gpu=80)

    def nvmlSystemGetDriverVersion(self):
        return "570.86"

    def nvmlDeviceGetName(self, handle):
        return b"NVIDIA H200" if handle == "board-1" else b"NVIDIA A100"

    def nvmlDeviceGetEnforcedPowerLimit(self, handle):
        return 700_000

    def nvmlDeviceGetCount(self):
        return 2

    def nvmlDeviceGetHandleByIndex(self, i):
        return f"board-{i}"

    def nvmlDeviceGetUUID(self, handle):
        return f"GPU-0000000{handle[-1]}-aaaa-bbbb-cccc-dddddddddddd"


def test_the_nvml_device_is_found_by_pci_bus_id_not_ordinal():
    nvml = FakeNVML()
    assert pci_bus_id(H200) == "00000000:3B:00.0"
    assert nvml_handle("cuda:0", nvml, H200) == "board-1"
    assert nvml_handle("cpu", nvml, H200) is None
    assert nvml_handle("cuda:0", nvml, SimpleNamespace(pci_domain_id=0, pci_bus_id=0x99, pci_device_id=0)) is None


def test_without_pci_ids_in_torch_the_uuid_decides():
    props = SimpleNamespace(uuid="00000001-aaaa-bbbb-cccc-dddddddddddd", major=9, minor=0)
    assert pci_bus_id(props) is None
    assert nvml_handle("cuda:0", FakeNVML(), props) == "board-1"
    assert nvml_handle("cuda:0", FakeNVML(), SimpleNamespace(uuid="ffffffff-0000", major=9, minor=0)) is None


def test_telemetry_info_for_the_manifest():
    info = telemetry_info("cuda:0", FakeNVML(), H200)
    assert info["kind"] == "nvml" and info["gpu_name"] == "NVIDIA H200" and info["nvml_driver"] == "570.86"
    assert info["pci_bus_id"] == "00000000:3B:00.0" and info["power_limit_w"] == 700.0
    assert info["energy"].startswith("board energy counter") and info["power_reading"].startswith("1 s average")
    a100 = SimpleNamespace(**{**vars(H200), "major": 8, "minor": 0})
    assert telemetry_info("cuda:0", FakeNVML(counter=False), a100)["power_reading"] == "instantaneous"
    assert telemetry_info("cpu") == {"kind": "cpu", "energy": None}
    assert power_is_averaged((8, 6)) and power_is_averaged((10, 0)) and not power_is_averaged((7, 0))


def test_turn_energy_is_the_counter_difference():
    with Telemetry("nvml", "cuda:0", interval=0.01, nvml=FakeNVML(), props=H200) as probe:
        time.sleep(0.05)
    r = probe.result
    assert r["energy_source"] == "counter" and r["energy_j"] == pytest.approx(1.5)
    assert r["power_mean_w"] == pytest.approx(1.5 / r["seconds"])  # the turn's own, from the counter
    assert r["power_sampled_max_w"] == 250.0 and r["gpu_util_nvml_window"] == 80.0
    assert "gpu_mem_max_mb" not in r  # the whole device's memory is not this process's


def test_without_a_counter_energy_comes_from_samples_and_no_turn_power_is_claimed():
    with Telemetry("nvml", "cuda:0", interval=0.01, nvml=FakeNVML(counter=False), props=H200) as probe:
        time.sleep(0.05)
    r = probe.result
    assert r["energy_source"] == "power-samples" and r["power_mean_w"] is None
    assert r["energy_j"] == pytest.approx(250.0 * r["seconds"], rel=1e-6)


def test_cpu_telemetry():
    with Telemetry("cpu", "cpu", interval=0.01) as probe:
        sum(range(10**5))
    assert probe.result["kind"] == "cpu" and probe.result["energy_j"] is None and probe.result["rss_max_mb"] > 0

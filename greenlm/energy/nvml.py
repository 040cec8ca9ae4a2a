"""NVIDIA GPU energy through NVML (package nvidia-ml-py, imported lazily so this module imports without it).

Volta and newer keep a total-energy counter (mJ since driver load): read at the window edges. Older
GPUs only report instantaneous power; for those a daemon thread samples power and integrates it
(trapezoid) into a virtual counter, and read() samples once more at the edge, so windows work the
same either way. describe() says which method each GPU uses.

Domains are "gpu-<NVML index>". NVML orders GPUs by PCI bus, which need not match CUDA's order or
CUDA_VISIBLE_DEVICES.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

from greenlm.energy.base import EnergySource, Measurement, Meter, Reading, window_duration_s
from greenlm.energy.ticker import start_ticker
from greenlm.errors import MeterUnavailable

log = logging.getLogger(__name__)

DEFAULT_SAMPLE_INTERVAL_S = 0.05


def _import_pynvml() -> Any:
    try:
        import pynvml
    except ImportError:
        raise MeterUnavailable("pynvml is not installed: pip install nvidia-ml-py") from None
    return pynvml


@dataclass
class _Gpu:
    index: int
    domain: str
    handle: Any
    name: str
    sampled: bool  # no energy counter: integrate sampled power instead
    why_sampled: str = ""
    # Virtual counter for sampled GPUs: last sample time and power, energy so far.
    last_t: float | None = None
    last_w: float = 0.0
    energy_mj: float = 0.0


class NvmlMeter(Meter):
    name = "nvml"
    energy_source: EnergySource = "measured"

    def __init__(
        self,
        device_indices: list[int] | tuple[int, ...] | None = None,
        *,
        sample_interval_s: float = DEFAULT_SAMPLE_INTERVAL_S,
    ) -> None:
        if not sample_interval_s > 0:
            raise ValueError(f"sample_interval_s must be > 0, got {sample_interval_s}")
        self._nvml = nvml = _import_pynvml()
        self.sample_interval_s = sample_interval_s
        try:
            nvml.nvmlInit()
        except nvml.NVMLError as e:
            raise MeterUnavailable(
                f"NVML could not start ({e}): no NVIDIA driver, or no GPU visible to this process"
            ) from None
        self._closed = False
        try:
            self.driver_version = _text(nvml.nvmlSystemGetDriverVersion())
            self.gpus = self._open_gpus(device_indices)
        except BaseException:
            self.close()
            raise
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._sampler: threading.Thread | None = None

    def _open_gpus(self, device_indices: list[int] | tuple[int, ...] | None) -> list[_Gpu]:
        nvml = self._nvml
        try:
            count = nvml.nvmlDeviceGetCount()
        except nvml.NVMLError as e:
            raise MeterUnavailable(f"NVML cannot count GPUs: {e}") from None
        if count == 0:
            raise MeterUnavailable("NVML sees no GPU")
        indices = list(range(count)) if device_indices is None else list(device_indices)
        for i in indices:
            if not 0 <= i < count:
                raise MeterUnavailable(
                    f"GPU index {i} not found: NVML sees {count} GPU(s), indices 0-{count - 1}"
                )
        gpus = []
        for i in indices:
            try:
                handle = nvml.nvmlDeviceGetHandleByIndex(i)
                name = _text(nvml.nvmlDeviceGetName(handle))
            except nvml.NVMLError as e:
                raise MeterUnavailable(f"NVML cannot open GPU {i}: {e}") from None
            gpu = _Gpu(index=i, domain=f"gpu-{i}", handle=handle, name=name, sampled=False)
            try:
                nvml.nvmlDeviceGetTotalEnergyConsumption(handle)
            except nvml.NVMLError as e:  # NotSupported before Volta, FunctionNotFound on old drivers
                gpu.sampled, gpu.why_sampled = True, f"nvmlDeviceGetTotalEnergyConsumption: {e}"
                try:
                    nvml.nvmlDeviceGetPowerUsage(handle)
                except nvml.NVMLError as e2:
                    raise MeterUnavailable(
                        f"GPU {i} ({name}) reports neither energy ({e}) nor power ({e2})"
                    ) from None
            gpus.append(gpu)
        return gpus

    def _sample(self, gpu: _Gpu) -> None:
        """Advance a sampled GPU's virtual counter to now. Caller holds the lock."""
        power_w = self._nvml.nvmlDeviceGetPowerUsage(gpu.handle) / 1000.0
        now = time.perf_counter()
        if gpu.last_t is not None:
            gpu.energy_mj += (gpu.last_w + power_w) / 2 * (now - gpu.last_t) * 1000.0
        gpu.last_t, gpu.last_w = now, power_w

    def read(self) -> Reading:
        nvml = self._nvml
        values: dict[str, float] = {}
        with self._lock:
            t0 = time.perf_counter()
            try:
                for gpu in self.gpus:
                    if gpu.sampled:
                        self._sample(gpu)
                        values[gpu.domain] = gpu.energy_mj
                    else:
                        values[gpu.domain] = float(nvml.nvmlDeviceGetTotalEnergyConsumption(gpu.handle))
            except nvml.NVMLError as e:
                raise MeterUnavailable(f"NVML read failed on {gpu.domain} ({gpu.name}): {e}") from None
            t1 = time.perf_counter()
        self._start_sampler()
        return Reading(time_s=(t0 + t1) / 2, values=values)

    def measure(self, start: Reading, end: Reading) -> Measurement:
        duration_s = window_duration_s(start, end)
        energy_j = {}
        for gpu in self.gpus:
            try:
                delta_mj = end.values[gpu.domain] - start.values[gpu.domain]
            except KeyError:
                raise ValueError(
                    f"reading has no {gpu.domain}: it was not taken by this NVML meter"
                ) from None
            # The 64-bit mJ counter does not wrap in practice; it only goes down when the GPU is reset,
            # and then the window's energy is unknown: count nothing rather than something negative.
            energy_j[gpu.domain] = max(0.0, delta_mj) / 1000.0
        return Measurement(self.name, self.energy_source, duration_s, energy_j)

    def _start_sampler(self) -> None:
        if self._sampler is not None or self._closed or not any(g.sampled for g in self.gpus):
            return
        with self._lock:
            if self._sampler is None:
                self._sampler = start_ticker(
                    self, NvmlMeter._sample_tick, self.sample_interval_s, self._stop, "greenlm-nvml-power"
                )

    def _sample_tick(self) -> None:
        with self._lock:
            for gpu in self.gpus:
                if not gpu.sampled:
                    continue
                try:
                    self._sample(gpu)
                except self._nvml.NVMLError as e:
                    # Skip this sample; the next good one integrates across the gap.
                    log.debug("NVML power sample failed on %s: %s", gpu.domain, e)

    def describe(self) -> dict[str, Any]:
        devices = {}
        for gpu in self.gpus:
            if gpu.sampled:
                method = (
                    f"sampled: nvmlDeviceGetPowerUsage every {self.sample_interval_s:g} s, "
                    f"trapezoid-integrated (no energy counter: {gpu.why_sampled})"
                )
            else:
                method = "counter: nvmlDeviceGetTotalEnergyConsumption read at window edges"
            devices[gpu.domain] = {"name": gpu.name, "nvml_index": gpu.index, "method": method}
        return {**super().describe(), "driver_version": self.driver_version, "domains": devices}

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        stop, sampler = getattr(self, "_stop", None), getattr(self, "_sampler", None)
        if stop is not None:
            stop.set()
        if sampler is not None:
            sampler.join(timeout=5)
        try:
            self._nvml.nvmlShutdown()
        except self._nvml.NVMLError as e:
            log.debug("nvmlShutdown failed: %s", e)


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)

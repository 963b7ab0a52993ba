"""Profiling metrics from NVML's GPU Performance Monitoring (GPM; Hopper and newer), without DCGM: how
busy the SMs are and how full (occupancy), tensor, DRAM, FP pipe and media engine activity, and the PCIe,
NVLink and C2C rates, per GPU and, with MIG, per GPU instance.

GPM computes every value from two samples of one GPU (or GPU instance) taken more than 100 ms apart. A
sample is an opaque buffer inside NVML, which no process can save for the next, so:

- A one-shot run takes the first sample of every GPU in `begin`, before any collector runs, and the
  second in `collect`, which runs last and sleeps only for what is left of --gpm-window. The wait
  overlaps the other collectors' work and costs no CPU; the run grows by about the window, whatever the
  number of GPUs.
- The repeating mode keeps each cycle's last sample (Context.kept) and diffs the next cycle against it:
  values cover the whole interval, at no wait. A baseline younger than the window (an interval shorter
  than it, or `show`'s second collection) is kept until it is old enough, and the values it gave last
  are written again meanwhile.

A baseline belongs to a key: (GPU UUID, "", ()) for a whole GPU, (GPU UUID, GPU instance ID, its MIG
device UUIDs) for a GPU instance. GPU instance IDs are reused when MIG is reconfigured, but their MIG
devices get new UUIDs, so a new layout gets new baselines. Every sample is freed: when the next replaces
it, when its GPU or instance goes away, when a read fails, and before NVML shuts down (Context.close).

Each metric's own nvmlReturn decides whether its series is written; a detail level's unwanted metrics are
not asked for. Calls are made one GPU at a time (gpud reports crashes with GPM calls in parallel).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pynvml

from . import NotApplicable
from .. import shape
from ..catalogue import written_at
from ..devices import Device, gpu_instances, instance_labels
from ..nvml import DeviceGone, Nvml


def percent(value: float) -> float:
    """GPM's ratios are percent, 0.0-100.0. Divided, not multiplied by 0.01: 70 gives 0.7, not
    0.7000000000000001."""
    return value / 100


def mib_per_second(value: float) -> float:
    """GPM's rates are MiB/s."""
    return value * (1 << 20)


Metric = tuple[str, dict[str, str], Callable[[float], float]]  # catalogue key, labels, conversion

# GPM metric id (nvml.h NVML_GPM_METRIC_*) -> (catalogue key, extra labels, conversion to base units). The
# ids are numbers: pynvml lacks some constants (DMMA before 13.615, NVOFA_1 before 12.570, C2C before
# 12.575), and the ids are fixed by nvml.h.
INSTANCE_METRICS: dict[int, Metric] = {
    1: ("graphics_active_ratio", {}, percent),
    2: ("sm_active_ratio", {}, percent),
    3: ("sm_occupancy_ratio", {}, percent),
    4: ("integer_active_ratio", {}, percent),
    5: ("tensor_active_ratio", {}, percent),
    6: ("tensor_pipe_active_ratio", {"pipe": "dfma"}, percent),
    7: ("tensor_pipe_active_ratio", {"pipe": "hmma"}, percent),
    8: ("tensor_pipe_active_ratio", {"pipe": "dmma"}, percent),
    9: ("tensor_pipe_active_ratio", {"pipe": "imma"}, percent),
    10: ("dram_active_ratio", {}, percent),
    11: ("fp_pipe_active_ratio", {"precision": "fp64"}, percent),
    12: ("fp_pipe_active_ratio", {"precision": "fp32"}, percent),
    13: ("fp_pipe_active_ratio", {"precision": "fp16"}, percent),
    **{30 + n: ("nvdec_active_ratio", {"engine": str(n)}, percent) for n in range(8)},
    **{40 + n: ("nvjpg_active_ratio", {"engine": str(n)}, percent) for n in range(8)},
    **{50 + n: ("nvofa_active_ratio", {"engine": str(n)}, percent) for n in range(2)},
}
# Whole-GPU rates: a GPU instance has none of its own.
GPU_METRICS: dict[int, Metric] = {
    20: ("gpm_pcie_transmit_bytes_per_second", {}, mib_per_second),
    21: ("gpm_pcie_receive_bytes_per_second", {}, mib_per_second),
    60: ("gpm_nvlink_receive_bytes_per_second", {}, mib_per_second),
    61: ("gpm_nvlink_transmit_bytes_per_second", {}, mib_per_second),
    100: ("gpm_c2c_transmit_bytes_per_second", {}, mib_per_second),  # C2C_TOTAL_TX_PER_SEC
    101: ("gpm_c2c_receive_bytes_per_second", {}, mib_per_second),  # C2C_TOTAL_RX_PER_SEC
}
LINK_RECEIVE = "gpm_nvlink_link_receive_bytes_per_second"
LINK_TRANSMIT = "gpm_nvlink_link_transmit_bytes_per_second"


def link_metric_ids(link: int) -> tuple[int, int]:
    """(receive, transmit) GPM ids of an NVLink link: 62+2k/63+2k for links 0-17, 212+2k/213+2k from
    link 18 (nvml.h 13.3)."""
    base = 62 + 2 * link if link < 18 else 212 + 2 * (link - 18)
    return base, base + 1


Key = tuple[str, str, tuple[str, ...]]
Emitted = list[tuple[str, float, dict[str, str]]]  # (catalogue key, value, labels)


class Target:
    """What one GPM sample covers: a whole GPU, or one GPU instance of a MIG GPU."""

    __slots__ = ("key", "dev", "gpu_instance", "window_labels", "metrics")

    def __init__(self, key: Key, dev: Device, gpu_instance: int | None, window_labels: dict[str, str],
                 metrics: dict[int, Metric]):
        self.key = key
        self.dev = dev
        self.gpu_instance = gpu_instance  # None: the whole GPU
        self.window_labels = window_labels
        self.metrics = metrics  # by GPM metric id


class Sampler:
    """The GPM samples of one process: per key, the last sample and when it was taken (monotonic)."""

    def __init__(self, nvml: Nvml):
        self.nvml = nvml
        self.baselines: dict[Key, tuple[object, float]] = {}
        self.last: dict[Key, Emitted] = {}  # what each key's baseline gave, written again while it is young
        self.targets: list[Target] = []
        self.fresh: set = set()  # keys whose baseline this cycle took: they wait for the window

    def begin(self, targets: list[Target]) -> None:
        """Forget what is gone; take a first sample of every target that has none."""
        wanted = {t.key for t in targets}
        for key in [key for key in self.baselines if key not in wanted]:
            self._forget(key)
        self.targets, self.fresh = targets, set()
        for target in targets:
            if target.key in self.baselines:
                continue
            try:
                taken = self._sample(target)
            except DeviceGone:
                continue  # the nvml collector reports the GPU down; the others go on
            if taken is not None:
                self.baselines[target.key] = taken
                self.fresh.add(target.key)

    def finish(self, samples, window: float) -> None:
        """Take every target's next sample (waiting for the rest of the window where its baseline was
        taken this cycle) and add the values over the two."""
        for target in self.targets:
            if target.key not in self.baselines:
                continue  # its first sample failed; tried again next cycle
            try:
                emitted = self._advance(target, window)
            except DeviceGone:
                self._forget(target.key)  # the nvml collector reports the GPU down
                continue
            for key, value, labels in emitted:
                samples.add(key, value, labels)

    def _advance(self, target: Target, window: float) -> Emitted:
        old, old_taken = self.baselines[target.key]
        wait = old_taken + window - time.monotonic()
        if wait > 0:
            if target.key not in self.fresh:
                return self.last.get(target.key, [])
            time.sleep(wait)
        taken = self._sample(target)
        if taken is None:
            return []  # the old baseline stays: the next value covers a longer window
        new, new_taken = taken
        try:
            emitted = self._values(target, old, new, new_taken - old_taken)
        finally:
            self.baselines[target.key] = taken
            self._free(old)
        self.last[target.key] = emitted
        return emitted

    def _sample(self, target: Target) -> tuple[object, float] | None:
        """A new sample of the target and when it was taken; None where it could not be taken."""
        nvml, dev = self.nvml, target.dev
        sample = nvml.call(pynvml.nvmlGpmSampleAlloc, device=dev.name)
        if sample is None:
            return None
        try:
            if target.gpu_instance is None:
                done = nvml.call(pynvml.nvmlGpmSampleGet, dev.handle, sample, device=dev.name)
            else:
                done = nvml.call(pynvml.nvmlGpmMigSampleGet, dev.handle, target.gpu_instance, sample,
                                 device=dev.name)
        except BaseException:
            self._free(sample)
            raise
        if done is None:
            self._free(sample)
            return None
        return sample, time.monotonic()

    def _values(self, target: Target, old, new, seconds: float) -> Emitted:
        ids = list(target.metrics)
        emitted: Emitted = []
        request = pynvml.c_nvmlGpmMetricsGet_t()
        capacity = len(request.metrics)  # this pynvml's NVML_GPM_METRIC_MAX (98 in 12.535)
        for start in range(0, len(ids), capacity):
            chunk = ids[start:start + capacity]
            if start:
                request = pynvml.c_nvmlGpmMetricsGet_t()
            request.version = pynvml.NVML_GPM_METRICS_GET_VERSION  # pynvml leaves it to the caller
            request.numMetrics = len(chunk)
            request.sample1, request.sample2 = old, new
            for index, metric_id in enumerate(chunk):
                request.metrics[index].metricId = metric_id
            if self.nvml.call(pynvml.nvmlGpmMetricsGet, request, device=target.dev.name) is None:
                return []
            for index, metric_id in enumerate(chunk):
                answer = request.metrics[index]
                if answer.nvmlReturn == pynvml.NVML_SUCCESS:
                    key, labels, convert = target.metrics[metric_id]
                    emitted.append((key, convert(answer.value), labels))
        if emitted:  # the window of values that were written
            emitted.insert(0, ("gpm_window_seconds", seconds, target.window_labels))
        return emitted

    def _forget(self, key: Key) -> None:
        sample, _ = self.baselines.pop(key)
        self.last.pop(key, None)
        self._free(sample)

    def _free(self, sample) -> None:
        self.nvml.call(pynvml.nvmlGpmSampleFree, sample)

    def close(self) -> None:
        for key in list(self.baselines):
            self._forget(key)
        self.targets = []


def wrappers_missing() -> str | None:
    """What to do where the installed pynvml is older than NVML's GPM functions, else None."""
    if hasattr(pynvml, "nvmlGpmMetricsGet"):
        return None
    return (f"this nvidia-ml-py ({getattr(pynvml, '__version__', 'old')}) has no GPM functions: upgrade "
            "it (pip install -U nvidia-ml-py)")


def begin(ctx) -> None:
    missing = wrappers_missing()
    if missing:
        raise NotApplicable(missing)
    _, devices = ctx.devices()
    sampler = ctx.kept("gpm", lambda: Sampler(ctx.nvml))
    with_gpm = [dev for dev in devices if supported(ctx, dev)]
    sampler.begin([target for dev in with_gpm for target in _targets(ctx, dev)])
    if not with_gpm:
        raise NotApplicable("no GPU here supports GPM (NVML's profiling metrics need a Hopper or newer GPU)")


def collect(ctx, samples) -> None:
    ctx.kept("gpm", lambda: Sampler(ctx.nvml)).finish(samples, ctx.options.gpm_window_seconds)


def supported(ctx, dev: Device) -> bool:
    """Whether NVML offers GPM for the GPU (a static answer, kept in the inventory cache). A driver
    without the function or its struct version answers no."""
    if not dev.up:
        return False
    nvml = ctx.nvml

    def ask() -> bool:
        answer = nvml.call(pynvml.nvmlGpmQueryDeviceSupport, dev.handle, device=dev.name)
        return bool(answer is not None and answer.isSupportedDevice)

    try:
        return ctx.static(dev, "gpm_supported", ask, shape.boolean)
    except DeviceGone:
        return False


def _targets(ctx, dev: Device) -> list[Target]:
    """The GPU's GPM targets with the metrics this detail level wants: the whole GPU, or, with MIG on,
    its whole-GPU rates and each GPU instance's activity."""
    # and the rows --naming dcgm writes under DCGM's names, whatever the level (DCGM_FI_PROF_GR_ENGINE_ACTIVE)
    dcgm = ctx.options.counters.selected if ctx.options.naming != "gputext" else {}

    def wants(key: str) -> bool:
        return written_at(ctx.options.detail, key) or key in dcgm

    device_labels = dev.labels
    gpu_rates = {metric_id: (key, {**device_labels, **extra}, convert)
                 for metric_id, (key, extra, convert) in GPU_METRICS.items() if wants(key)}
    if wants(LINK_RECEIVE) or wants(LINK_TRANSMIT):
        gpu_rates.update(_link_metrics(ctx, dev, wants))

    def activity(mig_labels: dict[str, str]):
        labels = {**device_labels, **mig_labels}
        return {metric_id: (key, {**labels, **extra}, convert)
                for metric_id, (key, extra, convert) in INSTANCE_METRICS.items() if wants(key)}

    whole = {"gpu_instance": "", "mig_device": ""}
    key: Key = (dev.uuid, "", ())
    mig = dev.settings.get("mig_mode")
    if not (mig and mig[0] == 1):
        return [Target(key, dev, None, {**device_labels, **whole}, {**activity(whole), **gpu_rates})]
    targets = [Target(key, dev, None, {**device_labels, **whole}, gpu_rates)] if gpu_rates else []
    try:
        mig_devices = ctx.mig_devices(dev)
    except DeviceGone:
        return []
    for gpu_instance, members in gpu_instances(mig_devices):
        labels = instance_labels(gpu_instance, members)
        key = (dev.uuid, gpu_instance, tuple(sorted(m.uuid for m in members)))
        targets.append(Target(key, dev, int(gpu_instance), {**device_labels, **labels},
                              activity(labels)))
    return targets


def _link_metrics(ctx, dev: Device, wants) -> dict[int, Metric]:
    from .nvlink import LINKS, present_links  # the links the nvlink collector found, cached alike

    try:
        links = ctx.static(dev, "nvlink_links", lambda: present_links(ctx.nvml, dev), LINKS)
    except DeviceGone:
        return {}
    metrics = {}
    for link in links:
        receive, transmit = link_metric_ids(link)
        labels = {**dev.labels, "link": str(link)}
        if wants(LINK_RECEIVE):
            metrics[receive] = (LINK_RECEIVE, labels, mib_per_second)
        if wants(LINK_TRANSMIT):
            metrics[transmit] = (LINK_TRANSMIT, labels, mib_per_second)
    return metrics

"""PCIe traffic, replays, errors and link state.

Traffic comes from the cumulative byte counters (fields 197/198) in the same nvmlDeviceGetFieldValues call
as the replay and error counters. nvml.h warns that they "can be wrapped" without saying at what width, so
the width is taken from the type NVML returns them in. 64-bit counters are written as counters (2**64
bytes take centuries at PCIe 5 speed). A 32-bit counter wraps every 4 GiB, that is several times between
two runs at a few GB/s; Prometheus would read each wrap as a reset and rate() would silently under-count,
so such a GPU gets the sampled rate instead, as does one whose driver lacks the fields.

The sampled rate is nvmlDeviceGetPcieThroughput, which blocks 20 ms per call: the samples run in parallel
threads for all such GPUs and both directions (ctypes releases the GIL during the call), so a run pays
about 20 ms once, not 40 ms per GPU as a loop would. Maximum generation and width are static and cached.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import pynvml

from ..nvml import DeviceGone
from .nvml import device_rows

FI_TX_BYTES, FI_RX_BYTES = 197, 198
FI_REPLAYS, FI_REPLAY_ROLLOVERS = 94, 95
KB = 1000  # nvmlDeviceGetPcieThroughput reports KB/s ("1KB granularity")

ERROR_FIELDS: Dict[int, str] = {
    169: "l0_to_recovery",
    173: "correctable",
    174: "nak_received",
    175: "receiver_error",
    176: "bad_tlp",
    177: "nak_sent",
    178: "bad_dllp",
    179: "non_fatal",
    180: "fatal",
    181: "unsupported_request",
    182: "lcrc",
}
FIELDS = [FI_TX_BYTES, FI_RX_BYTES, FI_REPLAYS, FI_REPLAY_ROLLOVERS, *ERROR_FIELDS]
THROUGHPUT = (("pcie_transmit_bytes_per_second", pynvml.NVML_PCIE_UTIL_TX_BYTES),
              ("pcie_receive_bytes_per_second", pynvml.NVML_PCIE_UTIL_RX_BYTES))


def collect(ctx, samples) -> None:
    nvml = ctx.nvml
    _, devices = ctx.devices()
    to_sample = []
    for dev in devices:
        if not dev.up:
            continue
        try:
            if not _collect_device(ctx, dev, samples):
                to_sample.append(dev)
        except DeviceGone as err:
            ctx.warn(f"{dev.name}: PCIe not read: {err}")
    for dev, key, value in _sample_throughput(nvml, to_sample):
        samples.add(key, value, dev.labels)


def _collect_device(ctx, dev, samples) -> bool:
    """Add the device's series; False when it has no usable byte counters and needs the sampled rate."""
    nvml, h, where = ctx.nvml, dev.handle, dev.name
    widths = {}
    values = {fid: v for (fid, _), v in nvml.fields(h, [(fid, 0) for fid in FIELDS], device=where,
                                                     widths=widths).items()}
    counters = all(widths.get((fid, 0), 0) >= 64 for fid in (FI_TX_BYTES, FI_RX_BYTES))
    replays = values.get(FI_REPLAYS)
    if replays is None:
        replays = nvml.call(pynvml.nvmlDeviceGetPcieReplayCounter, h, device=where)
    # the current link is read only where it is written (at --detail full)
    link_generation = link_width = None
    if samples.wants("pcie_link_generation"):
        link_generation = nvml.call(pynvml.nvmlDeviceGetCurrPcieLinkGeneration, h, device=where)
    if samples.wants("pcie_link_width"):
        link_width = nvml.call(pynvml.nvmlDeviceGetCurrPcieLinkWidth, h, device=where)
    maxima = ctx.static(dev, "pcie_max", lambda: [
        nvml.call(pynvml.nvmlDeviceGetMaxPcieLinkGeneration, h, device=where),
        nvml.call(pynvml.nvmlDeviceGetMaxPcieLinkWidth, h, device=where)])
    rows = device_rows(dev, samples.level)
    series: List[Tuple[str, object, Optional[Tuple[str, ...]]]] = [
        (key, value, rows.get(key)) for key, value in (
            ("pcie_transmit_bytes_total", values.get(FI_TX_BYTES) if counters else None),
            ("pcie_receive_bytes_total", values.get(FI_RX_BYTES) if counters else None),
            ("pcie_replays_total", replays),
            ("pcie_replay_rollovers_total", values.get(FI_REPLAY_ROLLOVERS)),
            ("pcie_link_generation", link_generation),
            ("pcie_link_width", link_width),
            ("pcie_link_max_generation", maxima[0]),
            ("pcie_link_max_width", maxima[1]))]
    series += [("pcie_errors_total", values.get(fid), rows.get("pcie_errors_total", name))
               for fid, name in ERROR_FIELDS.items()]
    for key, value, labels in series:
        if labels is not None:
            samples.add_row(key, value, labels)
    return counters


def _sample_throughput(nvml, devices) -> List[Tuple[object, str, float]]:
    """Sample both directions of every device at once; returns (device, metric key, bytes/s)."""
    import threading  # only nodes without the byte counters pay for it

    results: List[Tuple[object, str, float]] = []
    lock = threading.Lock()

    def sample(dev, key, counter):
        try:
            kbps = nvml.call(pynvml.nvmlDeviceGetPcieThroughput, dev.handle, counter, device=dev.name)
        except DeviceGone:
            return
        if kbps is not None:
            with lock:
                results.append((dev, key, kbps * KB))

    threads = [threading.Thread(target=sample, args=(dev, key, counter))
               for dev in devices for key, counter in THROUGHPUT]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results

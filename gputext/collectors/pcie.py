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


import pynvml

from ..exposition import clean
from ..nvml import DeviceGone
from .nvml import device_rows

FI_TX_BYTES, FI_RX_BYTES = 197, 198
FI_REPLAYS, FI_REPLAY_ROLLOVERS = 94, 95
KB = 1000  # nvmlDeviceGetPcieThroughput reports KB/s ("1KB granularity")

ERROR_FIELDS: dict[int, str] = {
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


class _Plan:
    """A GPU's field request at this level and the label values of its series (None where the level
    does not write it): the error counters and rollovers are asked of the driver only at full."""

    def __init__(self, rows):
        self.rows = {key: rows.get(key) for key in (
            "pcie_transmit_bytes_total", "pcie_receive_bytes_total", "pcie_replays_total",
            "pcie_replay_rollovers_total", "pcie_link_generation", "pcie_link_width",
            "pcie_link_max_generation", "pcie_link_max_width")}
        self.errors = [(fid, labels) for fid, name in ERROR_FIELDS.items()
                       for labels in [rows.get("pcie_errors_total", name)] if labels is not None]
        # the byte counters are read at every level: where they are missing or 32-bit, the sampled
        # rate stands in for them
        wanted = [FI_TX_BYTES, FI_RX_BYTES, FI_REPLAYS]
        if self.rows["pcie_replay_rollovers_total"] is not None:
            wanted.append(FI_REPLAY_ROLLOVERS)
        self.keys = tuple((fid, 0) for fid in wanted + [fid for fid, _ in self.errors])


def _collect_device(ctx, dev, samples) -> bool:
    """Add the device's series; False when it has no usable byte counters and needs the sampled rate."""
    nvml, h, where = ctx.nvml, dev.handle, dev.name
    plan = dev.derived("pcie", samples.level.key, lambda: _Plan(device_rows(dev, samples.level)))
    rows = plan.rows
    widths = {}
    values = {fid: v for (fid, _), v in nvml.fields(h, plan.keys, device=where, widths=widths).items()}
    counters = all(widths.get((fid, 0), 0) >= 64 for fid in (FI_TX_BYTES, FI_RX_BYTES))
    replays = values.get(FI_REPLAYS)
    if replays is None:
        replays = nvml.call(pynvml.nvmlDeviceGetPcieReplayCounter, h, device=where)
    # the current link is read only where it is written (at --detail full)
    link_generation = link_width = None
    if rows["pcie_link_generation"] is not None:
        link_generation = nvml.call(pynvml.nvmlDeviceGetCurrPcieLinkGeneration, h, device=where)
    if rows["pcie_link_width"] is not None:
        link_width = nvml.call(pynvml.nvmlDeviceGetCurrPcieLinkWidth, h, device=where)
    maxima = ctx.static(dev, "pcie_max", lambda: [
        nvml.call(pynvml.nvmlDeviceGetMaxPcieLinkGeneration, h, device=where),
        nvml.call(pynvml.nvmlDeviceGetMaxPcieLinkWidth, h, device=where)])
    series = [
        ("pcie_transmit_bytes_total", values.get(FI_TX_BYTES) if counters else None),
        ("pcie_receive_bytes_total", values.get(FI_RX_BYTES) if counters else None),
        ("pcie_replays_total", clean(replays)),
        ("pcie_replay_rollovers_total", values.get(FI_REPLAY_ROLLOVERS)),
        ("pcie_link_generation", clean(link_generation)),
        ("pcie_link_width", clean(link_width)),
        ("pcie_link_max_generation", clean(maxima[0])),
        ("pcie_link_max_width", clean(maxima[1]))]
    samples.add_kept([(key, value, rows[key]) for key, value in series if rows[key] is not None]
                     + [("pcie_errors_total", values.get(fid), labels) for fid, labels in plan.errors])
    return counters


def _sample_throughput(nvml, devices) -> list[tuple[object, str, float]]:
    """Sample both directions of every device at once; returns (device, metric key, bytes/s)."""
    import threading  # only nodes without the byte counters pay for it

    results: list[tuple[object, str, float]] = []
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

"""PCIe traffic, replays, errors and link state.

Traffic comes from the cumulative byte counters (fields 197/198) in the same nvmlDeviceGetFieldValues call
as the replay and error counters. nvml.h warns that they "can be wrapped" without saying at what width, so
the width is taken from the type NVML returns them in. 64-bit counters are written as counters (2**64
bytes take centuries at PCIe 5 speed). A 32-bit counter wraps every 4 GiB, that is several times between
two runs at a few GB/s; Prometheus would read each wrap as a reset and rate() would silently under-count,
so such a GPU gets the sampled rate instead, as does one whose driver lacks the fields.

The sampled rate is nvmlDeviceGetPcieThroughput, which blocks 20 ms per call (the driver sleeps while it
samples the link). How it is taken depends on how many collections the process makes:

- The first collection of a process (a one-shot run: every run of the timer) samples all such GPUs and
  both directions at once in short-lived threads (ctypes releases the GIL during the call), so it pays
  about 20 ms of wall time once, not 40 ms per GPU as a loop would.
- Later collections (the repeating mode, `show`'s second look) start no thread per collection: one
  sampler thread that lives as long as the process takes the samples one after another in the
  background, once every --pcie-sample-interval (15 s), and each collection writes the values of the
  last pass that completed. A sample costs CPU even while the driver sleeps (about 65 us of system time
  each, measured against the fake, which sleeps as the driver does): a pass over 8 GPUs is about 1 ms,
  as much as half a cycle of every other collector, so it is taken as often as a scrape can see it
  (node_exporter is scraped every 15-60 s), not every cycle. A value is a 20 ms glimpse of the link
  taken at most that long ago, as the one-shot's is a glimpse taken during the run. A pass's values
  older than MAX_AGE_SECONDS past the sample interval are not written (a driver call that hangs must
  not leave a rate that looks current).

Where the run's gpm collector writes the GPU's PCIe rates (gpm_pcie_*_bytes_per_second: Hopper and newer,
at --detail full or under --naming dcgm), the same rate, measured over the GPM window instead of 20 ms, is
already there: such a GPU is not sampled. Maximum generation and width are static and cached.
"""

from __future__ import annotations

import threading
import time

import pynvml

from .. import shape
from ..catalogue import written_at
from ..exposition import clean
from ..nvml import DeviceGone
from .nvml import device_rows

FI_TX_BYTES, FI_RX_BYTES = 197, 198
FI_REPLAYS, FI_REPLAY_ROLLOVERS = 94, 95
# [maximum link generation, maximum width], kept in the inventory cache (None: not answered)
MAXIMA = shape.tuple_of(shape.optional(shape.count), shape.optional(shape.count))
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
    to_sample = [dev for dev in to_sample if not _gpm_writes_pcie_rates(ctx, dev)]
    if to_sample:
        sampler = ctx.kept("pcie", lambda: Sampler(nvml))
        for dev, key, value in sampler.rates(to_sample, ctx.options.pcie_sample_interval_seconds):
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
        nvml.call(pynvml.nvmlDeviceGetMaxPcieLinkWidth, h, device=where)], MAXIMA)
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


# A pass's values are not written once older than the sample interval and this: a driver call that hangs
# must not leave a rate that looks current. Far above a pass of any node (40 ms per GPU).
MAX_AGE_SECONDS = 60.0

GPM_RATES = ("gpm_pcie_transmit_bytes_per_second", "gpm_pcie_receive_bytes_per_second")


def _gpm_writes_pcie_rates(ctx, dev) -> bool:
    """Whether this run's gpm collector writes the GPU's PCIe rates (its cached support answer)."""
    options = ctx.options
    chosen = options.collectors
    if chosen and "gpm" not in chosen:
        return False
    dcgm = options.counters.selected if options.naming != "gputext" else {}
    if not all(written_at(options.detail, key) or key in dcgm for key in GPM_RATES):
        return False
    from .gpm import supported  # only where the level writes GPM's rates

    return supported(ctx, dev)


class Sampler:
    """The PCIe rates of one process's collections (see the module's doc): the first collection samples
    in parallel; later ones hand the work to one thread that lives until close()."""

    def __init__(self, nvml):
        self.nvml = nvml
        # (GPU UUID, metric key) -> bytes/s, from the last pass that completed, and when it completed
        self.latest: dict[tuple[str, str], float] = {}
        self.completed_at = 0.0
        self.asked_at: float | None = None  # when the last pass was asked for; None: no collection yet
        self._wake = threading.Condition()
        self._wanted: list | None = None  # the next pass's (device, key, counter); None: none asked
        self._stopping = False
        self._thread: threading.Thread | None = None

    def rates(self, devices, sample_interval: float) -> list[tuple[object, str, float]]:
        """(device, metric key, bytes/s) for the devices' two directions."""
        now = time.monotonic()
        if self.asked_at is None:  # the process's first collection
            self.latest = _sample_in_parallel(self.nvml, devices)
            self.completed_at = self.asked_at = time.monotonic()
        elif now - self.asked_at >= sample_interval and self._ask(
                [(dev, key, counter) for dev in devices for key, counter in THROUGHPUT]):
            self.asked_at = now
        latest = self.latest
        if now - self.completed_at > sample_interval + MAX_AGE_SECONDS:
            return []
        return [(dev, key, latest[dev.uuid, key]) for dev in devices for key, _ in THROUGHPUT
                if (dev.uuid, key) in latest]

    def _ask(self, wanted: list) -> bool:
        """Ask for a pass over `wanted`; False while the last one still runs (the next collection asks
        again)."""
        with self._wake:
            if self._wanted is not None:
                return False
            self._wanted = wanted
            self._wake.notify()
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="gputext-pcie-sampler", daemon=True)
            self._thread.start()
        return True

    def _run(self) -> None:
        while True:
            with self._wake:
                while self._wanted is None and not self._stopping:
                    self._wake.wait()
                if self._stopping:
                    return
                wanted = self._wanted
            latest = {}
            for dev, key, counter in wanted:
                if self._stopping:  # between two samples: close() waits for at most one
                    return
                value = _sample(self.nvml, dev, counter)
                if value is not None:
                    latest[dev.uuid, key] = value
            with self._wake:
                self.latest, self.completed_at = latest, time.monotonic()
                self._wanted = None

    def close(self) -> None:
        """Stop the thread (before NVML shuts down: the context closes what it keeps first)."""
        with self._wake:
            self._stopping = True
            self._wake.notify()
        if self._thread is not None:
            self._thread.join()
            self._thread = None


def _sample(nvml, dev, counter) -> float | None:
    """One 20 ms sample of one direction, in bytes/s; None where it cannot be had."""
    try:
        kbps = nvml.call(pynvml.nvmlDeviceGetPcieThroughput, dev.handle, counter, device=dev.name)
    except DeviceGone:
        return None
    return None if kbps is None else kbps * KB


def _sample_in_parallel(nvml, devices) -> dict[tuple[str, str], float]:
    """Both directions of every device at once, each in a thread of its own: {(UUID, key): bytes/s}."""
    results: dict[tuple[str, str], float] = {}

    def sample(dev, key, counter):
        value = _sample(nvml, dev, counter)
        if value is not None:
            results[dev.uuid, key] = value  # one dict item set: atomic under the GIL

    threads = [threading.Thread(target=sample, args=(dev, key, counter))
               for dev in devices for key, counter in THROUGHPUT]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results

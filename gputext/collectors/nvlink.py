"""NVLink per-link traffic, state, speed and errors, straight from NVML's cumulative counters.

Unlike `nvidia-smi nvlink -g`, this needs no counter setup (`nvidia-smi nvlink -sc`): fields 138-141
are always-running KiB counters. Per GPU and run it costs one nvmlDeviceGetFieldValues call for all links.
The links present, the fields the GPU answers, and each link's version and peer
(nvmlDeviceGetNvLinkRemotePciInfo, one call per link) are static and kept in the inventory cache.
A GPU without NVLink writes no NVLink series.
"""

from __future__ import annotations

from typing import Dict, Tuple

import pynvml

from ..nvml import DeviceGone, text

FI_LINK_COUNT = 91
FI_SPEED_MBPS = 164
FI_STATE = 165
FI_VERSION = 166
NVML_NVLINK_MAX_LINKS = 36
STATE_ACTIVE = 1  # NVML_NVLINK_STATE_ACTIVE
KIB = 1024
MB = 1e6  # NVML's NVLink "MBps" are decimal megabytes per second

# Traffic counters: metric key -> field ids, the first the device answers wins, with their scale.
# Blackwell's NVLink5 drops the KiB throughput fields in favour of byte counters (202/204).
TRAFFIC: Dict[str, Tuple[Tuple[int, float], ...]] = {
    "nvlink_transmit_bytes_total": ((138, KIB), (202, 1)),
    "nvlink_receive_bytes_total": ((139, KIB), (204, 1)),
    "nvlink_raw_transmit_bytes_total": ((140, KIB),),
    "nvlink_raw_receive_bytes_total": ((141, KIB),),
}
# Error counters: type label -> field ids, first answered wins. Blackwell has no replay or CRC counters;
# its recovery events (215, and 214 for those that failed) replace 162.
ERRORS: Dict[str, Tuple[Tuple[int, float], ...]] = {
    "replay": ((161, 1),),
    "recovery": ((162, 1), (215, 1)),
    "recovery_failed": ((214, 1),),
    "crc": ((163, 1),),
}
# The per-GPU sum (nvlink_errors_total) adds these; recovery_failed counts a subset of the recoveries.
SUMMED_ERRORS = ("replay", "recovery", "crc")
PER_LINK_FIELDS = sorted({FI_SPEED_MBPS, FI_STATE}
                         | {fid for fields in TRAFFIC.values() for fid, _ in fields}
                         | {fid for fields in ERRORS.values() for fid, _ in fields})
# Which of PER_LINK_FIELDS a GPU answers depends on its NVLink generation and the driver, so it is learnt
# on the first run and cached: an H100 then asks for 11 fields per link instead of 15 (Blackwell for
# others). Fewer requested fields cost less in pynvml and in the driver, which serves each one.


def collect(ctx, samples) -> None:
    _, devices = ctx.devices()
    level = _Level(samples)
    for dev in devices:
        if not dev.up:
            continue  # the nvml collector reports it down
        try:
            _collect_device(ctx, dev, samples, level)
        except DeviceGone as err:
            ctx.warn(f"{dev.name}: NVLink not read: {err}")


class _Level:
    """What the detail level writes of the NVLink families (the same for every GPU and cycle)."""

    def __init__(self, samples):
        self.per_link_errors = samples.wants("nvlink_link_errors_total")
        self.speed = samples.wants("nvlink_speed_bytes_per_second")
        self.info = samples.wants("nvlink_info")
        self.traffic = tuple(key for key in TRAFFIC if samples.wants(key))
        # fields that only feed series the level leaves out: not asked of the driver at all
        self.unwanted = ({FI_SPEED_MBPS} if not self.speed else set()) | {
            fid for key, candidates in TRAFFIC.items() if key not in self.traffic for fid, _ in candidates}
        self.key = (self.per_link_errors, self.speed, self.info, self.traffic)


class _Plan:
    """A GPU's request and, per link, its label tuples and which requested field answers each series:
    built once from its links and answered fields (static) and kept (Device.derived), so that a cycle
    only reads the values. A candidate field the GPU does not answer is not requested, so it can never
    have a value: leaving it out of the plan changes nothing."""

    def __init__(self, dev, links, fields, level: _Level):
        self.gpu = (str(dev.index), dev.uuid)
        requested = [fid for fid in fields if fid not in level.unwanted]
        self.keys = tuple((fid, link) for link in links for fid in requested)

        def answering(candidates, link):
            return tuple(((fid, link), scale) for fid, scale in candidates if fid in requested)

        # (link, its label values, errors: (candidates, summed, labels), traffic: (key, candidates))
        self.links = []
        for link in links:
            on_link = self.gpu + (str(link),)
            errors = tuple((answering(candidates, link), error_type in SUMMED_ERRORS, on_link + (error_type,))
                           for error_type, candidates in ERRORS.items())
            traffic = tuple((key, answering(TRAFFIC[key], link)) for key in level.traffic)
            self.links.append((link, on_link, tuple(e for e in errors if e[0]),
                               tuple(t for t in traffic if t[1])))


def _link_state(nvml, dev, link, values):
    state = values.get((FI_STATE, link))
    if state is None:  # drivers without field 165
        state = nvml.call(pynvml.nvmlDeviceGetNvLinkState, dev.handle, link, device=dev.name)
    return state


def present_links(nvml, dev):
    """The link indices this GPU has (active or not): those that answer a state."""
    count = nvml.fields(dev.handle, [(FI_LINK_COUNT, 0)], device=dev.name).get((FI_LINK_COUNT, 0))
    count = NVML_NVLINK_MAX_LINKS if count is None else int(count)
    states = nvml.fields(dev.handle, [(FI_STATE, link) for link in range(count)], device=dev.name)
    return [link for link in range(count) if _link_state(nvml, dev, link, states) is not None]


def _answered_fields(nvml, dev, links):
    values = nvml.fields(dev.handle, [(fid, link) for link in links for fid in PER_LINK_FIELDS],
                         device=dev.name)
    return sorted({fid for fid, _ in values})


def _collect_device(ctx, dev, samples, level: _Level) -> None:
    nvml = ctx.nvml
    links = ctx.static(dev, "nvlink_links", lambda: present_links(nvml, dev))
    if not links:
        return
    fields = ctx.static(dev, "nvlink_fields", lambda: _answered_fields(nvml, dev, links))
    plan = dev.derived("nvlink", (links, fields, level.key), lambda: _Plan(dev, links, fields, level))
    values = nvml.fields(dev.handle, plan.keys, device=dev.name)
    # rows per key, (label values, value), in link order: added once all is read
    up, info, speed, link_errors = [], [], [], []
    traffic = {key: [] for key in level.traffic}
    errors = None  # the sum over every link that answers, active or not, so that it never goes down
    for link, on_link, link_error_fields, traffic_fields in plan.links:
        state = _link_state(nvml, dev, link, values)
        if state is None:
            continue
        for candidates, summed, labels in link_error_fields:
            count = None
            for key, scale in candidates:  # the first that answers (_first, inline: 430 a cycle)
                count = values.get(key)
                if count is not None:
                    count *= scale
                    break
            if count is not None and summed:
                errors = (errors or 0) + count
            if level.per_link_errors:
                link_errors.append((labels, count))
        if state != STATE_ACTIVE:
            up.append((on_link, 0))
            continue
        up.append((on_link, 1))
        if level.info:  # the peer is read once per link, and only where it is written
            peer = ctx.static(dev, f"nvlink_peer_{link}", lambda link=link: _read_peer(nvml, dev, link))
            info.append((on_link + (peer["version"], peer["remote_pci_bus_id"]), 1))
        if level.speed:
            mbps = values.get((FI_SPEED_MBPS, link))
            speed.append((on_link, None if mbps is None else mbps * MB))
        for key, candidates in traffic_fields:
            traffic[key].append((on_link, _first(values, candidates)))
    samples.add_rows("nvlink_link_errors_total", link_errors)
    samples.add_rows("nvlink_up", up)
    samples.add_rows("nvlink_info", info)
    samples.add_rows("nvlink_speed_bytes_per_second", speed)
    for key, rows in traffic.items():
        samples.add_rows(key, rows)
    samples.add_row("nvlink_errors_total", errors, plan.gpu)


def _first(values, candidates):
    for key, scale in candidates:
        value = values.get(key)
        if value is not None:
            return value * scale
    return None


def _read_peer(nvml, dev, link):
    """The link's NVLink version and the PCI bus id at its other end: static, read once."""
    version = nvml.fields(dev.handle, [(FI_VERSION, link)], device=dev.name).get((FI_VERSION, link))
    if version is None:
        version = nvml.call(pynvml.nvmlDeviceGetNvLinkVersion, dev.handle, link, device=dev.name)
    pci = nvml.call(pynvml.nvmlDeviceGetNvLinkRemotePciInfo, dev.handle, link, device=dev.name)
    return {"version": "" if version is None else str(int(version)),
            "remote_pci_bus_id": text(pci.busId) if pci is not None else ""}

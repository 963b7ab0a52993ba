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
    for dev in devices:
        if not dev.up:
            continue  # the nvml collector reports it down
        try:
            _collect_device(ctx, dev, samples)
        except DeviceGone as err:
            ctx.warn(f"{dev.name}: NVLink not read: {err}")


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


def _collect_device(ctx, dev, samples) -> None:
    nvml = ctx.nvml
    links = ctx.static(dev, "nvlink_links", lambda: present_links(nvml, dev))
    if not links:
        return
    fields = ctx.static(dev, "nvlink_fields", lambda: _answered_fields(nvml, dev, links))
    unwanted = _unwanted_fields(samples)
    values = nvml.fields(dev.handle, [(fid, link) for link in links for fid in fields if fid not in unwanted],
                         device=dev.name)
    per_link_errors = samples.wants("nvlink_link_errors_total")
    speed_wanted = samples.wants("nvlink_speed_bytes_per_second")
    traffic = [(key, candidates) for key, candidates in TRAFFIC.items() if samples.wants(key)]
    pending = []  # (key, value, label values in the catalogue's order): added once all is read
    gpu = (str(dev.index), dev.uuid)
    errors = None  # the sum over every link that answers, active or not, so that it never goes down
    for link in links:
        state = _link_state(nvml, dev, link, values)
        if state is None:
            continue
        on_link = gpu + (str(link),)
        for error_type, candidates in ERRORS.items():
            count = _first(values, link, candidates)
            if count is not None and error_type in SUMMED_ERRORS:
                errors = (errors or 0) + count
            if per_link_errors:
                pending.append(("nvlink_link_errors_total", count, on_link + (error_type,)))
        up = state == STATE_ACTIVE
        pending.append(("nvlink_up", 1 if up else 0, on_link))
        if not up:
            continue
        if samples.wants("nvlink_info"):  # the peer is read once per link, and only where it is written
            peer = ctx.static(dev, f"nvlink_peer_{link}", lambda link=link: _read_peer(nvml, dev, link))
            pending.append(("nvlink_info", 1, on_link + (peer["version"], peer["remote_pci_bus_id"])))
        if speed_wanted:
            speed = values.get((FI_SPEED_MBPS, link))
            pending.append(("nvlink_speed_bytes_per_second", None if speed is None else speed * MB, on_link))
        for key, candidates in traffic:
            pending.append((key, _first(values, link, candidates), on_link))
    pending.append(("nvlink_errors_total", errors, gpu))
    for key, value, label_values in pending:
        samples.add_row(key, value, label_values)


def _unwanted_fields(samples) -> set:
    """Fields that only feed series the detail level leaves out: not asked of the driver at all."""
    unwanted = set()
    if not samples.wants("nvlink_speed_bytes_per_second"):
        unwanted.add(FI_SPEED_MBPS)
    for key, candidates in TRAFFIC.items():
        if not samples.wants(key):
            unwanted.update(fid for fid, _ in candidates)
    return unwanted


def _first(values, link, candidates):
    for fid, scale in candidates:
        value = values.get((fid, link))
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

"""NVLink per-link traffic, state, speed and errors, straight from NVML's cumulative counters.

Unlike `nvidia-smi nvlink -g`, this needs no counter setup (`nvidia-smi nvlink -sc`): fields 138-141
are always-running KiB counters. Per GPU and run it costs one nvmlDeviceGetFieldValues call for all links.
The links present, the fields the GPU answers, and each link's version and peer
(nvmlDeviceGetNvLinkRemotePciInfo, one call per link) are static and kept in the inventory cache.
A GPU without NVLink writes no NVLink series.
"""

from __future__ import annotations


import pynvml

from .. import shape
from ..nvml import DeviceGone, text

FI_LINK_COUNT = 91
FI_SPEED_MBPS = 164
FI_STATE = 165
FI_VERSION = 166
NVML_NVLINK_MAX_LINKS = 36
STATE_ACTIVE = 1  # NVML_NVLINK_STATE_ACTIVE
KIB = 1024
# The static values kept in the inventory cache (gputext.devices): the link indices a GPU has, the
# per-link field ids that answer there, and each link's version and peer
LINKS = shape.where(shape.list_of(shape.count), lambda links: all(link < 1024 for link in links[:1024])
                    and len(links) <= 1024, "not a list of link indices")
FIELDS = shape.list_of(shape.count)
PEER = shape.record({"version": shape.text, "remote_pci_bus_id": shape.text})
MB = 1_000_000  # NVML's NVLink "MBps" are decimal megabytes per second
# nvmlNvlinkVersion_t, what field 166 and nvmlDeviceGetNvLinkVersion answer, as the version it names
# (NVLink 4.0, an H100's, is 6); a newer value than this table is left out, not written as a version
NVLINK_VERSIONS = {1: "1.0", 2: "2.0", 3: "2.2", 4: "3.0", 5: "3.1", 6: "4.0", 7: "5.0", 8: "6.0"}

# Traffic counters: metric key -> field ids, the first the device answers wins, with their scale.
# Blackwell's NVLink5 drops the KiB throughput fields in favour of byte counters (202/204).
TRAFFIC: dict[str, tuple[tuple[int, float], ...]] = {
    "nvlink_transmit_bytes_total": ((138, KIB), (202, 1)),
    "nvlink_receive_bytes_total": ((139, KIB), (204, 1)),
    "nvlink_raw_transmit_bytes_total": ((140, KIB),),
    "nvlink_raw_receive_bytes_total": ((141, KIB),),
}
# Error counters: type label -> field ids, first answered wins. Blackwell has no replay or CRC counters;
# its recovery events (215, and 214 for those that failed) replace 162.
# All are counts of events (no scale).
ERRORS: dict[str, tuple[int, ...]] = {
    "replay": (161,),
    "recovery": (162, 215),
    "recovery_failed": (214,),
    "crc": (163,),
}
# The per-GPU sum (nvlink_errors_total) adds these; recovery_failed counts a subset of the recoveries.
SUMMED_ERRORS = ("replay", "recovery", "crc")
PER_LINK_FIELDS = sorted({FI_SPEED_MBPS, FI_STATE}
                         | {fid for fields in TRAFFIC.values() for fid, _ in fields}
                         | {fid for fields in ERRORS.values() for fid in fields})
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
    """A GPU's request and, per link, its label tuples and where in the answer each series' value is:
    built once from its links and answered fields (static) and kept (Device.derived), so that a cycle
    only reads the values. A candidate field the GPU does not answer is not requested, so it can never
    have a value: leaving it out of the plan changes nothing. Values are found by their position in
    the request (Nvml.field_list): 108 a GPU on an H100, every cycle."""

    def __init__(self, dev, links, fields, level: _Level):
        self.gpu = (str(dev.index), dev.uuid)
        requested = [fid for fid in fields if fid not in level.unwanted]
        self.keys = tuple((fid, link) for link in links for fid in requested)
        position = {key: i for i, key in enumerate(self.keys)}
        self.links = tuple(links)
        self.on_link = tuple(self.gpu + (str(link),) for link in links)

        def answering(candidates, link):
            """(position, scale) of the requested candidates, first wins"""
            return tuple((position[fid, link], scale) for fid, scale in candidates if fid in requested)

        def counting(fids, link):
            """the positions of the requested error fields, first wins"""
            return tuple(position[fid, link] for fid in fids if fid in requested)

        # per link: where its state is (None: not requested, the state is asked by call)
        self.state = tuple(position.get((FI_STATE, link)) for link in links)
        # per link, per error type that can answer there: (positions, whether summed, labels)
        # (only the summed ones where the level writes no per-link errors)
        written = [error_type for error_type in ERRORS if level.per_link_errors or error_type in SUMMED_ERRORS]
        self.errors = tuple(tuple((counting(ERRORS[error_type], link), error_type in SUMMED_ERRORS,
                                   on_link + (error_type,))
                                  for error_type in written if counting(ERRORS[error_type], link))
                            for link, on_link in zip(links, self.on_link))
        # per traffic key, per link, its candidates
        self.traffic = tuple((key, tuple(answering(TRAFFIC[key], link) for link in links)) for key in level.traffic)
        self.speed = tuple(position.get((FI_SPEED_MBPS, link)) for link in links)
        self.info: dict[int, tuple[str, ...]] = {}  # link -> nvlink_info's labels, made on first use


def _link_state(nvml, dev, link, state):
    """The link's state: `state`, the field's answer, or where that is None (drivers without field
    165), the call's."""
    if state is None:
        state = nvml.call(pynvml.nvmlDeviceGetNvLinkState, dev.handle, link, device=dev.name)
    return state


def present_links(nvml, dev):
    """The link indices this GPU has (active or not): those that answer a state."""
    count = nvml.fields(dev.handle, [(FI_LINK_COUNT, 0)], device=dev.name).get((FI_LINK_COUNT, 0))
    count = NVML_NVLINK_MAX_LINKS if count is None else int(count)
    states = nvml.fields(dev.handle, [(FI_STATE, link) for link in range(count)], device=dev.name)
    return [link for link in range(count)
            if _link_state(nvml, dev, link, states.get((FI_STATE, link))) is not None]


def _answered_fields(nvml, dev, links):
    values = nvml.fields(dev.handle, [(fid, link) for link in links for fid in PER_LINK_FIELDS],
                         device=dev.name)
    return sorted({fid for fid, _ in values})


def _collect_device(ctx, dev, samples, level: _Level) -> None:
    nvml = ctx.nvml
    links = ctx.static(dev, "nvlink_links", lambda: present_links(nvml, dev), LINKS)
    if not links:
        return
    fields = ctx.static(dev, "nvlink_fields", lambda: _answered_fields(nvml, dev, links), FIELDS)
    plan = dev.derived("nvlink", (links, fields, level.key), lambda: _Plan(dev, links, fields, level))
    values = nvml.field_list(dev.handle, plan.keys, device=dev.name)
    states = [None if at is None else values[at] for at in plan.state]
    if None in states:  # drivers without field 165 (or a link that does not say): one call per link
        states = [_link_state(nvml, dev, link, state) for link, state in zip(plan.links, states)]
    # Rows are (label values, value) in link order, one family at a time. The values are clean
    # numbers (Nvml.field_list) or None, so they are added without cleaning them again.
    present = [i for i, state in enumerate(states) if state is not None]
    active = [i for i in present if states[i] == STATE_ACTIVE]
    on_link = plan.on_link
    errors = None  # the sum over every link that answers, active or not, so that it never goes down
    link_errors = [] if level.per_link_errors else None
    for i in present:
        for positions, summed, labels in plan.errors[i]:
            count = None
            for at in positions:  # the first that answers
                count = values[at]
                if count is not None:
                    break
            if count is not None and summed:
                errors = (errors or 0) + count
            if link_errors is not None:
                link_errors.append((labels, count))
    if link_errors is not None:
        samples.add_values("nvlink_link_errors_total", link_errors)
    samples.add_values("nvlink_up", [(on_link[i], 1 if states[i] == STATE_ACTIVE else 0) for i in present])
    if level.info:  # the peer is read once per link, and only where it is written
        samples.add_values("nvlink_info", [(_info_labels(ctx, nvml, dev, plan, i), 1) for i in active])
    if level.speed:
        speed = [None if at is None else values[at] for at in plan.speed]
        samples.add_values("nvlink_speed_bytes_per_second",
                           [(on_link[i], None if speed[i] is None else speed[i] * MB) for i in active])
    for key, per_link in plan.traffic:
        rows = []
        for i in active:
            candidates = per_link[i]
            if candidates:
                count = None
                for at, scale in candidates:  # the first that answers (inline: 288 a cycle)
                    count = values[at]
                    if count is not None:
                        count *= scale
                        break
                rows.append((on_link[i], count))
        samples.add_values(key, rows)
    samples.add_values("nvlink_errors_total", [(plan.gpu, errors)])


def _info_labels(ctx, nvml, dev, plan: _Plan, i: int) -> tuple[str, ...]:
    link = plan.links[i]
    labels = plan.info.get(link)
    if labels is None:
        peer = ctx.static(dev, f"nvlink_peer_{link}", lambda: _read_peer(nvml, dev, link), PEER)
        labels = plan.info[link] = plan.on_link[i] + (peer["version"], peer["remote_pci_bus_id"])
    return labels


def _read_peer(nvml, dev, link):
    """The link's NVLink version and the PCI bus id at its other end: static, read once."""
    version = nvml.fields(dev.handle, [(FI_VERSION, link)], device=dev.name).get((FI_VERSION, link))
    if version is None:
        version = nvml.call(pynvml.nvmlDeviceGetNvLinkVersion, dev.handle, link, device=dev.name)
    pci = nvml.call(pynvml.nvmlDeviceGetNvLinkRemotePciInfo, dev.handle, link, device=dev.name)
    return {"version": "" if version is None else NVLINK_VERSIONS.get(int(version), ""),
            "remote_pci_bus_id": text(pci.busId) if pci is not None else ""}

"""dcgm-exporter's names, labels and units (`--naming dcgm`), and its counters file (`--counters FILE`).

Most fleets' dashboards and alerts use the `DCGM_FI_*` names that NVIDIA's dcgm-exporter (4.x) writes. With
`--naming dcgm` gputext writes those names from NVML alone, with no DCGM host engine: each catalogue row
says what dcgm-exporter calls its series (gputext.catalogue.Dcgm: the name, its type and help, the unit
factor), so this module holds no second table of metrics. Series with no DCGM name keep gputext's.

The counters file is dcgm-exporter's own CSV (`DCGM_FI_NAME, gauge|counter|label, help`; `#` comments and
blank lines): it chooses which DCGM series are written. It may also name any NVML field, by its `NVML_FI_*`
name or number with an optional `:scope` (a link), with an optional fourth column for the metric name: the
analogue of dcgm-exporter's custom fields, read in the nvml collector's one nvmlDeviceGetFieldValues call.
"""

from __future__ import annotations

import csv
import re
import socket
from collections import namedtuple
from collections.abc import Iterable, Mapping
from functools import cached_property
from pathlib import Path

from .catalogue import METRICS, Dcgm
from .exposition import render_family

# The label fields of a counters file that gputext can fill, from the device's identity (gpu_info).
LABEL_FIELDS: dict[str, str] = {
    "DCGM_FI_DRIVER_VERSION": "driver_version",
    "DCGM_FI_DEV_SERIAL": "serial",
    "DCGM_FI_DEV_VBIOS_VERSION": "vbios_version",
    "DCGM_FI_DEV_NAME": "name",
}
# DCGM computes this one as a rate although dcgm-exporter types it `counter`: the increase of the sum of
# the NVLink data counters (KiB, sent and received, every link) over the time since DCGM's last sample,
# divided by 1000 (DcgmCacheManager.cpp). gputext reproduces that between two of its runs.
NVLINK_BANDWIDTH = Dcgm("DCGM_FI_DEV_NVLINK_BANDWIDTH_TOTAL", "counter",
                        "Total number of NVLink bandwidth counters for all lanes.")
NVLINK_COUNTERS = ("nvlink_transmit_bytes_total", "nvlink_receive_bytes_total")
# dcgm-exporter's XID gauge holds the code of the GPU's last XID (0 before the first): gputext takes it from
# gpu_xid_last_time_seconds, the code whose last record is the newest, where the xid collector read the log.
XID_ERRORS = Dcgm("DCGM_FI_DEV_XID_ERRORS", "gauge", "Value of the last XID error encountered.")
DERIVED = (NVLINK_BANDWIDTH, XID_ERRORS)
# dcgm-exporter's default counters file has DCGM_FI_DEV_VGPU_LICENSE_STATUS too: NVML has no such field.
DEFAULT_LABELS = ("DCGM_FI_DRIVER_VERSION",)
# the catalogue labels that dcgm-exporter spells its own way (MIG: the GPU instance and its profile)
MIG_LABELS = (("gpu_instance_profile", "GPU_I_PROFILE"), ("gpu_instance", "GPU_I_ID"))

_METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_NVML_FIELD = re.compile(r"(NVML_FI_[A-Z0-9_]+|\d+)(?::(\d+))?")


class CountersError(Exception):
    """A counters file that cannot be used; the message names the file and line."""


class Field(namedtuple("Field", "field_id scope name type help")):
    """An NVML field a counters file names, written as `name` (labels gpu, uuid; `scope` where given,
    else None)."""

    __slots__ = ()

    @property
    def key(self) -> tuple[int, int]:
        return (self.field_id, self.scope or 0)


class Counters:
    """What --naming dcgm writes: DCGM series (with the type and help the file gives), DCGM label fields,
    NVML fields, and the DCGM fields of the file that NVML cannot give (said once, then skipped). Not
    changed once made (a plain class, not a frozen dataclass, for the import: see catalogue)."""

    def __init__(self, metrics: tuple[Dcgm, ...], labels: tuple[str, ...] = DEFAULT_LABELS,
                 fields: tuple[Field, ...] = (), skipped: tuple[str, ...] = (),
                 source: str = "dcgm-exporter's default counters"):
        self.metrics = metrics
        self.labels = labels
        self.fields = fields
        self.skipped = skipped
        self.source = source

    @cached_property  # asked by every run (and by the gpm collector for every GPU): built once
    def selected(self) -> dict[str, list[Dcgm]]:
        """Catalogue key -> the chosen DCGM names of its series, with their `where`s."""
        chosen = {d.name: d for d in self.metrics}
        by_key: dict[str, list[Dcgm]] = {}
        for metric in METRICS:
            for dcgm in metric.dcgm:
                if dcgm.name in chosen:
                    mine = chosen[dcgm.name]  # the file's type and help, the catalogue's mapping
                    by_key.setdefault(metric.key, []).append(
                        Dcgm(dcgm.name, mine.type, mine.help, dcgm.factor, dcgm.where))
        if NVLINK_BANDWIDTH.name in chosen:
            for key in NVLINK_COUNTERS:  # read at every level, for the rate
                by_key.setdefault(key, [])
        if XID_ERRORS.name in chosen:
            by_key.setdefault("xid_last_time_seconds", [])
        return by_key

    def wants_nvlink_bandwidth(self) -> Dcgm | None:
        return next((d for d in self.metrics if d.name == NVLINK_BANDWIDTH.name), None)


def known() -> dict[str, Dcgm]:
    """Every DCGM field name gputext can write, as the catalogue (and the NVLink rate) gives it."""
    names = {dcgm.name: dcgm for metric in METRICS for dcgm in metric.dcgm}
    names.update((dcgm.name, dcgm) for dcgm in DERIVED)
    return names


def default_counters() -> Counters:
    """dcgm-exporter's default counters file, as far as NVML gives it, in that file's order."""
    # a name two rows share (a GPU's and its MIG instances') once
    defaults = list({dcgm.name: dcgm for metric in METRICS for dcgm in metric.dcgm
                     if dcgm.default}.values())
    order = ("DEV_SM_CLOCK", "DEV_MEM_CLOCK", "DEV_MEMORY_TEMP", "DEV_GPU_TEMP", "DEV_POWER_USAGE",
             "DEV_TOTAL_ENERGY_CONSUMPTION", "DEV_PCIE_REPLAY_COUNTER", "DEV_GPU_UTIL", "DEV_MEM_COPY_UTIL",
             "DEV_ENC_UTIL", "DEV_DEC_UTIL", "DEV_XID_ERRORS", "DEV_FB_FREE", "DEV_FB_USED", "DEV_FB_RESERVED",
             "DEV_NVLINK_BANDWIDTH_TOTAL")
    rank = {"DCGM_FI_" + name: i for i, name in enumerate(order)}
    defaults += DERIVED
    defaults.sort(key=lambda d: rank.get(d.name, len(rank)))
    return Counters(tuple(defaults))


def parse_counters(path: Path) -> Counters:
    """Read a counters file. Raises CountersError with `FILE:LINE: what is wrong`."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise CountersError(f"cannot read counters file {path}: {getattr(err, 'strerror', None) or err}") from None
    names = known()
    metrics: list[Dcgm] = []
    labels: list[str] = []
    fields: list[Field] = []
    skipped: list[str] = []
    seen: dict[str, int] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        where = f"{path}:{number}"
        columns = [c.strip() for c in next(csv.reader([line], skipinitialspace=True))]
        if len(columns) not in (3, 4):
            raise CountersError(f"{where}: expected 'FIELD, gauge|counter|label, help' (3 columns, or 4 with a "
                                f"metric name for an NVML field), found {len(columns)}")
        field, kind, help_ = columns[:3]
        if kind not in ("gauge", "counter", "label"):
            raise CountersError(f"{where}: type {kind!r} of {field}: use gauge, counter or label")
        if field.startswith(("DCGM_FI_", "DCGM_EXP_")):
            if len(columns) == 4:
                raise CountersError(f"{where}: a DCGM field keeps its own name; the 4th column is for NVML fields")
            _once(seen, field, where, number)
            if kind == "label":
                (labels if field in LABEL_FIELDS else skipped).append(field)
            elif field in names:
                metrics.append(Dcgm(field, kind, help_))
            else:
                skipped.append(field)
            continue
        match = _NVML_FIELD.fullmatch(field)
        if not match:
            raise CountersError(f"{where}: {field!r} is neither a DCGM field (DCGM_FI_...) nor an NVML field "
                                "(NVML_FI_... or its number, optionally :scope)")
        if kind == "label":
            raise CountersError(f"{where}: an NVML field is a gauge or a counter, not a label")
        field_id = _nvml_field_id(match.group(1), where)
        scope = int(match.group(2)) if match.group(2) is not None else None
        name = columns[3] if len(columns) == 4 else match.group(1) if not match.group(1).isdigit() \
            else f"NVML_FI_{field_id}"
        if not _METRIC_NAME.fullmatch(name):
            raise CountersError(f"{where}: {name!r} is not a valid metric name")
        _once(seen, f"{name}:{scope}" if scope is not None else name, where, number)
        scoped = {f.scope is not None for f in fields if f.name == name} | {scope is not None}
        if len(scoped) > 1:
            raise CountersError(f"{where}: {name} is written with and without a scope; give them two names")
        fields.append(Field(field_id, scope, name, kind, help_))
    clash = {f.name for f in fields} & set(names)
    if clash:
        raise CountersError(f"{path}: NVML field name {sorted(clash)[0]} is a DCGM name gputext writes")
    return Counters(tuple(metrics), tuple(labels), tuple(fields), tuple(skipped), str(path))


def _once(seen: dict[str, int], name: str, where: str, number: int) -> None:
    if name in seen:
        raise CountersError(f"{where}: {name} is named twice (first on line {seen[name]})")
    seen[name] = number


def _nvml_field_id(text: str, where: str) -> int:
    if text.isdigit():
        return int(text)
    import pynvml  # only for files that name NVML fields

    value = getattr(pynvml, text, None)
    if not isinstance(value, int):
        raise CountersError(f"{where}: pynvml knows no field {text} (give its number from nvml.h instead)")
    return value


def identity(system, devices: Iterable, minor) -> dict[str, dict[str, str]]:
    """GPU UUID -> dcgm-exporter's labels of that GPU, in its order (MIG and label fields come after
    modelName). `minor(dev)` gives the device's minor number (dcgm-exporter's `device` is nvidia<minor>)."""
    host = socket.gethostname()
    labels = {}
    for dev in devices:
        number = minor(dev)
        labels[dev.uuid] = {
            "gpu": str(dev.index), "UUID": dev.uuid, "pci_bus_id": dev.info.get("pci_bus_id", ""),
            "device": f"nvidia{number if number is not None else dev.index}",
            "modelName": dev.info.get("name", ""), "Hostname": host,
            # the label fields' values, picked by render()
            **{f"_{name}": str(dev.info.get(name, "")) for name in ("serial", "vbios_version", "name")},
            "_driver_version": system.driver_version,
        }
    return labels


def nvlink_bandwidth(samples, previous: dict[str, list[float]], now: float) -> tuple[dict[str, float], dict]:
    """DCGM's NVLINK_BANDWIDTH_TOTAL per GPU UUID, from the NVLink data counters of this run and the sums
    the previous run left (`previous`: uuid -> [bytes, time]); returns the values and what to keep."""
    totals: dict[str, float] = {}
    for key in NVLINK_COUNTERS:
        for label_values, value in samples.series(key).items():
            totals[label_values[1]] = totals.get(label_values[1], 0.0) + value  # [1]: the uuid
    values = {}
    for uuid, total in totals.items():
        before = previous.get(uuid)
        if before and total >= before[0] and now > before[1]:  # a reloaded driver restarts the counters
            values[uuid] = (total - before[0]) / 1024 / (now - before[1]) / 1000
    return values, {uuid: [total, now] for uuid, total in totals.items()}


def last_xids(samples, devices: Mapping[str, Mapping[str, str]]) -> list[tuple[str, float]]:
    """(uuid, code of its newest XID, or 0) of every GPU, where the xid collector read the kernel log."""
    if samples.series("gputext_collector_success").get(("xid",)) != 1:
        return []
    newest: dict[str, tuple[float, float]] = {}
    for label_values, when in samples.series("xid_last_time_seconds").items():
        uuid, code = label_values[1], float(label_values[2])  # gpu, uuid, xid, gpu_instance, ...
        if uuid not in newest or when > newest[uuid][0]:
            newest[uuid] = (when, code)
    return [(uuid, newest[uuid][1] if uuid in newest else 0.0) for uuid in devices]


def render(samples, counters: Counters, devices: Mapping[str, Mapping[str, str]], prefix: str,
           pod_labels: Mapping[str, Mapping[str, str]], derived: Mapping[str, float]) -> bytes:
    """The text exposition under dcgm-exporter's names: the counters' DCGM series first, in the file's
    order and with its types and help, then every other series under gputext's name."""
    selected = counters.selected
    families: dict[str, list[tuple[dict[str, str], float]]] = {d.name: [] for d in counters.metrics}

    def dcgm_labels(uuid: str, row_labels: Mapping[str, str]) -> dict[str, str]:
        gpu = devices.get(uuid, {"gpu": row_labels.get("gpu", ""), "UUID": uuid})
        labels = {k: v for k, v in gpu.items() if not k.startswith("_") and k != "Hostname"}
        for ours, theirs in MIG_LABELS:
            if row_labels.get(ours):  # a whole GPU's series have them empty: dcgm-exporter has none then
                labels[theirs] = row_labels[ours]
        if "Hostname" in gpu:
            labels["Hostname"] = gpu["Hostname"]
        for field in counters.labels:
            labels[field] = gpu.get("_" + LABEL_FIELDS[field], "")
        labels.update(pod_labels.get(uuid, {}))
        return labels

    renamed = set()  # (key, label values) written under a DCGM name
    for metric in METRICS:
        mappings = selected.get(metric.key)
        if not mappings:
            continue
        names = metric.all_labels
        for label_values, value in samples.series(metric.key).items():
            labels = dict(zip(names, label_values))
            dcgm = next((d for d in mappings if d.covers(labels)), None)
            if dcgm is not None:
                families[dcgm.name].append((dcgm_labels(labels["uuid"], labels), value * dcgm.factor))
                renamed.add((metric.key, label_values))
    bandwidth = counters.wants_nvlink_bandwidth()
    if bandwidth is not None:
        families[bandwidth.name] = [(dcgm_labels(uuid, {}), value) for uuid, value in derived.items()]
    if XID_ERRORS.name in families:
        families[XID_ERRORS.name] = [(dcgm_labels(uuid, {}), code) for uuid, code in last_xids(samples, devices)]

    lines: list[str] = []
    for dcgm in counters.metrics:
        if families[dcgm.name]:
            render_family(lines, dcgm.name, dcgm.type, dcgm.help, families[dcgm.name])
    for extra in samples.extras.values():  # the file's NVML fields, labelled like the DCGM series
        series = []
        for label_values, value in extra.series.items():
            labels = dict(zip(extra.labels, label_values))
            scope = {"scope": labels["scope"]} if "scope" in labels else {}
            series.append(({**dcgm_labels(labels["uuid"], labels), **scope}, value))
        render_family(lines, extra.name, extra.type, extra.help, series)
    rest = samples.render(prefix, pod_labels, skip=renamed, extras=False)
    return "\n".join(lines).encode("utf-8", "replace") + (b"\n" if lines else b"") + rest


def counters_note(counters: Counters) -> str | None:
    """The one line for the DCGM fields of a counters file that NVML cannot give."""
    if not counters.skipped:
        return None
    return (f"counters file {counters.source}: gputext cannot read {', '.join(counters.skipped)} from NVML; "
            "skipped (the other fields are written)")


def markdown_table(prefix: str) -> str:
    """DCGM name -> the gputext series it stands for (docs/dcgm-exporter.md's table, `gputext metrics --dcgm`)."""
    defaults = {d.name for d in default_counters().metrics}
    rows = ["| DCGM name | type | gputext series | DCGM value | default |", "| --- | --- | --- | --- | --- |"]
    for metric in METRICS:
        for dcgm in metric.dcgm:
            where = ",".join(f'{label}="{value}"' for label, value in dcgm.where)
            series = f"`{metric.name(prefix)}{{{where}}}`" if where else f"`{metric.name(prefix)}`"
            scale = "" if dcgm.factor == 1 else f" x {_factor(dcgm.factor)}"
            rows.append(f"| `{dcgm.name}` | {dcgm.type} | {series} | gputext's{scale} | "
                        f"{'yes' if dcgm.name in defaults else 'no'} |")
    rows.append(f"| `{XID_ERRORS.name}` | gauge | `{prefix}xid_last_time_seconds{{xid}}` | the code of the "
                f"newest XID, 0 before the first | yes |")
    rows.append(f"| `{NVLINK_BANDWIDTH.name}` | counter (a rate) | `{prefix}{NVLINK_COUNTERS[0]}` + "
                f"`{prefix}{NVLINK_COUNTERS[1]}`, all links | their increase in KiB per second / 1000 | yes |")
    return "\n".join(rows)


def _factor(factor: float) -> str:
    return {1 / (1 << 20): "2^-20 (MiB)", 1e-6: "10^-6 (MHz)", 1e3: "1000 (mJ)", 100: "100 (percent)",
            1e9: "10^9 (ns)"}.get(factor, f"{factor:g}")

"""dcgm-exporter's names, labels and units (`--naming dcgm`, `--naming dcgm-4.10`), and its counters file
(`--counters FILE`).

Most fleets' dashboards and alerts use the `DCGM_FI_*` names that NVIDIA's dcgm-exporter (4.x) writes. With
`--naming dcgm` gputext writes those names, as 4.x up to 4.8 spells them, from NVML alone, with no DCGM host
engine; `--naming dcgm-4.10` writes them as 4.9 and 4.10 renamed them. Each catalogue row says what
dcgm-exporter calls its series in either generation (gputext.catalogue.Dcgm: the name, its type and help,
the unit factor), so this module holds no second table of metrics. Series with no DCGM name keep gputext's.

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

from .catalogue import DCGM_4_8, DCGM_4_10, METRICS, NEITHER, NEW, Dcgm
from .exposition import render_family
from .readfile import CONFIG_FILE_LIMIT, NotARegularFile, TooLarge, read_bounded_text

# The label fields of a counters file that gputext can fill, from the device's identity (gpu_info).
# Both generations' names (DCGM 4.6 renamed three: NVIDIA/go-dcgm pkg/dcgm/dcgm_fields.h, and 4.9 writes
# DCGM_FI_SYSTEM_DRIVER_VERSION on every series: its 4.9.0 release notes).
LABEL_FIELDS: dict[str, str] = {
    "DCGM_FI_DRIVER_VERSION": "driver_version",
    "DCGM_FI_SYSTEM_DRIVER_VERSION": "driver_version",
    "DCGM_FI_DEV_SERIAL": "serial",
    "DCGM_FI_DEV_BOARD_SERIAL": "serial",
    "DCGM_FI_DEV_VBIOS_VERSION": "vbios_version",
    "DCGM_FI_DEV_NAME": "name",
    "DCGM_FI_DEV_GPU_NAME": "name",
}
# The host's label: dcgm-exporter 4.8.3 renamed Hostname to hostname (its release notes, 4.6.0-4.8.3); the
# 4.8 naming keeps Hostname, which the dashboards written before it match
HOSTNAME_LABEL = {DCGM_4_8: "Hostname", DCGM_4_10: "hostname"}
# DCGM computes this one as a rate although dcgm-exporter types it `counter`: the increase of the sum of
# the NVLink data counters (KiB, sent and received, every link) over the time since DCGM's last sample,
# divided by 1000 (DcgmCacheManager.cpp). gputext reproduces that between two of its runs.
# DCGM 4.6 calls the same field DCGM_FI_DEV_NVLINK_THROUGHPUT_TOTAL (NVIDIA/go-dcgm pkg/dcgm/dcgm_fields.h).
NVLINK_BANDWIDTH = (
    Dcgm("DCGM_FI_DEV_NVLINK_BANDWIDTH_TOTAL", "counter", "Total number of NVLink bandwidth counters for all "
         "lanes."),
    Dcgm("DCGM_FI_DEV_NVLINK_THROUGHPUT_TOTAL", "counter", "Total number of NVLink bandwidth counters for all "
         "lanes.", default=NEITHER),
)
NVLINK_COUNTERS = ("nvlink_transmit_bytes_total", "nvlink_receive_bytes_total")
# dcgm-exporter's XID gauge holds the code of the GPU's last XID (0 before the first): gputext takes it from
# gpu_xid_last_time_seconds, the code whose last record is the newest, where the xid collector read the log.
# DCGM 4.6 renamed it DCGM_FI_DEV_XID_ERROR (NVIDIA/go-dcgm pkg/dcgm/dcgm_fields.h).
XID_LAST = (
    Dcgm("DCGM_FI_DEV_XID_ERRORS", "gauge", "Value of the last XID error encountered."),
    Dcgm("DCGM_FI_DEV_XID_ERROR", "gauge", "Value of the last XID error encountered.", default=NEW),
)
# dcgm-exporter's cumulative XID counter, one series per GPU and code (NVIDIA/dcgm-exporter README.md,
# "Cumulative XID and clock event counters"): gputext's own count of the kernel log's records, summed over
# MIG instances, which survives restarts where dcgm-exporter's does not. Off in dcgm-exporter's default file;
# in the dcgm-4.10 naming's default set.
XID_TOTAL = Dcgm("DCGM_EXP_XID_ERRORS_TOTAL", "counter", "Total XID errors of the GPU by code, counted from "
                 "the kernel log.", default=NEW)
DERIVED = NVLINK_BANDWIDTH + XID_LAST + (XID_TOTAL,)
# the catalogue keys each derived series is computed from
DERIVED_FROM = {**{d.name: NVLINK_COUNTERS for d in NVLINK_BANDWIDTH},
                **{d.name: ("xid_last_time_seconds",) for d in XID_LAST}, XID_TOTAL.name: ("xid_errors_total",)}
NVLINK_NAMES = frozenset(d.name for d in NVLINK_BANDWIDTH)
XID_LAST_NAMES = frozenset(d.name for d in XID_LAST)
# DCGM fields that dcgm-exporter's own counters files name, enabled or commented out, and that gputext does
# not write (NVML has no vGPU licence field; the rest have no DCGM meaning gputext reproduces): a file that
# names one is read, and the field is said once and skipped, so that those files work as they are. Any other
# DCGM name is a typo as far as gputext can tell. From NVIDIA/dcgm-exporter etc/default-counters.csv and
# etc/dcp-metrics-included.csv (4.x), in both spellings (the 4.9+ ones: NVIDIA/go-dcgm pkg/dcgm/dcgm_fields.h),
# and the exporter's own windowed counters (NVIDIA/dcgm-exporter README.md).
NOT_FROM_NVML = frozenset({
    "DCGM_FI_DEV_VGPU_LICENSE_STATUS", "DCGM_FI_DEV_PCIE_TX_THROUGHPUT", "DCGM_FI_DEV_PCIE_RX_THROUGHPUT",
    "DCGM_FI_DEV_RETIRED_PENDING", "DCGM_FI_DEV_NVLINK_CRC_FLIT_ERROR_COUNT_TOTAL",
    "DCGM_FI_DEV_NVLINK_CRC_DATA_ERROR_COUNT_TOTAL", "DCGM_FI_DEV_NVLINK_REPLAY_ERROR_COUNT_TOTAL",
    "DCGM_FI_DEV_NVLINK_RECOVERY_ERROR_COUNT_TOTAL", "DCGM_FI_DEV_NVLINK_BANDWIDTH_L0",
    # label fields
    "DCGM_FI_NVML_VERSION", "DCGM_FI_DEV_BRAND", "DCGM_FI_DEV_OEM_INFOROM_VER", "DCGM_FI_DEV_ECC_INFOROM_VER",
    "DCGM_FI_DEV_POWER_INFOROM_VER", "DCGM_FI_DEV_INFOROM_IMAGE_VER",
    # the same under DCGM 4.6's names
    "DCGM_FI_DEV_PAGE_RETIRED_PENDING", "DCGM_FI_DEV_NVLINK_CRC_FLIT_ERROR_TOTAL",
    "DCGM_FI_DEV_NVLINK_CRC_DATA_ERROR_TOTAL", "DCGM_FI_DEV_NVLINK_REPLAY_ERROR_TOTAL",
    "DCGM_FI_DEV_NVLINK_RECOVERY_ERROR_TOTAL", "DCGM_FI_DEV_NVLINK_THROUGHPUT_L0", "DCGM_FI_SYSTEM_NVML_VERSION",
    "DCGM_FI_DEV_GPU_BRAND", "DCGM_FI_DEV_INFOROM_OEM_VERSION", "DCGM_FI_DEV_INFOROM_ECC_VERSION",
    "DCGM_FI_DEV_INFOROM_POWER_VERSION", "DCGM_FI_DEV_INFOROM_IMAGE_VERSION",
    # dcgm-exporter's counts over its last collection window
    "DCGM_EXP_XID_ERRORS_COUNT", "DCGM_EXP_CLOCK_EVENTS_COUNT", "DCGM_EXP_CLOCK_EVENTS_TOTAL",
    # DCGM 4.6's name for field 203 (percent); 4.9 writes utilization as a 0-1 ratio, which field under
    # this name is not confirmed: not written rather than written in a unit that may be wrong
    "DCGM_FI_DEV_GPU_UTIL_RATIO",
})
DEFAULT_LABELS = {DCGM_4_8: ("DCGM_FI_DRIVER_VERSION",), DCGM_4_10: ("DCGM_FI_SYSTEM_DRIVER_VERSION",)}
# the catalogue labels that dcgm-exporter spells its own way (MIG: the GPU instance and its profile)
MIG_LABELS = (("gpu_instance_profile", "GPU_I_PROFILE"), ("gpu_instance", "GPU_I_ID"))
HPC_JOB_LABEL = "hpc_job"

# A counters line (field, type, help, name): dcgm-exporter's longest is under 200 characters
MAX_LINE = 4096
# tabs are whitespace; other control characters have no place in a counters line
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
FIELD_LIMIT = 1 << 32  # nvml.h: a field id and a scope are unsigned int
# node_exporter's own series: a file's family of one of its names replaces node_exporter's (a file's
# node_textfile_scrape_error hides the real one) or is dropped
NODE_EXPORTER_PREFIXES = ("node_", "go_", "process_", "promhttp_")
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
    """What a DCGM naming writes: DCGM series (with the type and help the file gives), DCGM label fields,
    NVML fields, and the DCGM fields of the file that NVML cannot give (said once, then skipped). Not
    changed once made (a plain class, not a frozen dataclass, for the import: see catalogue)."""

    def __init__(self, metrics: tuple[Dcgm, ...], labels: tuple[str, ...] = DEFAULT_LABELS[DCGM_4_8],
                 fields: tuple[Field, ...] = (), skipped: tuple[str, ...] = (),
                 source: str | None = None, naming: str = DCGM_4_8):
        self.metrics = metrics
        self.labels = labels
        self.fields = fields
        self.skipped = skipped
        self.source = source  # the file's path; None for dcgm-exporter's default counters
        self.naming = naming  # the generation whose labels the series carry

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
        for name in chosen.keys() & DERIVED_FROM.keys():
            for key in DERIVED_FROM[name]:  # read at every level
                by_key.setdefault(key, [])
        return by_key

    def wants_nvlink_bandwidth(self) -> bool:
        return any(d.name in NVLINK_NAMES for d in self.metrics)


def known() -> dict[str, Dcgm]:
    """Every DCGM field name gputext can write, in either generation's spelling, as the catalogue (and the
    derived series) give it."""
    names = {dcgm.name: dcgm for metric in METRICS for dcgm in metric.dcgm}
    names.update((dcgm.name, dcgm) for dcgm in DERIVED)
    return names


# The order of dcgm-exporter's default counters file (4.8), and of the same fields under their 4.9+ names
DEFAULT_ORDER = (
    "DEV_SM_CLOCK", "DEV_MEM_CLOCK", "DEV_MEMORY_TEMP", "DEV_GPU_TEMP", "DEV_POWER_USAGE",
    "DEV_TOTAL_ENERGY_CONSUMPTION", "DEV_PCIE_REPLAY_COUNTER", "DEV_GPU_UTIL", "DEV_MEM_COPY_UTIL",
    "DEV_ENC_UTIL", "DEV_DEC_UTIL", "DEV_XID_ERRORS", "DEV_FB_FREE", "DEV_FB_USED", "DEV_FB_RESERVED",
    "DEV_NVLINK_BANDWIDTH_TOTAL",
    "DEV_SM_CLOCK_HERTZ", "DEV_MEMORY_CLOCK_HERTZ", "DEV_MEMORY_TEMP_CELSIUS", "DEV_GPU_TEMP_CELSIUS",
    "DEV_BOARD_POWER_WATTS", "DEV_GPU_ENERGY_JOULES_TOTAL", "DEV_PCIE_REPLAY_TOTAL", "DEV_XID_ERROR",
    "DEV_FB_CAPACITY_BYTES",
)


def default_counters(naming: str = DCGM_4_8) -> Counters:
    """dcgm-exporter's default counters file of the naming's generation, as far as NVML gives it (and as
    far as its names are confirmed, for dcgm-4.10), in that file's order."""
    # known() holds a name that two rows share (a GPU's and its MIG instances') once
    defaults = [dcgm for dcgm in known().values() if naming in dcgm.default]
    rank = {"DCGM_FI_" + name: i for i, name in enumerate(DEFAULT_ORDER)}
    defaults.sort(key=lambda d: rank.get(d.name, len(rank)))
    return Counters(tuple(defaults), DEFAULT_LABELS[naming], naming=naming)


def parse_counters(path: Path, prefix: str, naming: str = DCGM_4_8) -> Counters:
    """Read a counters file for a run whose device metrics carry `prefix` and whose series carry the
    naming's labels. Raises CountersError with `FILE:LINE: what is wrong` (or `FILE: ...` for the file as a
    whole)."""
    text = _read(path)
    names = known()
    written = written_names(prefix)
    metrics: list[Dcgm] = []
    labels: list[str] = []
    fields: list[Field] = []
    skipped: list[str] = []
    seen: dict[str, int] = {}
    families: dict[str, tuple[int, Field]] = {}  # the stem of each NVML field's name -> its first line
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        where = f"{path}:{number}"
        columns = _columns(line, where)
        if len(columns) not in (3, 4):
            raise CountersError(f"{where}: expected 'FIELD, gauge|counter|label, help' (3 columns, or 4 with a "
                                f"metric name for an NVML field), found {len(columns)}")
        field, kind, help_ = columns[:3]
        if not help_:
            raise CountersError(f"{where}: {field} has no help text: say what the field is (3rd column)")
        if kind not in ("gauge", "counter", "label"):
            raise CountersError(f"{where}: type {kind!r} of {field}: use gauge, counter or label")
        if field.startswith(("DCGM_FI_", "DCGM_EXP_")):
            if len(columns) == 4:
                raise CountersError(f"{where}: a DCGM field keeps its own name; the 4th column is for NVML fields")
            if field not in names and field not in LABEL_FIELDS and field not in NOT_FROM_NVML:
                raise CountersError(f"{where}: {field} is not a DCGM field gputext knows: check its spelling "
                                    "('gputext metrics --dcgm' lists the fields it writes); a field of "
                                    "dcgm-exporter 4.9 or later that gputext leaves out (docs/dcgm-exporter.md): "
                                    "comment the line out with #")
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
        scope = _unsigned(match.group(2), "scope", where) if match.group(2) is not None else None
        name = columns[3] if len(columns) == 4 else match.group(1) if not match.group(1).isdigit() \
            else f"NVML_FI_{field_id}"
        if not _METRIC_NAME.fullmatch(name) or name.startswith("__"):
            raise CountersError(f"{where}: {name!r} is not a valid metric name (letters, digits, _ and :, not "
                                "starting with a digit or __)")
        if _stem(name) in written:
            raise CountersError(f"{where}: {name} is a name gputext writes itself ({written[_stem(name)]}): give "
                                "the field a name of its own in the 4th column")
        if name.startswith(NODE_EXPORTER_PREFIXES):
            raise CountersError(f"{where}: {name} is in node_exporter's own namespace "
                                f"({', '.join(NODE_EXPORTER_PREFIXES)}): give the field a name of its own in the "
                                "4th column")
        _once(seen, f"{name}:{scope}" if scope is not None else name, where, number)
        entry = Field(field_id, scope, name, kind, help_)
        first_line, first = families.setdefault(_stem(name), (number, entry))
        if first is not entry:
            _same_family(first, first_line, entry, where)
        fields.append(entry)
    if not (metrics or labels or fields):
        only = f" (only {', '.join(skipped)})" if skipped else ""
        raise CountersError(f"{path}: names no field gputext can write{only}: list the DCGM or NVML fields to "
                            "write, one a line")
    return Counters(tuple(metrics), tuple(labels), tuple(fields), tuple(skipped), str(path), naming)


def _read(path: Path) -> str:
    try:
        return read_bounded_text(path, CONFIG_FILE_LIMIT)
    except OSError as err:
        raise CountersError(f"cannot read counters file {path}: {err.strerror or err}") from None
    except NotARegularFile:
        raise CountersError(f"counters file {path} is not a regular file: name a CSV file") from None
    except TooLarge:
        raise CountersError(f"counters file {path} is larger than {CONFIG_FILE_LIMIT // 1024} KiB: a counters "
                            "file is a few hundred lines") from None
    except UnicodeDecodeError as err:
        raise CountersError(f"counters file {path} is not UTF-8 text (byte {err.start})") from None


def _columns(line: str, where: str) -> list[str]:
    if len(line) > MAX_LINE:
        raise CountersError(f"{where}: {len(line)} characters; a line (field, type, help, name) holds at most "
                            f"{MAX_LINE}")
    control = _CONTROL.search(line)
    if control:
        raise CountersError(f"{where}: control character U+{ord(control.group()):04X} in the line")
    try:
        return [c.strip() for c in next(csv.reader([line], skipinitialspace=True))]
    except csv.Error as err:
        raise CountersError(f"{where}: not a CSV line: {err}") from None


def _stem(name: str) -> str:
    """A family's name without `_total`: a counter `x` is exposed as `x_total` in OpenMetrics, so `x` and
    `x_total` are one name to Prometheus."""
    return name[:-len("_total")] if name.endswith("_total") else name


def written_names(prefix: str) -> dict[str, str]:
    """The stem of every name gputext can write with this prefix, under either naming -> what it is."""
    names = {_stem(m.name(prefix)): "a gputext metric" for m in METRICS}
    names.update((_stem(name), "a DCGM field") for name in known())
    return names


def _same_family(first: Field, first_line: int, entry: Field, where: str) -> None:
    """Fields written under one name make one family: one type (and the first line's help)."""
    if entry.name != first.name:
        raise CountersError(f"{where}: {entry.name} and {first.name} (line {first_line}) are one name to "
                            "Prometheus (a counter's _total): give them two names")
    if entry.type != first.type:
        raise CountersError(f"{where}: {entry.name} is a {first.type} on line {first_line}: the fields of one "
                            "name share their type")
    if (entry.scope is None) != (first.scope is None):
        raise CountersError(f"{where}: {entry.name} is written with and without a scope; give them two names")


def _once(seen: dict[str, int], name: str, where: str, number: int) -> None:
    if name in seen:
        raise CountersError(f"{where}: {name} is named twice (first on line {seen[name]})")
    seen[name] = number


def _unsigned(text: str, what: str, where: str) -> int:
    # nvml.h: nvmlFieldValue_t's fieldId and scopeId are unsigned int; the length check first, as int()
    # refuses more than 4300 digits with a ValueError of its own
    if len(text) > 10 or int(text) >= FIELD_LIMIT:
        raise CountersError(f"{where}: NVML field {what} {text[:20]}{'...' if len(text) > 20 else ''} is out of "
                            f"range: NVML takes 0 to {FIELD_LIMIT - 1}")
    return int(text)


def _nvml_field_id(text: str, where: str) -> int:
    if text.isdigit():
        return _unsigned(text, "id", where)
    import pynvml  # only for files that name NVML fields

    value = getattr(pynvml, text, None)
    if not isinstance(value, int):
        raise CountersError(f"{where}: pynvml knows no field {text} (give its number from nvml.h instead)")
    return value


def identity(system, devices: Iterable, minor, naming: str) -> dict[str, dict[str, str]]:
    """GPU UUID -> dcgm-exporter's labels of that GPU under the naming's generation, in its order (MIG and
    label fields come after modelName, the host last). `minor(dev)` gives the device's minor number
    (dcgm-exporter's `device` is nvidia<minor>)."""
    host = {HOSTNAME_LABEL[naming]: socket.gethostname()}
    labels = {}
    for dev in devices:
        number = minor(dev)
        labels[dev.uuid] = {
            "gpu": str(dev.index), "UUID": dev.uuid, "pci_bus_id": dev.info.get("pci_bus_id", ""),
            "device": f"nvidia{number if number is not None else dev.index}",
            "modelName": dev.info.get("name", ""), **host,
            # the label fields' values, picked by render()
            **{f"_{name}": str(dev.info.get(name, "")) for name in ("serial", "vbios_version", "name")},
            "_driver_version": system.driver_version,
        }
    return labels


def holder_labels(allocation) -> dict[str, str]:
    """dcgm-exporter's labels for the container that alone holds a GPU or GPU instance
    (collectors.kubernetes.Allocation): pod, namespace, container, and for a DRA device what
    --kubernetes-enable-dra adds (dra_claim_name ... dra_device_name; dra_mig_profile and
    dra_mig_device_uuid for a MIG device), in its order; empty values left out."""
    a = allocation
    labels = {"pod": a.pod, "namespace": a.namespace, "container": a.container}
    if a.device:
        labels.update(dra_claim_name=a.claim, dra_claim_namespace=a.claim_namespace, dra_driver_name=a.resource,
                      dra_pool_name=a.pool, dra_device_name=a.device)
        if a.gpu_instance:
            labels.update(dra_mig_profile=a.mig_profile, dra_mig_device_uuid=a.mig_device)
    return {label: value for label, value in labels.items() if value}


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


def xid_totals(samples) -> dict[tuple[str, str], int]:
    """(uuid, code) -> the GPU's XIDs of that code, its MIG instances' together (dcgm-exporter counts per
    GPU)."""
    totals: dict[tuple[str, str], int] = {}
    for label_values, count in samples.series("xid_errors_total").items():
        key = (label_values[1], label_values[2])  # gpu, uuid, xid, gpu_instance, compute_instance
        totals[key] = totals.get(key, 0) + count
    return totals


def render(samples, counters: Counters, devices: Mapping[str, Mapping[str, str]], prefix: str,
           pod_labels: Mapping[str, Mapping[str, str]], derived: Mapping[str, float],
           holders: Mapping[tuple[str, str], Mapping[str, str]],
           jobs: Mapping[tuple[str, str], list[str]]) -> bytes:
    """The text exposition under dcgm-exporter's names: the counters' DCGM series first, in the file's
    order and with its types and help, then every other series under gputext's name (with gputext's
    `pod_labels`). `holders`: (GPU UUID, GPU instance or "") -> the labels of the one container holding
    it (holder_labels), which its DCGM series end with. `jobs`: the same key -> the Slurm jobs holding it;
    a DCGM series of a GPU (or MIG GPU instance) they hold is written once per job with its `hpc_job`
    label, as dcgm-exporter's HPC mapping copies it (internal/pkg/transformation/hpc.go)."""
    selected = counters.selected
    families: dict[str, list[tuple[dict[str, str], float]]] = {d.name: [] for d in counters.metrics}

    host = HOSTNAME_LABEL[counters.naming]

    def dcgm_labels(uuid: str, row_labels: Mapping[str, str]) -> dict[str, str]:
        gpu = devices.get(uuid, {"gpu": row_labels.get("gpu", ""), "UUID": uuid})
        labels = {k: v for k, v in gpu.items() if not k.startswith("_") and k != host}
        for ours, theirs in MIG_LABELS:
            if row_labels.get(ours):  # a whole GPU's series have them empty: dcgm-exporter has none then
                labels[theirs] = row_labels[ours]
        if host in gpu:
            labels[host] = gpu[host]
        for field in counters.labels:
            labels[field] = gpu.get("_" + LABEL_FIELDS[field], "")
        labels.update(holders.get((uuid, row_labels.get("gpu_instance", "")), {}))
        return labels

    renamed = set()  # (key, label values) written under a DCGM name
    for metric in METRICS:
        mappings = selected.get(metric.key)
        if not mappings:
            continue
        names = metric.all_labels
        for label_values, value in samples.series(metric.key).items():
            labels = dict(zip(names, label_values))
            for dcgm in mappings:  # a file may name a series in both generations' spelling
                if dcgm.covers(labels):
                    series = dcgm_labels(labels["uuid"], labels)
                    held_by = _jobs_of(jobs, labels) if jobs else None
                    families[dcgm.name].extend(((series, value * dcgm.factor),) if not held_by else
                                               (({**series, HPC_JOB_LABEL: job}, value * dcgm.factor)
                                                for job in held_by))
                    renamed.add((metric.key, label_values))
    for name in families.keys() & DERIVED_FROM.keys():
        if name in NVLINK_NAMES:
            families[name] = [(dcgm_labels(uuid, {}), value) for uuid, value in derived.items()]
        elif name in XID_LAST_NAMES:
            families[name] = [(dcgm_labels(uuid, {}), code) for uuid, code in last_xids(samples, devices)]
        else:
            families[name] = [({**dcgm_labels(uuid, {}), "xid": code}, count)
                              for (uuid, code), count in xid_totals(samples).items()]

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


def _jobs_of(jobs: Mapping[tuple[str, str], list[str]], labels: Mapping[str, str]) -> list[str]:
    """The jobs of a series: its GPU's, and, for a MIG GPU instance's series, that instance's (a mapping
    file `<gpu>` labels every series of the GPU, `<gpu>.<instance>` those of the instance)."""
    found = list(jobs.get((labels["uuid"], ""), ()))
    if labels.get("gpu_instance"):
        found += [job for job in jobs.get((labels["uuid"], labels["gpu_instance"]), ()) if job not in found]
    return found


def counters_note(counters: Counters) -> str | None:
    """The one line for the DCGM fields of a counters file that NVML cannot give."""
    if not counters.skipped:
        return None
    return (f"counters file {counters.source}: gputext does not write {', '.join(counters.skipped)} (no NVML "
            "source, or a unit not confirmed: docs/dcgm-exporter.md); skipped (the other fields are written)")


def unanswered_notes(counters: Counters, samples, gpus: Mapping[str, str]) -> list[str]:
    """One line for each set of the counters file's fields that some GPUs did not answer in this run (a
    T4 has no memory temperature), naming those GPUs. `gpus`: the UUID of every GPU that answered NVML ->
    its index. Only fields whose collector ran without failing are judged; the derived DCGM series are
    not (the NVLink rate needs two runs, the XID series are written wherever the kernel log was read)."""
    if counters.source is None:
        return []  # dcgm-exporter's defaults, chosen by gputext: what a GPU lacks is simply left out
    ran = {label_values[0] for label_values, ok in samples.series("gputext_collector_success").items() if ok}
    answered: dict[str, set[str]] = {}  # the file's name of a field -> the UUIDs that gave it
    for metric in METRICS:
        mappings = counters.selected.get(metric.key, ())
        if not mappings or not ran & set(metric.source.split(", ")):
            continue
        for dcgm in mappings:
            answered.setdefault(dcgm.name, set())
        for label_values in samples.series(metric.key):
            labels = dict(zip(metric.all_labels, label_values))
            for dcgm in mappings:
                if dcgm.covers(labels):
                    answered[dcgm.name].add(labels["uuid"])
    if "nvml" in ran:
        for field in counters.fields:
            name = f"{field.name} (scope {field.scope})" if field.scope is not None else field.name
            extra = samples.extras.get(field.name)
            answered[name] = set() if extra is None else {
                labels["uuid"] for labels in (dict(zip(extra.labels, values)) for values in extra.series)
                if labels.get("scope") == (str(field.scope) if field.scope is not None else None)}
    missing: dict[tuple[str, ...], list[str]] = {}  # the names a GPU did not give -> those GPUs
    for uuid, index in gpus.items():
        names = tuple(name for name, uuids in answered.items() if uuid not in uuids)
        if names:
            missing.setdefault(names, []).append(index)
    return [f"counters file {counters.source}: GPU {', '.join(indices)} gave no value for {', '.join(names)} "
            "(not supported there); left out" for names, indices in missing.items()]


def dcgm_names(metric) -> list:
    """dcgm-exporter's names for a catalogue row's series (the metric reference's column), each with the
    label values it stands for, and the derived names computed from the row."""
    names = [f"`{d.name}`" + "".join(f' (`{label}="{value}"`)' for label, value in d.where) for d in metric.dcgm]
    return names + [f"`{name}` (computed from it)" for name, keys in DERIVED_FROM.items() if metric.key in keys]


def markdown_table(prefix: str) -> str:
    """DCGM name -> the gputext series it stands for (docs/dcgm-exporter.md's table, `gputext metrics --dcgm`);
    "default of": the namings whose default counters write it."""
    def default(dcgm: Dcgm) -> str:
        return ", ".join(f"`{naming}`" for naming in dcgm.default) or "no"

    rows = ["| DCGM name | type | gputext series | DCGM value | default of |", "| --- | --- | --- | --- | --- |"]
    for metric in METRICS:
        for dcgm in metric.dcgm:
            where = ",".join(f'{label}="{value}"' for label, value in dcgm.where)
            series = f"`{metric.name(prefix)}{{{where}}}`" if where else f"`{metric.name(prefix)}`"
            scale = "" if dcgm.factor == 1 else f" x {_factor(dcgm.factor)}"
            rows.append(f"| `{dcgm.name}` | {dcgm.type} | {series} | gputext's{scale} | {default(dcgm)} |")
    for dcgm in XID_LAST:
        rows.append(f"| `{dcgm.name}` | gauge | `{prefix}xid_last_time_seconds{{xid}}` | the code of the newest "
                    f"XID, 0 before the first | {default(dcgm)} |")
    rows.append(f"| `{XID_TOTAL.name}` | counter | `{prefix}xid_errors_total{{xid}}` | summed over MIG instances, "
                f"with label `xid` | {default(XID_TOTAL)} |")
    for dcgm in NVLINK_BANDWIDTH:
        rows.append(f"| `{dcgm.name}` | counter (a rate) | `{prefix}{NVLINK_COUNTERS[0]}` + "
                    f"`{prefix}{NVLINK_COUNTERS[1]}`, all links | their increase in KiB per second / 1000 | "
                    f"{default(dcgm)} |")
    return "\n".join(rows)


def _factor(factor: float) -> str:
    return {1 / (1 << 20): "2^-20 (MiB)", 1e-6: "10^-6 (MHz)", 1e3: "1000 (mJ)", 100: "100 (percent)",
            1e9: "10^9 (ns)"}.get(factor, f"{factor:g}")

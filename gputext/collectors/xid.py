"""XID errors: the NVIDIA driver's reports of GPU faults, counted from the kernel log.

dcgm-exporter's DCGM_FI_DEV_XID_ERRORS is a gauge of the last code only: it never returns to 0, two equal
XIDs look like one, and a 62 followed by a 45 shows only the 45. Here every XID in the kernel log is
counted, per GPU, code and (MIG) GPU/compute instance, with the time of the last one.

The counts live in the state with the boot id and the sequence numbers counted (gputext.kmsg.Counted: the
newest, and any holes an out-of-order log left), so that a restart neither resets them nor counts a record
twice; a new boot starts afresh (the kernel's sequence numbers do too). They are keyed by the PCI address
the record names, not by UUID: a GPU that fell off the bus (XID 79) may no longer tell NVML its UUID. Each
run maps addresses to GPUs with NVML's bus ids, and remembers the map for the boot, so such a GPU keeps
its labels. An address that is no GPU NVML has listed this boot is kept in the state and written once it
maps.

In the repeating mode NVML's XID events (gputext.events) start a cycle as soon as the driver reports
one. Each event is counted when it arrives and waits (`unconfirmed`) for the kernel-log record of the same
XID, which is then not counted again; a record counted first waits (`unpaired`) for its event the same
way. So the log stays the record and every XID counts once, whichever source sees it first, and an event
whose record never comes (an unreadable log) still counts.

Unreadable log (kernel.dmesg_restrict=1 without CAP_SYSLOG): not applicable, said once per boot (unless
events are watched: then they count alone, and that is said).
"""

from __future__ import annotations

import time

from . import LastingFailure, NotApplicable
from .. import shape
from ..kmsg import (MAX_READ_BYTES, MAX_READ_RECORDS, Counted, KmsgReader, KmsgUnreadable, NotAKernelLog,
                    pci_address, pci_text)
from ..readfile import MAX_KERNEL_COUNT
from ..state import StateUnavailable

# What the driver's codes mean and what to do, for gpu_xid_info (NVIDIA's XID catalogue as NVSentinel
# maps it; severity "fatal": the GPU or node needs action, "application": the job's own fault, the GPU is
# healthy (the Kubernetes device plugin ignores these), "nonfatal": worth watching).
CODES: dict[int, tuple[str, str, str]] = {
    8: ("GPU stopped processing (channel idle timeout)", "restart the application", "nonfatal"),
    13: ("graphics engine exception", "restart the application", "application"),
    31: ("GPU memory page fault", "restart the application", "application"),
    43: ("GPU stopped processing", "restart the application", "application"),
    45: ("preemptive cleanup, due to previous errors", "restart the application; look for an earlier XID",
         "application"),
    48: ("double-bit ECC error", "reset the GPU if it repeats; check remapped rows", "fatal"),
    61: ("internal micro-controller breakpoint/warning", "reset the GPU; report to NVIDIA", "fatal"),
    62: ("internal micro-controller halt", "reset the GPU", "fatal"),
    63: ("ECC page retirement or row remapping event", "none (recorded); reset the GPU when convenient",
         "nonfatal"),
    64: ("ECC page retirement or row remapping failure", "reset the GPU", "fatal"),
    68: ("NVDEC0 exception", "restart the application", "application"),
    74: ("NVLink error", "check the NVLink links; reset the GPU", "fatal"),
    79: ("GPU has fallen off the bus", "reboot the node", "fatal"),
    92: ("high single-bit ECC error rate", "none; watch for 48, 63, 64", "nonfatal"),
    94: ("contained ECC error", "restart the application", "nonfatal"),
    95: ("uncontained ECC error", "reset the GPU", "fatal"),
    109: ("context switch timeout", "reset the GPU", "fatal"),
    119: ("GSP RPC timeout", "reset the GPU", "fatal"),
    120: ("GSP error", "reset the GPU", "fatal"),
    121: ("C2C link error", "none; watch for repeats", "nonfatal"),
    136: ("ALI training failure", "reset the GPU", "fatal"),
    140: ("unrecovered ECC error", "reset the GPU", "fatal"),
    143: ("GPU initialisation failure", "reset the GPU", "fatal"),
    154: ("GPU recovery action changed", "follow the action of the XID that caused it", "nonfatal"),
}

SECTION = "xid"
_PCI = r"[0-9a-f]{4,8}:[0-9a-f]{2}:[0-9a-f]{2}"  # kmsg.pci_text
_SEQUENCE = shape.natural(MAX_KERNEL_COUNT)  # the kernel's record numbers
_WAITING = shape.list_of(shape.tuple_of(shape.text, shape.count, shape.number))  # [pci, code, time]


def _holes_fit(section: dict) -> bool:
    """kmsg.Counted's holes are ranges in increasing order, apart, below the newest number counted:
    holes that overlap would let a record be counted twice."""
    holes = section.get("holes", [])
    below = -1
    for first, last in holes:
        if not below < first <= last:
            return False
        below = last + 1
    return not holes or ("seq" in section and holes[-1][1] < section["seq"])


SHAPE = shape.where(shape.record(optional={
    "boot": shape.text,
    "seq": _SEQUENCE,
    "holes": shape.list_of(shape.tuple_of(_SEQUENCE, _SEQUENCE)),
    # "pci|code|gpu instance|compute instance" -> [count, time of the last one]
    "counts": shape.mapping(shape.tuple_of(shape.count, shape.optional(shape.number)),
                            keys=_PCI + r"\|\d{1,5}\|\d{0,3}\|\d{0,3}"),
    "gpus": shape.mapping(shape.tuple_of(shape.text, shape.text), keys=_PCI),  # pci -> [gpu index, uuid]
    "unconfirmed": _WAITING,
    "unpaired": _WAITING,
}), _holes_fit, "holes that overlap, or are not below seq")


# An XID event and the kernel-log record of the same XID (same GPU and code) are paired when they are
# this close in time: the record's time is boot time plus the kernel's clock, which drifts from the wall
# clock by up to seconds over a long uptime. Pairing a wrong one of two equal XIDs changes nothing.
PAIR_SECONDS = 60.0
# At most this many events (records) wait for their record (event): an XID storm must not grow the state.
MAX_WAITING = 1000


def collect(ctx, samples) -> None:
    section = _section(ctx)
    now = time.time()
    counts = section.setdefault("counts", {})
    events = ctx.xid_events  # None: no NVML events are watched (one-shot, or none on this node)
    if events:
        _count_events(section, counts, events)
        del events[:]
    unreadable = _count_log(ctx, section, counts, watching=events is not None)
    if unreadable is not None:
        if events is None:
            raise unreadable
        ctx.note_once(f"collector xid: {unreadable}; XIDs are counted from NVML events alone, which miss "
                      "those from while gputext was not running", per_boot=False)
    for waiting in ("unconfirmed", "unpaired"):
        kept = [entry for entry in section.get(waiting, ()) if entry[2] >= now - PAIR_SECONDS]
        section[waiting] = kept[-MAX_WAITING:]
    _write(ctx, section, samples)


def _count_events(section: dict[str, object], counts: dict[str, list], events) -> None:
    """Count the XID events the repeating mode received, except those whose kernel-log record was
    counted already (`unpaired`); the others wait for their record (`unconfirmed`)."""
    unpaired = section.setdefault("unpaired", [])
    unconfirmed = section.setdefault("unconfirmed", [])
    for event in events:
        if _pair(unpaired, event.pci, event.code, event.time):
            continue
        key = _key(event.pci, event.code, event.gpu_instance, event.compute_instance)
        _add(counts, key, event.time)
        unconfirmed.append([event.pci, event.code, event.time])


def _count_log(ctx, section: dict[str, object], counts: dict[str, list], watching: bool):
    """Count the XIDs of the kernel-log records not read before, except those an NVML event counted
    already (`unconfirmed`). Where events are watched, a counted record waits for its event
    (`unpaired`). Returns the NotApplicable or LastingFailure to raise where there is no log to read."""
    path = ctx.options.kmsg or ctx.options.host_path("/dev/kmsg")
    reader = ctx.held.get("kmsg")
    counted = Counted(section.get("seq"), section.get("holes", ()))
    # A reader kept from the last cycle is positioned after what it read; a state that has not counted
    # that far (moved aside, or written by an older run) needs the log from its start again.
    if reader is not None and (reader.path != path or counted.newest is None
                               or (reader.last_seq is not None and counted.newest < reader.last_seq)):
        reader.close()
        reader = None
    if reader is None:
        reader = KmsgReader(path)
    try:
        batch = reader.read(counted)
    except FileNotFoundError:
        return NotApplicable(f"no kernel log at {path}")
    except (KmsgUnreadable, NotAKernelLog, OSError) as err:
        if isinstance(err, KmsgUnreadable):
            why = (f"cannot read the kernel log ({err}), so XIDs are not counted: with kernel.dmesg_restrict=1 "
                   "opening it needs CAP_SYSLOG, which the systemd units give gputext; see 'gputext doctor'")
        elif isinstance(err, NotAKernelLog):
            why = f"{err}: XIDs are not counted; fix: point --kmsg (GPUTEXT_KMSG) at the kernel log"
        else:
            why = f"cannot read the kernel log {path}: {err.strerror or err}; XIDs are not counted"
        if "xid" in ctx.options.collectors:
            return LastingFailure(why)  # asked for by name: a failure, said once per boot
        ctx.note_once(f"collector xid: {why}")
        return NotApplicable(why)
    ctx.held["kmsg"] = reader
    if batch.lost:
        ctx.warn(f"{batch.lost} kernel log records were overwritten before gputext read them: XIDs among them "
                 "are not counted")
    if batch.cut_short:
        ctx.note_once(f"the kernel log {path} gave more than {MAX_READ_BYTES >> 20} MiB or {MAX_READ_RECORDS} "
                      "records in one read, more than any kernel log holds: reading stopped there, and what "
                      "follows waits for the next run (is it really a kernel log?)")
    boot = _boot_time(ctx)
    unconfirmed = section.setdefault("unconfirmed", [])
    unpaired = section.setdefault("unpaired", [])
    for xid in batch.found:
        pci = pci_text(xid.pci)
        when = None if boot is None else boot + xid.usec / 1e6
        if _pair(unconfirmed, pci, xid.code, when):
            continue
        _add(counts, _key(pci, xid.code, xid.gpu_instance, xid.compute_instance), when)
        if watching and when is not None:
            unpaired.append([pci, xid.code, when])
    if counted.newest is not None:
        section["seq"], section["holes"] = counted.newest, counted.holes
    return None


def _key(pci: str, code: int, gpu_instance: int | None, compute_instance: int | None) -> str:
    return "|".join((pci, str(code), _id(gpu_instance), _id(compute_instance)))


def _add(counts: dict[str, list], key: str, when: float | None) -> None:
    entry = counts.setdefault(key, [0, None])
    entry[0] += 1
    if when is not None:
        entry[1] = when if entry[1] is None else max(entry[1], when)


def _pair(waiting: list, pci: str, code: int, when: float | None) -> bool:
    """Take the oldest entry of `waiting` ([pci, code, time]) that is the same XID as (pci, code, when),
    if there is one. GPU and compute instance are not compared: drivers before 570 do not print them."""
    for index, (other_pci, other_code, other_time) in enumerate(waiting):
        if other_pci == pci and other_code == code and (
                when is None or abs(other_time - when) <= PAIR_SECONDS):
            del waiting[index]
            return True
    return False


def _section(ctx) -> dict[str, object]:
    """This boot's counts: from the state, or (without one) kept by this process only."""
    try:
        section = ctx.state.section(SECTION, SHAPE)
    except StateUnavailable:
        section = ctx.held.setdefault("xid_counts", {})
    boot = ctx.boot_id()
    if section.get("boot") != boot:  # a new boot: its log and sequence numbers start afresh
        section.clear()
        section["boot"] = boot
    return section


def _id(instance: int | None) -> str:
    return "" if instance is None else str(instance)


def _boot_time(ctx) -> float | None:
    """When the host booted (Unix time), from /proc/stat's btime: a record's time is boot time plus its
    own microseconds since boot."""
    if "btime" not in ctx.held:
        from ..procinfo import ProcessTable  # the processes collector reads the boot time the same way

        try:
            ctx.held["btime"] = ProcessTable(ctx.options.host_path("/proc")).boot_time()
        except (OSError, ValueError, IndexError):
            ctx.held["btime"] = None
    return ctx.held["btime"]


def _write(ctx, section: dict[str, object], samples) -> None:
    gpus = section.setdefault("gpus", {})  # PCI address -> [gpu index, uuid], remembered for the boot
    from ..nvml import NvmlUnavailable

    try:
        devices = ctx.devices()[1]
    except NvmlUnavailable:
        devices = []  # the counts still stand, under the GPUs remembered from earlier runs of this boot
    for dev in devices:
        pci = pci_address(dev.info.get("pci_bus_id", ""))
        if pci is not None and dev.uuid:
            gpus[pci_text(pci)] = [str(dev.index), dev.uuid]
    unmapped = set()
    for key, (count, last) in sorted(section.get("counts", {}).items()):
        pci, code, gi, ci = key.split("|")
        gpu = gpus.get(pci)
        if gpu is None:
            unmapped.add(pci)
            continue
        labels = {"gpu": gpu[0], "uuid": gpu[1], "xid": code, "gpu_instance": gi, "compute_instance": ci}
        samples.add("xid_errors_total", count, labels)
        samples.add("xid_last_time_seconds", last, labels)
        known = CODES.get(int(code))
        if known is not None:
            samples.add("xid_info", 1, {"gpu": gpu[0], "uuid": gpu[1], "xid": code, "description": known[0],
                                        "action": known[1], "severity": known[2]})
    if unmapped:
        ctx.note_once(f"the kernel log has XIDs for PCI {', '.join(sorted(unmapped))}, which NVML does not "
                      "list as a GPU: they are kept and written once it does")

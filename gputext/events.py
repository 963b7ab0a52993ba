"""NVML events between the cycles of the repeating mode, so that an XID starts a cycle at once.

Where gputext runs with --interval, it waits for its next tick on an NVML event set instead of sleeping:
every GPU is registered for XIDs (nvmlEventTypeXidCriticalError) and single and double bit ECC errors,
as far as nvmlDeviceGetSupportedEventTypes says it has them. An event cuts the wait short and the next
cycle writes it, so an XID reaches the file within a second instead of at the next tick.

The kernel log stays the record (collectors/xid.py): it also holds what happened while no gputext ran.
An XID event is counted when it arrives, and paired with the kernel-log record of the same XID so that
the two are counted once; an event whose record never shows up (a log that cannot be read) still counts.

Clock events (nvmlEventTypeClock) are not registered: nvml.h says they exist on Kepler only, where they
fire on every clock change, and the clocks are read every cycle anyway.
"""

from __future__ import annotations

import ctypes
import time
from collections import namedtuple

import pynvml

from .kmsg import pci_address, pci_text
from .nvml import DeviceGone

WATCHED = (pynvml.nvmlEventTypeXidCriticalError | pynvml.nvmlEventTypeSingleBitEccError
           | pynvml.nvmlEventTypeDoubleBitEccError)
# The longest one wait inside NVML: a SIGTERM is handled only when the C call returns.
SLICE_SECONDS = 0.5
# NVML's "not attributable to a GPU instance" (nvmlEventData_t.gpuInstanceId, computeInstanceId)
_NO_INSTANCE = 0xFFFFFFFF


class WatchBroken(Exception):
    """The event set stopped working (a registered GPU is lost, or NVML failed): sleep instead."""


# pci: the GPU's PCI address as collectors/xid.py keys it (kmsg.pci_text); time: when gputext received it
# (Unix time), as NVML's event has no timestamp of its own
XidEvent = namedtuple("XidEvent", "pci code gpu_instance compute_instance time")


def _address(handle: object) -> int | None:
    return ctypes.cast(handle, ctypes.c_void_p).value


def _instance(value: int) -> int | None:
    return None if value == _NO_INSTANCE else int(value)


class Watch:
    """An NVML event set with every GPU of a device list registered for the WATCHED events it has."""

    def __init__(self, nvml, devices):
        self.identity = identity(devices)
        self._set = pynvml.nvmlEventSetCreate()
        self._gpus: dict[int, str] = {}  # handle address -> PCI address text
        try:
            for dev in devices:
                if not dev.up:
                    continue
                try:
                    supported = nvml.call(pynvml.nvmlDeviceGetSupportedEventTypes, dev.handle,
                                          device=dev.name)
                except DeviceGone:
                    continue  # a lost GPU sends nothing; the others are still watched
                wanted = (supported or 0) & WATCHED
                if not wanted:
                    continue
                try:
                    pynvml.nvmlDeviceRegisterEvents(dev.handle, wanted, self._set)
                except pynvml.NVMLError as err:
                    # "If function reports NVML_ERROR_UNKNOWN, event set is in undefined state and should
                    # be freed" (nvml.h); any other error leaves the set usable, without this GPU
                    if err.value == pynvml.NVML_ERROR_UNKNOWN:
                        raise
                    continue
                pci = pci_address(dev.info.get("pci_bus_id", ""))
                self._gpus[_address(dev.handle)] = pci_text(pci) if pci else ""
        except BaseException:
            self.close()
            raise

    @property
    def watching(self) -> bool:
        return bool(self._gpus)

    def wait(self, seconds: float) -> tuple[list[XidEvent], int]:
        """Wait up to `seconds` for events; returns (XID events, how many events arrived in all) as soon
        as one has, with those already waiting behind it. Raises WatchBroken."""
        xids: list[XidEvent] = []
        arrived = 0
        timeout_ms = max(0, int(seconds * 1000 + 0.999))
        while True:
            try:
                data = pynvml.nvmlEventSetWait_v2(self._set, timeout_ms)
            except pynvml.NVMLError as err:
                if err.value == pynvml.NVML_ERROR_TIMEOUT:
                    return xids, arrived
                raise WatchBroken(str(err)) from err
            arrived += 1
            timeout_ms = 0  # what waits behind the first event is taken without waiting
            pci = self._gpus.get(_address(data.device))
            if data.eventType & pynvml.nvmlEventTypeXidCriticalError and pci:
                xids.append(XidEvent(pci, int(data.eventData), _instance(data.gpuInstanceId),
                                     _instance(data.computeInstanceId), time.time()))

    def close(self) -> None:
        if self._set is not None:
            event_set, self._set = self._set, None
            try:
                pynvml.nvmlEventSetFree(event_set)
            except pynvml.NVMLError:
                pass


def identity(devices) -> tuple:
    """What a watch depends on: the GPUs that answer and their handles."""
    return tuple((dev.index, dev.uuid, _address(dev.handle)) for dev in devices if dev.up)


def watch(ctx, current: Watch | None) -> Watch | None:
    """The watch for this cycle's GPUs: `current` while they are the same, a new one when they changed,
    None where NVML or its events are not there (the repeating mode then sleeps between cycles)."""
    from .nvml import NvmlUnavailable

    try:
        devices = ctx.devices()[1]
    except NvmlUnavailable:
        devices = []
    if current is not None:
        if current.identity == identity(devices):
            return current
        current.close()
    if not devices:
        return None
    try:
        made = Watch(ctx.nvml, devices)
    except pynvml.NVMLError as err:  # FUNCTION_NOT_FOUND from an old driver, or no memory
        ctx.note_once(f"NVML events are not available ({err}): XIDs reach the file at the next cycle",
                      per_boot=False)
        return None
    if not made.watching:
        made.close()
        return None
    return made

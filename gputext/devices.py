"""Which GPUs this node has, and what does not change between runs.

A one-shot run every few seconds would spend most of its NVML calls re-reading things that never change
(name, PCI bus id, serial, VBIOS, maximum clocks, fan count). Those are kept in `inventory.json` in the
state directory. The cache is trusted only while the boot, the driver version and the device count are
those it was made with, and only for devices that NVML still finds by UUID; anything else rebuilds it.
Settings an administrator can change at run time (persistence, accounting, compute and MIG modes) are
re-read when the cached copy is older than SETTINGS_TTL_SECONDS.
"""

from __future__ import annotations

import json
import os
from collections import namedtuple
from collections.abc import Callable
from pathlib import Path

import pynvml

from . import shape
from .nvml import DeviceGone, Nvml, text
from .readfile import STATE_FILE_LIMIT, read_bounded
from .state import move_aside
from .textfile import write_atomically

CACHE_VERSION = 2  # raised whenever a cached value changes meaning (2: NVLink versions as "4.0", not 6)
CACHE_FILE = "inventory.json"
SETTINGS_TTL_SECONDS = 60.0

CLOCKS = (("graphics", pynvml.NVML_CLOCK_GRAPHICS), ("sm", pynvml.NVML_CLOCK_SM),
          ("memory", pynvml.NVML_CLOCK_MEM), ("video", pynvml.NVML_CLOCK_VIDEO))


_SETTING = shape.optional(shape.count)
CACHE_SHAPE = shape.record({
    "version": shape.count,
    "key": shape.record({"boot_id": shape.text, "driver_version": shape.text, "count": shape.count}),
    "settings_read_at": shape.number,
    "devices": shape.list_of(shape.record({
        "index": shape.count,
        "uuid": shape.text,
        # _read_info's; the static values collectors add (Inventory.static) are checked when asked for
        "info": shape.record({"name": shape.text, "pci_bus_id": shape.text, "serial": shape.text,
                              "vbios_version": shape.text, "fan_count": shape.count,
                              "max_clocks_mhz": shape.mapping(shape.count)},
                             patterns={r"[a-z0-9_]{1,64}": shape.anything}),
        "settings": shape.record({"persistence_mode": _SETTING, "accounting_mode": _SETTING,
                                  "compute_mode": _SETTING,
                                  "mig_mode": shape.optional(shape.tuple_of(shape.count, shape.count))}),
    })),
})
# A minor number (/dev/nvidia<N>), kept as a static value by those who map device files to GPUs.
MINOR_NUMBER = shape.optional(shape.count)


# Plain classes and namedtuples, not dataclasses, for the import (see gputext.catalogue).
System = namedtuple("System", "driver_version cuda_driver_version device_count")


class Device:
    """One GPU of this run, its NVML handle, and what does not change between runs."""

    def __init__(self, index: int, uuid: str = "", handle: object = None, error: str = "",
                 info: dict[str, object] | None = None, settings: dict[str, object] | None = None):
        self.index = index
        self.uuid = uuid
        self.handle = handle
        self.error = error  # why the device did not answer; "" when it did
        self.info = {} if info is None else info  # static: see _read_info
        self.settings = {} if settings is None else settings  # see _read_settings
        # name -> (what it was made from, what a collector made): see derived(); not in the cache file
        self._derived: dict[str, tuple[object, object]] = {}
        self.checked: set[str] = set()  # the static values of `info` found to have their shape

    def __repr__(self) -> str:
        return f"Device({self.index}, {self.uuid!r}, error={self.error!r})"

    def derived(self, name: str, made_from: object, make: Callable[[], object]) -> object:
        """What a collector computes from this device and things that rarely change (label tuples, a
        field request list): made once and kept while this Device lives, which in the repeating mode is
        until the inventory changes (a GPU added, lost or swapped, a new driver); made again whenever
        `made_from`, everything else it depends on, differs from what it was made from."""
        kept = self._derived.get(name)
        if kept is None or kept[0] != made_from:
            kept = self._derived[name] = (made_from, make())
        return kept[1]

    @property
    def up(self) -> bool:
        return self.handle is not None and not self.error

    @property
    def labels(self) -> dict[str, str]:
        return {"gpu": str(self.index), "uuid": self.uuid}

    @property
    def name(self) -> str:
        return f"GPU {self.index}"


def _cuda_version(raw: int | None) -> str:
    if not raw:
        return ""
    return f"{raw // 1000}.{(raw % 1000) // 10}"  # NVML encodes 12.4 as 12040


# gpu_instance: the GPU instance ID as a label value; "" where NVML does not give it
MigDevice = namedtuple("MigDevice", "slot uuid gpu_instance handle")


def read_mig_devices(nvml, dev: Device) -> list[MigDevice]:
    """The MIG devices of a GPU, by slot; empty where MIG is off or unsupported. Raises DeviceGone.
    Collectors share one reading per run through Context.mig_devices."""
    count = nvml.call(pynvml.nvmlDeviceGetMaxMigDeviceCount, dev.handle, device=dev.name) or 0
    found = []
    for slot in range(int(count)):
        handle = nvml.call(pynvml.nvmlDeviceGetMigDeviceHandleByIndex, dev.handle, slot, device=dev.name)
        if handle is None:
            continue  # an empty slot
        uuid = text(nvml.call(pynvml.nvmlDeviceGetUUID, handle, device=dev.name))
        gi = nvml.call(pynvml.nvmlDeviceGetGpuInstanceId, handle, device=dev.name)
        found.append(MigDevice(slot, uuid, "" if gi is None else str(int(gi)), handle))
    return found


def gpu_instances(mig_devices: list[MigDevice]) -> list[tuple[str, list[MigDevice]]]:
    """[(GPU instance ID, its MIG devices)] in ID order: a GPU instance has one MIG device per
    compute instance. MIG devices without a GPU instance ID are left out."""
    instances: dict[str, list[MigDevice]] = {}
    for mig_device in mig_devices:
        if mig_device.gpu_instance:
            instances.setdefault(mig_device.gpu_instance, []).append(mig_device)
    return sorted(instances.items(), key=lambda item: int(item[0]))


def instance_labels(gpu_instance: str, members: list[MigDevice]) -> dict[str, str]:
    """The labels of a GPU instance's series, as gpu_allocation_info's. A GPU instance with several
    compute instances has several MIG devices; its values belong to none of them alone, so
    mig_device is empty there."""
    mig_device = members[0].uuid if len(members) == 1 else ""
    return {"gpu_instance": gpu_instance, "mig_device": mig_device}


def read_system(nvml: Nvml) -> System:
    return System(
        driver_version=text(nvml.call(pynvml.nvmlSystemGetDriverVersion)),
        cuda_driver_version=_cuda_version(nvml.call(pynvml.nvmlSystemGetCudaDriverVersion)),
        device_count=nvml.call(pynvml.nvmlDeviceGetCount) or 0,
    )


def _read_info(nvml: Nvml, dev: Device) -> dict[str, object]:
    h, where = dev.handle, dev.name
    pci = nvml.call(pynvml.nvmlDeviceGetPciInfo, h, device=where)
    info: dict[str, object] = {
        "name": text(nvml.call(pynvml.nvmlDeviceGetName, h, device=where)),
        "pci_bus_id": text(pci.busId) if pci is not None else "",
        "serial": text(nvml.call(pynvml.nvmlDeviceGetSerial, h, device=where)),
        "vbios_version": text(nvml.call(pynvml.nvmlDeviceGetVbiosVersion, h, device=where)),
        "fan_count": nvml.call(pynvml.nvmlDeviceGetNumFans, h, device=where) or 0,
        "max_clocks_mhz": {},
    }
    for clock, clock_type in CLOCKS:
        mhz = nvml.call(pynvml.nvmlDeviceGetMaxClockInfo, h, clock_type, device=where)
        if mhz is not None:
            info["max_clocks_mhz"][clock] = mhz
    return info


def _read_settings(nvml: Nvml, dev: Device) -> dict[str, object]:
    h, where = dev.handle, dev.name
    mig = nvml.call(pynvml.nvmlDeviceGetMigMode, h, device=where)
    return {
        "persistence_mode": nvml.call(pynvml.nvmlDeviceGetPersistenceMode, h, device=where),
        "accounting_mode": nvml.call(pynvml.nvmlDeviceGetAccountingMode, h, device=where),
        "compute_mode": nvml.call(pynvml.nvmlDeviceGetComputeMode, h, device=where),
        "mig_mode": list(mig) if mig is not None else None,  # [current, pending]
    }


class Inventory:
    """The devices of one run (or of one repeating process), with the cache behind them."""

    def __init__(self, nvml: Nvml, state_dir: Path | None, warn: Callable[[str], None]):
        self.nvml = nvml
        self.cache_path = state_dir / CACHE_FILE if state_dir else None
        self._warn = warn
        self._key: dict[str, object] | None = None
        self._devices: list[Device] = []
        self._settings_read_at = 0.0
        self._dirty = False

    def static(self, dev: Device, name: str, read: Callable[[], object], fits: shape.Shape) -> object:
        """A static value of `dev` that a collector needs (link count, NVLink peers, ...): read once,
        then kept in the cache with the rest. A cached value that does not have the shape `fits` is
        read again. Raises DeviceGone like any read."""
        if name in dev.info and name not in dev.checked:
            try:
                fits(dev.info[name], f"{dev.name}.{name}")
            except shape.Invalid as err:
                self._warn(f"inventory cache {self.cache_path}: {err}: read again")
                del dev.info[name]
        if name not in dev.info:
            dev.info[name] = read()
            self._dirty = True
        dev.checked.add(name)
        return dev.info[name]

    def save(self) -> None:
        """Write the cache if this run learned something new."""
        if self._dirty:
            self._save(self._key, self._devices, self._settings_read_at)
            self._dirty = False

    def discover(self, now: float, boot_id: str) -> tuple[System, list[Device]]:
        system = read_system(self.nvml)
        key = {"boot_id": boot_id, "driver_version": system.driver_version, "count": system.device_count}
        # In the repeating mode, with the same NVML session and the same GPUs, last cycle's handles hold.
        if not (self._devices and key == self._key and all(dev.up for dev in self._devices)):
            self._key = key
            cached = self._load(key)
            self._devices = self._from_cache(cached) if cached else None
            if self._devices is None:
                self._devices = [self._probe(index) for index in range(system.device_count)]
                self._settings_read_at = float("-inf")
            else:
                self._settings_read_at = cached["settings_read_at"]
        if not 0 <= now - self._settings_read_at < SETTINGS_TTL_SECONDS:
            for dev in self._devices:
                self._refresh_settings(dev)
            self._settings_read_at, self._dirty = now, True
        return system, self._devices

    def _probe(self, index: int) -> Device:
        dev = Device(index)
        try:
            dev.handle = self.nvml.call(pynvml.nvmlDeviceGetHandleByIndex, index, device=dev.name)
            if dev.handle is None:
                dev.error = "no handle"
                return dev
            dev.uuid = text(self.nvml.call(pynvml.nvmlDeviceGetUUID, dev.handle, device=dev.name))
            dev.info = _read_info(self.nvml, dev)
        except DeviceGone as err:
            dev.error = str(err)
            if dev.handle is not None and not dev.info:  # lost before this run read who it is
                dev.info = {"pci_bus_id": self._pci_bus_id(dev)}
        return dev

    def _pci_bus_id(self, dev: Device) -> str:
        """The PCI bus id of a GPU that stopped answering, where NVML still gives it ("" where not)."""
        try:
            pci = self.nvml.call(pynvml.nvmlDeviceGetPciInfo, dev.handle, device=dev.name)
        except DeviceGone:
            return ""
        return text(pci.busId) if pci is not None else ""

    def _refresh_settings(self, dev: Device) -> None:
        if not dev.up:
            return
        try:
            dev.settings = _read_settings(self.nvml, dev)
        except DeviceGone as err:
            dev.error = str(err)

    def _from_cache(self, cached: dict[str, object]) -> list[Device] | None:
        devices = []
        for entry in cached["devices"]:
            dev = Device(entry["index"], entry["uuid"], info=entry["info"], settings=entry["settings"])
            try:
                dev.handle = self.nvml.call(pynvml.nvmlDeviceGetHandleByUUID, dev.uuid, device=dev.name)
            except DeviceGone as err:
                dev.error = str(err)  # known device, now lost: report it down under its cached identity
            else:
                if dev.handle is None:
                    return None  # a GPU was swapped or removed: rebuild
            devices.append(dev)
        return devices

    def _load(self, key: dict[str, object]) -> dict[str, object] | None:
        """The cache, where it was made with `key` and has the shape this version writes."""
        if self.cache_path is None:
            return None
        try:
            cached = json.loads(read_bounded(self.cache_path, STATE_FILE_LIMIT))
            if isinstance(cached, dict) and cached.get("version") != CACHE_VERSION:
                return None  # another version's: read afresh, and replaced by this version's
            CACHE_SHAPE(cached, "")
        except OSError:
            return None  # no cache, or none readable now (an OS error says nothing of the file): read afresh
        except (ValueError, RecursionError) as err:  # shape.Invalid included
            move_aside(self.cache_path, "inventory cache", f"is not what this version writes ({str(err)[:300]})",
                       self._warn)
            return None
        if cached["key"] != key or [d["index"] for d in cached["devices"]] != list(range(key["count"])):
            return None
        return cached

    def _save(self, key: dict[str, object], devices: list[Device], settings_read_at: float) -> None:
        # A cache with a device that did not answer would hide it from the next run's probe.
        if self.cache_path is None or not devices or not all(dev.up for dev in devices):
            return
        payload = {
            "version": CACHE_VERSION,
            "key": key,
            "settings_read_at": settings_read_at,
            "devices": [
                {"index": dev.index, "uuid": dev.uuid, "info": dev.info, "settings": dev.settings}
                for dev in devices
            ],
        }
        try:
            os.makedirs(self.cache_path.parent, mode=0o755, exist_ok=True)
            # not fsynced: the cache is trusted only within the boot it was made in
            write_atomically(self.cache_path, json.dumps(payload).encode(), durable=False)
        except OSError:
            pass  # the cache only saves NVML calls; without it every run reads everything

"""Which containers the kubelet gave each GPU: `gpu_allocation_info`, and pod labels on device series.

The kubelet's pod-resources API (`List` over its unix socket) names, for every container, the devices of
each extended resource it holds. Device IDs come in the forms the device plugins use:

  GPU-<uuid>                 NVIDIA device plugin, whole GPU (the default ID strategy)
  GPU-<uuid>::N              the same GPU, time-slicing replica N
  MIG-<uuid>                 a MIG device, found by its UUID among the MIG devices NVML lists
  MIG-GPU-<uuid>/GI/CI       a MIG device in the form of drivers before R470
  N, N:M                     the plugin's "index" ID strategy: GPU index N, its MIG device M
  nvidiaN[/giG][/vgpuK]      GKE: the GPU whose /dev/nvidiaN this is (its minor number, not the NVML
                             index), GPU instance G, time-sharing replica K

Devices allocated through Dynamic Resource Allocation come in the same answer, named by driver, pool and
device name; those of NVIDIA's driver (`gpu.nvidia.com`) name the GPU's minor number or, for a MIG device,
its GPU instance's profile and placement (gputext.dra). Other drivers' devices are no GPUs gputext knows.

Every holder gets one `allocation_info` series, all sharers of a time-sliced GPU or of a shared claim
included, with the parent GPU's gpu/uuid labels so it joins with the device series; a MIG device adds its
GPU instance ID and its UUID, a DRA device the claim. The device series of a GPU carry
pod/namespace/container only where exactly one container holds the whole GPU: with several sharers, or with
MIG slices, no one pod owns the GPU's temperature or power.

The kubelet's answer, already resolved to GPU UUIDs, is kept in the state file for --pod-cache-ttl, so most
runs neither import gRPC nor read MIG devices or GPU instances (a GPU instance that the DRA driver creates
when the pod starts is found at the first renewal after). The cache is keyed on the socket's inode and
change time (a restarted kubelet makes a new socket) and on the resource names asked for.
"""

from __future__ import annotations

import os
import re
from collections import namedtuple
from collections.abc import Sequence

import pynvml

from . import LastingFailure, NotApplicable
from .. import shape
from ..devices import Device, MigDevice
from ..nvml import DeviceGone, text

GPU_RESOURCE = "nvidia.com/gpu"
MIG_RESOURCE_PREFIX = "nvidia.com/mig-"


class Allocation(namedtuple("Allocation", "uuid pod namespace container resource gpu_instance mig_device "
                                          "claim claim_namespace pool device mig_profile")):
    """A GPU, or a MIG device of it, that the kubelet gave a container. `resource`: the extended resource
    (device plugin) or the driver (DRA); gpu_instance and mig_device are "" for a whole GPU; claim,
    claim_namespace and the DRA pool and device name "" for a device-plugin device; mig_profile (for
    --naming dcgm) only for a DRA MIG device."""

    __slots__ = ()


# where a device ID points: (gpu uuid, gpu instance, MIG device uuid)
Target = tuple[str, str, str]

# The kubelet's last answer in the state: what it was asked with, when, and the allocations
SHAPE = shape.record(optional={"key": shape.anything, "fetched_at": shape.number, "allocations": shape.list_of(
    shape.tuple_of(*[shape.text] * len(Allocation._fields)))})
# Numbers in device IDs have at most 9 digits: a longer one names no device (and one of 5,000 digits is
# beyond what int() reads), so its ID is left out like any other unknown one.
_REPLICA = re.compile(r"::[0-9]+$")
_GKE = re.compile(r"nvidia([0-9]{1,9})(?:/gi([0-9]{1,9}))?(?:/vgpu[0-9]+)?")
_OLD_MIG = re.compile(r"MIG-(GPU-[^/]+)/([0-9]{1,9})/([0-9]{1,9})")
_INDEX = re.compile(r"([0-9]{1,9})(?::([0-9]{1,9}))?")
SHOWN_ID_CHARACTERS = 64  # of an unknown device ID in the warning


def collect(ctx, samples) -> None:
    options = ctx.options
    socket = options.pod_resources_socket
    try:
        stat = os.stat(socket)
    except FileNotFoundError:
        misplaced = socket_missing_in_a_pod(socket)
        if misplaced:
            raise LastingFailure(misplaced) from None
        raise NotApplicable(f"no kubelet pod-resources socket at {socket}") from None
    except OSError as err:  # no permission; a name over 255 bytes, a loop of links
        from ..kubelet import KubeletError

        if isinstance(err, PermissionError):
            raise KubeletError(f"no permission to reach the kubelet's socket {socket}: run gputext as root") from None
        raise KubeletError(f"cannot look at the kubelet's socket {socket}: {err.strerror}") from None
    resources = resource_names(options)
    key = [str(socket), stat.st_dev, stat.st_ino, stat.st_ctime_ns, resources]
    cache = _cache_section(ctx)
    allocations = _cached(cache, key, ctx.now, options.pod_cache_ttl_seconds)
    _, devices = ctx.devices()
    if allocations is None:
        if cache is not None:
            cache.clear()  # an answer that could not be renewed is not used again
        allocations = _ask_kubelet(ctx, devices)
        if cache is not None:
            cache.update(key=key, fetched_at=ctx.now, allocations=[list(a) for a in allocations])

    by_uuid = {dev.uuid: dev for dev in devices}
    # (gpu uuid, gpu instance or MIG device, "" for the whole GPU) -> {holding container: its allocation}
    holders: dict[tuple[str, str], dict[tuple[str, str, str], Allocation]] = {}
    for a in allocations:
        dev = by_uuid.get(a.uuid)
        if dev is None:
            continue
        samples.add("allocation_info", 1, {**dev.labels, "pod": a.pod, "namespace": a.namespace,
                                           "container": a.container, "resource": a.resource,
                                           "gpu_instance": a.gpu_instance, "mig_device": a.mig_device,
                                           "claim": a.claim, "claim_namespace": a.claim_namespace})
        holders.setdefault((a.uuid, a.gpu_instance or a.mig_device), {}).setdefault(
            (a.pod, a.namespace, a.container), a)
    sliced = {uuid for uuid, part in holders if part}  # a MIG slice's holder does not own the GPU's series
    for (uuid, part), who in holders.items():
        if len(who) != 1 or (not part and uuid in sliced):
            continue  # shared, or sliced: no one container owns the series
        (pod, namespace, container), allocation = next(iter(who.items()))
        if not part:
            ctx.pod_labels[uuid] = {"pod": pod, "namespace": namespace, "container": container}
        if options.naming != "gputext":  # a DCGM naming
            from ..dcgm_exporter import holder_labels

            ctx.dcgm_holders[(uuid, part)] = holder_labels(allocation)


def socket_missing_in_a_pod(socket: os.PathLike) -> str | None:
    """What to do where gputext runs in a Kubernetes pod (the kubelet gives every pod
    KUBERNETES_SERVICE_HOST) and the socket is missing: the pod mounts a host directory where the kubelet
    keeps no socket. None outside a pod, where no socket means no kubelet."""
    if "KUBERNETES_SERVICE_HOST" not in os.environ:
        return None
    return (f"no kubelet pod-resources socket at {socket}, though gputext runs in a Kubernetes pod, so no pod "
            f"names; fix: mount the kubelet's pod-resources directory at {os.path.dirname(socket)} (it is "
            "under the kubelet's --root-dir, /var/lib/kubelet by default; k0s and MicroK8s use others)")


def _cache_section(ctx) -> dict | None:
    from ..state import StateUnavailable

    try:
        return ctx.state.section("kubernetes", SHAPE)
    except StateUnavailable:
        return None  # every run asks the kubelet


def _cached(cache: dict | None, key: list, now: float, ttl: float) -> list[Allocation] | None:
    if not cache or cache.get("key") != key:
        return None
    fetched_at, allocations = cache.get("fetched_at"), cache.get("allocations")
    if fetched_at is None or allocations is None or not 0 <= now - fetched_at < ttl:
        return None
    return [Allocation._make(a) for a in allocations]


def grpc_missing() -> str | None:
    """What to do when the kubelet client's packages do not import (a broken or partial install), else None."""
    try:
        import grpc  # noqa: F401
        from google.protobuf import message  # noqa: F401
    except ImportError as err:
        return (f"the kubelet client does not import ({err}); fix: reinstall gputext with its dependencies "
                "(pip install --force-reinstall gputext), which include grpcio and protobuf")
    return None


def _ask_kubelet(ctx, devices: Sequence[Device]) -> list[Allocation]:
    try:
        found = ask_kubelet(ctx, devices)
    except ImportError:
        raise LastingFailure(f"no pod labels: {grpc_missing()}") from None
    unknown = found.unknown
    if unknown:
        ids = "1 device ID from the kubelet names" if len(unknown) == 1 else \
            f"{len(unknown)} device IDs from the kubelet name"
        ctx.note_once(f"kubernetes: {ids} no GPU NVML lists here, left out: "
                      + ", ".join(map(shown, unknown[:5])) + (", ..." if len(unknown) > 5 else ""))
    for name in found.unreadable:
        ctx.note_once(unreadable_name(name))
    return found.allocations


def shown(device_id: str) -> str:
    """A device ID or name from the kubelet as a message quotes it: cut after SHOWN_ID_CHARACTERS."""
    return device_id if len(device_id) <= SHOWN_ID_CHARACTERS else device_id[:SHOWN_ID_CHARACTERS] + "..."


def unreadable_name(name: str) -> str:
    from .. import dra

    return (f"kubernetes: the DRA driver {dra.DRIVER} allocated a device named {shown(name)!r}, a name gputext "
            f"cannot read (it knows gpu-<minor>, gpu-<minor>-mig-..., gpu-vfio-<n>); its allocations are left out: "
            "a newer gputext may know the driver's new names")


class Found:
    """What one `List` answer gave: the allocations of GPUs found here, and what could not be placed."""

    def __init__(self):
        self.allocations: list[Allocation] = []
        self.unknown: list[str] = []  # device IDs and DRA device names that name no GPU here
        self.unreadable: list[str] = []  # gpu.nvidia.com device names in no known form
        self.not_created: list[str] = []  # DRA MIG devices whose GPU instance does not exist (yet)
        self.dra_devices = 0  # gpu.nvidia.com devices in the answer, placed or not
        self.named_by_cdi = 0  # of those, without a device name (a kubelet before 1.31)


def resource_names(options) -> list[str]:
    """The extended resources whose device-plugin devices are GPUs (beyond nvidia.com/mig-*)."""
    return sorted({GPU_RESOURCE, *options.gpu_resource_names})


def ask_kubelet(ctx, devices: Sequence[Device]) -> Found:
    """One `List` call, resolved to this node's GPUs. Raises ImportError without grpcio and KubeletError."""
    from .. import dra  # like the client, only for runs that ask the kubelet
    from ..kubelet import list_devices  # only runs that ask the kubelet load the client

    resources = resource_names(ctx.options)
    plugged, claimed = list_devices(ctx.options.pod_resources_socket, ctx.options.kubelet_timeout_seconds,
                                    lambda name: name in resources or name.startswith(MIG_RESOURCE_PREFIX))
    finder = DeviceFinder(ctx, devices)
    found = Found()
    allocations: dict[Allocation, None] = {}  # ordered, without duplicates (two replicas of one GPU)
    for pod, namespace, container, resource, device_id in plugged:
        target = finder.find(device_id)
        if target is None:
            found.unknown.append(device_id)
            continue
        uuid, gpu_instance, mig_device = target
        allocations[Allocation(uuid, pod, namespace, container, resource, gpu_instance, mig_device,
                               "", "", "", "", "")] = None
    for pod, namespace, container, claim, claim_namespace, driver, pool, given_name, cdi in claimed:
        driver, device_name = dra.driver_and_name(driver, given_name, cdi)
        if driver != dra.DRIVER:
            continue  # another driver's device (a NIC, another vendor's GPU): not a GPU gputext knows
        found.dra_devices += 1
        found.named_by_cdi += not given_name
        name = dra.parse_device_name(device_name)
        if name is None:
            found.unreadable.append(device_name)
            continue
        if name.kind == "vfio":
            continue  # bound to vfio-pci for a VM: NVML does not see it
        target = finder.find_claimed(name)
        if target is None:
            (found.not_created if finder.has_minor(name.minor) else found.unknown).append(device_name)
            continue
        uuid, gpu_instance, mig_device, mig_profile = target
        allocations[Allocation(uuid, pod, namespace, container, driver, gpu_instance, mig_device, claim,
                               claim_namespace, pool, device_name, mig_profile)] = None
    found.allocations = list(allocations)
    found.unreadable = list(dict.fromkeys(found.unreadable))
    return found


class DeviceFinder:
    """Finds the GPU (and MIG device) a kubelet device ID (find) or a gpu.nvidia.com device name
    (find_claimed) names. Minor numbers are static and kept in the inventory cache; MIG devices and GPU
    instances can be re-created at any time, so they are read afresh whenever the kubelet is asked, and
    only if one of its IDs or names needs them."""

    def __init__(self, ctx, devices: Sequence[Device]):
        self.ctx = ctx
        self.devices = [dev for dev in devices if dev.up]
        self.by_uuid = {dev.uuid: dev for dev in self.devices}
        self.by_index = {dev.index: dev for dev in self.devices}
        self._by_minor: dict[int, Device] | None = None
        self._gpu_instances: dict[str, dict[str, tuple[int, int, int]]] = {}  # see _instances

    def find(self, device_id: str) -> Target | None:
        device_id = _REPLICA.sub("", device_id.strip())
        if device_id.startswith("GPU-"):
            return self._whole(self.by_uuid.get(device_id))
        match = _OLD_MIG.fullmatch(device_id)
        if match:
            dev = self.by_uuid.get(match.group(1))
            return self._mig(dev, lambda slot, uuid, gi: gi == match.group(2), fallback=match.group(2))
        if device_id.startswith("MIG-"):
            for dev in self.devices:
                target = self._mig(dev, lambda slot, uuid, gi: uuid == device_id)
                if target:
                    return target
            return None
        match = _GKE.fullmatch(device_id)
        if match:
            dev = self._minor(int(match.group(1)))
            if match.group(2) is None:
                return self._whole(dev)
            return self._mig(dev, lambda slot, uuid, gi: gi == match.group(2), fallback=match.group(2))
        match = _INDEX.fullmatch(device_id)
        if match:
            dev = self.by_index.get(int(match.group(1)))
            if match.group(2) is None:
                return self._whole(dev)
            return self._mig(dev, lambda slot, uuid, gi: slot == int(match.group(2)))
        return None

    @staticmethod
    def _whole(dev: Device | None) -> Target | None:
        return (dev.uuid, "", "") if dev else None

    def _mig(self, dev: Device | None, chosen, fallback: str | None = None) -> Target | None:
        """The MIG device of `dev` that `chosen(slot, uuid, gi)` picks; where NVML lists none but the ID
        itself names the GPU instance (`fallback`), that instance without a MIG UUID."""
        if dev is None:
            return None
        for slot, uuid, gi, _ in self._mig_devices(dev):
            if chosen(slot, uuid, gi):
                return dev.uuid, gi, uuid
        return (dev.uuid, fallback, "") if fallback is not None else None

    def _mig_devices(self, dev: Device) -> list[MigDevice]:
        try:
            return self.ctx.mig_devices(dev)
        except DeviceGone:
            return []

    def find_claimed(self, name) -> tuple[str, str, str, str] | None:
        """(gpu uuid, gpu instance, MIG device uuid, MIG profile) of a gpu.nvidia.com device (its
        dra.DeviceName), or None where no GPU has its minor number or, for a MIG device, where its GPU has
        no such GPU instance (yet)."""
        dev = self._minor(name.minor)
        if dev is None:
            return None
        if name.kind == "gpu":
            return dev.uuid, "", "", ""
        for gpu_instance, (profile_id, start, size) in self._instances(dev).items():
            if (profile_id, start) == (name.profile_id, name.placement_start) and \
                    name.placement_size in (None, size):
                members = [m for m in self._mig_devices(dev) if m.gpu_instance == gpu_instance]
                if len(members) != 1:  # the driver gives pods GPU instances of one compute instance
                    return dev.uuid, gpu_instance, "", ""
                return dev.uuid, gpu_instance, members[0].uuid, self._profile(dev, members[0])
        return None

    def has_minor(self, minor: int) -> bool:
        return self._minor(minor) is not None

    def _instances(self, dev: Device) -> dict[str, tuple[int, int, int]]:
        """GPU instance ID -> (profile id, placement start, placement size) of the GPU instances of `dev`
        that have MIG devices; read once per answer (GPU instances come and go with dynamic MIG)."""
        if dev.uuid not in self._gpu_instances:
            nvml, found = self.ctx.nvml, {}
            try:
                ids = dict.fromkeys(m.gpu_instance for m in self._mig_devices(dev) if m.gpu_instance)
                for gpu_instance in ids:
                    handle = nvml.call(pynvml.nvmlDeviceGetGpuInstanceById, dev.handle, int(gpu_instance),
                                       device=dev.name)
                    info = nvml.call(pynvml.nvmlGpuInstanceGetInfo, handle, device=dev.name) if handle else None
                    if info is not None:
                        found[gpu_instance] = (info.profileId, info.placement.start, info.placement.size)
            except DeviceGone:
                pass
            self._gpu_instances[dev.uuid] = found
        return self._gpu_instances[dev.uuid]

    def _profile(self, dev: Device, mig_device: MigDevice) -> str:
        """The MIG profile ("1g.10gb") that NVML's name of a MIG device ends with, "" where it has none."""
        try:
            name = text(self.ctx.nvml.call(pynvml.nvmlDeviceGetName, mig_device.handle, device=dev.name))
        except DeviceGone:
            return ""
        _, mig, profile = name.rpartition(" MIG ")
        return profile if mig else ""

    def _minor(self, minor: int) -> Device | None:
        if self._by_minor is None:
            self._by_minor = self.ctx.devices_by_minor(self.devices)
        return self._by_minor.get(minor)

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

Every holder gets one `allocation_info` series, all sharers of a time-sliced GPU included, with the
parent GPU's gpu/uuid labels so it joins with the device series; a MIG device adds its GPU instance ID and
its UUID. The device series of a GPU carry pod/namespace/container only where exactly one container holds
the whole GPU: with several sharers, or with MIG slices, no one pod owns the GPU's temperature or power.

The kubelet's answer, already resolved to GPU UUIDs, is kept in the state file for --pod-cache-ttl, so most
runs neither import gRPC nor read MIG devices. The cache is keyed on the socket's inode and change time
(a restarted kubelet makes a new socket) and on the resource names asked for.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence

import pynvml

from . import LastingFailure, NotApplicable
from ..devices import Device, MigDevice
from ..nvml import DeviceGone

GPU_RESOURCE = "nvidia.com/gpu"
MIG_RESOURCE_PREFIX = "nvidia.com/mig-"

# (gpu uuid, pod, namespace, container, resource, gpu instance, MIG device uuid); the last two are ""
# for a whole GPU
Allocation = tuple[str, str, str, str, str, str, str]
# where a device ID points: (gpu uuid, gpu instance, MIG device uuid)
Target = tuple[str, str, str]

_REPLICA = re.compile(r"::\d+$")
_GKE = re.compile(r"nvidia(\d+)(?:/gi(\d+))?(?:/vgpu\d+)?")
_OLD_MIG = re.compile(r"MIG-(GPU-[^/]+)/(\d+)/(\d+)")
_INDEX = re.compile(r"(\d+)(?::(\d+))?")


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
    except PermissionError:
        from ..kubelet import KubeletError

        raise KubeletError(f"no permission to reach the kubelet's socket {socket}: run gputext as root") from None
    resources = sorted({GPU_RESOURCE, *options.gpu_resource_names})
    key = [str(socket), stat.st_dev, stat.st_ino, stat.st_ctime_ns, resources]
    cache = _cache_section(ctx)
    allocations = _cached(cache, key, ctx.now, options.pod_cache_ttl_seconds)
    _, devices = ctx.devices()
    if allocations is None:
        if cache is not None:
            cache.clear()  # an answer that could not be renewed is not used again
        allocations = _ask_kubelet(ctx, devices, resources)
        if cache is not None:
            cache.update(key=key, fetched_at=ctx.now, allocations=[list(a) for a in allocations])

    by_uuid = {dev.uuid: dev for dev in devices}
    holders: dict[str, set] = {}
    for uuid, pod, namespace, container, resource, gpu_instance, mig_device in allocations:
        dev = by_uuid.get(uuid)
        if dev is None:
            continue
        samples.add("allocation_info", 1, {**dev.labels, "pod": pod, "namespace": namespace,
                                           "container": container, "resource": resource,
                                           "gpu_instance": gpu_instance, "mig_device": mig_device})
        # a MIG slice is part of a GPU: its holder does not own the GPU's series
        holders.setdefault(uuid, set()).add(None if mig_device or gpu_instance else (pod, namespace, container))
    for uuid, who in holders.items():
        if len(who) == 1 and None not in who:
            pod, namespace, container = next(iter(who))
            ctx.pod_labels[uuid] = {"pod": pod, "namespace": namespace, "container": container}


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
        return ctx.state.section("kubernetes")
    except StateUnavailable:
        return None  # every run asks the kubelet


def _cached(cache: dict | None, key: list, now: float, ttl: float) -> list[Allocation] | None:
    if not cache or cache.get("key") != key:
        return None
    fetched_at, allocations = cache.get("fetched_at"), cache.get("allocations")
    if not isinstance(fetched_at, (int, float)) or not 0 <= now - fetched_at < ttl:
        return None
    if not isinstance(allocations, list) or not all(
            isinstance(a, list) and len(a) == 7 and all(isinstance(v, str) for v in a) for a in allocations):
        return None  # not what this version writes
    return [tuple(a) for a in allocations]


def grpc_missing() -> str | None:
    """What to do when the kubelet client's packages do not import (a broken or partial install), else None."""
    try:
        import grpc  # noqa: F401
        from google.protobuf import message  # noqa: F401
    except ImportError as err:
        return (f"the kubelet client does not import ({err}); fix: reinstall gputext with its dependencies "
                "(pip install --force-reinstall gputext), which include grpcio and protobuf")
    return None


def _ask_kubelet(ctx, devices: Sequence[Device], resources: Sequence[str]) -> list[Allocation]:
    from ..kubelet import list_devices  # only runs that ask the kubelet load the client

    try:
        holders = list_devices(ctx.options.pod_resources_socket, ctx.options.kubelet_timeout_seconds,
                               lambda name: name in resources or name.startswith(MIG_RESOURCE_PREFIX))
    except ImportError:
        raise LastingFailure(f"no pod labels: {grpc_missing()}") from None
    finder = DeviceFinder(ctx, devices)
    allocations: dict[Allocation, None] = {}  # ordered, without duplicates (two replicas of one GPU)
    unknown = []
    for pod, namespace, container, resource, device_id in holders:
        target = finder.find(device_id)
        if target is None:
            unknown.append(device_id)
            continue
        uuid, gpu_instance, mig_device = target
        allocations[(uuid, pod, namespace, container, resource, gpu_instance, mig_device)] = None
    if unknown:
        ctx.warn(f"kubernetes: {len(unknown)} device IDs from the kubelet name no GPU NVML lists here, left out: "
                 + ", ".join(unknown[:5]) + (", ..." if len(unknown) > 5 else ""))
    return list(allocations)


class DeviceFinder:
    """Finds the GPU (and MIG device) a kubelet device ID names. Minor numbers are static and kept in
    the inventory cache; MIG devices can be re-created at any time, so they are read afresh whenever the
    kubelet is asked, and only if one of its IDs needs them."""

    def __init__(self, ctx, devices: Sequence[Device]):
        self.ctx = ctx
        self.devices = [dev for dev in devices if dev.up]
        self.by_uuid = {dev.uuid: dev for dev in self.devices}
        self.by_index = {dev.index: dev for dev in self.devices}
        self._by_minor: dict[int, Device] | None = None

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

    def _minor(self, minor: int) -> Device | None:
        if self._by_minor is None:
            self._by_minor = {}
            nvml = self.ctx.nvml
            for dev in self.devices:
                try:
                    number = self.ctx.static(dev, "minor_number", lambda dev=dev: nvml.call(
                        pynvml.nvmlDeviceGetMinorNumber, dev.handle, device=dev.name))
                except DeviceGone:
                    continue
                if number is not None:
                    self._by_minor[int(number)] = dev
        return self._by_minor.get(minor)

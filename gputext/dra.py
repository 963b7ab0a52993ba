"""The GPUs that NVIDIA's DRA driver (`gpu.nvidia.com`) allocates, named on the node alone.

Through Dynamic Resource Allocation a pod's ResourceClaim holds devices that the kubelet's pod-resources
`List` names by (driver, pool, device name). dcgm-exporter takes the names as opaque and looks them up in
the cluster's ResourceSlices, which needs API access. The names of NVIDIA's driver
(kubernetes-sigs/dra-driver-nvidia-gpu, before NVIDIA/k8s-dra-driver-gpu) say which GPU they are:

  gpu-<minor>                                     a whole GPU: /dev/nvidia<minor> (nvmlDeviceGetMinorNumber),
                                                  not the NVML index
  gpu-<minor>-mig-<profile id>-<start>-<size>     a MIG device, driver up to v25.8: its GPU instance's
                                                  profile id and memory-slice placement
  gpu-<minor>-mig-<profile>-<profile id>-<start>  the same from v25.12, with the profile's name without dots
                                                  (gpu-1-mig-2g47gb-14-0)
  gpu-vfio-<n>                                    a GPU bound to vfio-pci for a VM, which NVML does not see

The names are the driver's implementation detail and have changed (index-based before mid-2025, the MIG
form in v25.12), so they are read strictly: a `gpu.nvidia.com` name in none of these forms is not guessed
at. Where the kubelet gives no device name (before 1.31 a ClaimResource had CDI devices only), it is the
end of the CDI device's name: `k8s.gpu.nvidia.com/claim=<claim UID>-<name>`, or in drivers up to v25.8
also `k8s.gpu.nvidia.com/device=<name>`.
"""

from __future__ import annotations

import re
from collections import namedtuple

DRIVER = "gpu.nvidia.com"
CDI_VENDOR = "k8s.gpu.nvidia.com"

# ASCII digits only (\d would take any script's), as Go's %d writes them; at most 9: a longer number names
# no device (and one of 5,000 digits is beyond what int() reads)
_NUMBER = "(0|[1-9][0-9]{0,8})"
_WHOLE = re.compile(f"gpu-{_NUMBER}")
_MIG_NUMBERED = re.compile(f"gpu-{_NUMBER}-mig-{_NUMBER}-{_NUMBER}-{_NUMBER}")
# the profile's name: go-nvlib's "1g.10gb", "1c.2g.20gb", "1g.10gb+me" lowercased, dots removed, any other
# character a dash; it is not needed to find the GPU instance, only told apart from the numbered form
_MIG_NAMED = re.compile(f"gpu-{_NUMBER}-mig-[0-9]+[a-z][a-z0-9]*(?:-+[a-z0-9]+)*-{_NUMBER}-{_NUMBER}")
_VFIO = re.compile(f"gpu-vfio-{_NUMBER}")
_CDI = re.compile(re.escape(CDI_VENDOR) + r"/(claim|device)=(.+)")
_CLAIM_UID = re.compile("[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}-")


class DeviceName(namedtuple("DeviceName", "kind minor profile_id placement_start placement_size")):
    """What a `gpu.nvidia.com` device name says. `kind`: "gpu", "mig" or "vfio"; `minor`: the GPU's minor
    number (for vfio the driver's own number); a MIG device's GPU instance profile id and placement start,
    and its placement size where the name gives it (None in the v25.12 form)."""

    __slots__ = ()


def parse_device_name(name: str) -> DeviceName | None:
    """The device a `gpu.nvidia.com` device name names, or None where it is in no known form."""
    match = _WHOLE.fullmatch(name)
    if match:
        return DeviceName("gpu", int(match[1]), None, None, None)
    match = _MIG_NUMBERED.fullmatch(name)  # first: an all-numbered name is never the named form
    if match:
        return DeviceName("mig", *map(int, match.groups()))
    match = _MIG_NAMED.fullmatch(name)
    if match:
        return DeviceName("mig", *map(int, match.groups()), None)
    match = _VFIO.fullmatch(name)
    if match:
        return DeviceName("vfio", int(match[1]), None, None, None)
    return None


def name_from_cdi(cdi_names: tuple[str, ...]) -> str:
    """The `gpu.nvidia.com` device name in a device's CDI names, or "" where none is the driver's."""
    for cdi_name in cdi_names:
        match = _CDI.fullmatch(cdi_name)
        if match is None:
            continue
        kind, rest = match.groups()
        if kind == "device":
            return rest
        uid = _CLAIM_UID.match(rest)
        if uid and len(rest) > uid.end():
            return rest[uid.end():]
    return ""


def driver_and_name(driver: str, device_name: str, cdi_names: tuple[str, ...]) -> tuple[str, str]:
    """(driver, device name) of a ClaimResource: as the kubelet gives them, or where it gives no device
    name (a kubelet before 1.31), from the CDI names of NVIDIA's driver."""
    if device_name or driver not in ("", DRIVER):
        return driver, device_name
    from_cdi = name_from_cdi(cdi_names)
    return (DRIVER, from_cdi) if from_cdi else (driver, device_name)

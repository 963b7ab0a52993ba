"""The kubelet's pod-resources API: which containers hold which devices.

`api.proto` is the kubelet's pod-resources v1 API reduced to `List`; `api_pb2.py` and `api_pb2_grpc.py`
are generated from it (docs/kubernetes.md, "The gRPC modules", gives the command). grpcio and protobuf
are dependencies of gputext, but imported only when the kubelet is asked: importing them costs about 60 ms,
more than a whole run, which is why the kubernetes collector keeps the answer in the state file.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

# A node with hundreds of pods answers well under 1 MiB; gRPC's default limit is 4 MiB.
MAX_ANSWER_BYTES = 16 * 1024 * 1024

# (pod, namespace, container, resource name, device ID): a device-plugin device
DeviceHolder = tuple[str, str, str, str, str]
# (pod, namespace, container, claim name, claim namespace, driver, pool, device name, CDI device names):
# a device allocated through Dynamic Resource Allocation (a ResourceClaim); the kubelet sends these from
# 1.34 (1.27-1.33 with the KubeletPodResourcesDynamicResources gate), with driver, pool and device name
# from 1.31 (before, CDI names only)
ClaimedDevice = tuple[str, str, str, str, str, str, str, str, tuple[str, ...]]


class KubeletError(Exception):
    """The kubelet could not be asked, or gave no usable answer; the message is one line."""


def list_devices(socket: Path, timeout: float,
                 wanted: Callable[[str], bool]) -> tuple[list[DeviceHolder], list[ClaimedDevice]]:
    """Every device-plugin device of a resource that `wanted` accepts, and every DRA device, with the
    container that holds it, from one `List` call. Raises ImportError without grpcio/protobuf and
    KubeletError when the call fails."""
    # gRPC's C core logs connection failures to stderr itself; gputext says what failed in one line.
    os.environ.setdefault("GRPC_VERBOSITY", "NONE")
    import grpc

    from . import api_pb2, api_pb2_grpc

    channel = grpc.insecure_channel(f"unix://{os.path.abspath(socket)}",
                                    options=[("grpc.max_receive_message_length", MAX_ANSWER_BYTES)])
    try:
        answer = api_pb2_grpc.PodResourcesListerStub(channel).List(api_pb2.ListPodResourcesRequest(),
                                                                   timeout=timeout)
    except grpc.RpcError as err:
        raise KubeletError(_describe(err, socket, timeout)) from None
    finally:
        channel.close()
    plugged, claimed = [], []
    for pod in answer.pod_resources:
        for container in pod.containers:
            plugged += [(pod.name, pod.namespace, container.name, devices.resource_name, device_id)
                        for devices in container.devices if wanted(devices.resource_name)
                        for device_id in devices.device_ids]
            claimed += [(pod.name, pod.namespace, container.name, claim.claim_name, claim.claim_namespace,
                         device.driver_name, device.pool_name, device.device_name,
                         tuple(cdi.name for cdi in device.cdi_devices))
                        for claim in container.dynamic_resources
                        for device in claim.claim_resources]
    return plugged, claimed


def _describe(err, socket: Path, timeout: float) -> str:
    code = err.code()
    details = " ".join(str(err.details() or "").split())  # gRPC's details may span lines
    name = getattr(code, "name", str(code))
    if name == "DEADLINE_EXCEEDED":
        return f"the kubelet at {socket} did not answer within {timeout:g}s (--kubelet-timeout)"
    if name == "UNIMPLEMENTED":
        return (f"the kubelet at {socket} does not serve pod-resources v1 List "
                "(Kubernetes 1.20 or newer has it)")
    if name == "UNAVAILABLE":
        return f"cannot reach the kubelet at {socket}: {details}"
    return f"the kubelet at {socket} answered {name}: {details}"

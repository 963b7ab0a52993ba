"""A kubelet's pod-resources socket for tests and benchmarks: a real gRPC server on a unix socket.

    with kubelet_socket() as socket:                     # a short path in a fresh temp directory
        with serve(socket, [pod("train", "ml", {"main": {"nvidia.com/gpu": ["GPU-..."]}})]) as kubelet:
            ...  # gputext collect --pod-resources-socket <socket>; kubelet.calls counts List calls

DRA devices: `pod(..., claims={"main": [claim("gpus", "ml", claimed("gpu-0"), claimed("gpu-3"))]})`.

`serve_hanging` accepts connections and never answers; `serve_garbage` answers every connection with bytes
that are not HTTP/2, and `serve_undecodable` is a gRPC server whose List answer is not protobuf.
"""

from __future__ import annotations

import contextlib
import shutil
import socket as sockets
import tempfile
import threading
from concurrent import futures
from pathlib import Path
from typing import Iterator, List, Mapping, Optional, Sequence

import grpc

from gputext.kubelet import api_pb2, api_pb2_grpc

# container name -> {resource name: [device IDs]}
Containers = Mapping[str, Mapping[str, Sequence[str]]]


def pod(name: str, namespace: str, containers: Containers,
        claims: Optional[Mapping[str, Sequence[api_pb2.DynamicResource]]] = None) -> api_pb2.PodResources:
    """A pod whose containers hold device-plugin devices (`containers`) and DRA claims (`claims`)."""
    claims = claims or {}
    return api_pb2.PodResources(name=name, namespace=namespace, containers=[
        api_pb2.ContainerResources(name=container, devices=[
            api_pb2.ContainerDevices(resource_name=resource, device_ids=list(ids))
            for resource, ids in containers.get(container, {}).items()],
            dynamic_resources=list(claims.get(container, ())))
        for container in dict.fromkeys([*containers, *claims])])


def claim(name: str, namespace: str, *devices: api_pb2.ClaimResource) -> api_pb2.DynamicResource:
    """A ResourceClaim a container holds, with its allocated devices."""
    return api_pb2.DynamicResource(claim_name=name, claim_namespace=namespace, claim_resources=list(devices))


def claimed(device_name: str, driver: str = "gpu.nvidia.com", pool: str = "node-1", cdi: Sequence[str] = (),
            share_id: Optional[str] = None) -> api_pb2.ClaimResource:
    """One device of a claim, as the kubelet 1.31+ names it (a kubelet before 1.31: device_name "" and
    the driver's CDI names in `cdi`)."""
    device = api_pb2.ClaimResource(driver_name=driver, pool_name=pool, device_name=device_name,
                                   cdi_devices=[api_pb2.CDIDevice(name=n) for n in cdi])
    if share_id is not None:
        device.share_id = share_id
    return device


@contextlib.contextmanager
def kubelet_socket() -> Iterator[Path]:
    """A socket path in a new temp directory: unix socket paths may be at most 107 bytes, which
    pytest's tmp_path can exceed."""
    directory = tempfile.mkdtemp(prefix="kubelet-")
    try:
        yield Path(directory) / "kubelet.sock"
    finally:
        shutil.rmtree(directory, ignore_errors=True)


class _Lister(api_pb2_grpc.PodResourcesListerServicer):
    def __init__(self, pods: List[api_pb2.PodResources]):
        self.pods = pods
        self.calls = 0

    def List(self, request, context):
        self.calls += 1
        return api_pb2.ListPodResourcesResponse(pod_resources=self.pods)


@contextlib.contextmanager
def serve(socket: Path, pods: List[api_pb2.PodResources]) -> Iterator[_Lister]:
    """A pod-resources server answering List with `pods`; `.pods` may be changed while it runs."""
    lister = _Lister(list(pods))
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    api_pb2_grpc.add_PodResourcesListerServicer_to_server(lister, server)
    with _grpc_server(server, socket):
        yield lister


@contextlib.contextmanager
def serve_undecodable(socket: Path) -> Iterator[None]:
    """A gRPC server whose List answer is bytes that do not parse as ListPodResourcesResponse."""
    handler = grpc.method_handlers_generic_handler("v1.PodResourcesLister", {
        "List": grpc.unary_unary_rpc_method_handler(
            lambda request, context: b"\x0a\x05\xff\xff\xff\xff\xff",  # field 1, length 5, bad message
            request_deserializer=None, response_serializer=None)})
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    server.add_generic_rpc_handlers((handler,))
    with _grpc_server(server, socket):
        yield


@contextlib.contextmanager
def _grpc_server(server: grpc.Server, socket: Path) -> Iterator[None]:
    if not server.add_insecure_port(f"unix://{socket}"):
        raise RuntimeError(f"cannot listen on {socket}")
    server.start()
    try:
        yield
    finally:
        server.stop(grace=None).wait()
        socket.unlink(missing_ok=True)


@contextlib.contextmanager
def serve_hanging(socket: Path) -> Iterator[None]:
    """Accepts connections, reads what comes, never writes: a kubelet that hangs."""
    with _raw_server(socket, answer=None):
        yield


@contextlib.contextmanager
def serve_garbage(socket: Path) -> Iterator[None]:
    """Answers every connection with bytes that are no HTTP/2 (what a wrong socket might say)."""
    with _raw_server(socket, answer=b"HTTP/1.1 400 Bad Request\r\n\r\n\x00\xff garbage \xfe" * 8):
        yield


@contextlib.contextmanager
def _raw_server(socket: Path, answer) -> Iterator[None]:
    listener = sockets.socket(sockets.AF_UNIX, sockets.SOCK_STREAM)
    listener.bind(str(socket))
    listener.listen(16)
    stop = threading.Event()
    connections: List[sockets.socket] = []

    def accept() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                connection, _ = listener.accept()
            except (sockets.timeout, OSError):
                continue
            connections.append(connection)
            if answer is not None:
                with contextlib.suppress(OSError):
                    connection.sendall(answer)
                    connection.close()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        for connection in connections:
            connection.close()
        listener.close()
        socket.unlink(missing_ok=True)

"""Process to pod: cgroup files of the common runtimes and drivers (tests/data/cgroups) in a fixture host
tree, named through the kubelet's log layout; and end to end through --host-root."""

import shutil
from pathlib import Path

import pytest

from conftest import require, value
from fakegpu import h100, h100_uuid
from gputext.pods import NOT_IN_A_POD, PodRef, PodResolver, pod_ids, read_cgroup

CGROUPS = Path(__file__).resolve().parent / "data" / "cgroups"


def container_id(seed: str) -> str:
    import hashlib

    return hashlib.sha256(seed.encode()).hexdigest()  # how the fixture files' IDs were made


# fixture file -> (pid, namespace, pod, pod UID, container, container ID, has a /var/log/containers link)
PODS = {
    "containerd-v2-systemd": (101, "ml", "train-a-0", "8f2c6a5e-1b3d-4c7e-9a0f-2d4e6b8c0a1f", "trainer",
                              container_id("train-a"), True),
    "containerd-v2-systemd-guaranteed": (102, "ml", "train-b-0", "2b7d9e4f-6a1c-4d8b-b3e5-7f9a1c3e5d7b",
                                         "trainer", container_id("train-b"), True),
    "crio-v2-systemd": (103, "serving", "infer-7d9f", "5e1a3c7d-9b2f-4e6a-8c0d-4f6b8d0e2a4c", "model",
                        container_id("infer"), True),
    "docker-v1-cgroupfs": (104, "research", "notebook", "3c9e1f5a-7d2b-4a8c-9e6f-1b3d5f7a9c2e", "jupyter",
                           container_id("notebook"), True),
    # a static pod (UID: 32 hex digits) seen from inside a cgroup namespace; its log link is gone, and its
    # one container's name comes from the pod's log directory
    "static-pod-v2-cgroupfs-nested": (105, "kube-system", "gpu-burn-node1", "0a1b2c3d4e5f60718293a4b5c6d7e8f9",
                                      "burn", container_id("static"), False),
}
OUTSIDE = {"not-in-a-pod": 106, "docker-not-kubernetes": 107}


@pytest.fixture
def host(tmp_path) -> Path:
    """A host root: /proc/<pid>/cgroup from the fixtures, the kubelet's log directories for the pods."""
    root = tmp_path / "host"
    for name, pid in [(name, entry[0]) for name, entry in PODS.items()] + list(OUTSIDE.items()):
        (root / "proc" / str(pid)).mkdir(parents=True)
        shutil.copy(CGROUPS / f"{name}.cgroup", root / "proc" / str(pid) / "cgroup")
    logs = root / "var" / "log"
    (logs / "containers").mkdir(parents=True)
    for pid, namespace, pod, uid, container, cid, linked in PODS.values():
        (logs / "pods" / f"{namespace}_{pod}_{uid}" / container).mkdir(parents=True)
        if linked:
            (logs / "containers" / f"{pod}_{namespace}_{container}-{cid}.log").symlink_to(
                f"/var/log/pods/{namespace}_{pod}_{uid}/{container}/0.log")  # dangling here, as in a container
    # another pod's sidecar, and the logs of a pod on no GPU: neither may confuse the lookup
    (logs / "pods" / "ml_train-a-0_8f2c6a5e-1b3d-4c7e-9a0f-2d4e6b8c0a1f" / "sidecar").mkdir()
    (logs / "containers" / f"train-a-0_ml_sidecar-{container_id('sidecar')}.log").touch()
    (logs / "pods" / "web_frontend_9d8c7b6a-5f4e-4d3c-2b1a-0f9e8d7c6b5a" / "nginx").mkdir(parents=True)
    return root


@pytest.mark.parametrize("fixture", sorted(PODS))
def test_cgroup_names_pod_uid_and_container_id(fixture):
    _, _, _, uid, _, cid, _ = PODS[fixture]
    assert pod_ids((CGROUPS / f"{fixture}.cgroup").read_text()) == (uid, cid)


@pytest.mark.parametrize("fixture", sorted(OUTSIDE))
def test_cgroup_outside_kubernetes_names_nothing(fixture):
    assert pod_ids((CGROUPS / f"{fixture}.cgroup").read_text()) == (None, None)


@pytest.mark.parametrize("fixture", sorted(PODS))
def test_pid_to_pod_through_the_log_layout(host, fixture):
    pid, namespace, pod, _, container, _, _ = PODS[fixture]
    assert PodResolver(host).for_cgroup(read_cgroup(host, pid)) == PodRef(pod, namespace, container)


def test_outside_kubernetes_gone_and_unnamed_processes(host):
    resolver = PodResolver(host)
    assert resolver.for_cgroup(read_cgroup(host, OUTSIDE["not-in-a-pod"])) == NOT_IN_A_POD
    assert resolver.for_cgroup(read_cgroup(host, OUTSIDE["docker-not-kubernetes"])) == NOT_IN_A_POD
    assert resolver.for_cgroup(read_cgroup(host, 99999)) == NOT_IN_A_POD  # exited since NVML's list
    assert NOT_IN_A_POD.labels() == {"pod": "", "namespace": "", "container": ""}
    # without the kubelet's logs (not mounted) a pod cannot be named, and that is noted
    without_logs = PodResolver(host.parent / "empty-root")
    assert without_logs.for_cgroup(read_cgroup(host, 101)) == NOT_IN_A_POD
    assert without_logs.unnamed_pods == {pod_ids(read_cgroup(host, 101))[0]}


def test_container_without_log_link_in_a_pod_of_several_keeps_the_pod(host):
    (next((host / "var/log/containers").glob("train-a-0_ml_trainer-*.log"))).unlink()
    assert PodResolver(host).for_cgroup(read_cgroup(host, 101)) == PodRef("train-a-0", "ml", "")


def test_time_sliced_pods_get_their_own_process_labels(node, tmp_path, host):
    """Two pods time-slicing GPU 0: the device series carry no pod, each process series its own."""
    require("grpc", "google.protobuf")
    from fakekubelet import kubelet_socket, pod, serve

    sharers = [{"pid": 101, "used_memory": 10 << 30}, {"pid": 103, "used_memory": 20 << 30},
               {"pid": 106, "used_memory": 1 << 30}]  # the last one runs outside Kubernetes
    node.write([h100(0, accounting_mode=1, processes=sharers, process_samples=[]), h100(1, accounting_mode=1)])
    pods = [pod("train-a-0", "ml", {"trainer": {"nvidia.com/gpu": [h100_uuid(0) + "::0"]}}),
            pod("infer-7d9f", "serving", {"model": {"nvidia.com/gpu": [h100_uuid(0) + "::1"]}})]
    with kubelet_socket() as socket, serve(socket, pods):
        proc, series = node.collect("--host-root", str(host), "--pod-resources-socket", str(socket))
    assert proc.returncode == 0, proc.stderr
    memory = "gpu_process_memory_used_bytes"
    assert value(series, memory, pid="101", pod="train-a-0", namespace="ml", container="trainer") == 10 << 30
    assert value(series, memory, pid="103", pod="infer-7d9f", namespace="serving", container="model") == 20 << 30
    assert value(series, memory, pid="106", pod="", namespace="", container="") == 1 << 30
    assert value(series, "gpu_temperature_celsius", gpu="0") == 41
    assert value(series, "gpu_temperature_celsius", gpu="0", pod="train-a-0") is None
    assert value(series, "gpu_allocation_info", gpu="0", pod="infer-7d9f", container="model") == 1


def test_processes_in_pods_the_log_layout_does_not_name_are_said_once(node, tmp_path, host):
    """Where the kubelet keeps its logs elsewhere (or they are not mounted under --host-root) a process in a
    pod keeps its series without pod labels, and the run says why, once per boot."""
    shutil.rmtree(host / "var" / "log")
    node.write([h100(0, accounting_mode=1, processes=[{"pid": 101, "used_memory": 10 << 30}],
                     process_samples=[])])
    proc, series = node.collect("--host-root", str(host), "--collectors", "nvml,processes")
    assert proc.returncode == 0
    assert proc.stderr == (f"gputext: processes in pods that {host}/var/log/pods does not name have no pod labels: "
                           "gputext names pods from the kubelet's log directories, /var/log/pods and "
                           "/var/log/containers under --host-root; mount the host's there\n")
    assert value(series, "gpu_process_memory_used_bytes", pid="101", pod="") == 10 << 30
    proc, _ = node.collect("--host-root", str(host), "--collectors", "nvml,processes")
    assert proc.returncode == 0 and proc.stderr == ""  # said this boot already

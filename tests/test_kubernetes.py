"""Device to pod: gputext against a real gRPC pod-resources server on a unix socket (tests/fakekubelet.py)."""

import contextlib
import os
import socket as sockets
import subprocess
import sys
import time

import pytest

from conftest import parse_exposition, require, value
from fakegpu import h100, h100_uuid

require("grpc", "google.protobuf")  # the test extra has them

from fakekubelet import (kubelet_socket, pod, serve, serve_garbage, serve_hanging,  # noqa: E402
                         serve_undecodable)

GPU = "nvidia.com/gpu"
MIG_1G = "nvidia.com/mig-1g.10gb"
MIG_A = "MIG-5c3f8e1a-2b7d-5e9f-8a1c-3d5f7b9e1a3c"
MIG_B = "MIG-7e9a1c3e-5d7f-5b9a-8c1e-3f5a7c9e1b3d"
ONE_POD_PER_GPU = [
    pod("train-0", "ml", {"trainer": {GPU: [h100_uuid(0)]}}),
    pod("train-1", "ml", {"trainer": {GPU: [h100_uuid(1)], "example.com/nic": ["eth1"]}}),
]


@pytest.fixture
def socket():
    with kubelet_socket() as path:
        yield path


def gpus(count=2):
    """H100s with accounting on, so the processes collector has nothing to say on stderr."""
    return [h100(i, accounting_mode=1) for i in range(count)]


def mig_gpu(index, minor=None):
    return h100(index, accounting_mode=1, mig_mode=(1, 1), minor_number=index if minor is None else minor,
                mig_devices={0: {"uuid": MIG_A, "gi": 1, "ci": 0}, 1: {"uuid": MIG_B, "gi": 2, "ci": 0}})


def run(node, socket, *args, collectors="nvml,kubernetes", **kw):
    proc, series = node.collect("--collectors", collectors, "--pod-resources-socket", str(socket), *args, **kw)
    assert proc.returncode == 0, proc.stderr
    return proc, series


def allocations(series):
    """{(gpu, uuid, pod, namespace, container, resource, gpu_instance, mig_device)} of allocation_info; each 1."""
    found = set()
    for (name, labels), v in series.items():
        if name == "gpu_allocation_info":
            assert v == 1
            ls = dict(labels)
            found.add(tuple(ls[k] for k in ("gpu", "uuid", "pod", "namespace", "container", "resource",
                                            "gpu_instance", "mig_device")))
    return found


def pod_labels(series, gpu):
    """The pod labels the GPU's device series carry, checked to be the same on each of them."""
    seen = set()
    for (name, labels), _ in series.items():
        ls = dict(labels)
        if ls.get("gpu") == gpu and name.startswith("gpu_") and "process" not in name \
                and name != "gpu_allocation_info":
            seen.add(tuple(ls.get(k) for k in ("pod", "namespace", "container")))
    assert len(seen) == 1, f"GPU {gpu}: device series disagree on pod labels: {seen}"
    return seen.pop()


NO_POD = (None, None, None)


def success(series):
    return value(series, "gputext_collector_success", collector="kubernetes")


def test_one_pod_per_gpu(node, socket):
    node.write(gpus())
    with serve(socket, ONE_POD_PER_GPU):
        proc, series = run(node, socket)
    assert proc.stderr == ""
    assert success(series) == 1
    assert allocations(series) == {
        ("0", h100_uuid(0), "train-0", "ml", "trainer", GPU, "", ""),
        ("1", h100_uuid(1), "train-1", "ml", "trainer", GPU, "", ""),
    }
    assert pod_labels(series, "0") == ("train-0", "ml", "trainer")
    assert pod_labels(series, "1") == ("train-1", "ml", "trainer")
    assert value(series, "gpu_temperature_celsius", gpu="0", pod="train-0") == 41


def test_time_sliced_gpu_lists_every_sharer_and_labels_no_device_series(node, socket):
    node.write(gpus())
    pods = [pod("a", "team-a", {"worker": {GPU: [h100_uuid(0) + "::0"]}}),
            pod("b", "team-b", {"worker": {GPU: [h100_uuid(0) + "::1"]}}),
            # one container given two replicas of GPU 1 holds it alone, with one series
            pod("c", "team-c", {"solo": {GPU: [h100_uuid(1) + "::2", h100_uuid(1) + "::3"]}})]
    with serve(socket, pods):
        _, series = run(node, socket)
    assert allocations(series) == {
        ("0", h100_uuid(0), "a", "team-a", "worker", GPU, "", ""),
        ("0", h100_uuid(0), "b", "team-b", "worker", GPU, "", ""),
        ("1", h100_uuid(1), "c", "team-c", "solo", GPU, "", ""),
    }
    assert pod_labels(series, "0") == NO_POD
    assert pod_labels(series, "1") == ("c", "team-c", "solo")


def test_mig_devices_join_their_parent_gpu(node, socket):
    node.write([h100(0, accounting_mode=1), mig_gpu(1)])
    pods = [pod("small-a", "ml", {"main": {MIG_1G: [MIG_A]}}),
            pod("small-b", "ml", {"main": {MIG_1G: [f"MIG-{h100_uuid(1)}/2/0"]}}),  # drivers before R470
            pod("whole", "ml", {"main": {GPU: [h100_uuid(0)]}})]
    with serve(socket, pods):
        proc, series = run(node, socket)
    assert proc.stderr == ""
    assert allocations(series) == {
        ("0", h100_uuid(0), "whole", "ml", "main", GPU, "", ""),
        ("1", h100_uuid(1), "small-a", "ml", "main", MIG_1G, "1", MIG_A),
        ("1", h100_uuid(1), "small-b", "ml", "main", MIG_1G, "2", MIG_B),
    }
    assert pod_labels(series, "0") == ("whole", "ml", "main")
    assert pod_labels(series, "1") == NO_POD  # a slice's holder does not own the GPU's series


def test_mig_memory_joins_allocation_info_and_mig_devices_are_listed_once(node, socket):
    gpu = mig_gpu(0)
    gpu["mig_devices"][0]["memory"] = (40 << 30, 3 << 30)
    gpu["mig_devices"][1]["memory"] = (20 << 30, 5 << 30)
    node.write([gpu])
    with serve(socket, [pod("small-b", "ml", {"main": {MIG_1G: [MIG_B]}})]):
        proc, series = run(node, socket)
    assert proc.stderr == ""
    ((_, allocated),) = [(n, dict(labels)) for n, labels in series if n == "gpu_allocation_info"]
    keys = {k: allocated[k] for k in ("gpu", "uuid", "gpu_instance", "mig_device")}
    assert keys == {"gpu": "0", "uuid": h100_uuid(0), "gpu_instance": "2", "mig_device": MIG_B}
    assert value(series, "gpu_mig_memory_used_bytes", **keys) == 5 << 30  # the pod's slice
    assert value(series, "gpu_mig_memory_total_bytes", **keys) == 20 << 30
    assert value(series, "gpu_mig_memory_used_bytes", gpu_instance="1", mig_device=MIG_A) == 3 << 30
    # nvml and kubernetes share one listing of the MIG devices per run
    assert node.call_counts()[0]["nvmlDeviceGetMaxMigDeviceCount"] == 1


def test_one_mig_slice_holder_does_not_label_the_gpu(node, socket):
    node.write([mig_gpu(0), h100(1, accounting_mode=1)])
    with serve(socket, [pod("small", "ml", {"main": {MIG_1G: [MIG_B]}})]):
        _, series = run(node, socket)
    assert allocations(series) == {("0", h100_uuid(0), "small", "ml", "main", MIG_1G, "2", MIG_B)}
    assert pod_labels(series, "0") == NO_POD


def test_gke_device_ids_are_minor_numbers(node, socket):
    # /dev/nvidiaN numbering differs from NVML's order: GPU 0 is nvidia3, GPU 1 nvidia0, GPU 2 nvidia5
    node.write([h100(0, accounting_mode=1, minor_number=3), h100(1, accounting_mode=1, minor_number=0),
                mig_gpu(2, minor=5)])
    pods = [pod("gke-a", "default", {"app": {GPU: ["nvidia0"]}}),
            pod("gke-b", "default", {"app": {GPU: ["nvidia3/vgpu0"]}}),  # GKE time-sharing
            pod("gke-c", "default", {"app": {GPU: ["nvidia3/vgpu1"]}}),
            pod("gke-d", "default", {"app": {GPU: ["nvidia5/gi2"]}})]  # GKE GPU partition (MIG)
    with serve(socket, pods):
        proc, series = run(node, socket)
    assert proc.stderr == ""
    assert allocations(series) == {
        ("1", h100_uuid(1), "gke-a", "default", "app", GPU, "", ""),
        ("0", h100_uuid(0), "gke-b", "default", "app", GPU, "", ""),
        ("0", h100_uuid(0), "gke-c", "default", "app", GPU, "", ""),
        ("2", h100_uuid(2), "gke-d", "default", "app", GPU, "2", MIG_B),
    }
    assert pod_labels(series, "1") == ("gke-a", "default", "app")
    assert pod_labels(series, "0") == NO_POD


def test_index_ids_and_extra_resource_names(node, socket):
    node.write([h100(0, accounting_mode=1), mig_gpu(1)])
    pods = [pod("by-index", "ml", {"main": {GPU: ["0"]}}),
            pod("mig-by-index", "ml", {"main": {MIG_1G: ["1:0"]}}),
            pod("custom", "ml", {"main": {"example.com/shared-gpu": [h100_uuid(1)]}})]
    with serve(socket, pods):
        _, series = run(node, socket)
        _, named = run(node, socket, "--gpu-resource-names", "example.com/shared-gpu")
    expected = {("0", h100_uuid(0), "by-index", "ml", "main", GPU, "", ""),
                ("1", h100_uuid(1), "mig-by-index", "ml", "main", MIG_1G, "1", MIG_A)}
    assert allocations(series) == expected  # a resource nobody named is not a GPU
    assert allocations(named) == expected | {("1", h100_uuid(1), "custom", "ml", "main", "example.com/shared-gpu",
                                              "", "")}


def test_unknown_device_ids_are_left_out_with_one_line(node, socket):
    node.write(gpus())
    pods = ONE_POD_PER_GPU + [pod("ghost", "ml", {"main": {GPU: ["GPU-00000000-0000-0000-0000-000000000000",
                                                                 "nvidia9", "MIG-nope", "tpu0"]}})]
    with serve(socket, pods):
        proc, series = run(node, socket)
    assert success(series) == 1
    assert {a[2] for a in allocations(series)} == {"train-0", "train-1"}
    assert proc.stderr.splitlines() == [
        "gputext: kubernetes: 4 device IDs from the kubelet name no GPU NVML lists here, left out: "
        "GPU-00000000-0000-0000-0000-000000000000, nvidia9, MIG-nope, tpu0"]


def test_one_unknown_device_id_is_said_in_the_singular(node, socket):
    node.write(gpus())
    with serve(socket, ONE_POD_PER_GPU + [pod("ghost", "ml", {"main": {GPU: ["tpu0"]}})]):
        proc, series = run(node, socket)
    assert success(series) == 1
    assert proc.stderr.splitlines() == [
        "gputext: kubernetes: 1 device ID from the kubelet names no GPU NVML lists here, left out: tpu0"]


def test_a_device_id_of_5000_digits_is_one_unknown_device(node, socket):
    """Numbers beyond int()'s 4,300 digits in any form of device ID: that device is left out, said once
    (shortened), and every other pod keeps its labels."""
    node.write(gpus())
    huge = "9" * 5000
    pods = ONE_POD_PER_GPU + [pod("huge", "ml", {"main": {GPU: [huge, f"nvidia{huge}", f"0:{huge}",
                                                                f"nvidia0/gi{huge}"]}})]
    with serve(socket, pods):
        proc, series = run(node, socket, "--pod-cache-ttl", "0")
        again, _ = run(node, socket, "--pod-cache-ttl", "0")
    assert success(series) == 1
    assert pod_labels(series, "0") == ("train-0", "ml", "trainer")
    assert pod_labels(series, "1") == ("train-1", "ml", "trainer")
    (line,) = proc.stderr.splitlines()
    assert line.startswith("gputext: kubernetes: 4 device IDs from the kubelet name no GPU NVML lists here, left "
                           f"out: {'9' * 64}..., nvidia{'9' * 58}...")
    assert len(line) < 500
    assert again.stderr == ""  # said once


def test_doctor_shortens_unknown_device_ids_as_the_collector_does(node, socket):
    node.write(gpus())
    huge = "9" * 5000
    with serve(socket, ONE_POD_PER_GPU + [pod("huge", "ml", {"main": {GPU: [huge]}})]):
        proc = node.run("doctor", "--collectors", "kubernetes", "--pod-resources-socket", str(socket))
    (line,) = [line for line in proc.stdout.splitlines() if " allocations: " in line]
    assert line.endswith(f"; 1 device names no GPU NVML lists here ({'9' * 64}...)"), line[:300]


def test_answer_is_cached_for_the_ttl_and_renewed_after(node, socket):
    node.write(gpus())
    with serve(socket, ONE_POD_PER_GPU) as kubelet:
        _, first = run(node, socket)
        kubelet.pods = [pod("next", "ml", {"trainer": {GPU: [h100_uuid(0)]}})]
        _, cached = run(node, socket)
        assert kubelet.calls == 1
        assert allocations(cached) == allocations(first)
        assert pod_labels(cached, "0") == ("train-0", "ml", "trainer")
        _, renewed = run(node, socket, "--pod-cache-ttl", "0")
        assert kubelet.calls == 2
    assert allocations(renewed) == {("0", h100_uuid(0), "next", "ml", "trainer", GPU, "", "")}
    assert pod_labels(renewed, "1") == NO_POD


def test_restarted_kubelet_is_asked_again_within_the_ttl(node, socket):
    node.write(gpus())
    with serve(socket, ONE_POD_PER_GPU) as kubelet:
        run(node, socket)
    assert kubelet.calls == 1
    with serve(socket, [pod("after-restart", "ml", {"x": {GPU: [h100_uuid(1)]}})]) as restarted:
        _, series = run(node, socket)
    assert restarted.calls == 1
    assert allocations(series) == {("1", h100_uuid(1), "after-restart", "ml", "x", GPU, "", "")}


def test_without_state_every_run_asks(node, socket, tmp_path):
    node.write(gpus())
    not_a_directory = tmp_path / "state-file"
    not_a_directory.write_text("")
    with serve(socket, ONE_POD_PER_GPU) as kubelet:
        for _ in range(2):
            proc, series = run(node, socket, "--state-dir", str(not_a_directory), state=False)
            assert pod_labels(series, "1") == ("train-1", "ml", "trainer")
    assert kubelet.calls == 2
    assert "no state this run" in proc.stderr


def test_no_socket_is_not_applicable_and_silent(node, tmp_path):
    node.write(gpus())
    proc, series = run(node, tmp_path / "absent.sock", collectors="")  # every collector that applies
    assert success(series) is None
    assert [line for line in proc.stderr.splitlines() if "kube" in line] == []
    assert allocations(series) == set()
    assert pod_labels(series, "0") == NO_POD
    proc, series = run(node, tmp_path / "absent.sock")  # named: said, and reported as failed
    assert success(series) == 0
    assert proc.stderr.splitlines() == [
        f"gputext: collector kubernetes: no kubelet pod-resources socket at {tmp_path / 'absent.sock'}"]


def test_no_socket_in_a_pod_is_a_failure_said_once(node, tmp_path):
    """In a pod (the kubelet sets KUBERNETES_SERVICE_HOST in every one) a missing socket is a mount of the
    wrong host directory (a kubelet with another --root-dir): every run reports the collector failed, and
    the first of the boot says why; doctor says it too."""
    node.write(gpus())
    absent = tmp_path / "pod-resources" / "kubelet.sock"
    in_a_pod = {**node.env(), "KUBERNETES_SERVICE_HOST": "10.96.0.1"}
    said = (f"gputext: collector kubernetes: no kubelet pod-resources socket at {absent}, though gputext runs in "
            f"a Kubernetes pod, so no pod names; fix: mount the kubelet's pod-resources directory at "
            f"{absent.parent} (it is under the kubelet's --root-dir, /var/lib/kubelet by default; k0s and "
            "MicroK8s use others)")
    for stderr in ([said], []):
        proc = subprocess.run([sys.executable, "-m", "gputext", "collect", "--out", "-", "--pod-resources-socket",
                               str(absent), "--state-dir", str(node.state_dir), "--collectors", "nvml,kubernetes"],
                              env=in_a_pod, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0 and proc.stderr.splitlines() == stderr
        series = parse_exposition(proc.stdout)
        assert success(series) == 0 and value(series, "gpu_up", gpu="0") == 1
    proc = subprocess.run([sys.executable, "-m", "gputext", "doctor", "--pod-resources-socket", str(absent),
                           "--state-dir", str(node.state_dir)], env=in_a_pod, capture_output=True, text=True,
                          timeout=60)
    (line,) = [line for line in proc.stdout.splitlines() if " kubelet: " in line]
    assert line == "warn  kubelet: " + said.split(": ", 2)[2]


def assert_failed_but_written(started, timeout, proc, out):
    elapsed = time.monotonic() - started
    assert elapsed < timeout + 1, f"the run took {elapsed:.2f}s"
    series = parse_exposition(out.read_text())
    assert success(series) == 0
    assert value(series, "gputext_collector_success", collector="nvml") == 1
    assert value(series, "gpu_temperature_celsius", gpu="0") == 41
    assert pod_labels(series, "0") == NO_POD
    assert allocations(series) == set()
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("gputext: collector kubernetes failed: KubeletError: "), lines
    return lines[0]


@pytest.mark.parametrize("kubelet", ["hanging", "garbage", "undecodable", "refusing"])
def test_broken_kubelet_fails_the_collector_only(node, socket, tmp_path, kubelet):
    node.write(gpus())
    out = tmp_path / "gpu.prom"
    timeout = 1.0
    servers = {"hanging": serve_hanging, "garbage": serve_garbage, "undecodable": serve_undecodable}
    with contextlib.ExitStack() as stack:
        if kubelet == "refusing":  # a socket file nobody listens on: what a killed kubelet leaves
            bound = stack.enter_context(sockets.socket(sockets.AF_UNIX))
            bound.bind(str(socket))
        else:
            stack.enter_context(servers[kubelet](socket))
        started = time.monotonic()
        proc = node.run("collect", "--out", str(out), "--collectors", "nvml,kubernetes",
                        "--pod-resources-socket", str(socket), "--kubelet-timeout", f"{timeout}s")
    assert proc.returncode == 0
    line = assert_failed_but_written(started, timeout, proc, out)
    expected = {"hanging": "did not answer within 1s (--kubelet-timeout)",
                "garbage": "cannot reach the kubelet at",
                "undecodable": "answered INTERNAL",
                "refusing": "cannot reach the kubelet at"}[kubelet]
    assert expected in line


def test_a_failed_renewal_drops_the_old_answer(node, socket):
    node.write(gpus())
    with serve(socket, ONE_POD_PER_GPU):
        _, series = run(node, socket)
    assert pod_labels(series, "0") == ("train-0", "ml", "trainer")
    with serve_hanging(socket):
        proc, series = run(node, socket, "--kubelet-timeout", "0.2s")
    assert success(series) == 0 and allocations(series) == set() and pod_labels(series, "0") == NO_POD


@pytest.fixture
def without_grpc(node, socket, tmp_path):
    """Runs `gputext collect --out -` where `import grpc` fails, as without the kubernetes extra."""
    shadow = tmp_path / "no-grpc"
    (shadow / "grpc").mkdir(parents=True)
    (shadow / "grpc" / "__init__.py").write_text("raise ImportError(\"No module named 'grpc'\")\n")
    env = {**node.env(), "PYTHONPATH": os.pathsep.join([str(shadow), *sys.path])}

    def collect(*args):
        return subprocess.run([sys.executable, "-m", "gputext", "collect", "--out", "-", "--state-dir",
                               str(node.state_dir), "--pod-resources-socket", str(socket), *args],
                              env=env, capture_output=True, text=True, timeout=60)

    return collect


def test_a_broken_install_without_grpc(node, socket, without_grpc):
    """grpcio is a dependency; where it does not import (a broken install) on a kubelet node, the collector
    fails, the line says how to repair, and it is said once per boot, not every run."""
    node.write(gpus())
    with serve(socket, ONE_POD_PER_GPU) as kubelet:
        first, second = without_grpc(), without_grpc()
    assert kubelet.calls == 0
    assert first.returncode == second.returncode == 0
    assert 'gputext_collector_success{collector="kubernetes"} 0' in first.stdout
    assert 'gputext_collector_success{collector="kubernetes"} 0' in second.stdout
    assert 'gputext_collector_success{collector="nvml"} 1' in first.stdout
    assert first.stderr.splitlines() == [
        "gputext: collector kubernetes: no pod labels: the kubelet client does not import (No module named 'grpc'); fix: "
        "reinstall gputext with its dependencies (pip install --force-reinstall gputext), which include grpcio "
        "and protobuf"]
    assert second.stderr == ""


def test_doctor_says_grpc_is_missing_on_a_kubelet_node(node, socket, tmp_path):
    shadow = tmp_path / "no-grpc"
    (shadow / "grpc").mkdir(parents=True)
    (shadow / "grpc" / "__init__.py").write_text("raise ImportError(\"No module named 'grpc'\")\n")
    env = {**node.env(), "PYTHONPATH": os.pathsep.join([str(shadow), *sys.path])}
    node.write(gpus())
    with serve(socket, ONE_POD_PER_GPU):
        proc = subprocess.run([sys.executable, "-m", "gputext", "doctor", "--state-dir", str(node.state_dir),
                               "--pod-resources-socket", str(socket)], env=env, capture_output=True, text=True,
                              timeout=60)
    assert proc.returncode == 1
    (line,) = [line for line in proc.stdout.splitlines() if " kubelet: " in line]
    assert line == (f"FAIL  kubelet: {socket} accepts connections, but the kubelet client does not import "
                    "(No module named 'grpc'); fix: reinstall gputext with its dependencies (pip install "
                    "--force-reinstall gputext), which include grpcio and protobuf")


def test_a_cached_run_does_not_import_grpc_nor_rewrite_the_state(node, socket, without_grpc):
    node.write(gpus())
    with serve(socket, ONE_POD_PER_GPU) as kubelet:
        run(node, socket)  # fills the cache
        written = (node.state_dir / "state.json").stat()
        cached = without_grpc("--collectors", "nvml,kubernetes")
    assert kubelet.calls == 1
    unchanged = (node.state_dir / "state.json").stat()  # the file is replaced (a new inode) when written
    assert (unchanged.st_ino, unchanged.st_mtime_ns) == (written.st_ino, written.st_mtime_ns)
    assert cached.returncode == 0 and cached.stderr == ""
    series = parse_exposition(cached.stdout)
    assert success(series) == 1
    assert pod_labels(series, "0") == ("train-0", "ml", "trainer")


@pytest.mark.parametrize("ttl, asked", [("30s", 1), ("0", 3)])
def test_repeating_mode_asks_the_kubelet_only_when_the_answer_is_old(node, socket, tmp_path, ttl, asked):
    node.write(gpus())
    out = tmp_path / "gpu.prom"
    with serve(socket, ONE_POD_PER_GPU) as kubelet:
        proc = node.run("collect", "--interval", "0.2s", "--count", "3", "--out", str(out), "--collectors",
                        "nvml,kubernetes", "--pod-resources-socket", str(socket), "--pod-cache-ttl", ttl)
    assert proc.returncode == 0, proc.stderr
    assert kubelet.calls == asked
    series = parse_exposition(out.read_text())
    assert pod_labels(series, "1") == ("train-1", "ml", "trainer")
    assert len(allocations(series)) == 2


@pytest.mark.parametrize("naming, temperature", [("dcgm", "DCGM_FI_DEV_GPU_TEMP"),
                                                 ("dcgm-4.10", "DCGM_FI_DEV_GPU_TEMP_CELSIUS")])
def test_dcgm_names_carry_the_pod_as_dcgm_exporter_writes_it(node, socket, naming, temperature):
    """--naming dcgm (and dcgm-4.10): the pod, namespace and container holding a GPU come last, after
    dcgm-exporter's own labels, as its Kubernetes mode writes them."""
    node.write(gpus())
    with serve(socket, ONE_POD_PER_GPU):
        proc, series = run(node, socket, "--naming", naming)
    (labels,) = [dict(ls) for (name, ls) in series if name == temperature and dict(ls)["gpu"] == "1"]
    assert (labels["pod"], labels["namespace"], labels["container"]) == ("train-1", "ml", "trainer")
    assert labels["UUID"] == h100_uuid(1) and "uuid" not in labels
    line = next(line for line in proc.stdout.splitlines() if line.startswith(temperature + '{gpu="1"'))
    assert line.endswith(',pod="train-1",namespace="ml",container="trainer"} 41')

"""GPUs allocated through Kubernetes DRA (NVIDIA's driver gpu.nvidia.com), mapped on the node alone: gputext
against a real gRPC pod-resources server (tests/fakekubelet.py) and the fake NVML, whose GPUs have minor
numbers other than their indices and MIG GPU instances with profile ids and placements."""

import pytest
from hypothesis import given, strategies as st

from conftest import require, value
from fakegpu import h100, h100_uuid
from gputext import dra

require("grpc", "google.protobuf")  # the test extra has them

from fakekubelet import claim, claimed, pod, serve  # noqa: E402
from test_kubernetes import run, socket  # noqa: E402,F401 (socket: the fixture)

DRA = "gpu.nvidia.com"
MIG_A = "MIG-5c3f8e1a-2b7d-5e9f-8a1c-3d5f7b9e1a3c"
MIG_B = "MIG-7e9a1c3e-5d7f-5b9a-8c1e-3f5a7c9e1b3d"
CLAIM_UID = "0b1c2d3e-1111-4222-8333-444455556666"
# /dev/nvidiaN numbering is not NVML's order: GPU 0 is nvidia2, GPU 1 nvidia0, GPU 2 (MIG) nvidia5
MINORS = (2, 0, 5)


def mig_gpu(index, minor, instances=None):
    """An H100 in MIG mode: GPU instance 1 is a 1g.10gb (profile 19) at memory slice 6, GPU instance 2 a
    2g.20gb (profile 14) at slices 0-1, each with one compute instance (a MIG device)."""
    return h100(index, accounting_mode=1, minor_number=minor, mig_mode=(1, 1),
                mig_devices={0: {"uuid": MIG_A, "gi": 1, "ci": 0, "profile": "1g.10gb", "memory": (10 << 30, 1 << 30)},
                             1: {"uuid": MIG_B, "gi": 2, "ci": 0, "profile": "2g.20gb", "memory": (20 << 30, 2 << 30)}},
                gpu_instances={1: (19, 6, 1), 2: (14, 0, 2)} if instances is None else instances)


def gpus(mig=True):
    whole = [h100(i, accounting_mode=1, minor_number=MINORS[i]) for i in (0, 1)]
    return whole + [mig_gpu(2, MINORS[2])] if mig else whole


ALLOCATION = ("gpu", "pod", "namespace", "container", "resource", "gpu_instance", "mig_device", "claim",
              "claim_namespace")


def allocations(series):
    """{ALLOCATION's label values} of each gpu_allocation_info series (each 1, with its GPU's uuid)."""
    found = [dict(labels) for (name, labels), v in series.items() if name == "gpu_allocation_info" and v == 1]
    assert all(labels["uuid"] == h100_uuid(int(labels["gpu"])) for labels in found)
    return {tuple(labels[k] for k in ALLOCATION) for labels in found}


def pod_of(series, gpu):
    """The pod labels the GPU's temperature series carries (None, None, None: none)."""
    (labels,) = [dict(ls) for (name, ls) in series if name == "gpu_temperature_celsius" and dict(ls)["gpu"] == gpu]
    return tuple(labels.get(k) for k in ("pod", "namespace", "container"))


NO_POD = (None, None, None)


def test_a_claim_of_two_gpus_names_them_by_minor_number(node, socket):
    node.write(gpus(mig=False))
    pods = [pod("train", "ml", {}, claims={"main": [claim("two-gpus", "ml", claimed("gpu-0"), claimed("gpu-2"))]})]
    with serve(socket, pods):
        proc, series = run(node, socket)
    assert proc.stderr == ""
    assert allocations(series) == {("1", "train", "ml", "main", DRA, "", "", "two-gpus", "ml"),  # nvidia0
                                   ("0", "train", "ml", "main", DRA, "", "", "two-gpus", "ml")}  # nvidia2
    assert pod_of(series, "0") == pod_of(series, "1") == ("train", "ml", "main")
    assert value(series, "gpu_temperature_celsius", gpu="1", pod="train", container="main") == 41


def test_one_claim_in_two_containers_labels_no_device_series(node, socket):
    node.write(gpus(mig=False))
    shared = claim("shared", "ml", claimed("gpu-0"))
    pods = [pod("pair", "ml", {}, claims={"reader": [shared], "writer": [shared]}),
            # two claims sharing one device (consumable capacity: share_id)
            pod("a", "ml", {}, claims={"main": [claim("slice-a", "ml", claimed("gpu-2", share_id="1"))]}),
            pod("b", "ml", {}, claims={"main": [claim("slice-b", "ml", claimed("gpu-2", share_id="2"))]})]
    with serve(socket, pods):
        _, series = run(node, socket)
    assert allocations(series) == {("1", "pair", "ml", "reader", DRA, "", "", "shared", "ml"),
                                   ("1", "pair", "ml", "writer", DRA, "", "", "shared", "ml"),
                                   ("0", "a", "ml", "main", DRA, "", "", "slice-a", "ml"),
                                   ("0", "b", "ml", "main", DRA, "", "", "slice-b", "ml")}
    assert pod_of(series, "0") == pod_of(series, "1") == NO_POD


def test_device_plugin_and_dra_pods_on_one_node(node, socket):
    node.write(gpus(mig=False))
    pods = [pod("plugged", "team-a", {"main": {"nvidia.com/gpu": [h100_uuid(0)]}}),
            pod("claimed", "team-b", {}, claims={"main": [claim("gpu", "team-b", claimed("gpu-0"))]})]
    with serve(socket, pods):
        proc, series = run(node, socket)
    assert proc.stderr == ""
    assert allocations(series) == {("0", "plugged", "team-a", "main", "nvidia.com/gpu", "", "", "", ""),
                                   ("1", "claimed", "team-b", "main", DRA, "", "", "gpu", "team-b")}
    assert pod_of(series, "0") == ("plugged", "team-a", "main")
    assert pod_of(series, "1") == ("claimed", "team-b", "main")


def test_foreign_drivers_and_vfio_devices_are_skipped_silently(node, socket):
    node.write(gpus(mig=False))
    pods = [pod("mixed", "ml", {}, claims={"main": [
        claim("nic", "ml", claimed("eth-0", driver="sriov.example.com"), claimed("gpu-0", driver="gpu.example.com")),
        claim("vm", "ml", claimed("gpu-vfio-1")),
        claim("gpu", "ml", claimed("gpu-2"))]})]
    with serve(socket, pods):
        for ttl in ("30s", "0"):  # asked twice: never a word
            proc, series = run(node, socket, "--pod-cache-ttl", ttl)
            assert proc.stderr == ""
    assert allocations(series) == {("0", "mixed", "ml", "main", DRA, "", "", "gpu", "ml")}


def test_an_unreadable_name_is_said_once_and_the_others_are_kept(node, socket):
    node.write(gpus(mig=False))
    pods = [pod("odd", "ml", {}, claims={"main": [claim("c", "ml", claimed("gpu-01"), claimed("gpu-0"))]})]
    with serve(socket, pods):
        first, series = run(node, socket, "--pod-cache-ttl", "0")
        second, _ = run(node, socket, "--pod-cache-ttl", "0")
        doctor = node.run("doctor", "--collectors", "kubernetes", "--pod-resources-socket", str(socket))
    assert first.stderr.splitlines() == [
        "gputext: kubernetes: the DRA driver gpu.nvidia.com allocated a device named 'gpu-01', a name gputext "
        "cannot read (it knows gpu-<minor>, gpu-<minor>-mig-..., gpu-vfio-<n>); its allocations are left out: "
        "a newer gputext may know the driver's new names"]
    assert second.stderr == ""
    assert allocations(series) == {("1", "odd", "ml", "main", DRA, "", "", "c", "ml")}
    assert value(series, "gputext_collector_success", collector="kubernetes") == 1
    assert "'gpu-01'" in next(line for line in doctor.stdout.splitlines() if line.startswith("warn  dra:"))


def test_a_kubelet_without_dynamic_resources(node, socket):
    """A kubelet before 1.34 (or with KubeletPodResourcesDynamicResources off) sends no dynamic_resources:
    device-plugin pods keep their labels, and nothing is said."""
    node.write(gpus(mig=False))
    with serve(socket, [pod("plugged", "ml", {"main": {"nvidia.com/gpu": [h100_uuid(1)]}})]):
        proc, series = run(node, socket)
    assert proc.stderr == ""
    assert allocations(series) == {("1", "plugged", "ml", "main", "nvidia.com/gpu", "", "", "", "")}


def test_a_kubelet_before_1_31_names_devices_by_cdi_only(node, socket):
    node.write(gpus(mig=False))
    pods = [pod("old", "ml", {}, claims={"main": [claim("c", "ml",
            claimed("", driver="", pool="", cdi=[f"k8s.gpu.nvidia.com/claim={CLAIM_UID}-gpu-0"]),
            claimed("", driver="", pool="", cdi=["k8s.gpu.nvidia.com/device=gpu-2",
                                                 f"k8s.gpu.nvidia.com/claim={CLAIM_UID}-gpu-2"]),
            claimed("", driver="", pool="", cdi=["vendor.example.com/nic=eth0"]))]})]
    with serve(socket, pods):
        proc, series = run(node, socket)
    assert proc.stderr == ""
    assert allocations(series) == {("1", "old", "ml", "main", DRA, "", "", "c", "ml"),
                                   ("0", "old", "ml", "main", DRA, "", "", "c", "ml")}


def test_mig_devices_in_both_name_forms_find_their_gpu_instance(node, socket):
    node.write(gpus())
    pods = [pod("small", "ml", {}, claims={"main": [claim("one-g", "ml", claimed("gpu-5-mig-19-6-1"))]}),  # <= v25.8
            pod("medium", "ml", {}, claims={"main": [claim("two-g", "ml", claimed("gpu-5-mig-2g20gb-14-0"))]})]
    with serve(socket, pods):
        proc, series = run(node, socket)
    assert proc.stderr == ""
    assert allocations(series) == {("2", "small", "ml", "main", DRA, "1", MIG_A, "one-g", "ml"),
                                   ("2", "medium", "ml", "main", DRA, "2", MIG_B, "two-g", "ml")}
    assert pod_of(series, "2") == NO_POD  # a slice's holder does not own the GPU's series


def test_a_mig_name_whose_placement_differs_names_no_instance(node, socket):
    node.write(gpus())
    # profile 19 exists at slice 6, not 5; the old form's size must agree too
    pods = [pod("p", "ml", {}, claims={"main": [claim("c", "ml", claimed("gpu-5-mig-19-5-1"),
                                                      claimed("gpu-5-mig-14-0-1"))]})]
    with serve(socket, pods):
        proc, series = run(node, socket)
    assert proc.stderr == "" and allocations(series) == set()


def test_dynamic_mig_instance_is_found_at_the_renewal_after_it_is_made(node, socket):
    """With dynamic MIG the driver makes the GPU instance when the pod starts: until then the device is
    not an error, just not yet placed; the next renewal of the pod cache finds it."""
    node.write([*gpus(mig=False), mig_gpu(2, MINORS[2], instances={2: (14, 0, 2)})])
    pods = [pod("dyn", "ml", {}, claims={"main": [claim("c", "ml", claimed("gpu-5-mig-1g10gb-19-6"))]})]
    with serve(socket, pods) as kubelet:
        before = run(node, socket)
        node.write(gpus())  # the instance exists now
        cached = run(node, socket)
        renewed = run(node, socket, "--pod-cache-ttl", "0")
    assert kubelet.calls == 2
    assert before[0].stderr == "" and allocations(before[1]) == allocations(cached[1]) == set()
    assert allocations(renewed[1]) == {("2", "dyn", "ml", "main", DRA, "1", MIG_A, "c", "ml")}


def test_a_warm_run_makes_no_kubelet_call_and_no_dra_nvml_call(node, socket):
    node.write(gpus())
    pods = [pod("train", "ml", {}, claims={"main": [claim("c", "ml", claimed("gpu-0"), claimed("gpu-5-mig-19-6-1"))]})]
    with serve(socket, pods) as kubelet:
        _, first = run(node, socket)
        first_calls = node.call_counts()
        node.calls.unlink()
        _, warm = run(node, socket)
    assert kubelet.calls == 1
    assert allocations(warm) == allocations(first) == {("1", "train", "ml", "main", DRA, "", "", "c", "ml"),
                                                       ("2", "train", "ml", "main", DRA, "1", MIG_A, "c", "ml")}
    assert first_calls[2]["nvmlDeviceGetGpuInstanceById"] == 2 and first_calls[2]["nvmlGpuInstanceGetInfo"] == 2
    calls = node.call_counts()
    for gpu in (0, 1, 2):
        for fn in ("nvmlDeviceGetMinorNumber", "nvmlDeviceGetGpuInstanceById", "nvmlGpuInstanceGetInfo"):
            assert fn not in calls[gpu], (gpu, fn)


def test_dcgm_names_carry_dcgm_exporters_dra_labels(node, socket):
    node.write(gpus())
    pods = [pod("whole", "ml", {}, claims={"main": [claim("one", "ml", claimed("gpu-2"))]}),
            pod("sliced", "ml", {}, claims={"main": [claim("mig", "ml", claimed("gpu-5-mig-2g20gb-14-0"))]})]
    with serve(socket, pods):
        _, series = run(node, socket, "--naming", "dcgm")
    (gpu0,) = [dict(ls) for (name, ls) in series if name == "DCGM_FI_DEV_GPU_TEMP" and dict(ls)["gpu"] == "0"]
    assert {k: v for k, v in gpu0.items() if k in ("pod", "namespace", "container") or k.startswith("dra_")} == {
        "pod": "whole", "namespace": "ml", "container": "main", "dra_claim_name": "one",
        "dra_claim_namespace": "ml", "dra_driver_name": DRA, "dra_pool_name": "node-1", "dra_device_name": "gpu-2"}
    (gpu2,) = [dict(ls) for (name, ls) in series if name == "DCGM_FI_DEV_GPU_TEMP" and dict(ls)["gpu"] == "2"]
    assert "pod" not in gpu2 and not any(k.startswith("dra_") for k in gpu2)  # the GPU is the slices'
    instances = {dict(ls)["GPU_I_ID"]: dict(ls) for (name, ls) in series
                 if name == "DCGM_FI_DEV_FB_USED" and dict(ls).get("GPU_I_ID")}
    held = instances["2"]
    assert (held["pod"], held["dra_device_name"], held["dra_mig_profile"], held["dra_mig_device_uuid"]) == (
        "sliced", "gpu-5-mig-2g20gb-14-0", "2g.20gb", MIG_B)
    assert value(series, "DCGM_FI_DEV_FB_USED", GPU_I_ID="2", pod="sliced") == 2048  # MiB
    assert "pod" not in instances["1"]  # held by no one


def test_dcgm_names_give_a_device_plugin_mig_instance_its_pod(node, socket):
    """As dcgm-exporter maps a MIG device's GPU instance to its pod: the instance's series, not the GPU's."""
    node.write(gpus())
    with serve(socket, [pod("small", "ml", {"main": {"nvidia.com/mig-1g.10gb": [MIG_A]}})]):
        _, series = run(node, socket, "--naming", "dcgm")
    used = {dict(ls).get("GPU_I_ID", ""): dict(ls) for (name, ls) in series
            if name == "DCGM_FI_DEV_FB_USED" and dict(ls)["gpu"] == "2"}
    assert {k: used["1"].get(k) for k in ("pod", "namespace", "container")} == {
        "pod": "small", "namespace": "ml", "container": "main"}
    assert not any(k.startswith("dra_") for k in used["1"])
    assert "pod" not in used["2"] and "pod" not in used[""]


def test_show_lists_dra_pods(node, socket):
    node.write(gpus(mig=False))
    pods = [pod("claimed", "ml", {}, claims={"main": [claim("c", "ml", claimed("gpu-0"))]})]
    with serve(socket, pods):
        proc = node.run("show", "--pod-resources-socket", str(socket))
    assert proc.returncode == 0, proc.stderr
    (line,) = [line for line in proc.stdout.splitlines() if "claimed" in line]
    assert line.split()[0] == "1"


def test_doctor_counts_device_plugin_and_dra_allocations(node, socket):
    node.write(gpus())
    pods = [pod("plugged", "ml", {"main": {"nvidia.com/gpu": [h100_uuid(0)]}}),
            pod("claimed", "ml", {}, claims={"main": [claim("c", "ml", claimed("gpu-0"))],
                                             "sidecar": [claim("c", "ml", claimed("gpu-0"))]}),
            pod("waiting", "ml", {}, claims={"main": [claim("d", "ml", claimed("gpu-5-mig-19-4-1"))]})]
    with serve(socket, pods):
        proc = node.run("doctor", "--collectors", "kubernetes", "--pod-resources-socket", str(socket))
    (line,) = [line for line in proc.stdout.splitlines() if " allocations: " in line]
    assert line == ("ok    allocations: the kubelet reports 1 device-plugin allocation and 2 DRA allocations "
                    "(gpu.nvidia.com) of this node's GPUs (one per container and GPU or MIG device); 1 DRA MIG "
                    "device has no GPU instance yet (gpu-5-mig-19-4-1)")


def test_doctor_says_when_dra_claims_are_prepared_but_the_kubelet_reports_none(node, socket, tmp_path):
    node.write(gpus(mig=False))
    host = tmp_path / "host"
    (host / "var/run/cdi").mkdir(parents=True)
    (host / "var/run/cdi" / f"k8s.gpu.nvidia.com-claim_{CLAIM_UID}.yaml").write_text("cdiVersion: 0.6.0\n")
    with serve(socket, [pod("plugged", "ml", {"main": {"nvidia.com/gpu": [h100_uuid(0)]}})]):
        proc = node.run("doctor", "--collectors", "kubernetes", "--pod-resources-socket", str(socket),
                        "--host-root", str(host))
    (line,) = [line for line in proc.stdout.splitlines() if line.startswith("warn  dra:")]
    assert line == ("warn  dra: NVIDIA's DRA driver has prepared 1 claim on this node "
                    f"({host}/var/run/cdi/k8s.gpu.nvidia.com-claim_*.yaml), but the kubelet reports no DRA "
                    "device: its GPUs get no pod; fix: Kubernetes 1.34 or newer, or on 1.27-1.33 the kubelet "
                    "feature gate KubeletPodResourcesDynamicResources=true")


def test_the_generated_messages_have_the_kubelets_field_numbers():
    """k8s.io/kubelet pkg/apis/podresources/v1/api.proto (v0.35, v0.36): what api_pb2.py was generated with."""
    from gputext.kubelet import api_pb2

    def numbers(message):
        return {field.name: field.number for field in message.DESCRIPTOR.fields}

    assert numbers(api_pb2.ContainerResources) == {"name": 1, "devices": 2, "dynamic_resources": 5}
    assert numbers(api_pb2.DynamicResource) == {"claim_name": 2, "claim_namespace": 3, "claim_resources": 4}
    assert numbers(api_pb2.ClaimResource) == {"cdi_devices": 1, "driver_name": 2, "pool_name": 3,
                                              "device_name": 4, "share_id": 5}
    assert numbers(api_pb2.CDIDevice) == {"name": 1}
    assert api_pb2.ClaimResource.DESCRIPTOR.fields_by_name["share_id"].has_presence  # `optional`
    # an answer a kubelet of 1.30 would send (ClaimResource with CDI devices only, and the class_name = 1
    # that 1.31 removed) parses, the unknown field skipped
    old = bytes([0x0a, 0x03]) + b"gpu" + bytes([0x12, 0x01]) + b"c" + bytes([0x22, 0x05, 0x0a, 0x03, 0x0a, 0x01]) + b"x"
    claim = api_pb2.DynamicResource.FromString(old)
    assert (claim.claim_name, [c.name for r in claim.claim_resources for c in r.cdi_devices]) == ("c", ["x"])


# --- the name parser, on any input -------------------------------------------------------------------

NUMBER = st.integers(0, 10 ** 6)
PROFILE = st.from_regex(r"[0-9]{1,2}(c[0-9])?g[0-9]{1,3}gb(-(me|gfx|meall))?", fullmatch=True)


@given(NUMBER, NUMBER, NUMBER, NUMBER, PROFILE)
def test_every_driver_name_form_parses_to_its_numbers(minor, profile_id, start, size, profile):
    assert dra.parse_device_name(f"gpu-{minor}") == ("gpu", minor, None, None, None)
    assert dra.parse_device_name(f"gpu-{minor}-mig-{profile_id}-{start}-{size}") == ("mig", minor, profile_id,
                                                                                      start, size)
    assert dra.parse_device_name(f"gpu-{minor}-mig-{profile}-{profile_id}-{start}") == ("mig", minor, profile_id,
                                                                                         start, None)
    assert dra.parse_device_name(f"gpu-vfio-{minor}")[0] == "vfio"
    name = f"gpu-{minor}-mig-{profile}-{profile_id}-{start}"
    assert dra.name_from_cdi((f"k8s.gpu.nvidia.com/claim={CLAIM_UID}-{name}",)) == name
    assert dra.driver_and_name("", "", (f"k8s.gpu.nvidia.com/device={name}",)) == (DRA, name)


# near misses of the forms: random text alone (st.text) practically never parses, so it never reaches the
# checks of what a parsed name says
NAME_LIKE = st.from_regex(r"gpu-(vfio-)?[0-9]{1,3}(-mig(-[0-9a-z+.]{1,8}){2,4})?", fullmatch=True)


@given(st.one_of(st.text(max_size=40), NAME_LIKE))
def test_any_other_text_is_no_name_or_a_strict_one(text):
    parsed = dra.parse_device_name(text)
    if parsed is not None:  # only the forms, with ASCII numbers without leading zeros: the numbers give the name
        minor, profile_id, start, size = parsed[1:]
        if parsed.kind == "gpu":
            assert text == f"gpu-{minor}"
        elif parsed.kind == "vfio":
            assert text == f"gpu-vfio-{minor}"
        elif size is not None:
            assert text == f"gpu-{minor}-mig-{profile_id}-{start}-{size}"
        else:  # the named form: a profile name between the GPU and the GPU instance
            assert text.startswith(f"gpu-{minor}-mig-") and text.endswith(f"-{profile_id}-{start}")
            assert text.isascii() and "." not in text and "+" not in text
    assert isinstance(dra.name_from_cdi((text,)), str)


@pytest.mark.parametrize("name", ["gpu-01", "gpu--1", "gpu-1-mig-1g.10gb-19-0", "gpu-1-mig-19-0", "GPU-0",
                                  "gpu-0 ", "gpu-0\n", "gpu-\u0661", "gpu-1-mig--19-0", "gpu-1-mig-19-0-1-2",
                                  "gpu-vfio-", "mig-1-19-0-1", "gpu-1-mig-gb-19-0"])
def test_names_in_no_known_form(name):
    assert dra.parse_device_name(name) is None

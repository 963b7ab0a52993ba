"""Profiling metrics through NVML GPM (collector gpm), against the fake NVML's GPM samples."""

import subprocess
import sys

from conftest import parse_exposition, require, value
from fakegpu import (GPM_DRAM_ACTIVE, GPM_SM_ACTIVE, GPM_SM_OCCUPANCY, GPM_TENSOR_ACTIVE, Field, MiB, h100,
                     h100_uuid, read_call_blocks, with_gpm)

FAST = ("--gpm-window", "150ms")  # above NVML's 100 ms, and short for the suite
MIG_A = "MIG-5c3f8e1a-2b7d-5e9f-8a1c-3d5f7b9e1a3c"
MIG_B = "MIG-7e9a1c3e-5d7f-5b9a-8c1e-3f5a7c9e1b3d"
WHOLE = {"gpu_instance": "", "mig_device": ""}
TRAINING = {GPM_SM_ACTIVE: 80.0, GPM_TENSOR_ACTIVE: 40.0, GPM_DRAM_ACTIVE: 30.0, GPM_SM_OCCUPANCY: 35.5}


def gpm_names(series) -> set:
    from gputext.catalogue import METRICS

    gpm = {"gpu_" + m.key for m in METRICS if m.source == "gpm"}
    return {name for name, _ in series if name in gpm}


def gpm_samples(node) -> dict:
    """The fake's GPM sample counts at the run's last nvmlShutdown: live (not freed) and peak."""
    system = read_call_blocks(node.calls)[-1]["system"]
    return {"live": system["gpm_samples_live"], "peak": system["gpm_samples_peak"]}


def test_values_are_ratios_and_bytes_per_second(node):
    node.write([with_gpm(h100(0), {**TRAINING, 1: 92.0, 7: 38.0, 12: 9.0, 20: 2384.0, 61: 18900.0,
                                   62: 1000.0, 63: 1050.0, 31: 25.0})])
    proc, s = node.collect("--collectors", "nvml,gpm", *FAST)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    assert value(s, "gpu_sm_active_ratio", gpu="0", **WHOLE) == 0.8
    assert value(s, "gpu_tensor_active_ratio", gpu="0", **WHOLE) == 0.4
    assert value(s, "gpu_dram_active_ratio", gpu="0", **WHOLE) == 0.3
    assert value(s, "gpu_sm_occupancy_ratio", gpu="0", uuid=h100_uuid(0), **WHOLE) == 0.355
    assert 0.15 < value(s, "gpu_gpm_window_seconds", gpu="0", **WHOLE) < 5
    # standard: those four and the window
    assert gpm_names(s) == {"gpu_sm_active_ratio", "gpu_tensor_active_ratio", "gpu_dram_active_ratio",
                            "gpu_sm_occupancy_ratio", "gpu_gpm_window_seconds"}
    assert value(s, "gputext_collector_success", collector="gpm") == 1

    proc, full = node.collect("--collectors", "nvml,nvlink,gpm", "--detail", "full", *FAST)
    assert proc.returncode == 0, proc.stderr
    assert value(full, "gpu_graphics_active_ratio", gpu="0", **WHOLE) == 0.92
    assert value(full, "gpu_tensor_pipe_active_ratio", gpu="0", pipe="hmma", **WHOLE) == 0.38
    assert value(full, "gpu_fp_pipe_active_ratio", gpu="0", precision="fp32", **WHOLE) == 0.09
    assert value(full, "gpu_nvdec_active_ratio", gpu="0", engine="1", **WHOLE) == 0.25
    assert value(full, "gpu_gpm_pcie_transmit_bytes_per_second", gpu="0") == 2384 * MiB
    assert value(full, "gpu_gpm_nvlink_transmit_bytes_per_second", gpu="0") == 18900 * MiB
    assert value(full, "gpu_gpm_nvlink_link_receive_bytes_per_second", gpu="0", link="0") == 1000 * MiB
    assert value(full, "gpu_gpm_nvlink_link_transmit_bytes_per_second", gpu="0", link="0") == 1050 * MiB
    # metrics the scenario leaves out are NOT_SUPPORTED in their own entries: no series
    assert value(full, "gpu_gpm_pcie_receive_bytes_per_second", gpu="0") is None
    assert value(full, "gpu_tensor_pipe_active_ratio", gpu="0", pipe="dmma", **WHOLE) is None
    assert value(full, "gpu_gpm_nvlink_link_receive_bytes_per_second", gpu="0", link="1") is None


def test_each_metric_return_decides_its_own_series(node):
    node.write([with_gpm(h100(0), {GPM_SM_ACTIVE: 45.0, GPM_SM_OCCUPANCY: Field(error=3),
                                   GPM_DRAM_ACTIVE: Field(error=999)}), with_gpm(h100(1), TRAINING)])
    proc, s = node.collect("--collectors", "gpm", *FAST)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    assert value(s, "gpu_sm_active_ratio", gpu="0", **WHOLE) == 0.45
    for name in ("gpu_sm_occupancy_ratio", "gpu_dram_active_ratio", "gpu_tensor_active_ratio"):
        assert value(s, name, gpu="0") is None, name
    assert value(s, "gpu_dram_active_ratio", gpu="1", **WHOLE) == 0.3  # the other GPU keeps everything


def test_gpus_without_gpm_are_left_out_silently(node):
    node.write([with_gpm(h100(0), TRAINING), h100(1)])  # GPU 1: pre-Hopper, isSupportedDevice 0
    proc, s = node.collect(*FAST)
    assert proc.returncode == 0, proc.stderr
    assert "gpm" not in proc.stderr.lower()
    assert value(s, "gputext_collector_success", collector="gpm") == 1
    assert value(s, "gpu_sm_active_ratio", gpu="0", **WHOLE) == 0.8
    assert {dict(labels)["gpu"] for name, labels in s if name in gpm_names(s)} == {"0"}


def test_not_applicable_without_gpm_unless_asked_for(node):
    node.write([h100(0), h100(1, errors={"nvmlGpmQueryDeviceSupport": 13})])  # pre-Hopper; old driver
    proc, s = node.collect(*FAST)
    assert proc.returncode == 0, proc.stderr
    assert "gpm" not in proc.stderr.lower() and gpm_names(s) == set()
    assert value(s, "gputext_collector_success", collector="gpm") is None
    assert value(s, "gputext_collector_success", collector="nvml") == 1
    proc, s = node.collect("--collectors", "nvml,gpm", *FAST)
    assert proc.returncode == 0
    assert proc.stderr.splitlines() == [
        "gputext: collector gpm: no GPU here supports GPM "
        "(NVML's profiling metrics need a Hopper or newer GPU)"]
    assert value(s, "gputext_collector_success", collector="gpm") == 0


def test_a_pynvml_without_gpm_wrappers_is_not_applicable(node):
    node.write([with_gpm(h100(0), TRAINING)])
    code = ("import sys, pynvml; del pynvml.nvmlGpmMetricsGet; from gputext.cli import main; "
            "sys.argv = ['gputext'] + sys.argv[1:]; main()")
    args = ["collect", "--out", "-", "--state-dir", str(node.state_dir), *FAST]
    quiet = subprocess.run([sys.executable, "-c", code, *args], env=node.env(), capture_output=True,
                           text=True, timeout=60)
    assert quiet.returncode == 0 and "gpm" not in quiet.stderr.lower(), quiet.stderr
    assert gpm_names(parse_exposition(quiet.stdout)) == set()
    asked = subprocess.run([sys.executable, "-c", code, *args, "--collectors", "gpm"], env=node.env(),
                           capture_output=True, text=True, timeout=60)
    assert "collector gpm: this nvidia-ml-py" in asked.stderr and "upgrade it" in asked.stderr


def test_one_shot_samples_every_gpu_in_one_round_and_frees_them(node):
    node.write([with_gpm(h100(i), TRAINING) for i in range(8)])
    proc, s = node.collect()  # the default window, 1 s
    assert proc.returncode == 0, proc.stderr
    windows = [value(s, "gpu_gpm_window_seconds", gpu=str(i), **WHOLE) for i in range(8)]
    assert all(1.0 <= w < 1.5 for w in windows), windows
    calls = node.call_counts()
    assert [calls[i]["nvmlGpmSampleGet"] for i in range(8)] == [2] * 8
    assert [calls[i]["nvmlGpmMetricsGet"] for i in range(8)] == [1] * 8
    # All eight first samples were alive when the first second one was taken: one round of first samples,
    # one wait, not a wait per GPU (which would hold at most two samples at a time). None is left.
    assert gpm_samples(node) == {"live": 0, "peak": 9}


def test_gpm_window_must_be_above_100ms(node):
    node.write([with_gpm(h100(0), TRAINING)])
    for window in ("50ms", "100ms", "0.1"):
        proc = node.run("collect", "--out", "-", "--gpm-window", window)
        assert proc.returncode == 2 and proc.stdout == ""
        assert proc.stderr.splitlines() == [
            f"gputext: invalid --gpm-window '{window}': NVML needs more than 100ms between two GPM "
            "samples; use, say, 1s (see 'gputext collect --help')"]
    env = {**node.env(), "GPUTEXT_GPM_WINDOW": "soon"}
    command = [sys.executable, "-m", "gputext", "collect", "--out", "-"]
    proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.startswith(
        "gputext: invalid GPUTEXT_GPM_WINDOW='soon' (from the environment): use a duration")
    env["GPUTEXT_GPM_WINDOW"] = "200ms"
    proc = subprocess.run(command + ["--collectors", "gpm"], env=env, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert 0.2 <= value(parse_exposition(proc.stdout), "gpu_gpm_window_seconds", gpu="0") < 5


def test_repeating_mode_diffs_against_the_previous_cycle(node, tmp_path):
    node.write([with_gpm(h100(0), TRAINING), with_gpm(h100(1), TRAINING)])
    out = tmp_path / "gpu.prom"
    # 1 s apart: the first cycle (NVML's start, the inventory, its 150 ms window) must end well before the
    # second tick, or the second finds its baseline younger than the window and takes no sample (seen at
    # 400 ms on a loaded machine)
    proc = node.run("collect", "--out", str(out), "--collectors", "gpm", "--interval", "1s",
                    "--count", "4", *FAST)
    assert proc.returncode == 0, proc.stderr
    s = parse_exposition(out.read_text())
    # the last file's values cover the interval between two cycles, not a new 150 ms window
    for gpu in ("0", "1"):
        assert 0.3 < value(s, "gpu_gpm_window_seconds", gpu=gpu, **WHOLE) < 5
        assert value(s, "gpu_sm_active_ratio", gpu=gpu, **WHOLE) == 0.8
    calls = node.call_counts()
    # one baseline, then one sample per cycle: no cycle but the first takes two samples or waits for them
    assert calls[0]["nvmlGpmSampleGet"] == 5 and calls[1]["nvmlGpmMetricsGet"] == 4
    assert gpm_samples(node) == {"live": 0, "peak": 3}  # two GPUs' baselines, plus one new sample


def test_an_interval_shorter_than_the_window_rewrites_the_last_values(node, tmp_path):
    node.write([with_gpm(h100(0), TRAINING)])
    out = tmp_path / "gpu.prom"
    proc = node.run("collect", "--out", str(out), "--collectors", "gpm", "--interval", "20ms", "--count", "6",
                    "--gpm-window", "300ms")
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    s = parse_exposition(out.read_text())
    assert value(s, "gpu_sm_active_ratio", gpu="0", **WHOLE) == 0.8
    assert value(s, "gpu_gpm_window_seconds", gpu="0", **WHOLE) >= 0.3
    # the first cycle waited 300 ms; the five after it, 20 ms apart, found the baseline too young
    assert node.call_counts()[0]["nvmlGpmSampleGet"] < 6
    assert gpm_samples(node)["live"] == 0


def test_a_failing_metrics_call_frees_its_samples(node):
    node.write([with_gpm(h100(0, errors={"nvmlGpmMetricsGet": 999}), TRAINING), with_gpm(h100(1), TRAINING)])
    proc, s = node.collect("--collectors", "gpm", *FAST)
    assert proc.returncode == 0
    assert proc.stderr.splitlines() == ["gputext: GPU 0: nvmlGpmMetricsGet failed: Unknown Error"]
    assert value(s, "gpu_sm_active_ratio", gpu="0") is None
    assert value(s, "gpu_gpm_window_seconds", gpu="0") is None
    assert value(s, "gpu_sm_active_ratio", gpu="1", **WHOLE) == 0.8
    assert gpm_samples(node)["live"] == 0


def mig_gpu(index):
    slots = {0: {"uuid": MIG_A, "gi": 1, "ci": 0}, 1: {"uuid": MIG_B, "gi": 2, "ci": 0}}
    return with_gpm(h100(index, accounting_mode=1, mig_mode=(1, 1), mig_devices=slots),
                    {20: 100.0, GPM_SM_ACTIVE: 99.0},  # GPU level: only PCIe and NVLink are asked for
                    mig={1: {GPM_SM_ACTIVE: 10.0, GPM_DRAM_ACTIVE: 5.0, 20: 1.0},
                         2: {GPM_SM_ACTIVE: 70.0, GPM_DRAM_ACTIVE: 55.0}})


def test_mig_gpu_instances_get_their_own_values(node):
    node.write([with_gpm(h100(0), TRAINING), mig_gpu(1)])
    proc, s = node.collect("--collectors", "gpm", "--detail", "full", *FAST)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    assert value(s, "gpu_sm_active_ratio", gpu="1", gpu_instance="1", mig_device=MIG_A) == 0.1
    assert value(s, "gpu_dram_active_ratio", gpu="1", gpu_instance="1", mig_device=MIG_A) == 0.05
    assert value(s, "gpu_sm_active_ratio", gpu="1", gpu_instance="2", mig_device=MIG_B) == 0.7
    assert value(s, "gpu_dram_active_ratio", gpu="1", gpu_instance="2", mig_device=MIG_B) == 0.55
    # activity is per instance only; whole-GPU rates stay on the GPU
    assert value(s, "gpu_sm_active_ratio", gpu="1", **WHOLE) is None
    assert value(s, "gpu_gpm_pcie_transmit_bytes_per_second", gpu="1") == 100 * MiB
    for gpu_instance, mig_device in (("", ""), ("1", MIG_A), ("2", MIG_B)):
        assert 0.15 < value(s, "gpu_gpm_window_seconds", gpu="1", gpu_instance=gpu_instance,
                            mig_device=mig_device) < 5
    assert value(s, "gpu_sm_active_ratio", gpu="0", **WHOLE) == 0.8
    assert gpm_samples(node)["live"] == 0


def test_mig_series_join_allocation_info(node):
    require("grpc", "google.protobuf")
    from fakekubelet import kubelet_socket, pod, serve

    node.write([mig_gpu(0)])
    holder = pod("small", "ml", {"main": {"nvidia.com/mig-1g.10gb": [MIG_B]}})
    with kubelet_socket() as socket, serve(socket, [holder]):
        proc, s = node.collect("--collectors", "kubernetes,gpm", "--pod-resources-socket", str(socket), *FAST)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    joined = [(name, dict(labels)) for name, labels in s if name == "gpu_allocation_info"]
    assert len(joined) == 1
    keys = {k: joined[0][1][k] for k in ("gpu", "uuid", "gpu_instance", "mig_device")}
    assert keys == {"gpu": "0", "uuid": h100_uuid(0), "gpu_instance": "2", "mig_device": MIG_B}
    assert value(s, "gpu_sm_active_ratio", **keys) == 0.7  # the pod's slice, by allocation_info's labels


def test_a_new_mig_layout_gets_new_baselines_and_the_old_ones_are_freed(node):
    """GPU instance IDs are reused after MIG is reconfigured, MIG device UUIDs are not: a target keyed by
    both keeps its baseline while the layout stays, and gets a new one (the old one freed) when it changes.
    The fake reads its scenario once per NVML session, so the new layout is given as new targets."""
    node.write([mig_gpu(0)])
    code = """
import json
from gputext.collectors import gpm
from gputext.exposition import Samples
from gputext.run import Context, Options

ctx = Context(Options(state_dir=None, gpm_window_seconds=0.15))
_, devices = ctx.devices()
sampler = ctx.kept("gpm", lambda: gpm.Sampler(ctx.nvml))
targets = gpm._targets(ctx, devices[0])
sampler.begin(targets)
first = sorted(sampler.fresh)
sampler.finish(Samples("standard"), 0.15)
recreated = [gpm.Target((t.key[0], t.key[1], ("MIG-new",)), t.dev, t.gpu_instance, t.window_labels, t.metrics)
             if t.gpu_instance == 2 else t for t in targets]
sampler.begin(recreated)
print(json.dumps({"first": first, "again": sorted(sampler.fresh), "kept": sorted(sampler.baselines)}))
ctx.close()
"""
    proc = subprocess.run([sys.executable, "-c", code], env=node.env(), capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    import json

    got = json.loads(proc.stdout)
    uuid = h100_uuid(0)
    assert got["first"] == [[uuid, "1", [MIG_A]], [uuid, "2", [MIG_B]]]
    assert got["again"] == [[uuid, "2", ["MIG-new"]]]
    assert got["kept"] == [[uuid, "1", [MIG_A]], [uuid, "2", ["MIG-new"]]]
    calls = node.call_counts()
    assert calls[0]["nvmlGpmMigSampleGet"] == 5  # 2 first, 2 second, 1 for the new layout
    assert calls["system"]["nvmlGpmSampleAlloc"] == calls["system"]["nvmlGpmSampleFree"] == 5
    assert gpm_samples(node) == {"live": 0, "peak": 3}


def test_a_gpu_lost_to_gpm_does_not_hide_the_others(node):
    node.write([with_gpm(h100(0, errors={"nvmlGpmSampleGet": 15}), TRAINING), with_gpm(h100(1), TRAINING)])
    proc, s = node.collect("--collectors", "gpm", *FAST)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    assert value(s, "gpu_sm_active_ratio", gpu="0") is None
    assert value(s, "gpu_sm_active_ratio", gpu="1", **WHOLE) == 0.8
    assert value(s, "gputext_collector_success", collector="gpm") == 1
    assert gpm_samples(node)["live"] == 0

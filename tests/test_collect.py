"""`gputext collect` end to end against the fake NVML: values, absences, failures, exit codes."""

import subprocess
import sys

import pytest

from conftest import names_for_gpu, parse_exposition, value
from fakegpu import Field, GiB, MiB, h100

UUID0 = "GPU-00000000-1111-2222-3333-444444444444"
UUID1 = "GPU-11111111-1111-2222-3333-444444444444"
UUID2 = "GPU-22222222-1111-2222-3333-444444444444"


def test_values_match_the_scenario(node):
    gpu = h100(0, uuid=UUID0, temperature=45, name="NVIDIA H100 80GB HBM3", pci_bus_id="00000000:18:00.0",
               serial="1650123456789", vbios_version="96.00.99.00.01",
               memory_total=85520809984, memory_used=1048576000, memory_free=84000000000,
               memory_reserved=472809984, utilization_gpu=37, utilization_memory=12,
               encoder_utilization=5, decoder_utilization=9,
               clock_graphics=1980, clock_sm=1980, clock_memory=2619, clock_video=1755,
               max_clock_graphics=1980, max_clock_sm=1980, max_clock_memory=2619, max_clock_video=1755,
               clocks_event_reasons=0x4 | 0x1, pstate=0, persistence_mode=1, accounting_mode=0,
               compute_mode=3, mig_mode="0 0")
    gpu["fields"].update({308: 45, 82: 52, 83: 123456789, 186: (151234, "uint"), 190: (700000, "uint"),
                          1: (1, "uint"), 3: 7, 4: 1, 5: 70, 6: 2,
                          142: 3, 143: 1, 144: (0, "uint"), 145: (0, "uint"),
                          74: 2500000000, 270: 1000000000})
    node.write([gpu], system={"driver_version": "580.159.04", "cuda_driver_version": 13000})
    proc, s = node.collect("--detail", "full", "--collectors", "nvml")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    d = {"gpu": "0", "uuid": UUID0}
    assert value(s, "gpu_up", **d) == 1
    assert value(s, "gpu_info", **d, name="NVIDIA H100 80GB HBM3", pci_bus_id="00000000:18:00.0",
                 serial="1650123456789", vbios_version="96.00.99.00.01", driver_version="580.159.04",
                 cuda_driver_version="13.0") == 1
    assert value(s, "gpu_temperature_celsius", **d) == 45
    assert value(s, "gpu_memory_temperature_celsius", **d) == 52
    assert value(s, "gpu_energy_joules_total", **d) == pytest.approx(123456.789)
    assert value(s, "gpu_power_watts", **d) == pytest.approx(151.234)
    assert value(s, "gpu_power_limit_watts", **d) == 700
    assert value(s, "gpu_memory_total_bytes", **d) == 85520809984
    assert value(s, "gpu_memory_used_bytes", **d) == 1048576000
    assert value(s, "gpu_memory_free_bytes", **d) == 84000000000
    assert value(s, "gpu_memory_reserved_bytes", **d) == 472809984
    assert value(s, "gpu_utilization_ratio", **d) == pytest.approx(0.37)
    assert value(s, "gpu_memory_utilization_ratio", **d) == pytest.approx(0.12)
    assert value(s, "gpu_encoder_utilization_ratio", **d) == pytest.approx(0.05)
    assert value(s, "gpu_decoder_utilization_ratio", **d) == pytest.approx(0.09)
    assert value(s, "gpu_clock_hertz", **d, clock="graphics") == 1980e6
    assert value(s, "gpu_clock_hertz", **d, clock="memory") == 2619e6
    assert value(s, "gpu_clock_hertz", **d, clock="video") == 1755e6
    assert value(s, "gpu_clock_max_hertz", **d, clock="sm") == 1980e6
    assert value(s, "gpu_clock_event_active", **d, reason="sw_power_cap") == 1
    assert value(s, "gpu_clock_event_active", **d, reason="gpu_idle") == 1
    assert value(s, "gpu_clock_event_active", **d, reason="hw_slowdown") == 0
    assert value(s, "gpu_clock_event_active", **d, reason="reliability") == 0
    assert value(s, "gpu_clock_event_duration_seconds_total", **d, reason="sw_power_cap") == 2.5
    assert value(s, "gpu_clock_event_duration_seconds_total", **d, reason="hw_thermal_slowdown") == 1.0
    assert value(s, "gpu_performance_state", **d) == 0
    assert value(s, "gpu_persistence_mode", **d) == 1
    assert value(s, "gpu_accounting_mode", **d) == 0
    assert value(s, "gpu_compute_mode", **d, mode="exclusive_process") == 1
    assert [value(s, "gpu_compute_mode", **d, mode=m) for m in ("default", "exclusive_thread", "prohibited")] \
        == [0, 0, 0]
    assert value(s, "gpu_mig_mode", **d) == 0 and value(s, "gpu_mig_mode_pending", **d) == 0
    assert value(s, "gpu_ecc_mode", **d) == 1
    assert value(s, "gpu_ecc_errors_total", **d, type="corrected") == 7
    assert value(s, "gpu_ecc_errors_total", **d, type="uncorrected") == 1
    assert value(s, "gpu_ecc_lifetime_errors_total", **d, type="corrected") == 70
    assert value(s, "gpu_ecc_lifetime_errors_total", **d, type="uncorrected") == 2
    assert value(s, "gpu_remapped_rows_total", **d, cause="correctable") == 3
    assert value(s, "gpu_remapped_rows_total", **d, cause="uncorrectable") == 1
    assert value(s, "gpu_remapped_rows_pending", **d) == 0
    assert value(s, "gpu_remapped_rows_failed", **d) == 0
    assert value(s, "gputext_collector_success", collector="nvml") == 1
    assert value(s, "gputext_build_info") == 1


def test_unsupported_values_are_left_out(node):
    gpu = h100(0, uuid=UUID0)
    for key in ("encoder_utilization", "decoder_utilization", "clock_video", "pstate"):
        gpu.pop(key, None)
    for fid in (82, 142, 143, 144, 145, 270):
        gpu["fields"].pop(fid, None)
    gpu["errors"] = {"nvmlDeviceGetUtilizationRates": 3}
    node.write([gpu])
    proc, s = node.collect("--detail", "full", "--collectors", "nvml")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    present = names_for_gpu(s, "0")
    for absent in ("gpu_memory_temperature_celsius", "gpu_encoder_utilization_ratio",
                   "gpu_decoder_utilization_ratio", "gpu_utilization_ratio", "gpu_memory_utilization_ratio",
                   "gpu_performance_state", "gpu_remapped_rows_total", "gpu_remapped_rows_pending",
                   "gpu_fan_speed_ratio"):
        assert absent not in present
    assert value(s, "gpu_clock_hertz", gpu="0", clock="video") is None
    assert value(s, "gpu_clock_event_duration_seconds_total", gpu="0", reason="hw_thermal_slowdown") is None
    assert value(s, "gpu_clock_hertz", gpu="0", clock="graphics") is not None
    assert value(s, "gpu_temperature_celsius", gpu="0") is not None


def test_sentinels_and_nan_are_never_written(node):
    gpu = h100(0, uuid=UUID0)
    gpu["fields"].update({308: (4294967295, "uint"), 82: (float("nan"), "dbl"), 83: 18446744073709551615,
                          186: (4294967295, "uint"), 190: (-1, "sint")})
    gpu["errors"] = {"nvmlDeviceGetTemperatureV": 3, "nvmlDeviceGetPowerUsage": 3,
                     "nvmlDeviceGetEnforcedPowerLimit": 3, "nvmlDeviceGetTotalEnergyConsumption": 3}
    gpu["memory_used"] = 18446744073709551615
    node.write([gpu])
    proc, s = node.collect()
    assert proc.returncode == 0, proc.stderr
    for name in ("gpu_temperature_celsius", "gpu_memory_temperature_celsius", "gpu_energy_joules_total",
                 "gpu_power_watts", "gpu_power_limit_watts", "gpu_memory_used_bytes"):
        assert value(s, name, gpu="0") is None, name
    for sample, v in s.items():
        assert v == v and v not in (-1, 4294967295, 2.0 ** 64), sample  # v == v: not NaN


def test_field_fallbacks_on_older_drivers(node):
    """Where a driver lacks the field, the value comes from the older function, same units."""
    gpu = h100(0, uuid=UUID0, temperature=61, power_usage=250500, power_limit=400000, energy=5000)
    for fid in (308, 186, 190, 83):
        gpu["fields"].pop(fid, None)
    node.write([gpu])
    proc, s = node.collect("--detail", "full")
    assert proc.returncode == 0, proc.stderr
    assert value(s, "gpu_temperature_celsius", gpu="0") == 61
    assert value(s, "gpu_power_watts", gpu="0") == pytest.approx(250.5)
    assert value(s, "gpu_power_limit_watts", gpu="0") == 400
    assert value(s, "gpu_energy_joules_total", gpu="0") == 5


def test_ecc_counters_only_where_ecc_is_on(node):
    gpu = h100(0, uuid=UUID0)
    gpu["fields"].update({1: (0, "uint"), 3: 7, 4: 1})
    node.write([gpu])
    proc, s = node.collect("--detail", "full")
    assert value(s, "gpu_ecc_mode", gpu="0") == 0
    assert "gpu_ecc_errors_total" not in names_for_gpu(s, "0")


def test_enums_are_state_sets_and_mig_pending_is_its_own_series(node):
    node.write([h100(0, uuid=UUID0, compute_mode=2, mig_mode="0 1"), h100(1, compute_mode=9)])
    proc, s = node.collect("--detail", "full")
    modes = {m: value(s, "gpu_compute_mode", gpu="0", mode=m)
             for m in ("default", "exclusive_thread", "prohibited", "exclusive_process")}
    assert modes == {"default": 0, "exclusive_thread": 0, "prohibited": 1, "exclusive_process": 0}
    assert value(s, "gpu_mig_mode", gpu="0") == 0 and value(s, "gpu_mig_mode_pending", gpu="0") == 1
    # a mode newer than gputext's table is left out rather than written as a wrong name
    assert "gpu_compute_mode" not in names_for_gpu(s, "1")


def mig_slot(n, gi, ci=0, memory=None):
    uuid = f"MIG-{n:08x}-2b7d-5e9f-8a1c-3d5f7b9e1a3c"
    return {"uuid": uuid, "gi": gi, "ci": ci, **({"memory": memory} if memory is not None else {})}


def test_mig_gpu_instances_get_their_own_memory(node):
    slots = {0: mig_slot(0, 1, memory=(40 * GiB, 3 * GiB, 10 * MiB)), 1: mig_slot(1, 2, memory=(20 * GiB, 5 * GiB)),
             2: mig_slot(2, 3),  # NOT_SUPPORTED on this MIG device
             3: mig_slot(3, 4, memory=Field(error=999)),  # fails on its own
             # two compute instances of GPU instance 5, sharing its memory
             4: mig_slot(4, 5, 0, memory=(10 * GiB, GiB)), 5: mig_slot(5, 5, 1, memory=(10 * GiB, GiB))}
    node.write([h100(0), h100(1, mig_mode=(1, 1), mig_devices=slots, memory_total=80 * GiB,
                              memory_used=9 * GiB)])
    proc, s = node.collect("--collectors", "nvml")
    assert proc.returncode == 0
    assert proc.stderr.splitlines() == ["gputext: GPU 1 GPU instance 4: nvmlDeviceGetMemoryInfo failed: Unknown Error"]
    mig = {(dict(labels)["gpu_instance"], dict(labels)["mig_device"], name): v for (name, labels), v in s.items()
           if name.startswith("gpu_mig_memory_")}
    assert mig == {
        ("1", slots[0]["uuid"], "gpu_mig_memory_total_bytes"): 40 * GiB,
        ("1", slots[0]["uuid"], "gpu_mig_memory_used_bytes"): 3 * GiB,
        ("2", slots[1]["uuid"], "gpu_mig_memory_total_bytes"): 20 * GiB,
        ("2", slots[1]["uuid"], "gpu_mig_memory_used_bytes"): 5 * GiB,
        ("5", "", "gpu_mig_memory_total_bytes"): 10 * GiB,  # once, for the GPU instance
        ("5", "", "gpu_mig_memory_used_bytes"): GiB,
    }
    assert all(dict(labels)["gpu"] == "1" for (name, labels) in s if name.startswith("gpu_mig_memory_"))
    # the whole GPU keeps its own memory series; a GPU without MIG has no MIG ones
    assert value(s, "gpu_memory_used_bytes", gpu="1") == 9 * GiB and value(s, "gpu_up", gpu="1") == 1
    assert "gpu_mig_memory_used_bytes" not in names_for_gpu(s, "0")
    calls = node.call_counts()
    assert calls[1]["nvmlDeviceGetMemoryInfo_v2"] == 1 + 5  # the GPU, then one MIG device per GPU instance


def test_fans_per_fan(node):
    gpu = h100(0, uuid=UUID0, fan_count=2)
    gpu["fan_speed"] = {0: 40, 1: 55}
    node.write([gpu])
    proc, s = node.collect("--detail", "full")
    assert value(s, "gpu_fan_speed_ratio", gpu="0", fan="0") == pytest.approx(0.40)
    assert value(s, "gpu_fan_speed_ratio", gpu="0", fan="1") == pytest.approx(0.55)


def test_lost_gpu_is_down_and_the_others_intact(node):
    node.write([h100(0, uuid=UUID0, temperature=40), {**h100(1, uuid=UUID1), "lost": True},
                h100(2, uuid=UUID2, temperature=42)])
    proc, s = node.collect()
    assert proc.returncode == 0, proc.stderr
    assert value(s, "gpu_up", gpu="1") == 0
    assert names_for_gpu(s, "1") == {"gpu_up"}
    assert value(s, "gpu_up", gpu="0", uuid=UUID0) == 1
    assert value(s, "gpu_up", gpu="2", uuid=UUID2) == 1
    assert value(s, "gpu_temperature_celsius", gpu="0") == 40
    assert value(s, "gpu_temperature_celsius", gpu="2") == 42
    assert value(s, "gputext_collector_success", collector="nvml") == 1


def test_gpu_lost_after_it_was_cached_keeps_its_uuid(node):
    node.write([h100(0, uuid=UUID0), h100(1, uuid=UUID1)])
    assert node.collect()[0].returncode == 0  # fills the inventory cache
    node.write([h100(0, uuid=UUID0), {**h100(1, uuid=UUID1), "lost": True}])
    proc, s = node.collect()
    assert value(s, "gpu_up", gpu="1", uuid=UUID1) == 0
    assert names_for_gpu(s, "1") == {"gpu_up"}
    assert value(s, "gpu_up", gpu="0", uuid=UUID0) == 1


def test_gpu_lost_mid_run_gives_up_0_and_no_half_set(node):
    gpu = h100(1, uuid=UUID1)
    gpu["errors"] = {"nvmlDeviceGetClockInfo": 15}
    node.write([h100(0, uuid=UUID0), gpu])
    proc, s = node.collect()
    assert value(s, "gpu_up", gpu="1") == 0
    assert names_for_gpu(s, "1") == {"gpu_up"}
    assert "stopped answering" in proc.stderr
    assert value(s, "gpu_up", gpu="0") == 1


def test_swapped_gpu_is_not_labelled_from_a_stale_cache(node):
    node.write([h100(0, uuid=UUID0, name="NVIDIA H100 80GB HBM3")])
    assert node.collect()[0].returncode == 0
    node.write([h100(0, uuid=UUID2, name="NVIDIA H200")])
    proc, s = node.collect()
    assert value(s, "gpu_up", gpu="0", uuid=UUID2) == 1
    assert value(s, "gpu_info", gpu="0", uuid=UUID2, name="NVIDIA H200") == 1
    assert not [k for k in s if ("uuid", UUID0) in k[1]]


def test_no_nvml_library_exits_1_with_one_line_and_a_file(node, tmp_path):
    out = tmp_path / "gpu.prom"
    proc = node.run("collect", "--out", str(out), nvml=False)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "libnvidia-ml.so.1 not found" in lines[0]
    assert "Traceback" not in proc.stderr
    s = parse_exposition(out.read_text())
    assert value(s, "gputext_collector_success", collector="nvml") == 0
    assert not [k for k in s if k[0].startswith("gpu_")]


def test_driver_not_loaded_says_so(node):
    node.write([h100(0)], system={"init_error": 9})
    proc, s = node.collect()
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        "gputext: the NVIDIA kernel driver is not loaded: check 'lsmod | grep nvidia' and 'dmesg'"]
    assert value(s, "gputext_collector_success", collector="nvml") == 0


def test_prefix_renames_device_metrics_not_self_metrics(node):
    node.write([h100(0, uuid=UUID0, temperature=45)])
    proc, s = node.collect("--prefix", "nvidia_")
    assert value(s, "nvidia_temperature_celsius", gpu="0") == 45
    assert value(s, "gputext_collector_success", collector="nvml") == 1
    assert not [k for k in s if k[0].startswith("gpu_")]


def test_no_created_series_and_no_timestamps(node):
    node.write([h100(0)])
    proc, s = node.collect()
    assert proc.returncode == 0 and s  # parse_exposition fails on any sample with a timestamp
    assert not [k for k in s if k[0].endswith("_created")]


@pytest.mark.parametrize("args, message", [
    (["--collectors", "nvml,bogus"], "unknown collector 'bogus'"),
    (["--prefix", "9x"], "invalid --prefix"),
    (["--no-such-option"], "No such option"),
    # the value's own fault is said, not only that it goes with --interval
    (["--count", "-1"], "invalid --count '-1': use a whole number from 0 to 1000000"),
    # beyond any sensible value, and (5,000 digits) beyond Python's int(): a usage error, no traceback
    (["--interval", "1s", "--count", "9" * 5000], "invalid --count '99999"),
    (["--max-processes", "1000001"], "invalid --max-processes '1000001': use a whole number from 0 to 1000000"),
    (["--interval", "9" * 5000], "invalid --interval '99999"),
    (["--retention", "169h"], "invalid --retention '169h': use a duration of at most 168h"),
    (["--max-processes", "\u0663"], "invalid --max-processes '\u0663'"),  # an Arabic-Indic 3, which int() reads
    (["--dcgm-host", "\udcff"], "invalid --dcgm-host '\\udcff': use a host name or an IP address"),
    (["--dcgm-host", "host:99999"], "invalid --dcgm-host 'host:99999'"),
    (["--out", ""], "invalid --out '': the value is empty; name the file to write"),
    # what a one-shot run waits for is at most a minute
    (["--gpm-window", "61s"], "invalid --gpm-window '61s': use a duration of at most 1m"),
    (["--kubelet-timeout", "2m"], "invalid --kubelet-timeout '2m': use a duration of at most 1m"),
    (["--duration", "abc"], "invalid --duration 'abc': use a duration such as 5s"),
    (["--interval", "1s", "--duration", "0"], "invalid --duration '0': use a duration above 0"),
    # an empty prefix writes `up` and `info`, which clash with Prometheus's own `up`
    (["--prefix", ""], "invalid --prefix '': an empty prefix would write series named up and info"),
])
def test_usage_errors_exit_2_with_one_line(node, args, message):
    node.write([h100(0)])
    proc = node.run("collect", "--out", "-", *args)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], proc.stderr
    assert lines[0].endswith("(see 'gputext collect --help')")
    assert proc.stdout == ""


def test_a_bad_value_from_the_environment_names_the_variable(node):
    node.write([h100(0)])
    env = {**node.env(), "GPUTEXT_INTERVAL": "abc"}
    proc = subprocess.run([sys.executable, "-m", "gputext", "collect", "--out", "-"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.splitlines() == [
        "gputext: invalid GPUTEXT_INTERVAL='abc' (from the environment): use a duration such as 5s, 250ms, 5m "
        "or 1h (a bare number is seconds) (see 'gputext collect --help')"]


@pytest.mark.parametrize("args", [["collect", "--bogus"], ["show", "--bogus"], []])
def test_usage_errors_of_every_command_are_one_line(node, args):
    node.write([h100(0)])
    proc = node.run(*args, state=False)
    assert proc.returncode == 2
    (line,) = proc.stderr.strip().splitlines()
    command = f"gputext {args[0]} --help" if args else "gputext --help"
    assert line.startswith("gputext: ") and line.endswith(f"(see '{command}')"), line


@pytest.mark.parametrize("collector", ["processes", "nvlink", "pcie"])
def test_no_driver_says_why_for_every_collector(node, collector):
    node.write([h100(0)])
    proc = node.run("collect", "--out", "-", "--collectors", collector, nvml=False)
    assert proc.returncode == 1
    assert proc.stderr.splitlines() == [
        "gputext: NVML library libnvidia-ml.so.1 not found: install the NVIDIA driver, or put the directory "
        "holding libnvidia-ml.so.1 on LD_LIBRARY_PATH"]


def test_a_run_without_state_dir_keeps_state_in_the_session_temp_dir(node, host_untouched):
    """What makes the suite unable to write the host's /var/lib/gputext (conftest.host_untouched)."""
    node.write([h100(0, uuid=UUID0)])
    proc = subprocess.run([sys.executable, "-m", "gputext", "collect", "--out", "-"], env=node.env(),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert UUID0 in (host_untouched / "inventory.json").read_text()


def test_env_var_sets_option(node):
    node.write([h100(0, uuid=UUID0, temperature=45)])
    env = node.env()
    env["GPUTEXT_PREFIX"] = "envprefix_"
    import subprocess
    import sys
    proc = subprocess.run([sys.executable, "-m", "gputext", "collect"], env=env, capture_output=True, text=True)
    assert value(parse_exposition(proc.stdout), "envprefix_temperature_celsius", gpu="0") == 45


def test_a_run_imports_nothing_it_does_not_use(node, tmp_path):
    """The timer starts gputext every few seconds: a one-shot run of every collector imports neither the
    modules it does not call (typing, dataclasses, with inspect, ast and tokenize; traceback without
    --debug; prometheus_client, which gputext does not render with) nor a command-line framework."""
    node.write([h100(0), h100(1)])
    code = ("import sys; from gputext.cli import execute; "
            f"code = execute(['collect', '--out', {str(tmp_path / 'gpu.prom')!r}, '--state-dir', "
            f"{str(node.state_dir)!r}]); print(' '.join(sorted(sys.modules))); sys.exit(code)")
    proc = subprocess.run([sys.executable, "-c", code], env=node.env(), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    imported = set(proc.stdout.split())
    assert {"gputext.collectors.nvml", "gputext.collectors.nvlink", "gputext.collectors.processes"} <= imported
    unused = {"typing", "dataclasses", "inspect", "ast", "tokenize", "traceback", "argparse", "typer", "click",
              "prometheus_client"}
    assert imported & unused == set()

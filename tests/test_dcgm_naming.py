"""`--naming dcgm` and `--counters FILE`: dcgm-exporter's names, labels and units from NVML alone, its counters
file as it is, and NVML fields by name or number."""

import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import parse_exposition, value
from fakegpu import MiB, Field, GiB, H100_NVLINKS, h100, h100_uuid
from gputext.catalogue import METRICS
from gputext.dcgm_exporter import default_counters
from realtools import NodeExporter, promtool_check

# prometheus_client's parser names the samples of a counter NAME_total, whatever the family is called
# (Prometheus itself keeps the name as written): counters below are looked up with _total.
DCGM_LABELS = ("gpu", "UUID", "pci_bus_id", "device", "modelName", "Hostname", "DCGM_FI_DRIVER_VERSION")


def valid_but_for_dcgm_names(text: str, directory: Path) -> None:
    """promtool finds nothing wrong but what dcgm-exporter's own names break (camelCase labels such as
    UUID and modelName, counters without _total): drop-in names must stay as they are; and node_exporter
    publishes the file without a scrape error."""
    proc = promtool_check(text.encode())
    allowed = ("label names should be written in 'snake_case' not 'camelCase'",
               'counter metrics should have "_total" suffix', "metric name should not include type 'counter'")
    problems = [line for line in proc.stderr.decode().splitlines()
                if not (line.startswith(("DCGM_", "NVML_FI_", "nvml_")) and line.endswith(allowed))]
    assert not problems, problems
    directory.mkdir()
    with NodeExporter(directory) as exporter:
        (exporter.directory / "gpu.prom").write_text(text)
        published = parse_exposition(exporter.scrape())
    assert value(published, "node_textfile_scrape_error") == 0
    assert {name for name, _ in published} >= {name for name, _ in parse_exposition(text)}


def two_gpus(node, **first):
    # GPU 1 is /dev/nvidia5: dcgm-exporter's `device` is the minor number, not the index
    node.write([h100(0, temperature=45, **first), h100(1, minor_number=5, utilization_gpu=12)])


def labels_of(series, name, gpu):
    (labels,) = [dict(labels) for n, labels in series if n == name and dict(labels).get("gpu") == gpu]
    return labels


def test_dcgm_names_units_and_labels(node, tmp_path):
    two_gpus(node)
    proc, s = node.collect("--naming", "dcgm", "--collectors", "nvml,pcie")
    assert proc.returncode == 0, proc.stderr
    assert value(s, "DCGM_FI_DEV_GPU_TEMP", gpu="0") == 45
    assert value(s, "DCGM_FI_DEV_MEMORY_TEMP", gpu="0") == 52
    assert value(s, "DCGM_FI_DEV_POWER_USAGE", gpu="0") == pytest.approx(412.345)  # mW -> W
    assert value(s, "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION_total", gpu="1") == 31_537_000_000  # mJ, as NVML has it
    assert value(s, "DCGM_FI_DEV_SM_CLOCK", gpu="0") == 1980  # MHz
    assert value(s, "DCGM_FI_DEV_MEM_CLOCK", gpu="0") == 2619
    assert value(s, "DCGM_FI_DEV_GPU_UTIL", gpu="0") == 87  # percent
    assert value(s, "DCGM_FI_DEV_GPU_UTIL", gpu="1") == 12
    assert value(s, "DCGM_FI_DEV_MEM_COPY_UTIL", gpu="0") == 43
    assert value(s, "DCGM_FI_DEV_ENC_UTIL", gpu="0") == 0
    assert value(s, "DCGM_FI_DEV_FB_USED", gpu="0") == (40 * GiB + 517 * MiB) / MiB  # MiB
    assert value(s, "DCGM_FI_DEV_FB_RESERVED", gpu="0") == 542
    assert value(s, "DCGM_FI_DEV_FB_FREE", gpu="0") == 81559 - 542 - 40 * 1024 - 517
    assert value(s, "DCGM_FI_DEV_PCIE_REPLAY_COUNTER_total", gpu="0") == 0
    assert value(s, "DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS_total", gpu="0") == 0
    assert value(s, "DCGM_FI_DEV_ROW_REMAP_FAILURE", gpu="0") == 0

    labels = labels_of(s, "DCGM_FI_DEV_GPU_TEMP", "1")
    assert labels == {"gpu": "1", "UUID": h100_uuid(1), "pci_bus_id": "00000000:2A:00.0", "device": "nvidia5",
                      "modelName": "NVIDIA H100 80GB HBM3", "Hostname": socket.gethostname(),
                      "DCGM_FI_DRIVER_VERSION": "580.159.04"}
    # in dcgm-exporter's order, as dashboards that match on the whole text expect
    line = next(l for l in proc.stdout.splitlines() if l.startswith("DCGM_FI_DEV_GPU_TEMP{"))
    assert [part.split("=")[0] for part in line[line.index("{") + 1:line.index("}")].split('",')] == list(DCGM_LABELS)

    # renamed series are not written twice; the rest keep gputext's names
    names = {name for name, _ in s}
    assert not names & {"gpu_temperature_celsius", "gpu_power_watts", "gpu_memory_used_bytes",
                        "gpu_utilization_ratio"}
    assert value(s, "gpu_clock_hertz", gpu="0", clock="graphics") is None  # standard writes only sm, renamed
    assert value(s, "gpu_pcie_transmit_bytes_total", gpu="0") == 123_456_789_012
    assert value(s, "gpu_up", gpu="1") == 1 and value(s, "gpu_ecc_errors_total", gpu="0", type="uncorrected") == 0
    valid_but_for_dcgm_names(proc.stdout, tmp_path / "textfile")


def test_every_default_name_comes_from_a_catalogue_row_with_its_unit():
    """One catalogue: each DCGM name is a column of a row, not a second table; none is used twice, but
    for the framebuffer's, which name a GPU's row and its MIG instances' row (gpu_mig_memory_*)."""
    columns = [dcgm.name for metric in METRICS for dcgm in metric.dcgm]
    shared = {name: sorted(m.key for m in METRICS if name in {d.name for d in m.dcgm})
              for name in columns if columns.count(name) > 1}
    assert shared == {"DCGM_FI_DEV_FB_TOTAL": ["memory_total_bytes", "mig_memory_total_bytes"],
                      "DCGM_FI_DEV_FB_USED": ["memory_used_bytes", "mig_memory_used_bytes"]}
    assert len(default_counters().metrics) == len({d.name for d in default_counters().metrics})
    defaults = [d.name for d in default_counters().metrics]
    assert defaults[:4] == ["DCGM_FI_DEV_SM_CLOCK", "DCGM_FI_DEV_MEM_CLOCK", "DCGM_FI_DEV_MEMORY_TEMP",
                            "DCGM_FI_DEV_GPU_TEMP"]
    # the two derived series
    assert set(defaults) - set(columns) == {"DCGM_FI_DEV_NVLINK_BANDWIDTH_TOTAL", "DCGM_FI_DEV_XID_ERRORS"}
    assert {"DCGM_FI_PROF_GR_ENGINE_ACTIVE", "DCGM_FI_PROF_PIPE_TENSOR_ACTIVE", "DCGM_FI_PROF_DRAM_ACTIVE",
            "DCGM_FI_PROF_PCIE_TX_BYTES", "DCGM_FI_PROF_PCIE_RX_BYTES"} <= set(defaults)
    factors = {d.name: d.factor for m in METRICS for d in m.dcgm}
    assert factors["DCGM_FI_DEV_FB_USED"] == 1 / MiB and factors["DCGM_FI_DEV_SM_CLOCK"] == 1e-6
    assert factors["DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION"] == 1000 and factors["DCGM_FI_DEV_GPU_UTIL"] == 100


def test_the_environment_chooses_the_naming(node):
    two_gpus(node)
    env = {**node.env(), "GPUTEXT_NAMING": "dcgm"}
    proc = subprocess.run([sys.executable, "-m", "gputext", "collect", "--out", "-", "--collectors", "nvml",
                           "--state-dir", str(node.state_dir)], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert value(parse_exposition(proc.stdout), "DCGM_FI_DEV_GPU_TEMP", gpu="0") == 45
    bad = subprocess.run([sys.executable, "-m", "gputext", "collect", "--out", "-"],
                         env={**env, "GPUTEXT_NAMING": "nvidia"}, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2
    assert bad.stderr.startswith("gputext: invalid GPUTEXT_NAMING='nvidia' (from the environment): choose "
                                 "gputext, dcgm or dcgm-4.10")


# dcgm-exporter's counters file as teams keep it: comments, blank lines, the stray space before a comma in
# its default file, a field NVML cannot give, label fields, and NVML fields by name and by number.
COUNTERS = """\
# Format
# If line starts with a '#' it is considered a comment
# DCGM FIELD, Prometheus metric type, help message

# Temperature and power
DCGM_FI_DEV_GPU_TEMP,    gauge, GPU temperature (in C).
DCGM_FI_DEV_POWER_USAGE, gauge, Power draw (in W).
DCGM_FI_DEV_DEC_UTIL ,   gauge, Decoder utilization (in %).
DCGM_FI_DEV_ECC_DBE_VOL_TOTAL, counter, Total number of double-bit volatile ECC errors.
DCGM_FI_DEV_VGPU_LICENSE_STATUS, gauge, vGPU License status
DCGM_FI_DRIVER_VERSION, label, Driver Version
DCGM_FI_DEV_SERIAL, label, Device serial number

NVML_FI_DEV_PCIE_COUNT_TX_BYTES, counter, Bytes sent over PCIe (NVML field 197).
138:3, counter, NVLink data sent on link 3 (KiB)., nvml_nvlink_tx_kib
138:4, counter, NVLink data sent on link 4 (KiB)., nvml_nvlink_tx_kib
"""


def test_a_counters_file_chooses_the_series_and_adds_nvml_fields(node, tmp_path):
    two_gpus(node)
    counters = tmp_path / "default-counters.csv"
    counters.write_text(COUNTERS)
    out = tmp_path / "gpu.prom"
    proc = node.run("collect", "--out", str(out), "--counters", str(counters), "--collectors", "nvml")
    assert proc.returncode == 0, proc.stderr
    # the one field NVML cannot give is named once, and the rest is written
    assert proc.stderr.count("DCGM_FI_DEV_VGPU_LICENSE_STATUS") == 1
    assert f"counters file {counters}: gputext does not write DCGM_FI_DEV_VGPU_LICENSE_STATUS (" in proc.stderr
    text = out.read_text()
    s = parse_exposition(text)
    dcgm = {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE DCGM_")}
    assert dcgm == {"DCGM_FI_DEV_GPU_TEMP", "DCGM_FI_DEV_POWER_USAGE", "DCGM_FI_DEV_DEC_UTIL",
                    "DCGM_FI_DEV_ECC_DBE_VOL_TOTAL"}
    assert "# HELP DCGM_FI_DEV_DEC_UTIL Decoder utilization (in %)." in text  # the file's help
    assert value(s, "DCGM_FI_DEV_ECC_DBE_VOL_TOTAL_total", gpu="0") == 0
    labels = labels_of(s, "DCGM_FI_DEV_GPU_TEMP", "0")
    assert labels["DCGM_FI_DEV_SERIAL"] == "1654922000000" and labels["DCGM_FI_DRIVER_VERSION"] == "580.159.04"
    # what the file leaves out keeps gputext's name (the detail level decides it, as without a file)
    assert value(s, "gpu_clock_hertz", gpu="0", clock="sm") == 1980e6
    # NVML fields, with the type and help the file gives, and their scope as a label
    assert value(s, "NVML_FI_DEV_PCIE_COUNT_TX_BYTES_total", gpu="1") == 123_456_789_012
    assert "# TYPE NVML_FI_DEV_PCIE_COUNT_TX_BYTES counter" in text
    assert value(s, "nvml_nvlink_tx_kib_total", gpu="0", scope="3") == 1_003_000
    assert value(s, "nvml_nvlink_tx_kib_total", gpu="0", scope="4") == 1_004_000
    assert labels_of(s, "NVML_FI_DEV_PCIE_COUNT_TX_BYTES_total", "1")["device"] == "nvidia5"
    valid_but_for_dcgm_names(text, tmp_path / "textfile")


def test_nvml_fields_are_read_in_the_same_call(node, tmp_path):
    two_gpus(node)
    counters = tmp_path / "counters.csv"
    counters.write_text(COUNTERS)
    node.collect("--collectors", "nvml")  # learns the inventory
    counts = []
    for args in ((), ("--counters", str(counters))):
        node.calls.unlink(missing_ok=True)
        proc, _ = node.collect("--collectors", "nvml", *args)
        assert proc.returncode == 0, proc.stderr
        counts.append(node.call_counts()[0])
    assert counts[0]["nvmlDeviceGetFieldValues"] == counts[1]["nvmlDeviceGetFieldValues"] == 1


def test_nvml_fields_keep_gputext_names_around_them_with_naming_gputext(node, tmp_path):
    two_gpus(node)
    counters = tmp_path / "counters.csv"
    counters.write_text(COUNTERS)
    proc, s = node.collect("--naming", "gputext", "--counters", str(counters), "--collectors", "nvml")
    assert proc.returncode == 0, proc.stderr
    assert not [name for name, _ in s if name.startswith("DCGM_")]
    assert value(s, "gpu_temperature_celsius", gpu="0") == 45
    assert value(s, "nvml_nvlink_tx_kib_total", gpu="1", uuid=h100_uuid(1), scope="3") == 1_003_000


@pytest.mark.parametrize("line, problem", [
    ("DCGM_FI_DEV_GPU_TEMP, gauge", "expected 'FIELD, gauge|counter|label, help' (3 columns, or 4 with a "
                                    "metric name for an NVML field), found 2"),
    ("DCGM_FI_DEV_GPU_TEMP, histogram, GPU temperature", "type 'histogram' of DCGM_FI_DEV_GPU_TEMP: use gauge, "
                                                         "counter or label"),
    ("GPU_TEMP, gauge, GPU temperature", "'GPU_TEMP' is neither a DCGM field (DCGM_FI_...) nor an NVML field"),
    ("NVML_FI_DEV_NO_SUCH_THING, gauge, x", "pynvml knows no field NVML_FI_DEV_NO_SUCH_THING"),
    ("NVML_FI_DEV_PCIE_COUNT_TX_BYTES, label, x", "an NVML field is a gauge or a counter, not a label"),
    ("197, gauge, x, 9bad", "'9bad' is not a valid metric name"),
    ("DCGM_FI_DEV_POWER_USAGE, gauge, Power draw (in W).", "DCGM_FI_DEV_POWER_USAGE is named twice (first on "
                                                           "line 2)"),
])
def test_a_bad_counters_file_is_one_line_with_file_and_line_and_no_file_written(node, tmp_path, line, problem):
    two_gpus(node)
    counters = tmp_path / "counters.csv"
    counters.write_text(f"# mine\nDCGM_FI_DEV_POWER_USAGE, gauge, Power draw (in W).\n{line}\n")
    out = tmp_path / "gpu.prom"
    proc = node.run("collect", "--out", str(out), "--counters", str(counters))
    assert proc.returncode == 2
    (message,) = proc.stderr.splitlines()
    assert message.startswith(f"gputext: invalid --counters '{counters}': {counters}:3: {problem}"), message
    assert not out.exists()


def test_a_missing_counters_file_says_so(node, tmp_path):
    two_gpus(node)
    proc = node.run("collect", "--out", "-", "--counters", str(tmp_path / "nope.csv"))
    assert proc.returncode == 2
    assert f"cannot read counters file {tmp_path / 'nope.csv'}: No such file or directory" in proc.stderr
    assert proc.stdout == ""


def test_nvlink_bandwidth_is_what_dcgm_computes_between_two_runs(node):
    """DCGM_FI_DEV_NVLINK_BANDWIDTH_TOTAL is typed counter but is a rate: the increase of the KiB data
    counters (sent and received, all links) per second, divided by 1000."""
    gpu = h100(0)
    for link in range(H100_NVLINKS):
        gpu["fields"][(138, link)] = Field(1_000_000 + link, type="ull", step=3_000)
        gpu["fields"][(139, link)] = Field(2_000_000 + link, type="ull", step=5_000)
    node.write([gpu])
    started = time.time()
    first, s = node.collect("--naming", "dcgm", "--collectors", "nvml,nvlink", tick=0)
    assert first.returncode == 0, first.stderr
    assert value(s, "DCGM_FI_DEV_NVLINK_BANDWIDTH_TOTAL_total", gpu="0") is None  # nothing to compare with yet
    ended = time.time()
    time.sleep(0.3)
    began = time.time()
    proc, s = node.collect("--naming", "dcgm", "--collectors", "nvml,nvlink", tick=10)
    finished = time.time()
    assert proc.returncode == 0, proc.stderr
    kib = 10 * (3_000 + 5_000) * H100_NVLINKS
    rate = value(s, "DCGM_FI_DEV_NVLINK_BANDWIDTH_TOTAL_total", gpu="0")
    # the two runs' clocks were read somewhere between these times
    assert kib / (finished - started) / 1000 <= rate <= kib / (began - ended) / 1000
    assert "# TYPE DCGM_FI_DEV_NVLINK_BANDWIDTH_TOTAL counter" in proc.stdout
    # the per-link counters keep their gputext names
    assert value(s, "gpu_nvlink_transmit_bytes_total", gpu="0", link="0") == (1_000_000 + 30_000) * 1024



# Grafana dashboard 12239 (NVIDIA's "NVIDIA DCGM Exporter Dashboard"): its panel queries and variables,
# as its JSON has them, with the variables as Grafana substitutes them for "All"
DASHBOARD_12239 = {
    "GPU Temperature": 'DCGM_FI_DEV_GPU_TEMP{instance=~"$instance", gpu=~"$gpu"}',
    "GPU Avg. Temp": 'avg(DCGM_FI_DEV_GPU_TEMP{instance=~"$instance", gpu=~"$gpu"})',
    "GPU Power Usage": 'DCGM_FI_DEV_POWER_USAGE{instance=~"$instance", gpu=~"$gpu"}',
    "GPU Power Total": 'sum(DCGM_FI_DEV_POWER_USAGE{instance=~"$instance", gpu=~"$gpu"})',
    "GPU SM Clocks": 'DCGM_FI_DEV_SM_CLOCK{instance=~"$instance", gpu=~"$gpu"} * 1000000',
    "GPU Utilization": 'DCGM_FI_DEV_GPU_UTIL{instance=~"$instance", gpu=~"$gpu"}',
    "GPU Framebuffer Mem Used": 'DCGM_FI_DEV_FB_USED{instance=~"$instance", gpu=~"$gpu"}',
    "Tensor Core Utilization": 'DCGM_FI_PROF_PIPE_TENSOR_ACTIVE{instance=~"$instance", gpu=~"$gpu"}',
}


# The same queries rewritten to the names dcgm-exporter 4.9 and 4.10 write (the SM clock is in Hz there, so
# the panel's * 1000000 goes). "GPU Utilization" and "GPU Framebuffer Mem Used" have no rewrite: the 4.9
# names of GPU_UTIL and FB_USED are not confirmed (docs/dcgm-exporter.md), so gputext writes neither.
DASHBOARD_12239_4_10 = {
    "GPU Temperature": 'DCGM_FI_DEV_GPU_TEMP_CELSIUS{instance=~"$instance", gpu=~"$gpu"}',
    "GPU Avg. Temp": 'avg(DCGM_FI_DEV_GPU_TEMP_CELSIUS{instance=~"$instance", gpu=~"$gpu"})',
    "GPU Power Usage": 'DCGM_FI_DEV_BOARD_POWER_WATTS{instance=~"$instance", gpu=~"$gpu"}',
    "GPU Power Total": 'sum(DCGM_FI_DEV_BOARD_POWER_WATTS{instance=~"$instance", gpu=~"$gpu"})',
    "GPU SM Clocks": 'DCGM_FI_DEV_SM_CLOCK_HERTZ{instance=~"$instance", gpu=~"$gpu"}',
    "Tensor Core Utilization": 'DCGM_FI_PROF_TENSOR_UTIL_RATIO{instance=~"$instance", gpu=~"$gpu"}',
}


@pytest.mark.parametrize("naming, dashboard", [("dcgm", DASHBOARD_12239), ("dcgm-4.10", DASHBOARD_12239_4_10)])
def test_dashboard_12239_on_a_real_prometheus(node, tmp_path, naming, dashboard):
    """Debian's Prometheus scrapes the real node_exporter reading a --naming dcgm file, and every query
    and variable of dashboard 12239 gives the values the fake GPUs hold; with --naming dcgm-4.10, the same
    queries rewritten to the 4.9+ names."""
    from fakegpu import H100_GPM, with_gpm
    from realtools import Prometheus

    node.write([with_gpm(h100(0, temperature=45, power_usage=300_000)),
                with_gpm(h100(1, temperature=51, power_usage=500_000, utilization_gpu=12),
                         {**H100_GPM, 5: 75.0})])  # GPM_ANY_TENSOR_UTIL
    textfiles = tmp_path / "textfile"
    textfiles.mkdir()
    (tmp_path / "prometheus").mkdir()
    proc = node.run("collect", "--naming", naming, "--out", str(textfiles / "gpu.prom"), "--collectors",
                    "nvml,nvlink,pcie,gpm", "--gpm-window", "200ms")
    assert proc.returncode == 0, proc.stderr
    temperature = dashboard["GPU Temperature"].split("{")[0]
    with NodeExporter(textfiles) as exporter, \
            Prometheus(tmp_path / "prometheus", {"node": [exporter.address]}) as prom:
        prom.wait_for(temperature, lambda r: len(r) == 2)
        instances = prom.api("label/instance/values", **{"match[]": temperature})
        gpus = prom.api("label/gpu/values", **{"match[]": temperature})
        assert instances == [exporter.address] and gpus == ["0", "1"]

        def panel(title, instance=".*", gpu=".*"):
            expr = dashboard[title].replace("$instance", instance).replace("$gpu", gpu)
            return {r["metric"].get("gpu"): float(r["value"][1]) for r in prom.query(expr)}

        used = (40 * GiB + 517 * MiB) / MiB
        expected = {"GPU Temperature": {"0": 45, "1": 51}, "GPU Avg. Temp": {None: 48},
                    "GPU Power Usage": {"0": 300, "1": 500}, "GPU Power Total": {None: 800},
                    "GPU SM Clocks": {"0": 1980e6, "1": 1980e6}, "GPU Utilization": {"0": 87, "1": 12},
                    "GPU Framebuffer Mem Used": {"0": used, "1": used},
                    "Tensor Core Utilization": pytest.approx({"0": 0.40, "1": 0.75})}
        assert {title: panel(title) for title in dashboard} == {title: expected[title] for title in dashboard}
        assert panel("GPU Temperature", instance=exporter.address, gpu="1") == {"1": 51}


def test_profiling_and_xid_series_under_dcgm_names(node, tmp_path):
    """PROF_* from GPM in DCGM's units (ratios, bytes per second), and XID_ERRORS the code of each GPU's
    newest XID, 0 where it had none."""
    from fakegpu import with_gpm
    from test_xid import GPU0, Log, xid_515, xid_570

    log = Log(tmp_path)
    log.add(xid_570(GPU0, 62), xid_515(GPU0, 79))  # 79 is the newer one
    node.write([with_gpm(h100(0)), h100(1)])
    proc, s = node.collect("--naming", "dcgm", "--collectors", "nvml,xid,gpm", "--gpm-window", "200ms",
                           "--kmsg", str(log.path), "--host-root", str(log.root))
    assert proc.returncode == 0, proc.stderr
    assert value(s, "DCGM_FI_PROF_PIPE_TENSOR_ACTIVE", gpu="0") == pytest.approx(0.40)
    assert value(s, "DCGM_FI_PROF_GR_ENGINE_ACTIVE", gpu="0") == pytest.approx(0.92)
    assert value(s, "DCGM_FI_PROF_DRAM_ACTIVE", gpu="0") == pytest.approx(0.30)
    assert value(s, "DCGM_FI_PROF_PCIE_TX_BYTES", gpu="0") == pytest.approx(2384 * MiB)
    assert value(s, "DCGM_FI_PROF_PIPE_TENSOR_ACTIVE", gpu="1") is None  # no GPM on GPU 1
    labels = labels_of(s, "DCGM_FI_PROF_PIPE_TENSOR_ACTIVE", "0")
    assert "GPU_I_ID" not in labels and labels["UUID"] == h100_uuid(0)  # a whole GPU: no MIG labels
    # standard's GPM series without a default DCGM name keep gputext's
    assert value(s, "gpu_sm_active_ratio", gpu="0") == pytest.approx(0.80)
    assert value(s, "DCGM_FI_DEV_XID_ERRORS", gpu="0") == 79
    assert value(s, "DCGM_FI_DEV_XID_ERRORS", gpu="1") == 0
    assert value(s, "gpu_xid_errors_total", gpu="0", xid="62") == 1  # the counts stay, under gputext's names


def test_mig_framebuffer_per_gpu_instance(node, tmp_path):
    """On a MIG GPU, FB_USED (and FB_TOTAL where the file asks for it) for the GPU and, with GPU_I_ID, for
    each GPU instance, in MiB."""
    slots = {0: {"uuid": "MIG-5c3f8e1a-2b7d-5e9f-8a1c-3d5f7b9e1a3c", "gi": 1, "ci": 0, "memory": (40 * GiB, 3 * GiB)},
             1: {"uuid": "MIG-7e9a1c3e-5d7f-5b9a-8c1e-3f5a7c9e1b3d", "gi": 2, "ci": 0, "memory": (20 * GiB, 5 * GiB)}}
    node.write([h100(0, mig_mode=(1, 1), mig_devices=slots, memory_used=9 * GiB)])
    counters = tmp_path / "counters.csv"
    counters.write_text("DCGM_FI_DEV_FB_USED, gauge, Framebuffer memory used (in MiB).\n"
                        "DCGM_FI_DEV_FB_TOTAL, gauge, Framebuffer memory total (in MiB).\n")
    for args in (("--naming", "dcgm"), ("--counters", str(counters))):
        proc, s = node.collect("--collectors", "nvml", *args)
        assert proc.returncode == 0 and proc.stderr == "", proc.stderr
        used = {dict(labels).get("GPU_I_ID"): v for (name, labels), v in s.items() if name == "DCGM_FI_DEV_FB_USED"}
        assert used == {None: 9 * 1024, "1": 3 * 1024, "2": 5 * 1024}
        assert "gpu_mig_memory_used_bytes" not in {name for name, _ in s}
    total = {dict(labels).get("GPU_I_ID"): v for (name, labels), v in s.items() if name == "DCGM_FI_DEV_FB_TOTAL"}
    assert total == {None: 81559, "1": 40 * 1024, "2": 20 * 1024}
    labels = next(dict(labels) for name, labels in s if name == "DCGM_FI_DEV_FB_USED" and dict(labels).get("GPU_I_ID"))
    assert "mig_device" not in labels and labels["UUID"] == h100_uuid(0)
    valid_but_for_dcgm_names(proc.stdout, tmp_path / "textfile")


# --- dcgm-exporter 4.9 and 4.10: DCGM 4.7's names, base units, and the cumulative XID counter -----------

DATA = Path(__file__).parent / "data" / "dcgm-exporter"
# family as the file names it -> the value GPU 0 of xid_node holds, in the unit the name means
OLD_SERIES = {
    "DCGM_FI_DEV_SM_CLOCK": 1980, "DCGM_FI_DEV_MEM_CLOCK": 2619, "DCGM_FI_DEV_MEMORY_TEMP": 52,
    "DCGM_FI_DEV_GPU_TEMP": 45, "DCGM_FI_DEV_POWER_USAGE": pytest.approx(412.345),
    "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION": 31_536_000_000, "DCGM_FI_DEV_PCIE_REPLAY_COUNTER": 0,
    "DCGM_FI_DEV_GPU_UTIL": 87, "DCGM_FI_DEV_MEM_COPY_UTIL": 43, "DCGM_FI_DEV_ENC_UTIL": 0,
    "DCGM_FI_DEV_DEC_UTIL": 0, "DCGM_FI_DEV_XID_ERRORS": 79, "DCGM_FI_DEV_FB_FREE": 81559 - 542 - 40 * 1024 - 517,
    "DCGM_FI_DEV_FB_USED": 40 * 1024 + 517, "DCGM_FI_DEV_FB_RESERVED": 542,
    "DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS": 0, "DCGM_FI_DEV_CORRECTABLE_REMAPPED_ROWS": 0,
    "DCGM_FI_DEV_ROW_REMAP_FAILURE": 0, "DCGM_FI_PROF_GR_ENGINE_ACTIVE": pytest.approx(0.92),
    "DCGM_FI_PROF_PIPE_TENSOR_ACTIVE": pytest.approx(0.40), "DCGM_FI_PROF_DRAM_ACTIVE": pytest.approx(0.30),
    "DCGM_FI_PROF_PCIE_TX_BYTES": pytest.approx(2384 * MiB), "DCGM_FI_PROF_PCIE_RX_BYTES": pytest.approx(8680 * MiB),
}
NEW_SERIES = {
    "DCGM_FI_DEV_SM_CLOCK_HERTZ": 1980e6, "DCGM_FI_DEV_MEMORY_CLOCK_HERTZ": 2619e6,
    "DCGM_FI_DEV_MEMORY_TEMP_CELSIUS": 52, "DCGM_FI_DEV_GPU_TEMP_CELSIUS": 45,
    "DCGM_FI_DEV_BOARD_POWER_WATTS": pytest.approx(412.345), "DCGM_FI_DEV_GPU_ENERGY_JOULES_TOTAL": 31_536_000,
    "DCGM_FI_DEV_PCIE_REPLAY_TOTAL": 0, "DCGM_FI_DEV_XID_ERROR": 79, "DCGM_FI_DEV_FB_CAPACITY_BYTES": 81559 * MiB,
    "DCGM_FI_DEV_ROW_REMAP_UNCORRECTABLE_TOTAL": 0, "DCGM_FI_DEV_ROW_REMAP_CORRECTABLE_TOTAL": 0,
    "DCGM_FI_DEV_ROW_REMAP_FAILED": 0, "DCGM_FI_PROF_GR_ENGINE_UTIL_RATIO": pytest.approx(0.92),
    "DCGM_FI_PROF_TENSOR_UTIL_RATIO": pytest.approx(0.40), "DCGM_FI_PROF_DRAM_UTIL_RATIO": pytest.approx(0.30),
    "DCGM_FI_PROF_PCIE_TX_BYTES_PER_SECOND": pytest.approx(2384 * MiB),
    "DCGM_FI_PROF_PCIE_RX_BYTES_PER_SECOND": pytest.approx(8680 * MiB),
}


def xid_node(node, tmp_path):
    """Two H100s, GPU 0 with GPM and two XIDs in the kernel log (79 the newer); the arguments of a run that
    reads every source those series come from."""
    from fakegpu import with_gpm
    from test_xid import GPU0, Log, xid_515, xid_570

    log = Log(tmp_path)
    log.add(xid_570(GPU0, 62), xid_515(GPU0, 79))
    node.write([with_gpm(h100(0, temperature=45)), h100(1, minor_number=5)])
    return ("--collectors", "nvml,pcie,nvlink,gpm,xid", "--gpm-window", "200ms", "--kmsg", str(log.path),
            "--host-root", str(log.root))


def dcgm_families(text: str) -> set:
    return {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE DCGM_")}


def gpu0(series, name):
    (found,) = [v for (n, labels), v in series.items() if n in (name, name + "_total") and dict(labels)["gpu"] == "0"]
    return found


@pytest.mark.parametrize("naming, file, expected, labels", [
    ("dcgm", "default-counters-4.8.csv", {**OLD_SERIES, "DCGM_FI_DEV_NVLINK_BANDWIDTH_TOTAL": None},
     ("Hostname", "DCGM_FI_DRIVER_VERSION")),
    ("dcgm-4.10", "default-counters-4.10.csv", {**NEW_SERIES, "DCGM_EXP_XID_ERRORS_TOTAL": None},
     ("hostname", "DCGM_FI_SYSTEM_DRIVER_VERSION")),
])
def test_each_generations_default_counters_file_gives_exactly_its_series(node, tmp_path, naming, file, expected,
                                                                         labels):
    """dcgm-exporter's default file of each generation, as a file: exactly its series (the second run has
    the NVLink rate), in the unit each name means; and the naming without a file writes the same set."""
    args = xid_node(node, tmp_path)
    for _ in range(2):
        proc, s = node.collect("--naming", naming, "--counters", str(DATA / file), *args)
        assert proc.returncode == 0, proc.stderr
    assert dcgm_families(proc.stdout) == set(expected)
    for name, held in expected.items():
        if held is not None:
            assert gpu0(s, name) == held, name
    assert labels_of(s, list(expected)[0], "0").keys() >= set(labels)
    valid_but_for_dcgm_names(proc.stdout, tmp_path / "textfile")
    proc, _ = node.collect("--naming", naming, *args)
    assert dcgm_families(proc.stdout) == set(expected)


def test_the_new_naming_writes_dcgm_exporters_xid_counter_from_gputexts_count(node, tmp_path):
    """DCGM_EXP_XID_ERRORS_TOTAL{xid}: one series per GPU and code, as dcgm-exporter writes it, from the
    count gputext keeps in its state (so a restart does not reset it, nor count a record twice)."""
    args = xid_node(node, tmp_path)
    for _ in range(2):
        proc, s = node.collect("--naming", "dcgm-4.10", *args)
        assert proc.returncode == 0, proc.stderr
    totals = {dict(labels)["xid"]: v for (name, labels), v in s.items() if name == "DCGM_EXP_XID_ERRORS_TOTAL_total"}
    assert totals == {"62": 1, "79": 1}  # GPU 1 had none: no series, as in dcgm-exporter
    assert "# TYPE DCGM_EXP_XID_ERRORS_TOTAL counter" in proc.stdout
    labels = next(dict(labels) for (name, labels) in s if name == "DCGM_EXP_XID_ERRORS_TOTAL_total")
    assert labels["UUID"] == h100_uuid(0) and labels["hostname"] == socket.gethostname()
    assert "Hostname" not in labels and labels["DCGM_FI_SYSTEM_DRIVER_VERSION"] == "580.159.04"
    assert value(s, "DCGM_FI_DEV_XID_ERROR", gpu="1") == 0
    # and under the 4.8 naming where a counters file names it
    counters = tmp_path / "counters.csv"
    counters.write_text("DCGM_EXP_XID_ERRORS_TOTAL, counter, XID errors.\n")
    proc, s = node.collect("--counters", str(counters), *args)
    assert proc.returncode == 0, proc.stderr
    assert value(s, "DCGM_EXP_XID_ERRORS_TOTAL_total", gpu="0", xid="62") == 1


def test_a_file_may_mix_both_generations_names(node, tmp_path):
    """Each series is named as the file names it, in the unit that name means, both spellings side by side."""
    args = xid_node(node, tmp_path)
    counters = tmp_path / "counters.csv"
    counters.write_text("DCGM_FI_DEV_SM_CLOCK, gauge, SM clock (in MHz).\n"
                        "DCGM_FI_DEV_SM_CLOCK_HERTZ, gauge, SM clock (in Hz).\n"
                        "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION, counter, Energy (in mJ).\n"
                        "DCGM_FI_DEV_GPU_ENERGY_JOULES_TOTAL, counter, Energy (in J).\n"
                        "DCGM_FI_DEV_XID_ERRORS, gauge, Last XID.\n"
                        "DCGM_FI_DEV_XID_ERROR, gauge, Last XID.\n"
                        "DCGM_FI_PROF_PIPE_TENSOR_ACTIVE, gauge, Tensor.\n"
                        "DCGM_FI_PROF_TENSOR_UTIL_RATIO, gauge, Tensor.\n"
                        "DCGM_FI_DRIVER_VERSION, label, Driver Version\n"
                        "DCGM_FI_SYSTEM_DRIVER_VERSION, label, Driver Version\n")
    proc, s = node.collect("--counters", str(counters), *args)
    assert proc.returncode == 0, proc.stderr
    (note,) = proc.stderr.splitlines()  # GPU 1 has no GPM: said under both names
    assert note.endswith("GPU 1 gave no value for DCGM_FI_PROF_PIPE_TENSOR_ACTIVE, DCGM_FI_PROF_TENSOR_UTIL_RATIO "
                         "(not supported there); left out")
    assert gpu0(s, "DCGM_FI_DEV_SM_CLOCK") == 1980 and gpu0(s, "DCGM_FI_DEV_SM_CLOCK_HERTZ") == 1980e6
    assert gpu0(s, "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION") == 31_536_000_000
    assert gpu0(s, "DCGM_FI_DEV_GPU_ENERGY_JOULES_TOTAL") == 31_536_000
    assert gpu0(s, "DCGM_FI_DEV_XID_ERRORS") == gpu0(s, "DCGM_FI_DEV_XID_ERROR") == 79
    assert gpu0(s, "DCGM_FI_PROF_PIPE_TENSOR_ACTIVE") == gpu0(s, "DCGM_FI_PROF_TENSOR_UTIL_RATIO") == pytest.approx(0.4)
    labels = labels_of(s, "DCGM_FI_DEV_SM_CLOCK_HERTZ", "0")
    assert labels["DCGM_FI_DRIVER_VERSION"] == labels["DCGM_FI_SYSTEM_DRIVER_VERSION"] == "580.159.04"
    valid_but_for_dcgm_names(proc.stdout, tmp_path / "textfile")


@pytest.mark.parametrize("line", ["DCGM_FI_DEV_SM_CLOCK_HZ, gauge, SM clock (in Hz).",
                                  "DCGM_FI_PROF_PCIE_TX_BYTES_PER_SEC, gauge, PCIe.",
                                  "DCGM_FI_SYSTEM_DRIVER_VERSIONS, label, Driver Version"])
def test_a_name_neither_generation_has_is_exit_2_with_its_line(node, tmp_path, line):
    two_gpus(node)
    counters = tmp_path / "counters.csv"
    counters.write_text(f"DCGM_FI_DEV_SM_CLOCK_HERTZ, gauge, SM clock (in Hz).\n{line}\n")
    proc = node.run("collect", "--out", str(tmp_path / "gpu.prom"), "--naming", "dcgm-4.10", "--counters",
                    str(counters))
    assert proc.returncode == 2
    assert f"{counters}:2: {line.split(',')[0]} is not a DCGM field gputext knows" in proc.stderr
    assert not (tmp_path / "gpu.prom").exists()


def test_a_newer_field_gputext_does_not_write_tells_what_to_do_with_its_line(node, tmp_path):
    """A dcgm-exporter 4.9 or 4.10 counters file may name a field whose new name or unit gputext could not
    confirm (framebuffer used in bytes): the one line says where those are listed and what to do with the
    line, not only to check a spelling the user did not get wrong."""
    two_gpus(node)
    counters = tmp_path / "counters.csv"
    counters.write_text("DCGM_FI_DEV_SM_CLOCK_HERTZ, gauge, SM clock (in Hz).\n"
                        "DCGM_FI_DEV_FB_USED_BYTES, gauge, Framebuffer memory used (in bytes).\n")
    proc = node.run("collect", "--out", str(tmp_path / "gpu.prom"), "--naming", "dcgm-4.10", "--counters",
                    str(counters))
    assert proc.returncode == 2
    (message,) = proc.stderr.splitlines()
    assert f"{counters}:2: DCGM_FI_DEV_FB_USED_BYTES is not a DCGM field gputext knows" in message
    assert "docs/dcgm-exporter.md" in message and "comment the line out with #" in message, message
    assert not (tmp_path / "gpu.prom").exists()

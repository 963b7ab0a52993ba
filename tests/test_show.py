"""`gputext show` against the fake GPU, and its pieces: rates from counters, the process table, the width,
colour only on a terminal without NO_COLOR."""

import io
import os
import re
import subprocess
import sys

import psutil
import pytest

from fakegpu import GPM_SM_ACTIVE, h100, step, with_gpm
from gputext import show
from gputext.exposition import Samples

GPU = {"gpu": "0", "uuid": "GPU-0"}


def sections(output: str) -> list:
    return output.split("\n\n")


def row(table: str, gpu: str) -> list:
    """The cells of a GPU's row, split on the two-space column gaps."""
    for line in table.splitlines():
        if line.split()[0] == gpu:
            return re.split(r"\s{2,}", line.strip())
    raise AssertionError(f"no row for GPU {gpu} in\n{table}")


def test_values_of_the_fake_gpus(node):
    busy = h100(0, temperature=45, power_usage=412_345, power_limit=700_000, utilization_gpu=87,
                utilization_memory=43)
    for link in range(18):
        busy["fields"][(138, link)] = step(1_000_000, 1000)  # 1000 KiB more on each read
    node.write([busy, h100(1, temperature=88), h100(2, lost=True)])
    proc = node.run("show", "--sample", "0.3", "--collectors", "nvml,nvlink,pcie")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    assert "\x1b[" not in proc.stdout  # not a terminal
    assert all(len(line) <= show.WIDTH for line in proc.stdout.splitlines())
    summary_and_devices, traffic = sections(proc.stdout)[:2]
    assert summary_and_devices.startswith("driver 580.159.04, CUDA 13.0, 3 GPUs\n")
    assert row(summary_and_devices, "0") == ["0", "NVIDIA H100 80GB HBM3", "45 °C", "412 / 700", "40.5 / 79.6",
                                             "87%", "43%"]
    assert row(summary_and_devices, "1")[2] == "88 °C"
    assert row(summary_and_devices, "2") == ["2", "not answering"]
    assert re.match(r"Traffic \(over 0\.\d s\)\n", traffic)
    cells = row(traffic, "0")
    assert cells[1] == "18/18"
    assert re.fullmatch(r"\d+\.\d MB/s", cells[2]), cells  # 18 links x 1000 KiB over about 0.3 s
    assert cells[3:] == ["0 B/s", "0 B/s", "0 B/s"]  # the other counters stand still
    assert not re.search(r"^  2 ", traffic, re.M)


def test_sm_active_where_gpm_gives_it(node):
    """GPM's SM activity beside the utilisation, '-' for a GPU without it (pre-Hopper, or MIG, whose GPU
    instances have their own); no column at all on a node where no GPU has it."""
    mig = with_gpm(h100(2, mig_mode=(1, 1), mig_devices={0: {"uuid": "MIG-a", "gi": 1, "ci": 0}}),
                   mig={1: {GPM_SM_ACTIVE: 55.0}})
    node.write([with_gpm(h100(0, utilization_gpu=87), {GPM_SM_ACTIVE: 64.0}), h100(1), mig])
    proc = node.run("show", "--sample", "0.3", "--collectors", "nvml,gpm", "--gpm-window", "150ms")
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    devices = sections(proc.stdout)[0]
    assert re.split(r"\s{2,}", devices.splitlines()[1].strip())[5:] == ["UTIL", "SM ACTIVE", "MEM UTIL"]
    assert row(devices, "0")[5:] == ["87%", "64%", "43%"]
    assert row(devices, "1")[5:] == ["87%", "-", "43%"]
    assert row(devices, "2")[6] == "-"
    assert all(len(line) <= show.WIDTH for line in proc.stdout.splitlines())
    node.write([h100(0), h100(1)])
    proc = node.run("show", "--sample", "0", "--collectors", "nvml,gpm")
    assert proc.returncode == 0 and "SM ACTIVE" not in proc.stdout


def test_sampled_pcie_rate_where_counters_are_missing(node):
    gpu = h100(0, pcie_tx_kbps=1_234_567, pcie_rx_kbps=2_345_678)
    gpu["fields"].update({197: None, 198: None})
    node.write([gpu])
    proc = node.run("show", "--sample", "0", "--collectors", "nvml,pcie")
    assert proc.returncode == 0, proc.stderr
    assert row(sections(proc.stdout)[1], "0")[-2:] == ["1.23 GB/s", "2.35 GB/s"]


def test_processes_section(node):
    gpu = h100(0, processes=[{"pid": os.getpid(), "used_memory": 3 << 30}],
               process_samples=[{"pid": os.getpid(), "timestamp": 1_760_000_000_000_000, "sm": 40}])
    node.write([gpu])
    proc = node.run("show", "--sample", "0", "--collectors", "nvml,processes")
    assert proc.returncode == 0, proc.stderr
    processes = [s for s in sections(proc.stdout) if s.startswith("Processes\n")][0]
    assert row(processes, "0") == ["0", str(os.getpid()), psutil.Process().name(), "3.0", "40%", "-", "-"]
    # warnings of the run go below the tables, not to stderr
    assert proc.stderr == ""
    assert re.search(r"^! accounting mode is off on GPU 0", proc.stdout, re.M)


def test_no_processes_section_without_the_collector(node):
    node.write([h100(0)])
    proc = node.run("show", "--sample", "0", "--collectors", "nvml")
    assert "Processes" not in proc.stdout and "PID" not in proc.stdout


def test_no_nvml(node):
    node.write([h100(0)])
    proc = node.run("show", "--sample", "0", nvml=False)
    assert proc.returncode == 1
    assert proc.stdout.startswith("NVML cannot be read on this node (see below).\n")
    assert "! NVML library libnvidia-ml.so.1 not found" in proc.stdout


# --- the pieces ----------------------------------------------------------------------------------------

def samples(**series) -> Samples:
    """Samples from {key: [(labels beyond gpu/uuid, value), ...]}."""
    s = Samples()
    for key, entries in series.items():
        for labels, value in entries:
            s.add(key, value, {**GPU, **labels})
    return s


def test_rates_from_counters():
    first = samples(nvlink_transmit_bytes_total=[({"link": "0"}, 1000), ({"link": "1"}, 5000)],
                    pcie_receive_bytes_total=[({}, 900)])
    last = samples(nvlink_transmit_bytes_total=[({"link": "0"}, 3000), ({"link": "1"}, 7000)],
                   pcie_receive_bytes_total=[({}, 100)])  # went back: a driver reload, no rate
    assert show.rate(first, last, "nvlink_transmit_bytes_total", 2.0) == {"0": 2000.0}
    assert show.rate(first, last, "pcie_receive_bytes_total", 2.0) == {}
    assert show.rate(first, last, "nvlink_transmit_bytes_total", 0) == {}


@pytest.mark.parametrize("value, text", [(None, "-"), (0, "0 B/s"), (999, "999 B/s"), (1500, "1.50 kB/s"),
                                         (36_864_000, "36.9 MB/s"), (1.234567e9, "1.23 GB/s"),
                                         (450e9, "450.0 GB/s")])
def test_bytes_per_second(value, text):
    assert show.bytes_per_second(value) == text


def test_process_rows_with_pods():
    labels = {"pid": "77", "process_name": "trainer", "pod": "llm-0", "namespace": "ml", "container": "main",
              "slurm_job": ""}
    s = samples(process_memory_used_bytes=[(labels, 2 << 30)], process_active=[(labels, 1)],
                process_sm_utilization_ratio=[(labels, 0.5)])
    s.add("gputext_collector_success", 1, {"collector": "processes"})
    (only,) = show.process_rows(s)
    assert (only.pid, only.name, only.memory, only.sm, only.pod, only.namespace, only.job) == \
        ("77", "trainer", 2 << 30, 0.5, "llm-0", "ml", "")
    assert show.process_rows(samples()) is None  # the collector did not run: no section
    assert "JOB" not in "\n".join(show._process_table([only], show.Style(False)))  # no job: no column


def test_process_table_has_a_job_column_where_a_process_has_a_job():
    def row(pid, job):
        return show.ProcessRow("0", pid, "python", 1 << 30, 0.5, "", "", job)

    lines = show._process_table([row("77", "4711"), row("78", "")], show.Style(False))
    assert lines[1].split() == ["GPU", "PID", "PROCESS", "MEMORY", "GiB", "SM", "POD", "NAMESPACE", "JOB"]
    assert lines[2].split()[-1] == "4711" and lines[3].split()[-1] == "-"


def test_table_fits_the_width():
    columns = [show.Column("GPU", right=True), show.Column("POD", shrinks=True),
               show.Column("NAMESPACE", shrinks=True)]
    lines = show.table(columns, [["0", "p" * 120, "n" * 40]], show.Style(False))
    assert all(len(line) <= show.WIDTH for line in lines)
    assert lines[1].split()[1].endswith(show.ELLIPSIS)


LONG_NAME = "NVIDIA H100 80GB HBM3 with a much longer marketing name than any table has room for"


@pytest.mark.parametrize("columns", ["60", "80", "120"])
def test_show_fits_the_terminal_width(node, columns):
    node.write([h100(0, name=LONG_NAME, temperature=45), h100(1, temperature=50)])
    env = {**node.env(), "COLUMNS": columns}
    proc = subprocess.run([sys.executable, "-m", "gputext", "show", "--sample", "0", "--collectors", "nvml"],
                          env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    widest = max(len(line) for line in proc.stdout.splitlines())
    assert widest <= int(columns), proc.stdout
    name = row(proc.stdout.split("\n\n")[0], "0")[1]
    if int(columns) < len(LONG_NAME) + 40:  # the vendor's name goes first, then the end of the name
        assert name.endswith("…") and LONG_NAME.startswith("NVIDIA " + name[:-1])
    else:
        assert name == LONG_NAME


@pytest.mark.parametrize("locale", [{"LANG": "C"}, {"LANG": "POSIX"}, {"LC_ALL": "C", "LANG": "C.UTF-8"},
                                    {"LANG": "en_US.ISO-8859-1"}])
def test_show_is_ascii_where_the_locale_is_not_utf8(node, locale):
    node.write([h100(0, name=LONG_NAME, temperature=45)])
    env = {**node.env(), "COLUMNS": "60", **locale}
    proc = subprocess.run([sys.executable, "-m", "gputext", "show", "--sample", "0", "--collectors", "nvml"],
                          env=env, capture_output=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout.decode("ascii")  # raises on any non-ASCII byte
    cells = row(text.split("\n\n")[0], "0")
    assert cells[2] == "45 C" and cells[1].endswith("...")


def test_show_keeps_unicode_in_a_utf8_locale():
    assert show.shows_unicode(io.TextIOWrapper(io.BytesIO(), encoding="utf-8"), {"LANG": "en_US.UTF-8"})
    assert show.shows_unicode(io.TextIOWrapper(io.BytesIO(), encoding="utf-8"), {"LC_ALL": "de_DE.utf8"})
    # the locale says UTF-8 but the stream cannot encode it (PYTHONIOENCODING=ascii)
    assert not show.shows_unicode(io.TextIOWrapper(io.BytesIO(), encoding="ascii"), {"LANG": "C.UTF-8"})


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_colour_only_on_a_terminal_without_no_color(monkeypatch):
    monkeypatch.delenv("NO_COLOR", raising=False)
    assert show.wants_colour(Terminal())
    assert not show.wants_colour(io.StringIO())
    monkeypatch.setenv("NO_COLOR", "1")
    assert not show.wants_colour(Terminal())
    monkeypatch.setenv("NO_COLOR", "")  # "when present and not an empty string"
    assert show.wants_colour(Terminal())


def test_render_paints_only_with_colour():
    s = samples(up=[({"pci_bus_id": "00000000:18:00.0"}, 1)], temperature_celsius=[({}, 90)])
    sampled = show.Sampled(s, s, 0.0)
    assert "\x1b[31m" in show.render(sampled, ["careful"], show.Style(True))  # hot
    assert "\x1b[" not in show.render(sampled, ["careful"], show.Style(False))

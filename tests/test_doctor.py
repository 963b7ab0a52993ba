"""`gputext doctor` against the fake GPU: one line per check, exit 0 when everything enabled is ready and 1
with a concrete failure; and its pieces (who may read, what node_exporter reads) on their own."""

import os
import re
import socket
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from fakegpu import h100, with_gpm
from fakehost import fake_host, node_exporter
from fakekubelet import serve
from gputext import doctor
from gputext.cli import host_port
from gputext.doctor import FAIL, OK, Reader

LINE = re.compile(r"^(ok|FAIL|warn|info) {1,4}[\w ]+: \S.*$")


@pytest.fixture
def shared_dir():
    """A directory under /tmp whose ancestors others may enter (pytest's tmp_path is 0700)."""
    path = Path(tempfile.mkdtemp(prefix="gputext-doctor-"))
    path.chmod(0o755)
    yield path
    for child in path.iterdir():
        child.unlink()
    path.rmdir()


def run_doctor(node, tmp_path, *args, out=None, processes=(), nvml=True):
    host = fake_host(tmp_path / "host", *processes)
    extra = ["--out", str(out)] if out else []
    proc = node.run("doctor", "--host-root", str(host), "--state-dir", str(tmp_path / "state"), *extra, *args,
                    nvml=nvml)
    lines = proc.stdout.splitlines()
    assert all(LINE.match(line) for line in lines), proc.stdout
    return proc, {line.split()[1].rstrip(":"): line for line in lines}


def test_ready_node_passes(node, tmp_path, shared_dir):
    node.write([h100(0), h100(1)], system={"driver_version": "580.159.04"})
    out = shared_dir / "gpu.prom"
    out.write_text("gpu_up 1\n")
    out.chmod(0o644)
    proc, by_name = run_doctor(node, tmp_path, out=out, processes=[node_exporter(shared_dir)])
    assert proc.returncode == 0, proc.stdout
    assert re.match(r"ok    nvml: \S+libnvidia-ml\.so\.1 loaded, driver 580\.159\.04, 2 GPUs$", by_name["nvml"])
    assert by_name["persistence"] == "ok    persistence: on for all 2 GPUs"
    assert by_name["accounting"].startswith("warn  accounting: off on GPU 0, 1: ")
    assert by_name["output"].startswith(f"ok    output: {out}: {shared_dir} writable, readable by ")
    assert by_name["node_exporter"] == f"ok    node_exporter: node_exporter (pid 100) reads {shared_dir}"
    assert by_name["dcgm"].startswith("info  dcgm: no DCGM host engine answers on localhost:5555")
    assert by_name["kubelet"].startswith("info  kubelet: no pod-resources socket at ")
    assert by_name["state"] == f"ok    state: {tmp_path / 'state'} will be created by the first run"
    assert not (tmp_path / "state").exists()  # doctor changes nothing
    assert by_name["kernel"].startswith("ok    kernel log: ") and by_name["kernel"].endswith(" 0 XIDs in it this boot")


def test_kernel_log_readable_or_not(node, tmp_path):
    node.write([h100(0)])
    log = tmp_path / "kmsg"
    log.write_text("4,0,1000,-;NVRM: Xid (PCI:0000:18:00): 79, pid='<unknown>', name=<unknown>, off the bus\n"
                   "6,1,2000,-;eth0: link up\n")
    proc, by_name = run_doctor(node, tmp_path, "--kmsg", str(log))
    assert by_name["kernel"] == f"ok    kernel log: {log} is readable; 1 XIDs in it this boot"
    log.chmod(0)
    caps = "-dac_override,-dac_read_search"  # the tests run as root, who reads any file
    proc = subprocess.run(["setpriv", f"--bounding-set={caps}", f"--inh-caps={caps}", sys.executable, "-m",
                           "gputext", "doctor", "--kmsg", str(log), "--host-root", str(tmp_path / "host"),
                           "--state-dir", str(tmp_path / "state")], env=node.env(), capture_output=True,
                          text=True, timeout=60)
    (line,) = [line for line in proc.stdout.splitlines() if "kernel log:" in line]
    assert line.startswith(f"warn  kernel log: cannot read {log}: Permission denied, so XIDs are not counted")
    assert "CAP_SYSLOG (the systemd units keep that capability)" in line
    proc, by_name = run_doctor(node, tmp_path, "--kmsg", str(tmp_path / "none"), "--collectors", "nvml,xid")
    assert by_name["kernel"].startswith(f"FAIL  kernel log: no kernel log at {tmp_path / 'none'}")


def test_a_fifo_is_left_to_the_collector(node, tmp_path):
    """A record read from a FIFO is gone for every other reader: doctor reads none."""
    node.write([h100(0)])
    fifo = tmp_path / "kmsg"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    writer = os.open(fifo, os.O_WRONLY)
    record = b"4,0,1000,-;NVRM: Xid (PCI:0000:18:00): 79, pid='<unknown>', name=<unknown>, off the bus\n"
    try:
        os.write(writer, record)
        proc, by_name = run_doctor(node, tmp_path, "--kmsg", str(fifo))
        assert os.read(reader, 4096) == record
    finally:
        os.close(writer)
        os.close(reader)
    assert by_name["kernel"].startswith(f"ok    kernel log: {fifo} is a FIFO, filled by whatever writes it")


def test_no_nvml_fails(node, tmp_path, shared_dir):
    node.write([h100(0)])
    proc, by_name = run_doctor(node, tmp_path, out=shared_dir / "gpu.prom", nvml=False)
    assert proc.returncode == 1
    assert by_name["nvml"].startswith("FAIL  nvml: NVML library libnvidia-ml.so.1 not found: install the NVIDIA "
                                      "driver")
    assert "persistence" not in by_name


def test_missing_output_directory_fails(node, tmp_path):
    node.write([h100(0)])
    proc, by_name = run_doctor(node, tmp_path, out=tmp_path / "nowhere" / "gpu.prom")
    assert proc.returncode == 1
    assert by_name["output"] == (f"FAIL  output: {tmp_path / 'nowhere'} does not exist; fix: mkdir -p "
                                 f"{tmp_path / 'nowhere'}, or set GPUTEXT_OUT to a file in the directory "
                                 "node_exporter reads")


def test_default_out_is_the_units_file(node, tmp_path):
    """Without --out or GPUTEXT_OUT doctor checks what the units write, and says so."""
    node.write([h100(0)])
    _, by_name = run_doctor(node, tmp_path)
    assert str(doctor.UNITS_OUT.parent) in by_name["output"]
    assert "(the units' default; GPUTEXT_OUT or --out names another)" in by_name["output"]


def test_directory_unreadable_by_node_exporter_fails(node, tmp_path, shared_dir):
    node.write([h100(0)])
    shared_dir.chmod(0o700)
    proc, by_name = run_doctor(node, tmp_path, out=shared_dir / "gpu.prom", processes=[node_exporter(shared_dir)])
    assert proc.returncode == 1
    assert by_name["output"].startswith(f"FAIL  output: {by_name['output'].split()[2]} (node_exporter) cannot "
                                        f"list {shared_dir} (mode 0700, owner ")
    assert by_name["output"].endswith(f"fix: chmod o+rx {shared_dir}")


def test_file_unreadable_by_node_exporter_fails(node, tmp_path, shared_dir):
    node.write([h100(0)])
    out = shared_dir / "gpu.prom"
    out.write_text("")
    out.chmod(0o600)
    proc, by_name = run_doctor(node, tmp_path, out=out, processes=[node_exporter(shared_dir)])
    assert proc.returncode == 1
    assert f"(node_exporter) cannot read {out} (mode 0600, " in by_name["output"]


def test_node_exporter_reading_another_directory_fails(node, tmp_path, shared_dir):
    node.write([h100(0)])
    proc, by_name = run_doctor(node, tmp_path, out=shared_dir / "gpu.prom",
                               processes=[node_exporter("/var/lib/elsewhere", uid=os.getuid())])
    assert proc.returncode == 1
    assert by_name["node_exporter"] == (
        f"FAIL  node_exporter: node_exporter (pid 100) reads /var/lib/elsewhere, not {shared_dir}; fix: write "
        "there: --out /var/lib/elsewhere/gpu.prom (GPUTEXT_OUT=/var/lib/elsewhere/gpu.prom in /etc/default/gputext; "
        "a directory other than the two the units know also goes into their ReadWritePaths=)")


def test_lost_gpu_fails(node, tmp_path, shared_dir):
    node.write([h100(0), h100(1, lost=True)])
    proc, by_name = run_doctor(node, tmp_path, out=shared_dir / "gpu.prom")
    assert proc.returncode == 1
    assert by_name["gpu"].startswith("FAIL  gpu 1: not answering (")


def test_persistence_off_warns_without_failing(node, tmp_path, shared_dir):
    node.write([h100(0), h100(1, persistence_mode=0)])
    proc, by_name = run_doctor(node, tmp_path, out=shared_dir / "gpu.prom", processes=[node_exporter(shared_dir)])
    assert proc.returncode == 0, proc.stdout
    assert by_name["persistence"].startswith("warn  persistence: off on GPU 1: ")
    assert "nvidia-persistenced" in by_name["persistence"]


def test_named_collectors_must_be_ready(node, tmp_path, shared_dir):
    """Missing DCGM and kubelet are fine by default, and failures once --collectors names them."""
    node.write([h100(0)])
    free_port = _free_port()
    proc, by_name = run_doctor(node, tmp_path, "--collectors", "nvml,dcgm,kubernetes",
                               "--dcgm-host", f"127.0.0.1:{free_port}",
                               "--pod-resources-socket", str(tmp_path / "kubelet.sock"),
                               out=shared_dir / "gpu.prom", processes=[node_exporter(shared_dir)])
    assert proc.returncode == 1
    assert by_name["dcgm"].startswith(f"FAIL  dcgm: no DCGM host engine answers on 127.0.0.1:{free_port} (")
    assert by_name["kubelet"] == (f"FAIL  kubelet: no pod-resources socket at {tmp_path / 'kubelet.sock'}; fix: "
                                  "run on a Kubernetes node (kubelet 1.20 or newer), or set "
                                  "GPUTEXT_POD_RESOURCES_SOCKET")
    assert by_name["accounting"].startswith("info  accounting: ")  # the processes collector is not enabled


A100 = "NVIDIA A100-SXM4-80GB"


def test_gpm_support_per_gpu(node, tmp_path):
    """ok where every GPU has GPM; info where some or none do, naming the GPUs without it."""
    node.write([with_gpm(h100(0)), with_gpm(h100(1))])
    _, by_name = run_doctor(node, tmp_path, "--gpm-window", "250ms")
    assert by_name["gpm"] == ("ok    gpm: supported on all 2 GPUs: a one-shot run waits --gpm-window (0.25s) "
                              "for its second sample")
    node.write([h100(i, name=A100) for i in range(4)] + [with_gpm(h100(i)) for i in range(4, 6)])
    proc, by_name = run_doctor(node, tmp_path)
    assert by_name["gpm"] == (f"info  gpm: supported on GPU 4, 5; GPU 0..3 ({A100}) have none: GPM profiling "
                              "metrics need Hopper or newer")
    node.write([h100(0, name=A100), h100(1, name=A100), h100(2, name=A100), h100(3, name="Tesla V100")])
    _, by_name = run_doctor(node, tmp_path)
    assert by_name["gpm"] == (f"info  gpm: GPM profiling metrics need Hopper or newer; GPU 0..2 ({A100}) have "
                              "none; GPU 3 (Tesla V100) has none")
    # named, with no GPU to give it: collect would fail
    proc, by_name = run_doctor(node, tmp_path, "--collectors", "nvml,gpm")
    assert by_name["gpm"].startswith("FAIL  gpm: GPM profiling metrics need Hopper or newer; ")
    assert proc.returncode == 1
    _, by_name = run_doctor(node, tmp_path, "--collectors", "nvml")
    assert by_name["gpm"] == "info  gpm: not enabled (--collectors)"


def test_gpm_without_driver_or_pynvml_support(node, tmp_path):
    node.write([with_gpm(h100(0, errors={"nvmlGpmQueryDeviceSupport": 13}))],  # FUNCTION_NOT_FOUND
               system={"driver_version": "515.105.01"})
    proc, by_name = run_doctor(node, tmp_path)
    assert by_name["gpm"] == ("info  gpm: driver 515.105.01 has no GPM (nvmlGpmQueryDeviceSupport), so no "
                              "profiling metrics; they need a Hopper or newer GPU and a driver of CUDA 11.8 "
                              "(R520) or newer")
    assert not [line for line in proc.stdout.splitlines() if line.startswith("info  nvml:")]  # no warning
    node.write([with_gpm(h100(0))])
    code = ("import sys, pynvml; del pynvml.nvmlGpmMetricsGet; from gputext.cli import main; "
            "sys.argv = ['gputext'] + sys.argv[1:]; main()")
    proc = subprocess.run([sys.executable, "-c", code, "doctor", "--host-root", str(fake_host(tmp_path / "h")),
                           "--state-dir", str(tmp_path / "state")], env=node.env(), capture_output=True,
                          text=True, timeout=60)
    (line,) = [line for line in proc.stdout.splitlines() if " gpm: " in line]
    assert line.startswith("info  gpm: no profiling metrics: this nvidia-ml-py (") and line.endswith(
        ") has no GPM functions: upgrade it (pip install -U nvidia-ml-py)")


def test_reachable_dcgm_and_kubelet_are_ok(node, tmp_path, shared_dir):
    node.write([h100(0)])
    bindings = tmp_path / "bindings"
    bindings.mkdir()
    (bindings / "pydcgm.py").write_text("")
    with socket.socket() as engine, serve(tmp_path / "kubelet.sock", []):  # a real gRPC kubelet, no pods
        engine.bind(("127.0.0.1", 0))
        engine.listen()
        port = engine.getsockname()[1]
        proc, by_name = run_doctor(node, tmp_path, "--collectors", "nvml,dcgm,kubernetes",
                                   "--dcgm-host", f"127.0.0.1:{port}", "--dcgm-bindings", str(bindings),
                                   "--pod-resources-socket", str(tmp_path / "kubelet.sock"),
                                   out=shared_dir / "gpu.prom", processes=[node_exporter(shared_dir)])
    assert proc.returncode == 0, proc.stdout
    assert by_name["dcgm"] == f"ok    dcgm: nv-hostengine answers on 127.0.0.1:{port}; bindings in {bindings}"
    assert by_name["kubelet"] == f"ok    kubelet: {tmp_path / 'kubelet.sock'} accepts connections"
    assert by_name["allocations"] == ("ok    allocations: the kubelet reports 0 device-plugin allocations and 0 "
                                      "DRA allocations (gpu.nvidia.com) of this node's GPUs (one per container "
                                      "and GPU or MIG device)")
    # one NVML session for the GPU checks and the kubelet's allocations: where persistence mode is off,
    # each nvmlInit initialises every GPU again (1-3 s a GPU)
    system = node.call_counts()["system"]
    assert sum(count for call, count in system.items() if call.startswith("nvmlInit")) == 1, system


def test_a_kubelet_that_accepts_but_does_not_answer_fails(node, tmp_path, shared_dir):
    node.write([h100(0)])
    with socket.socket(socket.AF_UNIX) as kubelet:
        kubelet.bind(str(tmp_path / "kubelet.sock"))
        kubelet.listen()
        proc, by_name = run_doctor(node, tmp_path, "--collectors", "nvml,kubernetes", "--kubelet-timeout", "0.5s",
                                   "--pod-resources-socket", str(tmp_path / "kubelet.sock"),
                                   out=shared_dir / "gpu.prom")
    assert proc.returncode == 1
    assert by_name["allocations"] == (f"FAIL  allocations: the kubelet at {tmp_path / 'kubelet.sock'} did not "
                                      "answer within 0.5s (--kubelet-timeout)")


def test_dcgm_without_bindings(node, tmp_path, shared_dir):
    node.write([h100(0)])
    with socket.socket() as engine:
        engine.bind(("127.0.0.1", 0))
        engine.listen()
        port = engine.getsockname()[1]
        _, by_name = run_doctor(node, tmp_path, "--dcgm-host", f"127.0.0.1:{port}",
                                "--dcgm-bindings", str(tmp_path / "none"), out=shared_dir / "gpu.prom")
    assert by_name["dcgm"].startswith(f"info  dcgm: nv-hostengine answers on 127.0.0.1:{port}, but no pydcgm.py "
                                      f"in {tmp_path / 'none'}; ")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- the pieces ----------------------------------------------------------------------------------------

def _stat(mode: int, uid: int = 0, gid: int = 0) -> os.stat_result:
    return os.stat_result((stat.S_IFDIR | mode, 0, 0, 1, uid, gid, 0, 0, 0, 0))


def test_reader_mode_bits():
    prometheus = Reader("prometheus", 102, frozenset({105}))
    assert prometheus.may(_stat(0o755), 5)
    assert not prometheus.may(_stat(0o750), 5)
    assert prometheus.may(_stat(0o750, gid=105), 5)
    assert prometheus.may(_stat(0o700, uid=102), 5)
    assert not prometheus.may(_stat(0o070, uid=102, gid=105), 4)  # the owner bits decide for the owner
    assert prometheus.may(_stat(0o711), 1) and not prometheus.may(_stat(0o711), 4)
    assert Reader("root", 0, frozenset()).may(_stat(0o000), 5)


@pytest.mark.parametrize("argv, reads, known", [
    (["/usr/bin/prometheus-node-exporter"], [doctor.DEBIAN_TEXTFILE_DIR], True),
    (["node_exporter", "--collector.textfile.directory", "/a"], ["/a"], True),
    (["node_exporter", "--collector.textfile.directory=/a", "--collector.textfile.directory=/b"], ["/a", "/b"],
     True),
    (["node_exporter"], [], False),
    (["node_exporter", "--collector.disable-defaults", "--collector.cpu", "--collector.textfile.directory=/a"],
     [], True),
    (["node_exporter", "--no-collector.textfile", "--collector.textfile.directory=/a"], [], True),
])
def test_what_node_exporter_reads(tmp_path, argv, reads, known):
    host = fake_host(tmp_path, node_exporter(None, 0, *argv))
    (found,) = doctor.node_exporters(doctor.Options(host_root=host))
    assert (found.directories, found.known) == (reads, known)


def test_node_exporter_without_textfile_flag_warns(tmp_path):
    (exporter,) = doctor.node_exporters(doctor.Options(host_root=fake_host(tmp_path, node_exporter(None))))
    check = doctor.check_node_exporter([exporter], Path("/x"))
    assert check.status == "warn"
    assert "add --collector.textfile.directory=/x" in check.message


@pytest.mark.parametrize("text, expected", [
    ("localhost:5555", ("localhost", 5555)), ("localhost", ("localhost", 5555)),
    ("10.0.0.1:5556", ("10.0.0.1", 5556)),
    ("[::1]:5555", ("::1", 5555)), ("::1", ("::1", 5555)), ("host:abc", ("host", -1)), ("host:²", ("host", -1)),
])
def test_host_port(text, expected):
    assert host_port(text, 5555) == expected


def test_report_and_exit_status():
    checks = [doctor.Check(OK, "nvml", "fine"), doctor.Check(FAIL, "output", "/x is missing; fix: mkdir /x")]
    assert doctor.report(checks) == "ok    nvml: fine\nFAIL  output: /x is missing; fix: mkdir /x\n"
    assert not doctor.passed(checks) and doctor.passed(checks[:1])


def test_node_exporter_in_a_container_warns():
    """Its paths are its container's: a directory that differs from ours is not known to be wrong."""
    exporter = doctor.Exporter(7, "node_exporter", ["/host/textfile"], True, None, contained=True)
    check = doctor.check_node_exporter([exporter], Path("/var/lib/node_exporter/textfile_collector"))
    assert check.status == "warn"
    assert "runs in a container and reads /host/textfile there" in check.message


def test_doctor_checks_the_options_and_variables_as_collect_does(node, tmp_path, monkeypatch):
    """GPUTEXT_INTERVAL=abc in /etc/default/gputext makes collect refuse to run: doctor says so too."""
    node.write([h100(0)])
    monkeypatch.setenv("GPUTEXT_INTERVAL", "abc")
    monkeypatch.setenv("GPUTEXT_PREFIX", "9x")
    proc, by_name = run_doctor(node, tmp_path)
    assert proc.returncode == 1
    options = [line for line in proc.stdout.splitlines() if line.startswith("FAIL  options: ")]
    assert options == [
        "FAIL  options: invalid GPUTEXT_PREFIX='9x' (from the environment): use letters, digits and underscores, "
        "not starting with a digit or with __ (reserved by Prometheus); fix: correct it in /etc/default/gputext "
        "or on the command line (collect refuses to run with it)",
        "FAIL  options: invalid GPUTEXT_INTERVAL='abc' (from the environment): use a duration such as 5s, 250ms, "
        "5m or 1h (a bare number is seconds); fix: correct it in /etc/default/gputext or on the command line "
        "(collect refuses to run with it)"]
    assert by_name["nvml"].startswith("ok    nvml: ")  # the other checks still run


@pytest.mark.parametrize("args, verdict", [
    ('ARGS="--collector.textfile.directory=/srv/textfile"', "FAIL"),
    ("ARGS='--web.listen-address=:9100 --collector.textfile.directory /srv/textfile'", "FAIL"),
    ("ARGS=\"\"", "default"),
])
def test_debian_defaults_name_the_directory_when_node_exporter_is_not_running(node, tmp_path, args, verdict):
    """Debian's prometheus-node-exporter reads /var/lib/prometheus/node-exporter unless ARGS in
    /etc/default/prometheus-node-exporter says otherwise; doctor gives the --out that lands there."""
    node.write([h100(0)])
    host = fake_host(tmp_path / "host")
    (host / "etc" / "default").mkdir(parents=True)
    (host / "etc" / "default" / "prometheus-node-exporter").write_text(f"# Set the command-line arguments\n{args}\n")
    out = tmp_path / "tf" / "gpu.prom"
    out.parent.mkdir()
    proc = node.run("doctor", "--host-root", str(host), "--state-dir", str(tmp_path / "state"), "--out", str(out))
    (line,) = [line for line in proc.stdout.splitlines() if " node_exporter: " in line]
    where = "/srv/textfile" if verdict == "FAIL" else doctor.DEBIAN_TEXTFILE_DIR
    assert line == (f"FAIL  node_exporter: prometheus-node-exporter is not running now; by "
                    f"/etc/default/prometheus-node-exporter it reads {where}, not {out.parent}; fix: write there: "
                    f"--out {where}/gpu.prom (GPUTEXT_OUT={where}/gpu.prom in /etc/default/gputext; a directory "
                    "other than the two the units know also goes into their ReadWritePaths=)")

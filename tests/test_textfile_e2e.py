"""What gputext writes, read by the real node_exporter and promtool; atomicity and write failures."""

import ctypes
import os
import subprocess
import sys
import threading
import time

import pytest

from conftest import parse_exposition, value
from fakegpu import h100
from realtools import NodeExporter, promtool_check

UUID0 = "GPU-00000000-1111-2222-3333-444444444444"


def two_gpus(node):
    node.write([h100(0, uuid=UUID0, temperature=45), h100(1, temperature=47)])


def test_node_exporter_publishes_the_file(node, tmp_path):
    textfile_dir = tmp_path / "textfile"
    textfile_dir.mkdir()
    two_gpus(node)
    old = os.umask(0o077)  # as under a strict service umask: the file must still be readable by others
    try:
        proc = node.run("collect", "--out", str(textfile_dir / "gpu.prom"))
    finally:
        os.umask(old)
    assert proc.returncode == 0, proc.stderr
    with NodeExporter(textfile_dir) as exporter:
        scraped = parse_exposition(exporter.scrape())
    assert value(scraped, "node_textfile_scrape_error") == 0
    assert value(scraped, "node_textfile_mtime_seconds", file=str(textfile_dir / "gpu.prom")) is not None \
        or value(scraped, "node_textfile_mtime_seconds", file="gpu.prom") is not None
    assert value(scraped, "gpu_temperature_celsius", gpu="0", uuid=UUID0) == 45
    assert value(scraped, "gpu_temperature_celsius", gpu="1") == 47
    assert value(scraped, "gputext_collector_success", collector="nvml") == 1


def test_promtool_finds_nothing(node):
    two_gpus(node)
    proc = node.run("collect", "--out", "-")
    assert proc.returncode == 0, proc.stderr
    lint = promtool_check(proc.stdout.encode())
    assert lint.returncode == 0 and lint.stdout == b"" and lint.stderr == b"", lint


def test_promtool_finds_nothing_without_nvml(node):
    proc = node.run("collect", "--out", "-", nvml=False)
    lint = promtool_check(proc.stdout.encode())
    assert lint.returncode == 0 and lint.stdout == b"" and lint.stderr == b"", lint


def test_reader_never_sees_a_partial_file(node, tmp_path):
    """A reader loops over the file while collects replace it: every read is a complete exposition."""
    two_gpus(node)
    target = tmp_path / "gpu.prom"
    assert node.run("collect", "--out", str(target)).returncode == 0
    expected_end = "gputext_build_info"
    stop = threading.Event()
    reads, bad = [], []

    def reader():
        while not stop.is_set():
            text = target.read_text()
            reads.append(1)
            if expected_end not in text or not text.endswith("\n"):
                bad.append(text)

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        procs = [subprocess.Popen([sys.executable, "-m", "gputext", "collect", "--out", str(target),
                                   "--state-dir", str(node.state_dir)], env=node.env(),
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for _ in range(12)]
        codes = [p.wait(timeout=120) for p in procs]
    finally:
        stop.set()
        thread.join()
    assert codes == [0] * 12
    assert len(reads) > 50
    assert bad == []
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_missing_directory_exit_2_and_nothing_created(node, tmp_path):
    two_gpus(node)
    proc = node.run("collect", "--out", str(tmp_path / "nope" / "gpu.prom"))
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "does not exist" in lines[0]
    assert not (tmp_path / "nope").exists()


def drop_dac_capabilities():
    """Run as root but without CAP_DAC_OVERRIDE/CAP_DAC_READ_SEARCH, so file permissions bind."""
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
        if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


PR_CAPBSET_DROP = 24


def test_unwritable_directory_exit_2_and_old_file_intact(node, tmp_path):
    directory = tmp_path / "textfile"
    directory.mkdir()
    (directory / "gpu.prom").write_text("previous 1\n")
    directory.chmod(0o555)
    two_gpus(node)
    preexec = drop_dac_capabilities if os.geteuid() == 0 else None
    try:
        proc = node.run("collect", "--out", str(directory / "gpu.prom"), "--collectors", "nvml", preexec_fn=preexec)
    finally:
        directory.chmod(0o755)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot write" in lines[0] and "Permission denied" in lines[0], proc.stderr
    assert (directory / "gpu.prom").read_text() == "previous 1\n"
    assert sorted(p.name for p in directory.iterdir()) == ["gpu.prom"]


def test_sigterm_during_runs_leaves_old_or_new_file_and_no_temp(node, tmp_path):
    two_gpus(node)
    target = tmp_path / "gpu.prom"
    assert node.run("collect", "--out", str(target)).returncode == 0
    for delay in (0.05, 0.1, 0.15, 0.2, 0.3, 0.4):
        p = subprocess.Popen([sys.executable, "-m", "gputext", "collect", "--out", str(target),
                              "--state-dir", str(node.state_dir)], env=node.env(),
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(delay)
        p.terminate()
        p.wait(timeout=30)
        text = target.read_text()
        assert text.endswith("\n") and "gputext_build_info" in text
        assert [q.name for q in tmp_path.iterdir() if q.name.endswith(".tmp")] == []

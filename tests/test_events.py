"""NVML events in the repeating mode: an XID starts a cycle at once, and is counted once with its
kernel-log record (the fake delivers events written to a FIFO, `system event_source`)."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import parse_exposition, value
from fakegpu import h100, read_call_blocks
from test_xid import GPU0, GPU1, Log, record, xid_515, xid_570

XID, SINGLE_BIT_ECC = 0x8, 0x1
INTERVAL = "60s"  # far longer than any wait below: what is written sooner, an event brought


class Repeating:
    """`gputext collect --interval 60s` on a fake node whose NVML sends the events written to a FIFO."""

    def __init__(self, node, log, tmp_path, devices, *extra):
        self.node, self.log = node, log
        self.fifo = tmp_path / "events"
        os.mkfifo(self.fifo)
        self.events = os.open(self.fifo, os.O_RDWR | os.O_NONBLOCK)  # writes never block, nothing is read
        node.write(devices, system={"event_source": str(self.fifo)})
        self.out = tmp_path / "gpu.prom"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gputext", "collect", "--out", str(self.out), "--state-dir",
             str(node.state_dir), "--interval", INTERVAL, *(extra or log.args())],
            env=node.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.inode = None
        self.wait_for_cycle()

    def send(self, gpu: int, kind: int, data: int = 0, gi=None, ci=None) -> None:
        line = f"{gpu} {kind} {data}" + (f" {gi} {ci}" if gi is not None else "")
        os.write(self.events, (line + "\n").encode())

    def wait_for_cycle(self, within: float = 10.0):
        """The series of the next file written; fails if none comes within `within` seconds."""
        deadline = time.monotonic() + within
        while True:
            try:
                inode = os.stat(self.out).st_ino  # each write replaces the file
            except FileNotFoundError:
                inode = None
            if inode is not None and inode != self.inode:
                self.inode = inode
                return parse_exposition(self.out.read_text())
            assert self.proc.poll() is None, self.proc.communicate()
            assert time.monotonic() < deadline, "no cycle was written"
            time.sleep(0.02)

    def stop(self) -> str:
        self.proc.send_signal(signal.SIGTERM)
        _, stderr = self.proc.communicate(timeout=30)
        os.close(self.events)
        assert self.proc.returncode == 0, stderr
        return stderr


class LiveLog(Log):
    """A kernel log whose records are timed now, as the driver's are when it also sends the event (the
    host booted an hour ago)."""

    def __init__(self, root):
        super().__init__(root)
        self.boot = int(time.time()) - 3600
        (self.root / "proc" / "stat").write_text(f"cpu  1 2 3 4\nbtime {self.boot}\nprocesses 10\n")

    def add(self, *messages: str) -> None:
        with open(self.path, "a") as f:
            for message in messages:
                f.write(record(self.seq, message, usec=int((time.time() - self.boot) * 1e6)))
                self.seq += 1


@pytest.fixture
def log(tmp_path):
    return LiveLog(tmp_path)


def count(series, gpu, xid, **labels):
    return value(series, "gpu_xid_errors_total", gpu=gpu, xid=xid, **labels)


def xid_section(node):
    return json.loads((node.state_dir / "state.json").read_text())["sections"]["xid"]


def test_an_xid_event_starts_a_cycle_and_counts_once_with_its_record(node, log, tmp_path):
    run = Repeating(node, log, tmp_path, [h100(0), h100(1)])
    try:
        started = time.monotonic()
        log.add(xid_515(GPU1, 79))  # the driver logs the XID, and sends the event
        run.send(1, XID, 79)
        series = run.wait_for_cycle()
        assert time.monotonic() - started < 5  # not at the next 60 s tick
        assert count(series, "1", "79") == 1
        assert value(series, "gpu_xid_last_time_seconds", gpu="1", xid="79") is not None
        run.send(0, SINGLE_BIT_ECC)  # an ECC event starts a cycle too: the XID is still counted once
        assert count(run.wait_for_cycle(), "1", "79") == 1
    finally:
        stderr = run.stop()
    assert stderr == ""
    assert xid_section(node)["unconfirmed"] == [] and xid_section(node)["unpaired"] == []
    assert read_call_blocks(node.calls)[-1]["system"]["event_sets_live"] == 0  # freed before shutdown


def test_an_event_before_its_record_counts_once(node, log, tmp_path):
    """The event comes first: counted at once; the record that follows is the same XID. So is it for a
    one-shot run that reads the record after the repeating process ended."""
    run = Repeating(node, log, tmp_path, [h100(0), h100(1)])
    try:
        run.send(0, XID, 13, 1, 0)  # MIG: GPU instance 1, compute instance 0
        series = run.wait_for_cycle()
        assert count(series, "0", "13", gpu_instance="1", compute_instance="0") == 1
        assert len(xid_section(node)["unconfirmed"]) == 1
        log.add(xid_570(GPU0, 13, gi=1, ci=0))
        run.send(1, SINGLE_BIT_ECC)
        assert count(run.wait_for_cycle(), "0", "13", gpu_instance="1") == 1
        assert xid_section(node)["unconfirmed"] == []
        run.send(0, XID, 13, 1, 0)  # the same code again; its record is read after the process ended
        assert count(run.wait_for_cycle(), "0", "13", gpu_instance="1") == 2
    finally:
        assert run.stop() == ""
    log.add(xid_570(GPU0, 13, gi=1, ci=0))
    proc, series = node.collect(*log.args())
    assert proc.stderr == "" and count(series, "0", "13", gpu_instance="1", compute_instance="0") == 2
    assert xid_section(node)["unconfirmed"] == []


def test_a_record_before_its_event_counts_once(node, log, tmp_path):
    run = Repeating(node, log, tmp_path, [h100(0), h100(1)])
    try:
        log.add(xid_515(GPU0, 48, "Double Bit ECC Error"))
        run.send(0, SINGLE_BIT_ECC)  # a cycle reads the record before its XID event arrives
        assert count(run.wait_for_cycle(), "0", "48") == 1
        run.send(0, XID, 48)
        assert count(run.wait_for_cycle(), "0", "48") == 1
        log.add(xid_515(GPU0, 48, "Double Bit ECC Error"))  # a second one: both sources again
        run.send(0, XID, 48)
        assert count(run.wait_for_cycle(), "0", "48") == 2
    finally:
        assert run.stop() == ""


def test_without_a_log_events_count_alone(node, log, tmp_path):
    run = Repeating(node, log, tmp_path, [h100(0), h100(1)], "--collectors", "xid", "--kmsg",
                    str(tmp_path / "none"), "--host-root", str(log.root))
    try:
        run.send(1, XID, 119)
        run.send(1, XID, 119)
        series = run.wait_for_cycle()
        if count(series, "1", "119") != 2:  # the second event came after the cycle had begun
            run.send(0, SINGLE_BIT_ECC)
            series = run.wait_for_cycle()
        assert count(series, "1", "119") == 2
        assert value(series, "gputext_collector_success", collector="xid") == 1
    finally:
        stderr = run.stop()
    assert stderr == (f"gputext: collector xid: no kernel log at {tmp_path / 'none'}; XIDs are counted from "
                      "NVML events alone, which miss those from while gputext was not running\n")


def test_events_of_gpus_that_have_none_are_not_waited_for(node, log, tmp_path):
    """GPUs without XID events (event_types lacks 0x8) are not registered for them; a GPU that has no
    events at all is left out; the cycles then keep to the interval."""
    run = Repeating(node, log, tmp_path, [h100(0, event_types=SINGLE_BIT_ECC), h100(1, event_types=None)])
    try:
        run.send(0, XID, 79)  # not registered: NVML would not record it
        run.send(1, XID, 79)
        time.sleep(1.5)
        assert os.stat(run.out).st_ino == run.inode  # no cycle
        run.send(0, SINGLE_BIT_ECC)
        assert count(run.wait_for_cycle(), "0", "79") is None
    finally:
        assert run.stop() == ""
    calls = read_call_blocks(node.calls)[-1]
    assert calls[0]["nvmlDeviceRegisterEvents"] == 1 and "nvmlDeviceRegisterEvents" not in calls[1]


def test_sigterm_while_waiting_on_events_ends_at_once(node, log, tmp_path):
    run = Repeating(node, log, tmp_path, [h100(0)])
    time.sleep(0.3)  # waiting in NVML now
    started = time.monotonic()
    assert run.stop() == ""
    assert time.monotonic() - started < 2  # within one wait slice (0.5 s), not at the next tick


def test_a_failing_event_set_falls_back_to_the_interval(node, log, tmp_path):
    """Every wait fails (UNKNOWN): said once, and the cycles keep to the interval."""
    node.write([h100(0)], system={"errors": {"nvmlEventSetWait_v2": 999}})
    out = tmp_path / "gpu.prom"
    proc = subprocess.run([sys.executable, "-m", "gputext", "collect", "--out", str(out), "--state-dir",
                           str(node.state_dir), "--interval", "200ms", "--count", "5", *log.args()],
                          env=node.env(), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0
    assert proc.stderr == ("gputext: NVML events stopped (Unknown Error): waiting for the next cycle "
                           "instead\n")
    assert value(parse_exposition(out.read_text()), "gputext_collector_success", collector="xid") == 1
    calls = read_call_blocks(node.calls)[-1]["system"]
    assert calls["nvmlEventSetWait_v2"] == 4 and calls["event_sets_live"] == 0

"""The dcgm collector against fake DCGM bindings (DCGM itself cannot be installed here)."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import parse_exposition, value
from test_processes import E1, gpu_with, spawn  # noqa: F401  (spawn is a fixture)

FAKE_DCGM = Path(__file__).parent / "fake_dcgm"


@pytest.fixture
def dcgm(tmp_path):
    """A bindings directory and a function that sets what the fake host engine answers."""
    bindings = tmp_path / "dcgm-bindings"
    shutil.copytree(FAKE_DCGM, bindings)
    config = tmp_path / "dcgm.json"
    log = tmp_path / "dcgm-calls.jsonl"

    def answer(**behaviour):
        config.write_text(json.dumps({"log": str(log), **behaviour}))

    answer()
    answer.bindings = bindings
    answer.config = config
    answer.calls = lambda: [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    return answer


def run(node, dcgm, *args):
    env = node.env()
    env["FAKE_DCGM_CONFIG"] = str(dcgm.config)
    proc = subprocess.run([sys.executable, "-m", "gputext", "collect", "--out", "-", "--state-dir",
                           str(node.state_dir), "--dcgm-bindings", str(dcgm.bindings), *args],
                          env=env, capture_output=True, text=True, timeout=60)
    return proc, parse_exposition(proc.stdout)


def test_dcgm_energy_per_process_next_to_nvml(node, dcgm, spawn):
    a, b, c = spawn(b"job-a"), spawn(b"job-b"), spawn(b"job-c")
    node.write([gpu_with([a, b, c], E1)])
    dcgm(pids={str(a): [[0, 123456]], str(b): [[0, "blank"]]})  # c: the engine has no data (yet)
    proc, s = run(node, dcgm)
    assert proc.returncode == 0, proc.stderr
    assert "dcgm" not in proc.stderr
    assert value(s, "gpu_process_energy_joules_total", pid=str(a), source="dcgm", process_name="job-a") == 123.456
    assert value(s, "gpu_process_energy_joules_total", pid=str(b), source="dcgm") is None
    assert value(s, "gpu_process_energy_joules_total", pid=str(c), source="dcgm") is None
    assert value(s, "gpu_process_energy_joules_total", pid=str(a), source="nvml") is not None
    assert value(s, "gputext_collector_success", collector="dcgm") == 1
    calls = dcgm.calls()
    connect = [c for c in calls if c["call"] == "connect"]
    assert connect == [{"call": "connect", "ipAddress": "localhost:5555", "persistAfterDisconnect": True}]
    watch = [c for c in calls if c["call"] == "watch"]
    assert len(watch) == 1 and watch[0]["group"] == 0x7FFFFFFF and watch[0]["maxKeepAge"] >= 3600
    assert sorted(c["pid"] for c in calls if c["call"] == "pidinfo") == sorted([a, b, c])
    assert calls[-1] == {"call": "shutdown"}


def test_dcgm_process_on_two_gpus_gets_each_gpus_energy(node, dcgm, spawn):
    a = spawn()
    node.write([gpu_with([a], E1), gpu_with([a], E1, index=1)])
    dcgm(pids={str(a): [[0, 1000], [1, 2000]]})
    proc, s = run(node, dcgm, "--collectors", "processes,dcgm")
    assert value(s, "gpu_process_energy_joules_total", gpu="0", pid=str(a), source="dcgm") == 1
    assert value(s, "gpu_process_energy_joules_total", gpu="1", pid=str(a), source="dcgm") == 2
    assert sum(1 for c in dcgm.calls() if c["call"] == "pidinfo") == 1  # one question per PID


def test_dcgm_alone_finds_the_running_processes_itself(node, dcgm, spawn):
    a = spawn(b"solo")
    node.write([gpu_with([a], E1)])
    dcgm(pids={str(a): [[0, 5000]]})
    proc, s = run(node, dcgm, "--collectors", "dcgm")
    assert proc.returncode == 0, proc.stderr
    assert value(s, "gpu_process_energy_joules_total", pid=str(a), process_name="solo", source="dcgm") == 5


@pytest.mark.parametrize("missing", ["bindings", "engine"])
def test_dcgm_absent_is_not_applicable_unless_asked_for(node, dcgm, spawn, missing):
    a = spawn()
    node.write([gpu_with([a], E1)])
    if missing == "bindings":
        shutil.rmtree(dcgm.bindings)
    else:
        dcgm(refuse=True)
    proc, s = run(node, dcgm)
    assert proc.returncode == 0
    assert "dcgm" not in proc.stderr.lower()
    assert value(s, "gputext_collector_success", collector="dcgm") is None
    assert value(s, "gpu_process_energy_joules_total", pid=str(a), source="nvml") is not None

    proc, s = run(node, dcgm, "--collectors", "processes,dcgm")
    assert proc.returncode == 0
    lines = [line for line in proc.stderr.splitlines() if "dcgm" in line.lower()]
    assert len(lines) == 1, proc.stderr
    assert ("bindings are not in" if missing == "bindings" else "no DCGM host engine answers") in lines[0]
    assert value(s, "gputext_collector_success", collector="dcgm") == 0
    assert value(s, "gputext_collector_success", collector="processes") == 1
    assert value(s, "gpu_process_energy_joules_total", pid=str(a), source="nvml") is not None

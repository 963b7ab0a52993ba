"""The repeating mode and overlapping runs: real processes against one file."""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
import fcntl

from conftest import parse_exposition, value
from fakegpu import Field, h100

FAKE_DCGM = Path(__file__).parent / "fake_dcgm"


def start(node, *args, **popen):
    return subprocess.Popen([sys.executable, "-m", "gputext", "collect", "--state-dir", str(node.state_dir), *args],
                            env=node.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)


def wait_for(path: Path, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.02)


def test_count_cycles_on_one_nvml_session(node, tmp_path):
    node.write([h100(0), h100(1)])
    out = tmp_path / "gpu.prom"
    proc = node.run("collect", "--out", str(out), "--collectors", "nvml", "--interval", "50ms", "--count", "4")
    assert proc.returncode == 0, proc.stderr
    calls = node.call_counts()
    assert calls["system"]["nvmlInitWithFlags"] == 1  # NVML started once for all four files
    assert calls[0]["nvmlDeviceGetFieldValues"] == 4 and calls[1]["nvmlDeviceGetFieldValues"] == 4
    assert calls[0].get("nvmlDeviceGetUUID", 0) <= 1  # the inventory is kept between cycles
    assert value(parse_exposition(out.read_text()), "gpu_up", gpu="1") == 1


def test_counters_advance_between_cycles(node, tmp_path):
    gpu = h100(0)
    gpu["fields"][83] = Field(1000, step=500)  # mJ: +0.5 J every read, i.e. every cycle
    node.write([gpu])
    out = tmp_path / "gpu.prom"
    seen = []
    runner = start(node, "--out", str(out), "--collectors", "nvml", "--interval", "100ms")
    try:
        wait_for(out)
        deadline = time.monotonic() + 30
        while len(set(seen)) < 3 and time.monotonic() < deadline:
            energy = value(parse_exposition(out.read_text()), "gpu_energy_joules_total", gpu="0")
            if not seen or energy != seen[-1]:
                seen.append(energy)
            time.sleep(0.02)
    finally:
        runner.send_signal(signal.SIGTERM)
        runner.wait(timeout=30)
    assert len(set(seen)) >= 3
    assert seen == sorted(seen) and all((b - a) % 0.5 == 0 for a, b in zip(seen, seen[1:]))


def test_sigterm_ends_the_loop_between_writes(node, tmp_path):
    node.write([h100(0)])
    out = tmp_path / "gpu.prom"
    runner = start(node, "--out", str(out), "--interval", "50ms")
    wait_for(out)
    time.sleep(0.3)
    runner.send_signal(signal.SIGTERM)
    _, stderr = runner.communicate(timeout=30)
    assert runner.returncode == 0, stderr
    text = out.read_text()
    assert text.endswith("\n") and "gputext_build_info" in text
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_duration_ends_the_loop(node, tmp_path):
    node.write([h100(0)])
    out = tmp_path / "gpu.prom"
    proc = node.run("collect", "--out", str(out), "--collectors", "nvml", "--interval", "100ms", "--duration", "500ms")
    assert proc.returncode == 0, proc.stderr
    assert 2 <= node.call_counts()[0]["nvmlDeviceGetFieldValues"] <= 7


def test_a_failing_collector_does_not_stop_the_loop(node, tmp_path):
    bindings = tmp_path / "broken-dcgm"
    shutil.copytree(FAKE_DCGM, bindings)
    (bindings / "pydcgm.py").write_text("raise RuntimeError('broken DCGM install')\n")
    node.write([h100(0)])
    out = tmp_path / "gpu.prom"
    proc = node.run("collect", "--out", str(out), "--collectors", "nvml,dcgm", "--dcgm-bindings", str(bindings),
                    "--interval", "50ms", "--count", "3")
    assert proc.returncode == 0
    assert proc.stderr.count("collector dcgm failed") == 3  # every cycle tried again
    s = parse_exposition(out.read_text())
    assert value(s, "gputext_collector_success", collector="dcgm") == 0
    assert value(s, "gputext_collector_success", collector="nvml") == 1


def test_held_lock_makes_a_second_run_leave_the_file_alone(node, tmp_path):
    node.write([h100(0)])
    out = tmp_path / "gpu.prom"
    out.write_text("holder's 1\n")
    with open(tmp_path / ".gpu.prom.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # what any flock(1) or filelock holder does
        proc = node.run("collect", "--out", str(out), "--lock-timeout", "300ms")
        assert proc.returncode == 2
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and "another gputext run is writing" in lines[0], proc.stderr
        assert out.read_text() == "holder's 1\n"
        stdout_run = node.run("collect", "--out", "-", "--collectors", "nvml")  # takes no lock
        assert stdout_run.returncode == 0 and "gpu_up" in stdout_run.stdout


def test_a_repeating_run_and_one_shots_share_one_file(node, tmp_path):
    node.write([h100(0), h100(1)])
    out = tmp_path / "gpu.prom"
    # the runner waits for the one-shots' locks (its default, 80% of 20 ms, would leave the file to them)
    runner = start(node, "--out", str(out), "--interval", "20ms", "--count", "40", "--lock-timeout", "30s")
    wait_for(out)
    shots = [start(node, "--out", str(out)) for _ in range(4)]
    results = [(p.wait(timeout=60), p.stderr.read()) for p in shots]
    assert runner.wait(timeout=60) == 0, runner.stderr.read()
    assert [code for code, _ in results] == [0] * 4, results
    s = parse_exposition(out.read_text())
    assert value(s, "gpu_up", gpu="0") == 1 and value(s, "gpu_up", gpu="1") == 1
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert leftovers == []


def test_count_without_interval_is_a_usage_error(node):
    node.write([h100(0)])
    proc = node.run("collect", "--out", "-", "--count", "3")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "gputext: --count '3' goes with --interval (GPUTEXT_INTERVAL): a single collection has no count or "
        "duration (see 'gputext collect --help')"]


def test_repeating_without_nvml_keeps_writing_and_exits_1(node, tmp_path):
    out = tmp_path / "gpu.prom"
    proc = node.run("collect", "--out", str(out), "--interval", "50ms", "--count", "2", nvml=False)
    assert proc.returncode == 1
    assert value(parse_exposition(out.read_text()), "gputext_collector_success", collector="nvml") == 0
    assert os.path.getsize(out) > 0


def test_a_lasting_condition_is_said_once_not_every_cycle(node):
    node.write([h100(0)])  # accounting mode off
    proc = node.run("collect", "--out", "-", "--interval", "50ms", "--count", "3")
    assert proc.returncode == 0
    assert proc.stderr.count("accounting mode is off") == 1


def test_no_state_is_said_once_not_every_cycle(node, tmp_path):
    blocked = tmp_path / "file-not-dir"
    blocked.write_text("x")
    node.write([h100(0)])
    proc = node.run("collect", "--out", "-", "--collectors", "processes", "--state-dir", str(blocked / "state"),
                    "--interval", "50ms", "--count", "3", state=False)
    assert proc.returncode == 0
    assert proc.stderr.count("no state this run") == 1


def test_a_cycle_leaves_no_garbage_that_holds_its_samples(node, tmp_path):
    """Each cycle's samples are freed when the cycle ends, not at the next full garbage collection: a
    collector that is not applicable every cycle (gpm on GPUs without GPM) once left its exception, and
    through its traceback the whole cycle, in a reference cycle, and the resident set grew between full
    collections. The run here has the garbage collector off, so any cycle it makes stays to be counted."""
    node.write([h100(0), h100(1)])
    code = f"""
import collections, gc, sys
from gputext.cli import execute
gc.collect()
gc.disable()
code = execute(["collect", "--out", {str(tmp_path / "gpu.prom")!r}, "--state-dir", {str(node.state_dir)!r},
                "--interval", "1ms", "--count", "20"])
gc.set_debug(gc.DEBUG_SAVEALL)
gc.collect()
print(dict(collections.Counter(type(o).__name__ for o in gc.garbage)))
sys.exit(code)
"""
    proc = subprocess.run([sys.executable, "-c", code], env=node.env(), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    written = (tmp_path / "gpu.prom").read_text()
    assert 'gputext_collector_success{collector="nvml"} 1' in written
    assert 'collector="gpm"' not in written  # not applicable (no GPM on these GPUs), every cycle
    garbage = eval(proc.stdout)
    assert {name: garbage.get(name, 0) for name in ("Samples", "Result", "frame", "traceback")} == {
        "Samples": 0, "Result": 0, "frame": 0, "traceback": 0}

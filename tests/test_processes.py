"""Per-process use and energy end to end: real child processes on fake GPUs, state across runs."""

import json
import os
import subprocess
import sys
import time

import pytest

from conftest import parse_exposition, value
from fakegpu import Field, h100
from realtools import NodeExporter, promtool_check

E1, E2, E3 = 1_000_000, 1_500_000, 2_100_000  # the GPU's energy counter at runs 1-3, mJ


@pytest.fixture
def spawn():
    """Start real processes (so psutil names them); all are killed at the end."""
    children = []

    def start(comm: bytes = b"") -> int:
        code = ("import sys, time\n"
                "name = bytes.fromhex(sys.argv[1])\n"
                "if name: open('/proc/self/comm', 'wb').write(name)\n"
                "print('ready', flush=True); time.sleep(120)")
        child = subprocess.Popen([sys.executable, "-c", code, comm.hex()], stdout=subprocess.PIPE)
        assert child.stdout.readline() == b"ready\n"
        children.append(child)
        return child.pid

    yield start
    for child in children:
        child.kill()
        child.wait()


def gpu_with(pids, energy_mj, samples=(), accounting=None, index=0, **overrides):
    gpu = h100(index, processes=[{"pid": pid, "used_memory": (i + 1) << 30} for i, pid in enumerate(pids)],
               process_samples=[{"pid": pid, "timestamp": ts, "sm": sm, "mem": sm // 2, "enc": 0, "dec": 0}
                                for pid, ts, sm in samples],
               accounting=accounting or [], accounting_mode=1 if accounting is not None else 0, **overrides)
    gpu["fields"][83] = energy_mj
    return gpu


def energy_series(s, name, pid):
    return value(s, name, gpu="0", pid=str(pid))


def test_two_processes_time_sharing_three_runs(node, spawn):
    a, b = spawn(b"trainer-a"), spawn(b"trainer-b")
    started = int((time.time() - 3600) * 1e6)  # both started an hour ago, before gputext first ran
    accounting = [{"pid": pid, "gpu_util": 50, "mem_util": 20, "max_memory": 1 << 30, "start_time": started,
                   "time_ms": 0, "is_running": 1} for pid in (a, b)]
    # run 1: gputext meets the GPU; the samples it finds are older than any interval it can split
    node.write([gpu_with([a, b], E1, [(a, 100, 100)], accounting)])
    assert node.collect()[0].returncode == 0
    # interval 1-2: two sampling instants, a at 60%, b at 20%; interval 2-3: a 30%, b 50%
    node.write([gpu_with([a, b], E2, [(a, 1000, 60), (b, 1000, 20), (a, 2000, 60), (b, 2000, 20)], accounting)])
    proc, s2 = node.collect()
    assert proc.returncode == 0, proc.stderr
    node.write([gpu_with([a, b], E3, [(a, 3000, 30), (b, 3000, 50)], accounting)])
    proc, s = node.collect()
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr

    whole = (E3 - E1) / 1000  # the GPU's energy over both windows, in J
    assert value(s, "gpu_process_energy_joules_total", pid=str(a), source="nvml") == pytest.approx(whole)
    assert value(s, "gpu_process_energy_joules_total", pid=str(b), source="nvml") == pytest.approx(whole)
    attributed_a = energy_series(s, "gpu_process_attributed_energy_joules_total", a)
    attributed_b = energy_series(s, "gpu_process_attributed_energy_joules_total", b)
    unattributed = value(s, "gpu_unattributed_energy_joules_total", gpu="0")
    assert attributed_a == pytest.approx(0.6 * 500 + 0.3 * 600)
    assert attributed_b == pytest.approx(0.2 * 500 + 0.5 * 600)
    assert unattributed == pytest.approx(0.2 * 500 + 0.2 * 600)
    assert attributed_a + attributed_b + unattributed == pytest.approx(whole, rel=1e-12)
    # names from the processes themselves, start time from accounting, running, memory from NVML
    assert value(s, "gpu_process_active", pid=str(a), process_name="trainer-a") == 1
    assert value(s, "gpu_process_start_time_seconds", pid=str(b)) == pytest.approx(started / 1e6)
    assert value(s, "gpu_process_memory_used_bytes", pid=str(b)) == 2 << 30
    assert value(s, "gpu_process_sm_utilization_ratio", pid=str(b)) == pytest.approx(0.5)
    assert value(s2, "gpu_process_sm_utilization_ratio", pid=str(a)) == pytest.approx(0.6)


def test_exited_process_is_kept_for_the_retention_then_gone(node, spawn):
    a, b = spawn(), spawn()
    started = int((time.time() - 60) * 1e6)
    running = [{"pid": pid, "gpu_util": 50, "mem_util": 20, "max_memory": 1 << 30, "start_time": started,
                "time_ms": 0, "is_running": 1} for pid in (a, b)]
    node.write([gpu_with([a, b], E1, accounting=running)])
    node.collect()
    node.write([gpu_with([a, b], E2, accounting=running)])
    before = time.time()
    node.collect()
    time.sleep(0.2)
    ended = time.time()
    time.sleep(0.2)
    exited = [dict(running[0]), {**running[1], "time_ms": int((ended - started / 1e6) * 1000), "is_running": 0}]
    node.write([gpu_with([a], E3, accounting=exited)])
    proc, s = node.collect("--retention", "1h")
    after = time.time()
    assert proc.returncode == 0, proc.stderr
    assert value(s, "gpu_process_active", pid=str(b)) == 0
    assert value(s, "gpu_process_active", pid=str(a)) == 1
    assert value(s, "gpu_process_memory_used_bytes", pid=str(b)) is None  # not running: no memory
    assert value(s, "gpu_process_duration_seconds", pid=str(b)) == pytest.approx(ended - started / 1e6, abs=1e-3)
    # its window ends between runs 2 and 3: interpolated, so between the two samples' energies
    window = value(s, "gpu_process_energy_joules_total", pid=str(b), source="nvml")
    assert (E2 - E1) / 1000 < window < (E3 - E1) / 1000
    fraction = (ended - before) / (after - before)  # where the end lies, seen from outside the runs
    assert window == pytest.approx((E2 - E1 + (E3 - E2) * fraction) / 1000, abs=(E3 - E2) / 1000 * 0.5)
    proc, s = node.collect("--retention", "1h")
    assert value(s, "gpu_process_active", pid=str(b)) == 0  # still within the retention
    proc, s = node.collect("--retention", "0s")
    assert value(s, "gpu_process_active", pid=str(b)) is None
    assert value(s, "gpu_process_active", pid=str(a)) == 1
    state = json.loads((node.state_dir / "state.json").read_text())
    records = state["sections"]["processes"][h100(0)["uuid"]]["records"]
    assert [r["pid"] for r in records.values()] == [a]  # the state forgets it too: bounded by the retention


def test_accounting_catches_a_process_that_ran_between_runs(node, spawn):
    a = spawn()
    now = time.time()
    base = [{"pid": a, "gpu_util": 10, "mem_util": 5, "max_memory": 1 << 30,
             "start_time": int((now - 30) * 1e6), "time_ms": 0, "is_running": 1}]
    node.write([gpu_with([a], E1, accounting=base)])
    node.collect()
    short = {"pid": 999_999, "gpu_util": 90, "mem_util": 50, "max_memory": 1 << 30,
             "start_time": int((now - 2) * 1e6), "time_ms": 1500, "is_running": 0}
    node.write([gpu_with([a], E2, accounting=base + [short])])
    proc, s = node.collect()
    assert value(s, "gpu_process_active", pid="999999") == 0
    assert value(s, "gpu_process_duration_seconds", pid="999999") == pytest.approx(1.5)
    assert value(s, "gpu_process_start_time_seconds", pid="999999") == pytest.approx(now - 2, abs=1e-6)


def test_accounting_off_is_said_once_per_boot_and_never_fails(node, spawn):
    """A lasting condition: the timer runs every 5 s, so saying it each run floods the journal."""
    a = spawn()
    node.write([gpu_with([a], E1), gpu_with([], E1, index=1)])
    proc, s = node.collect("--detail", "full")
    assert proc.returncode == 0
    assert proc.stderr.count("accounting mode is off") == 1
    assert "nvidia-smi -am 1" in proc.stderr
    assert value(s, "gpu_accounting_mode", gpu="0") == 0
    assert value(s, "gpu_process_active", pid=str(a)) == 1
    assert value(s, "gputext_collector_success", collector="processes") == 1

    again, s = node.collect("--detail", "full")
    assert again.returncode == 0 and again.stderr == ""
    assert value(s, "gpu_accounting_mode", gpu="0") == 0  # still visible as a metric (and in doctor)

    # the state remembers which boot it was said in: from an earlier boot, it is said again
    path = node.state_dir / "state.json"
    state = json.loads(path.read_text())
    said = state["sections"]["said"]
    state["sections"]["said"] = {message: "an-earlier-boot" for message in said}
    path.write_text(json.dumps(state))
    after_reboot, _ = node.collect("--detail", "full")
    assert after_reboot.stderr.count("accounting mode is off") == 1


def test_hostile_process_names_give_a_valid_file(node, spawn, tmp_path):
    names = [b'q"uote', b"back\\slash", b"new\nline", b"bad\xff\xfeutf8", b"}{ =,"]
    pids = [spawn(name) for name in names]
    node.write([gpu_with(pids, E1)])
    out = tmp_path / "textfile" / "gpu.prom"
    out.parent.mkdir()
    proc = node.run("collect", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    text = out.read_text()
    parsed = parse_exposition(text)
    seen = {dict(labels)["pid"]: dict(labels)["process_name"] for (name, labels) in parsed
            if name == "gpu_process_active"}
    assert seen[str(pids[0])] == 'q"uote'
    assert seen[str(pids[1])] == "back\\slash"
    assert seen[str(pids[2])] == "new\nline"
    assert seen[str(pids[3])] == "bad\ufffd\ufffdutf8"  # undecodable bytes become U+FFFD
    assert seen[str(pids[4])] == "}{ =,"
    lint = promtool_check(text.encode())
    assert lint.returncode == 0 and lint.stdout == b"" and lint.stderr == b"", lint
    with NodeExporter(out.parent) as exporter:
        scraped = parse_exposition(exporter.scrape())
    assert value(scraped, "node_textfile_scrape_error") == 0
    assert value(scraped, "gpu_process_active", pid=str(pids[2]), process_name="new\nline") == 1


def test_corrupt_state_file_is_moved_aside_and_the_run_goes_on(node, spawn):
    a = spawn()
    node.state_dir.mkdir()
    (node.state_dir / "state.json").write_text("{ not json")
    node.write([gpu_with([a], E1)])
    proc, s = node.collect()
    assert proc.returncode == 0
    assert "moved to state.json.bad-" in proc.stderr
    assert value(s, "gpu_process_active", pid=str(a)) == 1
    assert [p.name for p in node.state_dir.iterdir() if p.name.startswith("state.json.bad-")]
    assert json.loads((node.state_dir / "state.json").read_text())["version"] == 1
    (node.state_dir / "state.json").write_text(json.dumps({"version": 99, "sections": {}}))
    proc, s = node.collect()
    assert proc.returncode == 0 and "not a gputext state file" in proc.stderr


def test_unwritable_state_dir_leaves_out_only_what_needs_state(node, spawn, tmp_path):
    a = spawn()
    blocked = tmp_path / "file-not-dir"
    blocked.write_text("x")
    node.write([gpu_with([a], E1, [(a, 100, 40)])])
    proc = node.run("collect", "--out", "-", "--state-dir", str(blocked / "state"), state=False)
    s = parse_exposition(proc.stdout)
    assert proc.returncode == 0
    assert "no state this run" in proc.stderr and str(blocked) in proc.stderr
    assert value(s, "gpu_process_active", pid=str(a)) == 1
    assert value(s, "gpu_process_memory_used_bytes", pid=str(a)) == 1 << 30
    assert value(s, "gpu_process_sm_utilization_ratio", pid=str(a)) == pytest.approx(0.4)
    assert value(s, "gpu_process_energy_joules_total", pid=str(a), source="nvml") is None
    assert value(s, "gpu_unattributed_energy_joules_total", gpu="0") is None
    assert value(s, "gpu_temperature_celsius", gpu="0") is not None


def test_max_processes_caps_series_and_counts_the_rest(node, spawn):
    pids = [spawn() for _ in range(5)]
    gpu = gpu_with(pids, E1)
    node.write([gpu])
    proc, s = node.collect("--max-processes", "2")
    active = [labels for (name, labels) in s if name == "gpu_process_active"]
    assert len(active) == 2
    assert value(s, "gputext_processes_dropped", gpu="0", uuid=gpu["uuid"]) == 3


def test_process_on_a_mig_gpu_has_no_utilization_but_memory(node, spawn):
    a = spawn()
    gpu = gpu_with([a], E1, [(a, 100, 40)])
    gpu["errors"] = {"nvmlDeviceGetProcessUtilization": 3}  # NOT_SUPPORTED, as under MIG
    node.write([gpu])
    proc, s = node.collect()
    assert value(s, "gpu_process_memory_used_bytes", pid=str(a)) == 1 << 30
    assert value(s, "gpu_process_sm_utilization_ratio", pid=str(a)) is None

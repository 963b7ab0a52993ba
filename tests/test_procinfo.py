"""gputext.procinfo reads a process's name and start time as psutil does (psutil is a test dependency
only, the reference gputext is checked against)."""

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from gputext.procinfo import ProcessTable


def started(tmp_path, name: str) -> subprocess.Popen:
    """A sleeping process whose executable is called `name` (a copy of sleep)."""
    program = tmp_path / name
    shutil.copy(shutil.which("sleep"), program)
    proc = subprocess.Popen([str(program), "30"])
    # exec() sets the new comm before the new command line: wait until both are there, as a process
    # that has been using a GPU long enough to be seen has them
    cmdline = Path("/proc", str(proc.pid), "cmdline")
    deadline = time.monotonic() + 10
    while not cmdline.read_bytes().startswith(os.fsencode(program)) and time.monotonic() < deadline:
        time.sleep(0.001)
    return proc


@pytest.mark.parametrize("name", ["short", "exactly15chars_", "a-much-longer-program-name", "spa ce(par)en",
                                  "tab\there"])
def test_name_and_start_time_agree_with_psutil(tmp_path, name):
    proc = started(tmp_path, name)
    try:
        table = ProcessTable(Path("/proc"))
        found = table.describe(proc.pid)
        reference = psutil.Process(proc.pid)
        assert found is not None
        assert found[0] == reference.name() == name
        assert found[1] == pytest.approx(reference.create_time(), abs=0.01)
    finally:
        proc.kill()
        proc.wait()


def test_this_process_and_a_gone_one():
    table = ProcessTable(Path("/proc"))
    name, start = table.describe(os.getpid())
    assert name == psutil.Process().name() and start == pytest.approx(psutil.Process().create_time(), abs=0.01)
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert table.describe(child.pid) is None


def test_another_proc_root(tmp_path):
    """Under --host-root the table reads the host's /proc as mounted there; a missing one gives None."""
    assert ProcessTable(tmp_path).describe(1) is None


@pytest.mark.parametrize("btime", [b"1760000000", b"18446744073709551615", str(int(time.time()) + 86400).encode()])
def test_a_boot_time_after_now_is_no_boot_time(tmp_path, btime):
    """/proc/stat under --host-root that says the host booted in the future is not the kernel's: the boot time
    is unreadable and a process's start time absent (a btime of 2^64 - 1 gave start times of 1.8e19, which
    the state refuses: every next run dropped the processes section)."""
    (tmp_path / "4242").mkdir()
    (tmp_path / "4242" / "stat").write_bytes(b"4242 (python) S " + b" ".join([b"1"] * 18 + [b"500"] + [b"1"] * 5))
    (tmp_path / "stat").write_bytes(b"cpu  1 2 3 4\nbtime " + btime + b"\n")
    described = ProcessTable(tmp_path).describe(4242)
    if btime == b"1760000000":
        assert described == ("python", 1760000000 + 500 / os.sysconf("SC_CLK_TCK"))
    else:
        assert described is None

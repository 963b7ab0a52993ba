"""Broken and hostile content in the files gputext keeps (state.json, inventory.json): a run never fails on
it, never writes a number it cannot vouch for, and says once what it started afresh."""

import json
import os

import pytest

from conftest import value
from fakegpu import h100, h100_uuid
from realtools import promtool_check
from test_xid import GPU0, Log, xid_515, xids

BOOT_ID = "3a1e0d7c-7f51-4a36-9d5e-5f2e6f0c1b2a"


@pytest.fixture
def log(tmp_path):
    log = Log(tmp_path)
    random = log.root / "proc" / "sys" / "kernel" / "random"
    random.mkdir(parents=True)
    (random / "boot_id").write_text(BOOT_ID + "\n")
    log.add(xid_515(GPU0, 79))
    return log


def set_boot_id(log, boot_id: str) -> None:
    (log.root / "proc" / "sys" / "kernel" / "random" / "boot_id").write_text(boot_id + "\n")


def put(*path, value):
    """A change to the state's sections: the value at `path` ("*": the first key there) becomes `value`."""
    def change(sections):
        place = sections
        for key in path[:-1]:
            place = place[next(iter(place)) if key == "*" else key]
        place[path[-1]] = value
    return change


WRONG_SECTIONS = {
    "a process name that is null": ("processes", put("processes", "*", "records", "*", "name", value=None)),
    "an XID entry of two numbers": ("xid", put("xid", "unconfirmed", value=[[1, 2]])),
    "XID counts as a list": ("xid", put("xid", "counts", value=[1, 2])),
    "an XID count of 10^400": ("xid", put("xid", "counts", f"{GPU0}|79||", value=[10 ** 400, 1.0])),
    "an XID time of 10^400": ("xid", put("xid", "counts", f"{GPU0}|79||", value=[2, 10 ** 400])),
    "a negative XID count": ("xid", put("xid", "counts", f"{GPU0}|79||", value=[-5, 1.0])),
    "an XID count that is text": ("xid", put("xid", "counts", f"{GPU0}|79||", value=["abc", 1.0])),
    "XID holes that overlap": ("xid", put("xid", "holes", value=[[0, 0], [0, 0]])),
    "a said message of another type": ("said", put("said", "*", value=[1])),
    "an energy that is no number": ("processes", put("processes", "*", "energy", value=[1.0, "NaN"])),
}


def run_twice_after(node, log, *args):
    """The run after a change to the files, and the one after it: (first, its series, second's stderr)."""
    first, series = node.collect(*log.args()[2:], *args)
    second, again = node.collect(*log.args()[2:], *args)
    for proc in (first, second):
        assert proc.returncode == 0, proc.stderr
        assert "Traceback" not in proc.stderr and "another gputext run" not in proc.stderr, proc.stderr
        assert " failed" not in proc.stderr, proc.stderr
        assert promtool_check(proc.stdout.encode()).returncode == 0
    assert again == series or xids(again) == xids(series)
    return first, series, second.stderr


@pytest.mark.parametrize("case", WRONG_SECTIONS)
def test_a_section_of_the_wrong_shape_is_started_afresh_and_said_once(node, log, case):
    node.write([h100(0), h100(1)])
    assert node.collect(*log.args()[2:])[0].returncode == 0
    section, change = WRONG_SECTIONS[case]
    path = node.state_dir / "state.json"
    document = json.loads(path.read_text())
    change(document["sections"])
    path.write_text(json.dumps(document))
    first, series, second = run_twice_after(node, log)
    said = [line for line in first.stderr.splitlines() if "state file" in line]
    assert len(said) == 1 and f"its section {section!r} is not what this version writes" in said[0], first.stderr
    assert second == ""
    # the section that did not fit is kept for a person to look at, as a whole file would be
    aside = list(node.state_dir.glob(f"state.json.bad-{section}-*"))
    assert len(aside) == 1 and f"kept in {aside[0].name}" in said[0]
    assert json.loads(aside[0].read_text()) == document["sections"][section]
    assert xids(series) == {("0", "79", "", ""): 1}  # the log's one XID, counted afresh where the counts were dropped
    assert value(series, "gpu_up", gpu="1") == 1
    assert value(series, "gpu_process_active", gpu="0", pid="4242") == 1


@pytest.mark.parametrize("content", ["[" * 100_000, '{"version": 1, "sections": ' + "[" * 100_000, "\xff\xfe",
                                     '{"version": 1, "sections": {"xid": {"seq": 1' + "0" * 5000 + "}}}"])
def test_a_state_file_that_cannot_be_parsed_is_moved_aside_once(node, log, content):
    node.write([h100(0)])
    node.collect(*log.args()[2:])
    (node.state_dir / "state.json").write_text(content, errors="surrogateescape")
    first, series, second = run_twice_after(node, log)
    assert "state file" in first.stderr and "moved to state.json.bad-" in first.stderr
    assert second == ""
    assert xids(series) == {("0", "79", "", ""): 1}
    assert len(list(node.state_dir.glob("state.json.bad-*"))) == 1


@pytest.mark.parametrize("kind", ["fifo", "link to /dev/zero", "directory"])
@pytest.mark.parametrize("name", ["state.json", "inventory.json"])
def test_what_is_no_regular_file_does_not_block_or_stop_a_run(node, log, kind, name):
    node.write([h100(0)])
    node.state_dir.mkdir()
    where = node.state_dir / name
    if kind == "fifo":
        os.mkfifo(where)
    elif kind == "directory":
        where.mkdir()
    else:
        where.symlink_to("/dev/zero")
    first, series, second = run_twice_after(node, log)
    assert value(series, "gpu_up", gpu="0") == 1
    assert xids(series) == {("0", "79", "", ""): 1}
    assert second == ""


def test_an_os_error_on_the_state_is_no_corruption(node, log, tmp_path):
    """EMFILE (all descriptors in use) when the state is read: the run goes without state, and the
    file, with its counts, stays."""
    import subprocess
    import sys

    node.write([h100(0)])
    node.collect(*log.args()[2:])
    path = node.state_dir / "state.json"
    before = path.read_bytes()
    script = (
        "import os, resource, sys\n"
        "from pathlib import Path\n"
        "from gputext.state import State\n"
        "from gputext.collectors.xid import SHAPE\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))\n"
        "held = []\n"
        "try:\n"
        "    while True: held.append(os.open('/dev/null', os.O_RDONLY))\n"
        "except OSError: pass\n"
        "os.close(held.pop())  # one for the lock file: none left for state.json\n"
        "state = State(Path(sys.argv[1]), lambda m: print('warn:', m))\n"
        "try:\n"
        "    state.section('xid', SHAPE)\n"
        "except Exception as err: print(type(err).__name__)\n"
        "state.close()\n")
    proc = subprocess.run([sys.executable, "-c", script, str(node.state_dir)], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1] == "StateUnavailable", proc.stdout
    assert "Too many open files" in proc.stdout and "moved" not in proc.stdout
    assert path.read_bytes() == before and not list(node.state_dir.glob("state.json.bad-*"))


# --- the inventory cache ---------------------------------------------------------------------------

def edit_inventory(node, change):
    path = node.state_dir / "inventory.json"
    document = json.loads(path.read_text())
    change(document)
    path.write_text(json.dumps(document))


WRONG_INVENTORIES = {
    "an empty list": lambda document: [],
    "a fan count that is text": lambda document: document["devices"][1]["info"].update(fan_count="abc") or document,
    "no settings": lambda document: document["devices"][0].pop("settings") and document,
    "static values of the wrong shape": lambda document: document["devices"][0]["info"].update(
        nvlink_links="abc", pcie_max={"a": 1}, nvlink_peer_0=[1]) or document,
}


@pytest.mark.parametrize("case", WRONG_INVENTORIES)
def test_an_inventory_of_the_wrong_shape_is_read_afresh_and_said_once(node, log, case):
    node.write([h100(0), h100(1)])
    assert node.collect(*log.args()[2:], "--detail", "full")[0].returncode == 0  # every static value
    path = node.state_dir / "inventory.json"
    path.write_text(json.dumps(WRONG_INVENTORIES[case](json.loads(path.read_text()))))
    first, series, second = run_twice_after(node, log, "--detail", "full")
    said = [line for line in first.stderr.splitlines() if "inventory cache" in line]
    assert said and all("read again" in line or "moved to inventory.json.bad-" in line for line in said), \
        first.stderr
    assert second == ""
    for gpu in (0, 1):
        assert value(series, "gpu_up", gpu=str(gpu), uuid=h100_uuid(gpu)) == 1
        assert value(series, "gpu_nvlink_up", gpu=str(gpu), link="17") == 1
        assert value(series, "gpu_nvlink_info", gpu=str(gpu), link="0") == 1
        assert value(series, "gpu_pcie_link_max_generation", gpu=str(gpu)) == 5
    assert value(series, "gputext_collector_success", collector="nvml") == 1
    assert value(series, "gputext_collector_success", collector="nvlink") == 1


def test_each_part_of_the_inventory_key_makes_a_fresh_read(node, log):
    """The cache holds what NVML answered once (name, VBIOS, NVLink peers, ...); it is trusted only within
    the boot, the driver version and the device count it was made with."""
    def reads():
        calls = node.call_counts()
        node.calls.unlink(missing_ok=True)
        return sum(row.get("nvmlDeviceGetVbiosVersion", 0) for who, row in calls.items() if who != "system")

    def run(*devices, **system):
        node.write(list(devices), system=system or None)
        proc, series = node.collect("--collectors", "nvml", *log.args()[2:])
        assert proc.returncode == 0 and value(series, "gpu_up", gpu="0") == 1, proc.stderr
        return reads()

    assert run(h100(0), h100(1)) == 2
    assert run(h100(0), h100(1)) == 0  # all from the cache
    set_boot_id(log, "8f4b2c1d-0000-4000-8000-000000000001")
    assert run(h100(0), h100(1)) == 2  # a new boot
    assert run(h100(0), h100(1)) == 0
    assert run(h100(0), h100(1), driver_version="580.200.01") == 2  # a new driver
    assert run(h100(0), h100(1), driver_version="580.200.01") == 0
    assert run(h100(0), h100(1), h100(2), driver_version="580.200.01") == 3  # a GPU more
    assert run(h100(0), h100(1), h100(2), driver_version="580.200.01") == 0

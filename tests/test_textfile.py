"""The atomic writer on its own: content, mode, failures that must leave the old file, stale temp files."""

import errno
import os
import stat
import subprocess
import sys

import pytest

from gputext import shape, textfile
from gputext.textfile import write_atomically


def temps(directory):
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".tmp"))


def test_writes_content_with_mode_0644_even_under_umask_077(tmp_path):
    target = tmp_path / "gpu.prom"
    old = os.umask(0o077)
    try:
        write_atomically(target, b"a 1\n")
    finally:
        os.umask(old)
    assert target.read_bytes() == b"a 1\n"
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    assert temps(tmp_path) == []


def test_replaces_previous_content(tmp_path):
    target = tmp_path / "gpu.prom"
    write_atomically(target, b"a 1\n")
    write_atomically(target, b"a 2\n")
    assert target.read_bytes() == b"a 2\n"


def test_disk_full_keeps_old_file_and_leaves_no_temp(tmp_path, monkeypatch):
    target = tmp_path / "gpu.prom"
    target.write_bytes(b"old 1\n")

    def full(fd, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(textfile.os, "write", full)
    with pytest.raises(OSError) as caught:
        write_atomically(target, b"new 1\n" * 1000)
    assert caught.value.errno == errno.ENOSPC
    assert target.read_bytes() == b"old 1\n"
    assert temps(tmp_path) == []


def test_failed_fsync_keeps_old_file(tmp_path, monkeypatch):
    target = tmp_path / "gpu.prom"
    target.write_bytes(b"old 1\n")

    def broken(fd):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(textfile.os, "fsync", broken)
    with pytest.raises(OSError):
        write_atomically(target, b"new 1\n")
    assert target.read_bytes() == b"old 1\n"
    assert temps(tmp_path) == []


def test_output_is_fsynced_state_and_inventory_are_not(tmp_path, monkeypatch):
    """The .prom file must survive a power loss whole; the state and the inventory describe one boot, so
    they skip the fsyncs (the repeating mode writes the state every cycle)."""
    from gputext.devices import Device, Inventory
    from gputext.state import State

    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(textfile.os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd)))
    write_atomically(tmp_path / "gpu.prom", b"a 1\n")
    assert len(synced) == 2  # the file, then its directory
    synced.clear()

    state = State(tmp_path / "state", warn=pytest.fail)
    state.section("processes", shape.anything)["x"] = 1
    state.close()
    inventory = Inventory(nvml=None, state_dir=tmp_path / "state", warn=pytest.fail)
    inventory._save({"count": 1}, [Device(0, "GPU-a", handle=object())], 0.0)
    assert (tmp_path / "state" / "state.json").read_bytes() == b'{"version":1,"sections":{"processes":{"x":1}}}'
    assert (tmp_path / "state" / "inventory.json").exists()
    assert synced == []


def test_stale_temp_of_dead_writer_is_removed_live_one_kept(tmp_path):
    target = tmp_path / "gpu.prom"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    stale = tmp_path / f".gpu.prom.{dead}.abc123.tmp"
    stale.write_bytes(b"half")
    live = tmp_path / f".gpu.prom.{os.getppid()}.def456.tmp"  # our parent runs, so its temp file stays
    live.write_bytes(b"busy")
    other = tmp_path / f".other.prom.{dead}.x.tmp"  # another target's temp file is not ours to remove
    other.write_bytes(b"x")
    write_atomically(target, b"a 1\n")
    assert temps(tmp_path) == sorted([live.name, other.name])


def test_a_repeating_writer_looks_for_stale_temps_once_a_minute(tmp_path, monkeypatch):
    """Every cycle would list the directory again: a process looks for other writers' leftovers of a
    target at its first write and then once a minute."""
    clock = [1000.0]
    monkeypatch.setattr(textfile.time, "monotonic", lambda: clock[0])
    target = tmp_path / "gpu.prom"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    write_atomically(target, b"a 1\n")
    stale = tmp_path / f".gpu.prom.{dead}.7.tmp"
    stale.write_bytes(b"half")
    clock[0] += textfile.SWEEP_EVERY_SECONDS - 1
    write_atomically(target, b"a 2\n")
    assert temps(tmp_path) == [stale.name]
    clock[0] += 1
    write_atomically(target, b"a 3\n")
    assert temps(tmp_path) == [] and target.read_bytes() == b"a 3\n"


def test_temp_name_is_ignored_by_node_exporter(tmp_path, monkeypatch):
    """node_exporter reads only *.prom: the temp file must never end in .prom."""
    seen = []
    real_rename = os.rename

    def spy(src, dst):
        seen.append(os.path.basename(src))
        real_rename(src, dst)

    monkeypatch.setattr(textfile.os, "rename", spy)
    write_atomically(tmp_path / "gpu.prom", b"a 1\n")
    assert len(seen) == 1 and seen[0].startswith(".gpu.prom.") and not seen[0].endswith(".prom")

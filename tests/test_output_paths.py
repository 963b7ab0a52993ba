"""What `--out` does with what is already at the path: links, devices, FIFOs, directories, sockets, files
where directories should be, and the lock file beside it. Nothing on disk changes where gputext refuses."""

import fcntl
import os
import socket
import stat
import subprocess
import sys
import threading

import pytest

from conftest import parse_exposition, value
from fakegpu import h100

UUID0 = "GPU-00000000-1111-2222-3333-444444444444"


@pytest.fixture
def gpu(node):
    node.write([h100(0, uuid=UUID0, temperature=45)])
    return node


def collect(node, out, **popen):
    return node.run("collect", "--out", str(out), "--collectors", "nvml", **popen)


def one_line(proc) -> str:
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    return lines[0]


def test_a_link_to_a_character_device_is_written_through_and_stays(gpu, tmp_path):
    """--out to a device (here /dev/null through a link in a temp dir, so that a broken gputext could only
    replace the link): the device is written, nothing is renamed over the link."""
    link = tmp_path / "null"
    link.symlink_to("/dev/null")
    proc = collect(gpu, link)
    assert proc.returncode == 0, proc.stderr
    assert link.is_symlink() and os.readlink(link) == "/dev/null"
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no temp, no lock


def test_a_full_device_fails_with_exit_2_and_one_line(gpu, tmp_path):
    link = tmp_path / "full"
    link.symlink_to("/dev/full")
    proc = collect(gpu, link)
    assert proc.returncode == 2
    assert one_line(proc) == f"gputext: cannot write {link}: No space left on device"
    assert link.is_symlink()


def test_a_fifo_gets_the_text_and_stays_a_fifo(gpu, tmp_path):
    fifo = tmp_path / "gpu.fifo"
    os.mkfifo(fifo)
    received = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_text()))
    reader.start()
    try:
        proc = collect(gpu, fifo)
    finally:
        if reader.is_alive():  # unblock the reader if gputext never opened the FIFO
            with open(fifo, "w"):
                pass
        reader.join(10)
    assert proc.returncode == 0, proc.stderr
    assert value(parse_exposition(received[0]), "gpu_temperature_celsius", gpu="0") == 45
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)


def test_a_fifo_nobody_reads_is_refused_at_once(gpu, tmp_path):
    fifo = tmp_path / "gpu.fifo"
    os.mkfifo(fifo)
    proc = collect(gpu, fifo)
    assert proc.returncode == 2
    assert one_line(proc) == f"gputext: cannot write {fifo}: no process is reading it"
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)


@pytest.mark.parametrize("path", ["/dev/stdout", "/proc/self/fd/1", "/dev/fd/1"])
def test_dev_stdout_works_like_a_dash(gpu, path):
    proc = collect(gpu, path)
    assert proc.returncode == 0, proc.stderr
    assert value(parse_exposition(proc.stdout), "gpu_temperature_celsius", gpu="0") == 45


def test_a_safe_link_is_followed_and_its_target_replaced(gpu, tmp_path):
    """A link made by this user in a directory only it writes: the target is replaced atomically in the
    target's own directory, and the link stays a link."""
    real = tmp_path / "real"
    real.mkdir()
    (real / "gpu.prom").write_text("old 1\n")
    link = tmp_path / "gpu.prom"
    link.symlink_to(real / "gpu.prom")
    proc = collect(gpu, link)
    assert proc.returncode == 0, proc.stderr
    assert link.is_symlink()
    assert value(parse_exposition((real / "gpu.prom").read_text()), "gpu_temperature_celsius", gpu="0") == 45
    assert (real / ".gpu.prom.lock").exists()  # the lock is beside the file written, not the link


def test_a_link_in_a_directory_others_may_write_is_refused(gpu, tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    target = tmp_path / "victim"
    target.write_text("precious\n")
    link = shared / "gpu.prom"
    link.symlink_to(target)
    shared.chmod(0o777)  # anyone could have planted the link
    try:
        proc = collect(gpu, link)
    finally:
        shared.chmod(0o755)
    assert proc.returncode == 2
    message = one_line(proc)
    assert message.startswith(f"gputext: cannot write {link}: ") and "symbolic link" in message, message
    assert target.read_text() == "precious\n" and link.is_symlink()


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can give a link to another user (CI runs as root)")
def test_a_link_owned_by_another_user_is_refused(gpu, tmp_path):
    target = tmp_path / "victim"
    target.write_text("precious\n")
    link = tmp_path / "gpu.prom"
    link.symlink_to(target)
    os.lchown(link, 65534, 65534)  # nobody
    proc = collect(gpu, link)
    assert proc.returncode == 2
    assert "symbolic link" in one_line(proc) and "65534" in proc.stderr, proc.stderr
    assert target.read_text() == "precious\n"


@pytest.mark.parametrize("kind", ["directory", "socket"])
def test_a_directory_or_socket_is_a_usage_error_and_changes_nothing(gpu, tmp_path, kind):
    path = tmp_path / "gpu.prom"
    if kind == "directory":
        path.mkdir()
        sock = None
    else:
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(str(path))
    try:
        before = sorted(os.listdir(tmp_path))
        proc = collect(gpu, path)
        assert proc.returncode == 2
        message = one_line(proc)
        assert message.startswith(f"gputext: cannot write {path}: it is a {kind}; name a file"), message
        assert message.endswith("(see 'gputext collect --help')")
        assert sorted(os.listdir(tmp_path)) == before
        assert (stat.S_ISDIR if kind == "directory" else stat.S_ISSOCK)(os.lstat(path).st_mode)
    finally:
        if sock:
            sock.close()


def test_a_planted_lock_link_is_refused_with_its_cause(gpu, tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    (tmp_path / ".gpu.prom.lock").symlink_to(victim)
    (tmp_path / "gpu.prom").write_text("old 1\n")
    proc = collect(gpu, tmp_path / "gpu.prom")
    assert proc.returncode == 2
    message = one_line(proc)
    assert f"lock file {tmp_path / '.gpu.prom.lock'} is a symbolic link" in message
    assert "remove it" in message and "Too many levels" not in message
    assert victim.read_text() == "precious\n" and (tmp_path / "gpu.prom").read_text() == "old 1\n"


def test_a_file_where_a_directory_should_be_says_so(gpu, tmp_path):
    (tmp_path / "passwd").write_text("root:x:0:0\n")
    proc = collect(gpu, tmp_path / "passwd" / "gpu.prom")
    assert proc.returncode == 2
    assert one_line(proc).startswith(f"gputext: cannot write {tmp_path / 'passwd' / 'gpu.prom'}: "
                                     f"{tmp_path / 'passwd'} is not a directory")


def test_a_directory_that_takes_no_files_fails_at_once_with_the_os_cause(gpu):
    """/proc takes no new files: that is not lock contention, so no waiting for --lock-timeout."""
    proc = gpu.run("collect", "--out", "/proc/gpu.prom", "--collectors", "nvml", "--lock-timeout", "50s")
    assert proc.returncode == 2
    message = one_line(proc)
    assert "another gputext run" not in message and "/proc" in message, message


def test_lock_held_by_flock_is_waited_for(gpu, tmp_path):
    """The lock is flock(2) on .NAME.lock: another holder (flock(1), an older gputext) still excludes."""
    out = tmp_path / "gpu.prom"
    with open(tmp_path / ".gpu.prom.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        proc = gpu.run("collect", "--out", str(out), "--lock-timeout", "200ms")
    assert proc.returncode == 2 and "another gputext run is writing" in proc.stderr
    assert not out.exists()

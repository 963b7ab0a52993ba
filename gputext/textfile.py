"""Write a file so that readers see the old content or the new one, never a part.

node_exporter's textfile collector reads every `*.prom` file in its directory whenever Prometheus scrapes,
possibly while we write. So the new content goes to a temp file in the same directory whose name does not
end in `.prom` (node_exporter ignores it), is fsynced, made 0644 (node_exporter runs as another user,
and the temp file is created 0600), renamed over the target, and the directory is fsynced so the rename
survives a crash. Termination signals are held back while the temp file exists, so a SIGTERM from systemd
lands between writes, not in the middle of one. A temp file left by a run that was SIGKILLed is removed by
the next run that writes the same target (a repeating process looks again once a minute).

`--out` may also name a FIFO, a character device or a descriptor link such as /dev/stdout: those are
written straight through, never replaced (replacing /dev/stdout or /dev/full with a regular file would
break the system). A symbolic link to a file is followed, and the file it points to is replaced in its
own directory, so the link stays; see resolve_output for when a link is not followed.
"""

from __future__ import annotations

import errno
import os
import re
import signal
import stat
import time
from collections import namedtuple
from collections.abc import Iterator
from contextlib import contextmanager
from itertools import count
from pathlib import Path

from .readfile import file_kind

_HELD_SIGNALS = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP}
TEMP_SUFFIX = ".tmp"
# A repeating process writes the same files every few seconds: it looks for other writers' stale temp
# files this often, not at every write (a directory listing each time).
SWEEP_EVERY_SECONDS = 60.0
_swept: dict[Path, float] = {}  # target -> when its stale temp files were last looked for (monotonic)
_temp_numbers = count()


def _temp_prefix(target: Path) -> str:
    return f".{target.name}."


def _remove_stale_temps(target: Path) -> None:
    """Remove temp files of `target` whose writer (PID in the name) no longer runs."""
    now = time.monotonic()
    if target in _swept and now - _swept[target] < SWEEP_EVERY_SECONDS:
        return
    _swept[target] = now
    prefix = _temp_prefix(target)
    try:
        names = os.listdir(target.parent)
    except OSError:
        return
    for name in names:
        if not (name.startswith(prefix) and name.endswith(TEMP_SUFFIX)):
            continue
        pid_text = name[len(prefix):].split(".", 1)[0]
        if pid_text.isdigit() and int(pid_text) != os.getpid() and _pid_alive(int(pid_text)):
            continue
        try:
            os.unlink(target.parent / name)
        except OSError:
            pass


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


@contextmanager
def _signals_held() -> Iterator[None]:
    """Defer SIGTERM/SIGINT/SIGHUP until the block ends (main thread only)."""
    try:
        old = signal.pthread_sigmask(signal.SIG_BLOCK, _HELD_SIGNALS)
    except (ValueError, OSError):  # not the main thread, or no sigmask on this platform
        yield
        return
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def write_atomically(target: Path, data: bytes, mode: int = 0o644, durable: bool = True) -> None:
    """Replace `target` with `data`. On any error the old file is untouched and no temp file is left.

    `durable` fsyncs the file and its directory, so that the new content survives a power loss or a
    kernel crash. Readers see the old file or the new one either way (the rename is atomic); only a
    crash can leave a torn file, so only a file that matters after a reboot needs the fsyncs (the state,
    written every cycle of the repeating mode, describes one boot)."""
    directory = target.parent
    _remove_stale_temps(target)
    with _signals_held():
        fd, temp_name = _create_temp(target)
        try:
            try:
                os.fchmod(fd, mode)
                _write_all(fd, data)
                if durable:
                    os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(temp_name, target)
        except BaseException:
            try:
                os.unlink(temp_name)
            except OSError:
                pass
            raise
    if durable:
        _fsync_directory(directory)


def _create_temp(target: Path) -> tuple[int, str]:
    """(descriptor, name) of a new temp file beside `target`, mode 0600: `.gpu.prom.<PID>.<n>.tmp`. The
    PID tells _remove_stale_temps whose it is; O_EXCL and O_NOFOLLOW refuse a name that exists, even as a
    link. (tempfile.mkstemp does the same with random names, at several times the cost.)"""
    prefix = f"{target.parent}/{_temp_prefix(target)}{os.getpid()}."
    for _ in range(100):
        name = f"{prefix}{next(_temp_numbers)}{TEMP_SUFFIX}"
        try:
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
            return os.open(name, flags, 0o600), name
        except FileExistsError:
            continue  # left by an earlier process with this PID: the next number
    raise FileExistsError(errno.EEXIST, "no free temp file name", name)


def _fsync_directory(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems refuse fsync on directories; the rename itself is still atomic
    finally:
        os.close(fd)


# --- where --out points ---------------------------------------------------------------------------------

class OutputRefused(Exception):
    """--out names something gputext must not write (a directory, a socket, a link it may not follow);
    the message says what and why."""


# The file-descriptor links of the kernel: /dev/stdout is /proc/self/fd/1. A link through them stands for
# an open file of this process (a pipe, a terminal, a journal socket, a file the shell opened for append),
# so the descriptor itself is written, as with `--out -`: replacing or reopening what it points to would
# lose the shell's append mode and offset.
_FD_LINK = re.compile(r"/proc/(?:self|thread-self|(\d+)(?:/task/\d+)?)/fd/(\d+)|/dev/fd/(\d+)")
_MAX_LINKS = 40  # as the kernel's own limit for a path


class Destination(namedtuple("Destination", "kind named path fd", defaults=(None, -1))):
    """Where a collection is written: `kind` "fd" (write descriptor `fd`), "stream" (a FIFO or character
    device, opened and written through) or "file" (`path`, a Path, replaced atomically in its directory);
    `named` is what the user gave."""

    __slots__ = ()


def stdout_destination() -> Destination:
    return Destination("fd", "-", fd=1)


def resolve_output(named: str) -> Destination:
    """Where writing `named` leads. Symbolic links are followed only where nobody but this user or root
    can have planted them (gputext runs as root: a link from another user must never aim its writes).
    Raises OutputRefused."""
    current = os.path.abspath(named)
    for _ in range(_MAX_LINKS):
        fd = _descriptor(current)
        if fd is not None:
            return _checked_fd(named, fd)
        try:
            st = os.lstat(current)
        except FileNotFoundError:
            _check_directory(Path(current).parent, named)
            return Destination("file", named, Path(current))
        except NotADirectoryError:
            raise OutputRefused(f"cannot write {named}: {_first_non_directory(current)} is not a "
                                "directory") from None
        except OSError as err:
            raise OutputRefused(f"cannot write {named}: {err.strerror}") from None
        if not stat.S_ISLNK(st.st_mode):
            break
        _check_link(current, st, named)
        current = os.path.normpath(os.path.join(os.path.dirname(current), os.readlink(current)))
    else:
        raise OutputRefused(f"cannot write {named}: more than {_MAX_LINKS} symbolic links")
    if stat.S_ISFIFO(st.st_mode) or stat.S_ISCHR(st.st_mode):
        return Destination("stream", named, Path(current))
    if stat.S_ISREG(st.st_mode):
        _check_directory(Path(current).parent, named)
        return Destination("file", named, Path(current))
    raise OutputRefused(f"cannot write {named}: {current if current != os.path.abspath(named) else 'it'} is "
                        f"{file_kind(st.st_mode)}; name a file (such as gpu.prom), a FIFO, a character device or - for "
                        "standard output")


def _descriptor(path: str) -> int | None:
    """The descriptor number where `path` is one of this process's /proc/.../fd/N links."""
    match = _FD_LINK.fullmatch(path)
    if not match:
        return None
    pid, fd, dev_fd = match.groups()
    if pid is not None and int(pid) != os.getpid():
        return None  # another process's descriptor: not ours to write
    return int(fd if fd is not None else dev_fd)


def _checked_fd(named: str, fd: int) -> Destination:
    try:
        st = os.fstat(fd)
    except OSError:
        raise OutputRefused(f"cannot write {named}: descriptor {fd} is not open") from None
    if stat.S_ISDIR(st.st_mode):
        raise OutputRefused(f"cannot write {named}: descriptor {fd} is a directory")
    return Destination("fd", named, fd=fd)


def _first_non_directory(path: str) -> str:
    for parent in reversed(Path(path).parents):
        if parent.exists() and not parent.is_dir():
            return str(parent)
    return str(Path(path).parent)


def _check_directory(directory: Path, named: str) -> None:
    try:
        st = os.stat(directory)
    except FileNotFoundError:
        raise OutputRefused(f"cannot write {named}: directory {directory} does not exist") from None
    except NotADirectoryError:
        raise OutputRefused(f"cannot write {named}: {_first_non_directory(str(directory / 'x'))} is not a "
                            "directory") from None
    if not stat.S_ISDIR(st.st_mode):
        raise OutputRefused(f"cannot write {named}: {directory} is not a directory")


def _check_link(link: str, st: os.stat_result, named: str) -> None:
    """A link is followed only where its owner is this user or root and nobody else can write the
    directory that holds it (so nobody else can have put it there or swap it)."""
    me = os.geteuid()
    holder = os.path.dirname(link)
    where = f"{link} -> {os.readlink(link)}"
    if st.st_uid not in (me, 0):
        raise OutputRefused(f"cannot write {named}: {where} is a symbolic link owned by uid {st.st_uid}; "
                            f"gputext (uid {me}) follows only links of its own user or root; name the file "
                            "it points to instead")
    dst = os.stat(holder)
    if dst.st_uid not in (me, 0) or dst.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise OutputRefused(f"cannot write {named}: {where} is a symbolic link in {holder}, which other "
                            f"users can write (mode {stat.S_IMODE(dst.st_mode):04o}, owner uid {dst.st_uid}); "
                            "gputext follows links only in directories nobody else can change; name the file "
                            "it points to instead")


def write_through(destination: Destination, data: bytes) -> None:
    """Write `data` to a descriptor, FIFO or character device as it is: no temp file, no rename.
    Raises OSError (a FIFO nobody reads, /dev/full)."""
    if destination.kind == "fd":
        _write_all(destination.fd, data)
        return
    try:
        # O_NONBLOCK: a FIFO that no process reads fails at once (ENXIO) instead of hanging the run
        fd = os.open(destination.path, os.O_WRONLY | os.O_NOCTTY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as err:
        if err.errno == errno.ENXIO:
            raise OSError(err.errno, "no process is reading it") from None
        raise
    try:
        os.set_blocking(fd, True)
        _write_all(fd, data)
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]

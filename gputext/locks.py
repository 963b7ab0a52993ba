"""An exclusive lock on a file, for one gputext run at a time per output file and per state file.

It is `flock(2)` on a lock file beside what it guards, as filelock's Unix lock is (so both interoperate).
gputext used filelock for this, but the package's import took about 20 ms of every run (it loads logging,
asyncio-related and hashing modules for features gputext does not use), more than all NVML work of an
nvml-only run; what gputext needs of it is these few lines.

The lock file is opened with O_NOFOLLOW: a symbolic link planted where the lock file goes would otherwise
let another user make a root process create or truncate any file. Such a link, like any other reason the
lock file cannot be opened, is reported at once with its cause: only a lock held by another process is
waited for.
"""

from __future__ import annotations

import errno
import fcntl
import os
import time
from pathlib import Path

_POLL_SECONDS = 0.02


class LockTimeout(Exception):
    """Another process held the lock for longer than the timeout."""


class LockUnavailable(OSError):
    """The lock file cannot be opened (a symbolic link, a directory that may not be written, ...)."""


class FileLock:
    def __init__(self, path: Path):
        self.path = Path(path)
        self._fd: int | None = None

    def acquire(self, timeout: float) -> None:
        """Take the lock, waiting up to `timeout` seconds for another holder. Raises LockTimeout, or
        LockUnavailable with the OS's reason."""
        fd = self._open()
        deadline = time.monotonic() + timeout
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise LockTimeout(f"{self.path} is held by another process") from None
                    time.sleep(_POLL_SECONDS)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)  # closing the descriptor releases the flock

    def _open(self) -> int:
        try:
            return os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        except OSError as err:
            raise LockUnavailable(err.errno, _why(self.path, err)) from None


def _why(path: Path, err: OSError) -> str:
    if err.errno == errno.ELOOP:
        return (f"lock file {path} is a symbolic link; gputext never follows links for its lock files "
                "(another user may have planted it): remove it")
    if err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        fix = (f"run as root, or give uid {os.geteuid()} write access there" if os.geteuid() != 0 else
               "check that the filesystem is writable and the unit's ReadWritePaths= names the directory")
        return f"cannot write in {path.parent} (for lock file {path.name}): {err.strerror}; fix: {fix}"
    if err.errno == errno.ENOENT:
        return f"cannot create lock file {path}: {path.parent} does not take new files ({err.strerror})"
    return f"cannot create lock file {path}: {err.strerror}"

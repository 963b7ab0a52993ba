"""Reading a file that someone else controls: it cannot block gputext, and it cannot make it read forever.

Every file gputext reads from outside (its own state and cache, which anyone with write access to the
state directory can replace; counters files; /proc and cgroup files under --host-root) goes through
`read_bounded`. The file is opened with O_NONBLOCK, so a FIFO put where a regular file belongs does not
hang open(); its type is checked on the descriptor after open (a check before open could be raced by a
rename); and at most `limit` bytes are read, so a link to /dev/zero or a huge file costs a bounded time.

An OS error stays an OSError (EMFILE, EACCES, ENAMETOOLONG): it says nothing about the file's content, and
callers must not take it for a corrupt file. What is not a regular file, or is larger than the limit, raises
`NotARegularFile` or `TooLarge`, both ValueErrors: the content is unusable, as a parse error would be.
"""

from __future__ import annotations

import os
import stat

# Sizes above what any file gputext reads legitimately holds, each with room to spare.
PROC_FILE_LIMIT = 64 * 1024  # /proc/<pid>/stat, cmdline, cgroup, environ; a cgroup path is at most 4 KiB
STATE_FILE_LIMIT = 64 * 1024 * 1024  # state.json and inventory.json of a large node (thousands of processes)
CONFIG_FILE_LIMIT = 1024 * 1024  # a counters file: a few hundred lines
# The largest count the kernel writes (sequence numbers, microseconds, clock ticks are 64-bit unsigned).
MAX_KERNEL_COUNT = (1 << 64) - 1


class NotARegularFile(ValueError):
    """The path names a FIFO, a device, a socket or a directory where a regular file belongs."""


class TooLarge(ValueError):
    """The file holds more than the reader's limit."""


def file_kind(mode: int) -> str:
    """What a file that is not the regular file, FIFO or character device wanted is, for a message."""
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "a block device" if stat.S_ISBLK(mode) else "not a regular file"


def read_bounded(path: str | os.PathLike, limit: int) -> bytes:
    """The whole content of the regular file at `path`, at most `limit` bytes; see the module's doc."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise NotARegularFile(f"{os.fspath(path)} is not a regular file")
        chunks = []
        size = 0
        while True:
            # /proc files report size 0 and fill each read() separately: read until an empty read.
            chunk = os.read(fd, min(limit + 1 - size, 1024 * 1024))
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)
            size += len(chunk)
            if size > limit:
                raise TooLarge(f"{os.fspath(path)} is larger than {limit} bytes")
    finally:
        os.close(fd)


def read_bounded_text(path: str | os.PathLike, limit: int, errors: str = "strict") -> str:
    """`read_bounded` decoded as UTF-8 (a UnicodeDecodeError is a ValueError too, unless `errors` says
    otherwise)."""
    return read_bounded(path, limit).decode("utf-8", errors)


def kernel_count(field: bytes) -> int:
    """A count the kernel writes in decimal (a log record's sequence number or time, clock ticks): ASCII
    digits of at most MAX_KERNEL_COUNT, so that a file that is no kernel file gives no absurd number.
    Raises ValueError."""
    if not field.isdigit() or len(field) > 20 or int(field) > MAX_KERNEL_COUNT:
        raise ValueError(f"not a count: {field[:30]!r}")
    return int(field)

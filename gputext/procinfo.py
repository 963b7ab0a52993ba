"""A process's name and start time, read from /proc (under --host-root in a container).

Two small reads replace psutil here: importing psutil cost about 18 ms of a 270 ms one-shot run on 8 GPUs
(python -X importtime), for two values per process. The rules are psutil's: the name is the kernel's
`comm` from /proc/<pid>/stat (up to 15 bytes), extended from the command line where the kernel cut it; the
start time is the boot time (/proc/stat btime) plus the stat's start time in clock ticks.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from .readfile import PROC_FILE_LIMIT, kernel_count, read_bounded

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
COMM_LENGTH = 15  # TASK_COMM_LEN - 1: the kernel cuts longer names
STAT_LIMIT = 4 * 1024 * 1024
START_TIME = 19  # field 22 of /proc/<pid>/stat, counted from the state (field 3) after the name


class ProcessTable:
    def __init__(self, proc: Path):
        self.proc = proc
        self._boot_time: float | None = None

    def boot_time(self) -> float:
        """When the host booted (Unix time), from /proc/stat's btime; shared with the xid collector's
        record times. A boot after now is no kernel's: ValueError (every time read from it would be absurd,
        and the state refuses such times)."""
        if self._boot_time is None:
            # /proc/stat has a line per CPU: thousands of CPUs stay far below the limit
            for line in read_bounded(self.proc / "stat", STAT_LIMIT).splitlines():
                if line.startswith(b"btime "):
                    btime = kernel_count(line.split(b" ", 1)[1].strip())
                    if btime > time.time():
                        raise ValueError(f"{self.proc / 'stat'} says the host booted after now")
                    self._boot_time = float(btime)
                    break
            else:
                raise OSError(f"{self.proc / 'stat'} has no btime line")
        return self._boot_time

    def describe(self, pid: int) -> tuple[str, float] | None:
        """(name, start time in Unix seconds) of the process, or None where it is gone or unreadable.
        The name may hold undecodable bytes as surrogates (os.fsdecode)."""
        try:
            stat = read_bounded(self.proc / str(pid) / "stat", PROC_FILE_LIMIT)
            # the name is between the first "(" and the last ")": it may hold either
            name = stat[stat.index(b"(") + 1:stat.rindex(b")")]
            fields = stat[stat.rindex(b")") + 2:].split()
            started = self.boot_time() + kernel_count(fields[START_TIME]) / CLOCK_TICKS
            if len(name) >= COMM_LENGTH:
                name = self._full_name(pid, name)
        except (OSError, ValueError, IndexError):
            return None
        return os.fsdecode(name), started

    def _full_name(self, pid: int, comm: bytes) -> bytes:
        try:
            argv0 = read_bounded(self.proc / str(pid) / "cmdline", PROC_FILE_LIMIT).split(b"\0", 1)[0]
        except (OSError, ValueError):
            return comm
        program = os.path.basename(argv0)
        return program if program.startswith(comm) else comm

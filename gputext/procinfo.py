"""A process's name and start time, read from /proc (under --host-root in a container).

Two small reads replace psutil here: importing psutil cost about 18 ms of a 270 ms one-shot run on 8 GPUs
(python -X importtime), for two values per process. The rules are psutil's: the name is the kernel's
`comm` from /proc/<pid>/stat (up to 15 bytes), extended from the command line where the kernel cut it; the
start time is the boot time (/proc/stat btime) plus the stat's start time in clock ticks.
"""

from __future__ import annotations

import os
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
COMM_LENGTH = 15  # TASK_COMM_LEN - 1: the kernel cuts longer names
START_TIME = 19  # field 22 of /proc/<pid>/stat, counted from the state (field 3) after the name


class ProcessTable:
    def __init__(self, proc: Path):
        self.proc = proc
        self._boot_time: float | None = None

    def boot_time(self) -> float:
        if self._boot_time is None:
            for line in (self.proc / "stat").read_bytes().splitlines():
                if line.startswith(b"btime "):
                    self._boot_time = float(line.split()[1])
                    break
            else:
                raise OSError(f"{self.proc / 'stat'} has no btime line")
        return self._boot_time

    def describe(self, pid: int) -> tuple[str, float] | None:
        """(name, start time in Unix seconds) of the process, or None where it is gone or unreadable.
        The name may hold undecodable bytes as surrogates (os.fsdecode)."""
        try:
            stat = (self.proc / str(pid) / "stat").read_bytes()
            # the name is between the first "(" and the last ")": it may hold either
            name = stat[stat.index(b"(") + 1:stat.rindex(b")")]
            fields = stat[stat.rindex(b")") + 2:].split()
            started = self.boot_time() + int(fields[START_TIME]) / CLOCK_TICKS
            if len(name) >= COMM_LENGTH:
                name = self._full_name(pid, name)
        except (OSError, ValueError, IndexError):
            return None
        return os.fsdecode(name), started

    def _full_name(self, pid: int, comm: bytes) -> bytes:
        try:
            argv0 = (self.proc / str(pid) / "cmdline").read_bytes().split(b"\0", 1)[0]
        except OSError:
            return comm
        program = os.path.basename(argv0)
        return program if program.startswith(comm) else comm

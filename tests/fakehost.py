"""A fake host root (--host-root) whose /proc shows the processes a test needs, such as a node_exporter
with a given command line, running as a given user."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Sequence


@dataclass
class FakeProcess:
    argv: List[str]
    uid: int = 65534
    gid: int = 65534
    groups: Sequence[int] = field(default_factory=tuple)


def node_exporter(directory: os.PathLike, uid: int = 65534, program: str = "/usr/bin/node_exporter",
                  *extra: str) -> FakeProcess:
    """node_exporter reading `directory` (None: no --collector.textfile.directory flag)."""
    flag = [f"--collector.textfile.directory={directory}"] if directory is not None else []
    return FakeProcess([program, "--web.listen-address=:9100", *flag, *extra], uid=uid, gid=uid)


def fake_host(root: Path, *processes: FakeProcess) -> Path:
    """`root` with /proc/<pid>/{cmdline,status} for each process (pids from 100 on)."""
    def ids(value: int) -> str:  # real, effective, saved and file-system IDs
        return "\t".join([str(value)] * 4)

    for pid, process in enumerate(processes, start=100):
        directory = root / "proc" / str(pid)
        directory.mkdir(parents=True)
        (directory / "cmdline").write_bytes(b"\0".join(a.encode() for a in process.argv) + b"\0")
        (directory / "status").write_text(
            f"Name:\t{Path(process.argv[0]).name[:15]}\nPid:\t{pid}\nUid:\t{ids(process.uid)}\n"
            f"Gid:\t{ids(process.gid)}\nGroups:\t{' '.join(map(str, process.groups))}\n")
    (root / "proc").mkdir(parents=True, exist_ok=True)
    return root

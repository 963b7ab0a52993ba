"""A fake Slurm node under --host-root: processes whose /proc/<pid>/cgroup puts them in a job (cgroup v1,
v2, v2 with a SLUID job directory, several slurmd per host), their environment, the steps' slurmstepd
with its process title, the cgroup tree (cgroup.procs of the stepd, v1 devices.list) and /etc/passwd.
The layouts are Slurm's (gputext/slurm.py cites the sources)."""

from __future__ import annotations

import os
from pathlib import Path

V1, V2 = "v1", "v2"
V1_CONTROLLERS = ("memory", "freezer", "devices", "cpuset")  # one /proc/<pid>/cgroup line each


class SlurmHost:
    def __init__(self, root: Path, layout: str = V2, scope: str = "slurmstepd.scope"):
        self.root = root
        self.layout = layout
        self.scope = scope  # <node>_slurmstepd.scope with several slurmd per host
        self.next_pid = 1000
        (root / "proc").mkdir(parents=True, exist_ok=True)
        (root / "etc").mkdir(exist_ok=True)
        (root / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/bash\nalice:x:1000:1000::/home/alice:/bin/bash\n"
                                         "bob:x:1001:1001::/home/bob:/bin/bash\n")

    def _pid(self) -> int:
        self.next_pid += 1
        return self.next_pid

    def job_directory(self, job: str, uid: int) -> str:
        """The job's cgroup path: job_<id>, or a SLUID as given (s + 13 characters)."""
        name = job if job.startswith("s") else f"job_{job}"
        if self.layout == V1:
            return f"/slurm/uid_{uid}/{name}"
        return f"/system.slice/{self.scope}/{name}"

    def process(self, job: str | None, step: str = "0", uid: int = 1000, environ: dict | None = None,
                cgroup: str | None = None) -> int:
        """A task of `job`'s step (None: a process outside Slurm, in a user session); its pid."""
        pid = self._pid()
        directory = self.root / "proc" / str(pid)
        directory.mkdir()
        if cgroup is None and job is None:
            cgroup = f"0::/user.slice/user-{uid}.slice/session-4.scope\n"
        elif cgroup is None and self.layout == V1:
            path = f"{self.job_directory(job, uid)}/step_{step}"
            cgroup = "".join(f"{n}:{c}:{path}/task_0\n" if c != "freezer" else f"{n}:{c}:{path}\n"
                             for n, c in enumerate(V1_CONTROLLERS, start=3))
            cgroup += "1:name=systemd:/system.slice/slurmd.service\n"
        elif cgroup is None:
            cgroup = f"0::{self.job_directory(job, uid)}/step_{step}/user/task_0\n"
        (directory / "cgroup").write_text(cgroup)
        env = {"PATH": "/usr/bin", **(environ or {})}
        (directory / "environ").write_bytes(b"".join(f"{k}={v}".encode() + b"\0" for k, v in env.items()))
        os.chown(directory, uid, uid)  # /proc/<pid> belongs to the process's user (the tests run as root)
        return pid

    def stepd(self, job_id: str, job_directory_name: str, step: str = "0", uid: int = 1000) -> int:
        """The step's slurmstepd: its process title and, on cgroup v2, its cgroup (step_<s>/slurm)."""
        pid = self._pid()
        directory = self.root / "proc" / str(pid)
        directory.mkdir()
        # setproctitle overwrites argv in place: the title, then what is left of the old argv as NULs
        (directory / "cmdline").write_bytes(f"slurmstepd: [{job_id}.{step}]".encode() + b"\0" * 12)
        cgroup = self.root / "sys/fs/cgroup" / self.job_directory(job_directory_name, uid).lstrip("/") / \
            f"step_{step}" / "slurm"
        cgroup.mkdir(parents=True, exist_ok=True)
        (cgroup / "cgroup.procs").write_text(f"{pid}\n")
        return pid

    def cgroup_job(self, job: str, uid: int = 1000, minors: tuple = ()) -> None:
        """The job's directory in the cgroup tree; on v1 with a devices.list allowing these GPU minors."""
        if self.layout == V2:
            (self.root / "sys/fs/cgroup" / self.job_directory(job, uid).lstrip("/")).mkdir(parents=True, exist_ok=True)
            return
        for controller in ("freezer", "memory"):
            (self.root / "sys/fs/cgroup" / controller / self.job_directory(job, uid).lstrip("/")).mkdir(
                parents=True, exist_ok=True)
        devices = self.root / "sys/fs/cgroup/devices" / self.job_directory(job, uid).lstrip("/")
        devices.mkdir(parents=True, exist_ok=True)
        rules = ["c 195:255 rw", "c 195:254 rw", "c 237:0 rw"] + [f"c 195:{minor} rw" for minor in minors]
        (devices / "devices.list").write_text("\n".join(rules) + "\n")


def environment(job: str, user: str = "alice", account: str = "physics", partition: str = "gpu") -> dict:
    return {"SLURM_JOB_ID": job, "SLURM_JOB_USER": user, "SLURM_JOB_ACCOUNT": account,
            "SLURM_JOB_PARTITION": partition, "SLURM_JOB_GPUS": "3"}  # Slurm's index: never used for mapping

"""Which Slurm job a process belongs to, and which jobs hold each GPU, from what the node shows: no prolog
or epilog script, no call to slurmctld.

A process's job is in its cgroup path (/proc/<pid>/cgroup, readable by anyone), which Slurm's cgroup
plugins lay out as (SchedMD/slurm src/plugins/cgroup/v1/xcgroup.c and v2/cgroup_v2.c):

  cgroup/v1  <CgroupPrepend, /slurm by default>/uid_<uid>/job_<id>/step_<step>/task_<n>, one line per
             controller
  cgroup/v2  /system.slice/slurmstepd.scope/job_<id>/step_<step>/user/task_<n> (<node>_slurmstepd.scope
             with several slurmd per host); the step's slurmstepd itself is in step_<step>/slurm.
             From Slurm 26.05 the job directory is a SLUID (`s` and 13 Crockford base-32 characters:
             cluster, time and a sequence number, not the job id; src/common/sluid.c) unless
             CgroupJobIdPaths=yes.

A step (a number, batch, extern, interactive) belongs to its job. For a SLUID directory the job id comes
from the step's slurmstepd, whose process title (in /proc/<pid>/cmdline, readable by anyone) is
`slurmstepd: [<job>.<step>]`; the slurmstepd is found in the step's `slurm` cgroup (cgroup.procs, readable
by anyone). The job's user is the uid in the v1 path, or the owner of the process's /proc directory;
its name comes from the host's /etc/passwd. Account and partition are only in the job's environment
(SLURM_JOB_ACCOUNT, SLURM_JOB_PARTITION), and another user's /proc/<pid>/environ needs CAP_SYS_PTRACE,
which the systemd units do not grant (docs/slurm.md weighs it): where it cannot be read they are left out.

GPUs held by jobs with no process on them are found where the node says so: dcgm-exporter's job-mapping
directory, which a site's prolog writes (read as dcgm-exporter reads it, below), and the cgroup v1 devices
controller's devices.list of each job (`c 195:<minor> rw`: the GPUs the job may open). cgroup v2 keeps the
device rule in an eBPF program, not in a file, so there an idle GPU is known only from the mapping
directory. Slurm's SLURM_JOB_GPUS holds Slurm's own GPU index, neither the NVML index nor the minor number
in every configuration: it is not used.
"""

from __future__ import annotations

import os
import re
from collections import namedtuple
from pathlib import Path

from .readfile import CONFIG_FILE_LIMIT, PROC_FILE_LIMIT, read_bounded, read_bounded_text

# Job ids and uids are 32-bit (Slurm's uint32_t job_id, the kernel's uid_t): ASCII digits, at most 10 of them.
MAX_ID = (1 << 32) - 1
_ID = "[0-9]{1,10}"
# Slurm prints step ids this way (src/common/log.c); anything else in a step_ directory name is kept as is.
_V1 = re.compile(rf"/uid_({_ID})/job_({_ID})(?![^/])(?:/step_([^/]+))?")
SLUID = "s[0-9A-HJKMNP-TV-Z]{13}"  # sluid2str(): "s" and 13 of Crockford's base-32 digits
_V2 = re.compile(rf"/(?:[^/]+_)?slurmstepd\.scope/(?:job_({_ID})|({SLUID}))(?![^/])(?:/step_([^/]+))?")
_SLUID = re.compile(SLUID)
_STEPD_TITLE = re.compile(rb"slurmstepd: \[([0-9]{1,10})\.[^\]]+\]")
# dcgm-exporter's mapping files: <gpu> or <gpu>.<gpu instance>, ASCII digits only (its getGPUFiles
# rejects signs, exponents and a second dot; NVIDIA/dcgm-exporter internal/pkg/transformation/hpc.go and
# hpc_test.go). It compares the name with its gpu and GPU_I_ID label values as text, so a leading zero
# ("03") matches no GPU there, and none here.
_MAPPING_FILE = re.compile(r"(0|[1-9][0-9]*)(?:\.(0|[1-9][0-9]*))?")
_ID_TEXT = re.compile(_ID)
NVIDIA_MAJOR = 195  # the character-device major of /dev/nvidia<minor> (nvidiactl is 255 of it)
_DEVICE_RULE = re.compile(rb"c 195:([0-9]{1,7}) [rwm]+")  # minor numbers are 20-bit


class CgroupJob(namedtuple("CgroupJob", "job sluid step uid scope")):
    """What a cgroup path says of a process's job: the job id ("" where the directory is a SLUID), the
    SLUID ("" for job_<id>), the step, the uid (cgroup v1 only, else None) and the path up to and
    including the step directory (where the step's slurmstepd is found)."""

    __slots__ = ()


class Job(namedtuple("Job", "id user account partition", defaults=("", "", ""))):
    """A job's id and, "" where unknown, its user name, account and partition."""

    __slots__ = ()

    def merged(self, other: "Job | None") -> "Job":
        """This job with what `other` (the same job, seen from another process or source) knows beside."""
        if other is None:
            return self
        return Job(self.id, *(mine or theirs for mine, theirs in zip(self[1:], other[1:])))


def slurm_id(text: str) -> int | None:
    """The number of a job id or uid as Slurm and the kernel write it, or None for anything else (a line
    of a file under --host-root or of the mapping directory may hold any text)."""
    return int(text) if _ID_TEXT.fullmatch(text) and int(text) <= MAX_ID else None


def job_of_cgroup(cgroup: str) -> CgroupJob | None:
    """The Slurm job named by the text of /proc/<pid>/cgroup, or None for a process outside Slurm."""
    for line in cgroup.splitlines():
        path = line.split(":", 2)[-1]
        match = _V2.search(path)
        if match and (match.group(2) or slurm_id(match.group(1)) is not None):
            return CgroupJob(match.group(1) or "", match.group(2) or "", match.group(3) or "", None,
                             path[:match.end()])
        match = _V1.search(path)
        uid = slurm_id(match.group(1)) if match else None
        if uid is not None and slurm_id(match.group(2)) is not None:
            return CgroupJob(match.group(2), "", match.group(3) or "", uid, path[:match.end()])
    return None


def parse_mapping_file(text: str) -> tuple[list[str], list[str]]:
    """(job ids, lines that are not one) of a mapping file: one job id per line, as dcgm-exporter reads it,
    which takes every line verbatim. A Slurm job id is a 32-bit number (slurm_id); blank lines are skipped,
    anything else is returned to be reported, not written as a label."""
    jobs: dict[str, None] = {}
    bad = []
    for line in text.splitlines():
        job = line.strip()
        if slurm_id(job) is not None:
            jobs[job] = None
        elif job:
            bad.append(line)
    return list(jobs), bad


def mapping_file_name(name: str) -> tuple[int, str] | None:
    """(GPU index, GPU instance or "") that a mapping file's name stands for, or None for another file."""
    match = _MAPPING_FILE.fullmatch(name)
    return (int(match.group(1)), match.group(2) or "") if match else None


def _environment(data: bytes) -> dict[str, str]:
    pairs = {}
    for entry in data.split(b"\0"):
        name, equals, value = entry.partition(b"=")
        if equals and name.startswith(b"SLURM_JOB_"):
            pairs[name.decode("ascii", "replace")] = value.decode("utf-8", "replace")
    return pairs


class SlurmJobs:
    """The Slurm jobs of one collection, under --host-root: each job's details are read once, whatever
    its number of processes. environ_unreadable, unresolved_sluids and bad_lines say what could not be
    read, for doctor and the collector's notes."""

    def __init__(self, host_root: Path, mapping_dir: Path | None = None):
        self.host_root = Path(host_root)
        self.mapping_dir = mapping_dir
        self.jobs: dict[str, Job] = {}  # job id -> what is known of it
        self._by_cgroup: dict[str, Job | None] = {}  # job directory path -> its job
        self._users: dict[int, str] | None = None
        self.environ_unreadable = 0  # jobs whose environment was not ours to read
        self.unresolved_sluids: set[str] = set()
        self.bad_lines: list[str] = []  # "<file>: <line>" of the mapping directory's non-job lines

    def _path(self, path: str) -> Path:
        return self.host_root / path.lstrip("/")

    def for_process(self, pid: int, cgroup: str) -> Job | None:
        """The job of a process whose /proc/<pid>/cgroup says `cgroup`; None outside Slurm (or where a
        SLUID directory's job id cannot be found)."""
        found = job_of_cgroup(cgroup)
        if found is None:
            return None
        key = found.scope.rsplit("/step_", 1)[0]  # the job's directory: every step of it at once
        if key not in self._by_cgroup:
            self._by_cgroup[key] = self._describe(pid, found)
        return self._by_cgroup[key]

    def _describe(self, pid: int, found: CgroupJob) -> Job | None:
        job_id = found.job or (self._stepd_job(found.scope) if found.step else "")
        environment = self._environ(pid)
        if not job_id:
            job_id = environment.get("SLURM_JOB_ID", "")
            if slurm_id(job_id) is None:
                self.unresolved_sluids.add(found.sluid)
                return None
        if environment.get("SLURM_JOB_ID") != job_id:
            environment = {}  # another job's environment (a process started from one): none of it is this job's
        user = environment.get("SLURM_JOB_USER") or self.user_name(found.uid if found.uid is not None
                                                                   else self._owner(pid))
        job = Job(job_id, user, environment.get("SLURM_JOB_ACCOUNT", ""), environment.get("SLURM_JOB_PARTITION", ""))
        self.jobs[job_id] = job.merged(self.jobs.get(job_id))
        return self.jobs[job_id]

    def _stepd_job(self, step: str) -> str:
        """The job id in the process title of the slurmstepd of the step whose cgroup is `step` (cgroup
        v2: the stepd is in the step's `slurm` child), or ""."""
        procs = self._path("/sys/fs/cgroup") / step.lstrip("/") / "slurm" / "cgroup.procs"
        try:
            pids = read_bounded(procs, PROC_FILE_LIMIT).split()
        except (OSError, ValueError):
            return ""
        for stepd in pids[:4]:  # one slurmstepd per step; a helper it forked may sit beside it
            try:
                title = read_bounded(self._path(f"/proc/{int(stepd)}/cmdline"), PROC_FILE_LIMIT)
            except (OSError, ValueError):
                continue
            match = _STEPD_TITLE.match(title.replace(b"\0", b" "))
            job = match.group(1).decode() if match else ""
            if slurm_id(job) is not None:
                return job
        return ""

    def _sluid_job(self, job: str) -> str:
        """The job id of a SLUID job directory, from the slurmstepd of any of its steps, or ""."""
        for step in _subdirectories(self._path("/sys/fs/cgroup") / job.lstrip("/")):
            if step.startswith("step_"):
                found = self._stepd_job(f"{job}/{step}")
                if found:
                    return found
        return ""

    def _environ(self, pid: int) -> dict[str, str]:
        try:
            return _environment(read_bounded(self._path(f"/proc/{pid}/environ"), PROC_FILE_LIMIT))
        except PermissionError:
            self.environ_unreadable += 1  # another user's, without CAP_SYS_PTRACE
        except (OSError, ValueError):
            pass  # gone, or larger than any environment Slurm sets
        return {}

    def _owner(self, pid: int) -> int | None:
        try:
            return os.stat(self._path(f"/proc/{pid}")).st_uid
        except OSError:
            return None

    def user_name(self, uid: int | None) -> str:
        """The name of `uid` in the host's /etc/passwd, read once per collection; "" where it has none
        (a directory service the host's NSS asks is not read)."""
        if uid is None:
            return ""
        if self._users is None:
            self._users = {}
            try:
                text = read_bounded_text(self._path("/etc/passwd"), CONFIG_FILE_LIMIT, "replace")
            except (OSError, ValueError):
                text = ""
            for line in text.splitlines():
                fields = line.split(":")
                number = slurm_id(fields[2]) if len(fields) >= 3 else None
                if number is not None:
                    self._users.setdefault(number, fields[0])
        return self._users.get(uid, "")

    def mapping(self) -> dict[tuple[int, str], list[str]] | None:
        """{(GPU index, GPU instance or ""): job ids} from the job-mapping directory, read once; None where
        no directory is configured. Lines that are not job ids are kept in bad_lines."""
        if self.mapping_dir is None:
            return None
        found: dict[tuple[int, str], list[str]] = {}
        try:
            entries = sorted(os.scandir(self.mapping_dir), key=lambda e: e.name)
        except OSError:
            return found
        for entry in entries:
            gpu = mapping_file_name(entry.name)
            if gpu is None:
                continue
            try:
                text = read_bounded_text(entry.path, CONFIG_FILE_LIMIT, "replace")
            except (OSError, ValueError):
                continue  # a directory, a FIFO, a file removed by the epilog since the listing
            jobs, bad = parse_mapping_file(text)
            self.bad_lines += [f"{entry.name}: {line[:40]!r}" for line in bad]
            if jobs:
                found[gpu] = jobs
        return found

    def device_jobs(self) -> dict[str, tuple[int | None, set[int]]]:
        """{job id: (uid, minor numbers of the NVIDIA devices its devices.list allows)} of every job in the
        cgroup v1 devices controller (under any CgroupPrepend); empty on cgroup v2."""
        devices = self._path("/sys/fs/cgroup/devices")
        jobs: dict[str, tuple[int | None, set[int]]] = {}
        for prefix in _subdirectories(devices):
            if not prefix.startswith("slurm"):
                continue
            for user in _subdirectories(devices / prefix):
                uid = slurm_id(user[4:]) if user.startswith("uid_") else None
                if uid is None:
                    continue
                for job in _subdirectories(devices / prefix / user):
                    if not job.startswith("job_") or slurm_id(job[4:]) is None:
                        continue
                    try:
                        rules = read_bounded(devices / prefix / user / job / "devices.list", PROC_FILE_LIMIT)
                    except (OSError, ValueError):
                        continue
                    # `a *:* rwm` (no ConstrainDevices) allows every device: no GPU is the job's own
                    minors = {int(m) for m in _DEVICE_RULE.findall(rules)} if b"a *:*" not in rules else set()
                    jobs[job[4:]] = (uid, minors)
        return jobs

    def running(self) -> set[str] | None:
        """The job ids that have a cgroup on this node, or None where that cannot be told (no Slurm
        cgroup tree readable, or a SLUID directory whose job id was not found)."""
        root = self._path("/sys/fs/cgroup")
        found: set[str] = set()
        seen_tree = False
        for scope in _subdirectories(root / "system.slice"):
            if not scope.endswith("slurmstepd.scope"):
                continue
            seen_tree = True
            for name in _subdirectories(root / "system.slice" / scope):
                if name.startswith("job_"):
                    found.add(name[4:])
                elif _SLUID.fullmatch(name):
                    job = self._sluid_job(f"/system.slice/{scope}/{name}")
                    if not job:
                        return None  # a running job whose id is unknown: any file could be its
                    found.add(job)
        for controller in ("freezer", "devices", "memory"):
            base = root / controller
            for prefix in (p for p in _subdirectories(base) if p.startswith("slurm")):
                seen_tree = True
                for user in _subdirectories(base / prefix):
                    found.update(j[4:] for j in _subdirectories(base / prefix / user) if j.startswith("job_"))
            if seen_tree:
                break
        return found if seen_tree else None


def _subdirectories(directory: Path) -> list[str]:
    try:
        return [entry.name for entry in os.scandir(directory) if entry.is_dir(follow_symlinks=False)]
    except OSError:
        return []

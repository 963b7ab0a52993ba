"""Which Slurm jobs hold each GPU: `slurm_allocation_info`, found on the node with no prolog script.

Three sources, merged (gputext.slurm reads them): the jobs of the GPU's processes (their cgroups, read
once per process by the processes scan), each job's cgroup v1 devices.list (the GPUs it may open, by
minor number: idle GPUs too), and dcgm-exporter's job-mapping directory where the site writes it
(--hpc-job-mapping-dir, read once per run). A mapping file's job that has no cgroup on the node any more
(the epilog did not remove the file) is left out where the node's jobs can be listed.

The series carries the job, and its user, account and partition where known, so that process series
(which carry only slurm_job) and device series (which carry no job: a job's end must not start new device
series) join with it in PromQL. --naming dcgm also copies dcgm-exporter's series per job with its hpc_job
label, as dcgm-exporter does from the mapping directory.
"""

from __future__ import annotations

from . import NotApplicable
from ..slurm import Job
from .processes import processes_of_run


class Found:
    """The jobs of the node's GPUs in one collection: held[(uuid, gpu instance)] = [job ids], jobs[id] =
    Job, and how they were found (cgroup, devices.list, mapping directory)."""

    def __init__(self):
        self.held: dict[tuple[str, str], dict[str, None]] = {}
        self.jobs: dict[str, Job] = {}
        self.how: dict[str, None] = {}
        self.stale: list[str] = []  # "<gpu>: <job>" of mapping files whose job has ended
        self.unknown_gpus: list[int] = []  # mapping files of GPU indexes NVML does not list

    def add(self, uuid: str, gpu_instance: str, job: Job, how: str) -> None:
        self.held.setdefault((uuid, gpu_instance), {})[job.id] = None
        self.jobs[job.id] = job.merged(self.jobs.get(job.id))
        self.how[how] = None


def find(ctx) -> Found:
    """Every job that holds a GPU of this node, from all three sources."""
    jobs = ctx.slurm_jobs()
    found = Found()
    for process in processes_of_run(ctx):
        if process.job is not None and process.active:  # an exited process's job may have ended
            found.add(process.uuid, "", process.job, "process cgroups")
    up = [dev for dev in ctx.devices()[1] if dev.up]
    by_job = jobs.device_jobs()
    if by_job:
        by_minor = ctx.devices_by_minor(up)
        for job_id, (uid, minors) in by_job.items():
            for minor in sorted(minors):
                if minor in by_minor:
                    found.add(by_minor[minor].uuid, "", jobs.jobs.get(job_id) or Job(job_id, jobs.user_name(uid)),
                              "cgroup v1 devices.list")
    mapping = jobs.mapping()
    if mapping:
        running = jobs.running()
        by_index = {dev.index: dev for dev in up}
        for (index, gpu_instance), ids in mapping.items():
            dev = by_index.get(index)
            if dev is None:
                found.unknown_gpus.append(index)
                continue
            for job_id in ids:
                if running is not None and job_id not in running:
                    found.stale.append(f"{index}{'.' + gpu_instance if gpu_instance else ''}: {job_id}")
                    continue
                found.add(dev.uuid, gpu_instance, jobs.jobs.get(job_id) or Job(job_id), "mapping directory")
    return found


def collect(ctx, samples) -> None:
    found = find(ctx)
    jobs = ctx.slurm_jobs()
    if not found.held and jobs.mapping_dir is None and jobs.running() is None:
        raise NotApplicable("no Slurm job cgroups on this node and no --hpc-job-mapping-dir")
    by_uuid = {dev.uuid: dev for dev in ctx.devices()[1]}
    for (uuid, gpu_instance), ids in found.held.items():
        for job_id in ids:
            job = found.jobs[job_id]
            samples.add("slurm_allocation_info", 1, {
                **by_uuid[uuid].labels, "slurm_job": job.id, "slurm_user": job.user, "slurm_account": job.account,
                "slurm_partition": job.partition, "gpu_instance": gpu_instance})
    ctx.gpu_jobs = {key: list(ids) for key, ids in found.held.items()}
    where = jobs.mapping_dir
    if jobs.bad_lines:
        ctx.note_once(f"slurm: {len(jobs.bad_lines)} line(s) in {where} are not Slurm job IDs and were skipped "
                      f"({', '.join(jobs.bad_lines[:3])}); fix: the prolog script that writes them")
    if found.stale:
        ctx.note_once(f"slurm: {where} names jobs that have ended, left out ({', '.join(found.stale[:5])}); "
                      "fix: the epilog script should remove their files")
    if found.unknown_gpus:
        ctx.note_once(f"slurm: {where} has files for GPU {', '.join(map(str, sorted(set(found.unknown_gpus))))}, "
                      "which NVML does not list here; left out")


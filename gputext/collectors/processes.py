"""Per-process GPU use: memory, utilisation, lifetime, energy (see gputext.energy) and pod.

Per GPU and run: the running compute and graphics processes, the process-utilisation samples NVML took
since the last run (the last-seen timestamp is kept in the state), the device energy counter, and, with
accounting mode on, the accounting records of processes that are new since the last run (exact start and
end times, and processes that started and exited between two runs). Exited processes keep their series,
with gpu_process_active 0, for --retention. Where the state is unavailable, only what needs no memory of
the last run is written: running processes' memory, utilisation and start time.
"""

from __future__ import annotations


import pynvml

from .. import energy, shape
from ..catalogue import DEVICE_LABELS, PROCESS_LABELS
from ..nvml import DeviceGone
from ..pods import PodResolver, read_cgroup
from ..slurm import Job
from ..state import StateUnavailable

FI_TOTAL_ENERGY = 83  # mJ
US = 1e-6  # accounting times are in microseconds
_ROW_LABELS = DEVICE_LABELS + PROCESS_LABELS  # the process series' labels (the energy's add "source")
UTILIZATION_KEYS = ("process_sm_utilization_ratio", "process_memory_utilization_ratio",
                    "process_encoder_utilization_ratio", "process_decoder_utilization_ratio")

# A process record in the state: what describe() gives, its lifetime, and its energies (gputext.energy).
_RECORD = shape.where(shape.record(
    required={"pid": shape.count, "start": shape.optional(shape.number), "end": shape.optional(shape.number),
              "active": shape.flag, "name": shape.text, "created": shape.optional(shape.number),
              "pod": shape.text, "namespace": shape.text, "container": shape.text},
    optional={"e_start": shape.number, "e_end": shape.number, "attributed": shape.number,
              "slurm": shape.tuple_of(*[shape.text] * len(Job._fields))}),
    lambda record: record["active"] or record["end"] is not None, "an exited process without an end")
# GPU UUID -> what the last run left for the next
SHAPE = shape.mapping(shape.record(optional={
    "last_sample_us": shape.count, "energy": shape.tuple_of(shape.number, shape.number),
    "records": shape.mapping(_RECORD), "accounting_pids": shape.list_of(shape.count),
    "unattributed": shape.number}))


class Process:
    """A process series of this run: what the dcgm collector and `gputext show` build on."""

    __slots__ = ("gpu", "uuid", "pid", "labels", "job", "active")

    def __init__(self, gpu: int, uuid: str, pid: int, labels: dict[str, str], job=None, active: bool = True):
        self.gpu = gpu
        self.uuid = uuid
        self.pid = pid
        self.labels = labels  # gpu, uuid, pid, process_name, pod, namespace, container, slurm_job
        self.job = job  # slurm.Job, or None outside Slurm
        self.active = active  # False: exited, its series kept for --retention


def processes_of_run(ctx) -> list[Process]:
    """The processes of this run: those the processes collector wrote, or else the running ones."""
    if ctx.processes is None:
        scan = _Scan(ctx)
        for dev in ctx.devices()[1]:
            if dev.up:
                try:
                    for pid in scan.running_memory(dev):
                        scan.series(dev, {"pid": pid, **scan.describe(pid)})
                except DeviceGone:
                    pass
        ctx.processes = scan.found
    return ctx.processes


def collect(ctx, samples) -> None:
    scan = _Scan(ctx)
    try:
        section = ctx.state.section("processes", SHAPE)
    except StateUnavailable:
        section = None  # this run keeps nothing: a throwaway dict per GPU stands in
    accounting_off = []
    for dev in ctx.devices()[1]:
        if not dev.up:
            continue
        if dev.settings.get("accounting_mode") != 1:
            accounting_off.append(str(dev.index))
        state = section.setdefault(dev.uuid, {}) if section is not None else {}
        try:
            scan.device(dev, state, section is not None, samples)
        except DeviceGone as err:
            ctx.warn(f"{dev.name}: processes not read: {err}")
    ctx.processes = scan.found
    if scan.pods.unnamed_pods:
        ctx.note_once(f"processes in pods that {ctx.options.host_path('/var/log/pods')} does not name have no "
                      "pod labels: gputext names pods from the kubelet's log directories, /var/log/pods and "
                      "/var/log/containers under --host-root; mount the host's there")
    if accounting_off:
        ctx.note_once(f"accounting mode is off on GPU {', '.join(accounting_off)}: processes that start and exit "
                 "between two runs are missed and start times are first-seen times; enable it with "
                 "'nvidia-smi -am 1' (as root)")


class _Scan:
    def __init__(self, ctx):
        self.ctx = ctx
        self.nvml = ctx.nvml
        self.pods = PodResolver(ctx.options.host_root)
        self.slurm = ctx.slurm_jobs()
        self.found: list[Process] = []
        self._table = None  # procinfo.ProcessTable, made on first use

    def running_memory(self, dev) -> dict[int, int | None]:
        """{pid: GPU memory in bytes, or None where the driver does not say} of compute and graphics
        processes. A process in both lists is one process with one amount of memory."""
        found: dict[int, int | None] = {}
        for fn in (pynvml.nvmlDeviceGetComputeRunningProcesses, pynvml.nvmlDeviceGetGraphicsRunningProcesses):
            for info in self.nvml.call(fn, dev.handle, device=dev.name) or ():
                if info.usedGpuMemory is not None:
                    found[info.pid] = max(found.get(info.pid) or 0, info.usedGpuMemory)
                else:
                    found.setdefault(info.pid, None)
        return found

    def describe(self, pid: int) -> dict[str, object]:
        """Name, creation time (host clock), pod labels and Slurm job of a process; empty where it is
        gone. Its cgroup file, which names both pod and job, is read once."""
        if self._table is None:
            from ..procinfo import ProcessTable

            # In a container the host's processes are under --host-root (or /proc itself with hostPID).
            self._table = ProcessTable(self.ctx.options.host_path("/proc"))
        record: dict[str, object] = {"name": "", "created": None}
        found = self._table.describe(pid)
        if found is not None:
            # an undecodable byte of a name is kept as a surrogate; a label value must be UTF-8
            record["name"] = found[0].encode("utf-8", "surrogateescape").decode("utf-8", "replace")
            record["created"] = found[1]
        cgroup = read_cgroup(self.ctx.options.host_root, pid)
        record.update(self.pods.for_cgroup(cgroup).labels())
        job = self.slurm.for_process(pid, cgroup) if cgroup else None
        if job is not None:
            record["slurm"] = list(job)  # a list: the record is kept in the state as JSON
        return record

    def series(self, dev, record: dict[str, object]) -> Process:
        job = Job(*record["slurm"]) if record.get("slurm") else None  # older state files have none
        labels = {**dev.labels, "pid": str(record["pid"]), "process_name": record["name"],
                  "pod": record["pod"], "namespace": record["namespace"], "container": record["container"],
                  "slurm_job": job.id if job else ""}
        process = Process(dev.index, dev.uuid, record["pid"], labels, job, bool(record.get("active", 1)))
        self.found.append(process)
        return process

    def _accounting_times(self, dev, pid: int) -> tuple | None:
        """(start, end) in Unix seconds from the driver's accounting record; end is None while it runs."""
        stats = self.nvml.call(pynvml.nvmlDeviceGetAccountingStats, dev.handle, pid, device=dev.name)
        if stats is None or not stats.startTime:
            return None
        start = stats.startTime * US
        return start, (None if stats.isRunning else start + stats.time / 1000)

    def device(self, dev, state: dict[str, object], keep: bool, samples) -> None:
        now = self.ctx.now
        running = self.running_memory(dev)
        utilization = self.nvml.call(pynvml.nvmlDeviceGetProcessUtilization, dev.handle,
                                     int(state.get("last_sample_us", 0)), device=dev.name, not_found=[])
        if utilization:
            state["last_sample_us"] = max(s.timeStamp for s in utilization)
        previous_run = state["energy"][0] if "energy" in state else None
        accounting = dev.settings.get("accounting_mode") == 1
        records: dict[str, dict[str, object]] = state.setdefault("records", {})
        active = {r["pid"]: r for r in records.values() if r["active"]}

        for pid in set(running) - set(active):  # new on the GPU
            described = self.describe(pid)
            times = self._accounting_times(dev, pid) if accounting else None
            # Without accounting: the process came onto the GPU after the last run (or is older than
            # gputext's first run), and not before it was created.
            start = times[0] if times else max((t for t in (described["created"], previous_run) if t is not None),
                                               default=None)
            record = {"pid": pid, "start": start, "end": None, "active": 1, **described}
            records[_key(pid, start if start is not None else now)] = active[pid] = record
        for pid, record in active.items():  # gone since the last run
            if pid not in running:
                times = self._accounting_times(dev, pid) if accounting else None
                # else it ended between the last run and now: the middle is within half an interval
                record["end"] = times[1] if times and times[1] else ((previous_run or now) + now) / 2
                record["active"] = 0
        if accounting and keep:
            self._exited_between_runs(dev, state, records, active, running)

        self._energy(dev, state, records, utilization, keep)
        retention = self.ctx.options.retention_seconds
        for key in [k for k, r in records.items() if not r["active"] and now - r["end"] > retention]:
            del records[key]
        self._write(dev, state, records, running, utilization, samples)

    def _exited_between_runs(self, dev, state, records, active, running) -> None:
        """Processes the driver accounted since the last run that are neither running nor known.

        Only PIDs new to the accounting buffer are asked about (the buffer holds thousands); on the first
        run the buffer's history is only noted: it predates what gputext can know energy for."""
        pids = self.nvml.call(pynvml.nvmlDeviceGetAccountingPids, dev.handle, device=dev.name, not_found=[])
        if pids is None:
            return
        first_run = "accounting_pids" not in state
        already = set(state.get("accounting_pids", ()))
        state["accounting_pids"] = pids
        if first_run:
            return
        for pid in pids:
            if pid in already or pid in running or pid in active:
                continue
            times = self._accounting_times(dev, pid)
            if times and times[1]:
                records[_key(pid, times[0])] = {"pid": pid, "start": times[0], "end": times[1], "active": 0,
                                                **self.describe(pid)}

    def _energy(self, dev, state, records, utilization, keep: bool) -> None:
        """Window energies and attribution from this run's energy sample (needs the state)."""
        if not keep:
            return
        mj = self.nvml.fields(dev.handle, [(FI_TOTAL_ENERGY, 0)], device=dev.name).get((FI_TOTAL_ENERGY, 0))
        if mj is None:
            mj = self.nvml.call(pynvml.nvmlDeviceGetTotalEnergyConsumption, dev.handle, device=dev.name)
        if mj is None:
            return
        now = self.ctx.now
        current = (now, mj / 1000)
        previous = tuple(state["energy"]) if "energy" in state else None
        if previous is not None and current[1] < previous[1]:
            self.ctx.warn(f"{dev.name}: the energy counter went back (driver reloaded?): energies restart")
            previous = None
            for record in records.values():
                record.pop("e_start", None)
                record.pop("e_end", None)
        for record in records.values():
            if "e_start" not in record:
                record["e_start"] = energy.interpolate(previous, current, record["start"] or now)
            if record["end"] is not None and "e_end" not in record:
                record["e_end"] = energy.interpolate(previous, current, record["end"])
        if previous is not None:
            shares = energy.sm_shares((s.pid, s.timeStamp, s.smUtil) for s in utilization or ())
            given, rest = energy.split(current[1] - previous[1], shares)
            # a PID's samples belong to its running record, or to the one that ended in this interval
            owner = {r["pid"]: r for r in records.values() if not r["active"] and r["end"] > previous[0]}
            owner.update({r["pid"]: r for r in records.values() if r["active"]})
            for pid, joules in given.items():
                record = owner.get(pid)
                if record is None:  # started and exited within the interval, seen only in the samples
                    record = records[_key(pid, previous[0])] = {
                        "pid": pid, "start": previous[0], "end": now, "active": 0,
                        "e_start": previous[1], "e_end": current[1], **self.describe(pid)}
                record["attributed"] = record.get("attributed", 0.0) + joules
            state["unattributed"] = state.get("unattributed", 0.0) + rest
        state["energy"] = list(current)

    def _write(self, dev, state, records, running, utilization, samples) -> None:
        averages = _averages(utilization or ())
        ordered = sorted(records.values(), key=lambda r: (not r["active"], -(r["end"] or 0), r["pid"]))
        limit = self.ctx.options.max_processes
        gpu = (str(dev.index), dev.uuid)  # DEVICE_LABELS
        samples.add_row("gputext_processes_dropped", max(0, len(ordered) - limit), gpu)
        energy_now = state["energy"][1] if "energy" in state else None
        add = samples.add_row
        # the utilisation series the level writes (standard leaves the video engines out)
        written = [(position, key) for position, key in enumerate(UTILIZATION_KEYS) if samples.wants(key)]
        for record in ordered[:limit]:
            labels = self.series(dev, record).labels
            # label values in the catalogue's order (gpu, uuid, then PROCESS_LABELS), made once for
            # the record's eight or so series
            row = tuple(labels[name] for name in _ROW_LABELS)
            if record["active"]:
                add("process_memory_used_bytes", running.get(record["pid"]), row)
                if utilization is not None:  # None: this GPU cannot sample processes (MIG)
                    percents = averages.get(record["pid"], (0, 0, 0, 0))
                    for position, key in written:
                        add(key, percents[position] / 100, row)
            elif record["start"] is not None:
                add("process_duration_seconds", record["end"] - record["start"], row)
            add("process_start_time_seconds", record["start"], row)
            add("process_active", record["active"], row)
            if "e_start" in record and energy_now is not None:
                window = record.get("e_end", energy_now) - record["e_start"]
                add("process_energy_joules_total", window, row + ("nvml",))
                add("process_attributed_energy_joules_total", record.get("attributed", 0.0), row)
        if energy_now is not None:
            samples.add_row("unattributed_energy_joules_total", state.get("unattributed", 0.0), gpu)


def _key(pid: int, start: float) -> str:
    return f"{pid}@{start:.6f}"


def _averages(utilization) -> dict[int, tuple]:
    """{pid: (sm, memory, encoder, decoder) percent averaged over the process's samples}."""
    sums: dict[int, list[float]] = {}
    for s in utilization:
        acc = sums.setdefault(s.pid, [0.0, 0.0, 0.0, 0.0, 0])
        acc[0] += s.smUtil
        acc[1] += s.memUtil
        acc[2] += s.encUtil
        acc[3] += s.decUtil
        acc[4] += 1
    return {pid: tuple(v / acc[4] for v in acc[:4]) for pid, acc in sums.items()}

"""One collection: run the chosen collectors into one set of samples, then render it."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path

from . import __version__, shape
from .collectors import REGISTRY, LastingFailure, NotApplicable, load
from .exposition import Samples
from .terminal import complain

# The state's sections this module keeps (gputext.state): a lasting condition said this boot -> the
# boot's id; for --naming dcgm, GPU UUID -> [its NVLink bytes, when]
SAID = shape.mapping(shape.text)
NVLINK_SUMS = shape.mapping(shape.tuple_of(shape.number, shape.number))


class Options:
    """Everything a collection needs from the command line; defaults are the CLI's defaults. The class
    attributes are the defaults (all immutable), `Options(name=value, ...)` sets the others. A plain class,
    not a dataclass, for the import (see gputext.catalogue)."""

    collectors: Sequence[str] = ()  # empty: every collector that applies
    prefix: str = "gpu_"
    state_dir: Path | None = None
    debug: bool = False
    host_root: Path = Path("/")  # where the host's /proc and /var/log are (a container mounts them elsewhere)
    # processes
    retention_seconds: float = 300.0
    max_processes: int = 1000
    # dcgm
    dcgm_host: str = "localhost:5555"
    dcgm_bindings: Path | None = None  # None: the DCGM 4 and DCGM 3 install paths
    # kubernetes
    pod_resources_socket: Path = Path("/var/lib/kubelet/pod-resources/kubelet.sock")
    kubelet_timeout_seconds: float = 2.0
    gpu_resource_names: Sequence[str] = ()  # beyond nvidia.com/gpu and nvidia.com/mig-*
    pod_cache_ttl_seconds: float = 30.0
    # slurm: dcgm-exporter's job-mapping directory (files <gpu>[.<gpu instance>] of job ids), if the site writes it
    hpc_job_mapping_dir: Path | None = None
    # gpm: the wait between a one-shot run's two samples (NVML needs more than 100 ms)
    gpm_window_seconds: float = 1.0
    # pcie: how often a process that collects again samples the PCIe rate where byte counters are missing
    pcie_sample_interval_seconds: float = 15.0
    detail: str = "standard"  # catalogue.DETAILS
    naming: str = "gputext"  # or one of catalogue.DCGM_NAMINGS: dcgm-exporter's names (gputext.dcgm_exporter)
    counters: object = None  # dcgm_exporter.Counters: the DCGM series --naming dcgm writes, and NVML fields
    # xid
    kmsg: Path | None = None  # None: /dev/kmsg under host_root

    def __init__(self, **given):
        for name, value in given.items():
            if name.startswith("_") or not hasattr(Options, name) or callable(getattr(Options, name)):
                raise TypeError(f"Options has no option {name!r}")
            setattr(self, name, value)

    def replace(self, **changed) -> "Options":
        """A copy with `changed` options."""
        return Options(**{**self.__dict__, **changed})

    def host_path(self, path: str) -> Path:
        """A host path such as /proc/1/cgroup, under --host-root."""
        return self.host_root / path.lstrip("/")


class Context:
    """What collectors share within a run: options, the NVML session and the device list."""

    def __init__(self, options: Options, warn: Callable[[str], None] = complain):
        from .state import State

        self.options = options
        self.warn = warn
        self._said: set = set()
        # taken (locked) only when a collector asks for it; "no state" is a lasting condition, said once
        self.state = State(options.state_dir, warn, note=self.note_once)
        self._nvml = None
        self._inventory = None
        self.dcgm_nvlink_sums: dict[str, list] = {}  # --naming dcgm without state: last cycle's NVLink sums
        self._kept: dict[str, object] = {}
        # what the xid collector keeps for the next cycle of the repeating mode (an open kernel log, the
        # boot time, counts without state); its open log is closed with the context
        self.held: dict[str, object] = {}
        # XID events (events.XidEvent) the repeating mode's NVML event set received since the xid
        # collector last ran; None where no event set is watched (one-shot runs, no NVML events)
        self.xid_events: list | None = None
        self.new_cycle()

    def new_cycle(self) -> None:
        """Start a collection. The repeating mode calls it once per cycle: NVML and the device inventory
        stay, what belongs to one collection starts afresh."""
        self.now = time.time()
        # GPU UUID -> pod/namespace/container for its device series; set by the kubernetes collector
        self.pod_labels: dict[str, dict[str, str]] = {}
        # --naming dcgm: (GPU UUID, GPU instance, "" for the whole GPU) -> the labels dcgm-exporter gives the
        # series of a GPU or GPU instance that one container holds (pod, and a DRA claim's); set by the
        # kubernetes collector
        self.dcgm_holders: dict[tuple[str, str], dict[str, str]] = {}
        # (GPU UUID, GPU instance or "") -> Slurm job IDs holding it; set by the slurm collector
        self.gpu_jobs: dict[tuple[str, str], list[str]] = {}
        # the process series of this run (collectors.processes.Process); set by the processes collector
        self.processes: list | None = None
        self._devices = None
        self._mig_devices: dict[str, list] = {}  # GPU UUID -> its MIG devices, this collection
        self._slurm = None  # slurm.SlurmJobs of this collection
        self._nvml_error = None  # a driver that was missing may have come up since: try again

    def note_once(self, message: str, per_boot: bool = True) -> None:
        """Warn about a lasting condition (accounting off, a package missing) once, not every run: once
        per process, and, with `per_boot`, once per boot across runs, remembered in the state (a timer
        run every 5 s would otherwise put 17,000 copies a day into the journal). `gputext doctor` shows
        these conditions whenever asked."""
        if message in self._said:
            return
        self._said.add(message)
        if per_boot and self._said_this_boot(message):
            return
        self.warn(message)

    def _said_this_boot(self, message: str) -> bool:
        from .state import StateUnavailable

        try:
            said = self.state.section("said", SAID)
        except StateUnavailable:
            return False  # without state each run says it
        boot = self.boot_id()
        for old in [text for text, when in said.items() if when != boot]:
            del said[old]  # conditions said in an earlier boot are said again
        if said.get(message) == boot:
            return True
        said[message] = boot
        return False

    def boot_id(self) -> str:
        """This boot's ID (gputext.state.boot_id), read from the host's /proc."""
        from .state import boot_id

        return boot_id(self.options.host_path("/proc"))

    @property
    def nvml(self):
        """The NVML session, started on first use. Raises NvmlUnavailable (every time) if it cannot."""
        if self._nvml is not None:  # asked for about 30 times a cycle
            return self._nvml
        if self._nvml_error is not None:
            raise self._nvml_error
        from .nvml import Nvml

        nvml = Nvml(self.warn)
        try:
            nvml.start()
        except Exception as err:
            self._nvml_error = err
            raise
        self._nvml = nvml
        return nvml

    def devices(self):
        """(System, [Device]) of this run, discovered once."""
        if self._devices is None:
            from .devices import Inventory

            if self._inventory is None:
                self._inventory = Inventory(self.nvml, self.options.state_dir, self.warn)
            self._devices = self._inventory.discover(self.now, self.boot_id())
        return self._devices

    def mig_devices(self, dev) -> list:
        """The MIG devices of a GPU (devices.MigDevice), read once per collection for every
        collector that needs them; not kept across collections, since MIG devices can be re-created
        at any time. Raises DeviceGone."""
        if dev.uuid not in self._mig_devices:
            from .devices import read_mig_devices

            self._mig_devices[dev.uuid] = read_mig_devices(self.nvml, dev)
        return self._mig_devices[dev.uuid]

    def slurm_jobs(self):
        """The Slurm jobs of this collection (slurm.SlurmJobs), shared by the processes collector, which
        finds each process's job, and the slurm collector, which writes the jobs' GPUs."""
        if self._slurm is None:
            from .slurm import SlurmJobs

            self._slurm = SlurmJobs(self.options.host_root, self.options.hpc_job_mapping_dir)
        return self._slurm

    def static(self, dev, name: str, read, fits):
        """A static value of a device, cached across runs, of the shape `fits` (see Inventory.static)."""
        return self._inventory.static(dev, name, read, fits)

    def minor_number(self, dev) -> int | None:
        """The N of the GPU's /dev/nvidiaN, which device plugins (GKE) and DRA (gpu.nvidia.com) name GPUs
        by and dcgm-exporter's `device` label shows: read once, then kept with the inventory (it can change
        only with a reboot, which renews the inventory). None where NVML does not give it."""
        import pynvml

        from .devices import MINOR_NUMBER
        from .nvml import DeviceGone

        if not dev.up:
            return None
        try:
            number = self.static(dev, "minor_number", lambda: self.nvml.call(
                pynvml.nvmlDeviceGetMinorNumber, dev.handle, device=dev.name), MINOR_NUMBER)
        except DeviceGone:
            return None
        return None if number is None else int(number)

    def devices_by_minor(self, devices) -> dict:
        """{minor number: device} of the `devices` NVML gives a minor number for (see minor_number)."""
        numbers = ((self.minor_number(dev), dev) for dev in devices)
        return {number: dev for number, dev in numbers if number is not None}
    def kept(self, name: str, make: Callable[[], object]) -> object:
        """An object a collector keeps for the life of this process, across the cycles of the repeating
        mode (GPM's samples, which live inside NVML and cannot be saved in the state); made on first
        use, and closed (its close()) before NVML shuts down."""
        if name not in self._kept:
            self._kept[name] = make()
        return self._kept[name]

    @property
    def nvml_unavailable(self) -> bool:
        return self._nvml_error is not None

    def end_cycle(self) -> None:
        """Keep what this collection learnt (inventory cache, state) and release the state lock."""
        if self._inventory is not None:
            self._inventory.save()
        self.state.close()

    def close(self) -> None:
        self.end_cycle()
        kept, self._kept = self._kept, {}
        for thing in kept.values():
            thing.close()
        for held in self.held.values():
            if hasattr(held, "close"):  # an open log
                held.close()
        self.held.clear()
        if self._nvml is not None:
            self._nvml.stop()
            self._nvml = None


class Result:
    """What a collection gave: the samples, whether NVML could be read, the collectors that failed."""

    def __init__(self, samples: Samples, nvml_unavailable: bool, failed: list[str],
                 pod_labels: dict[str, dict[str, str]], dcgm: DcgmNaming | None = None):
        self.samples = samples
        self.nvml_unavailable = nvml_unavailable
        self.failed = failed
        self.pod_labels = pod_labels
        self.dcgm = dcgm  # set for --naming dcgm

    def render(self, prefix: str) -> bytes:
        if self.dcgm is not None:
            from .dcgm_exporter import render

            return render(self.samples, self.dcgm.counters, self.dcgm.devices, prefix, self.pod_labels,
                          self.dcgm.nvlink_bandwidth, self.dcgm.holders, self.dcgm.jobs)
        return self.samples.render(prefix, self.pod_labels)


class DcgmNaming:
    """What --naming dcgm needs beyond the samples: the counters, each GPU's labels, the NVLink rate."""

    def __init__(self, counters: object):
        self.counters = counters
        self.devices: dict[str, dict[str, str]] = {}
        self.nvlink_bandwidth: dict[str, float] = {}
        self.holders: dict[tuple[str, str], dict[str, str]] = {}  # Context.dcgm_holders
        self.jobs: dict[tuple[str, str], list[str]] = {}  # Context.gpu_jobs: the hpc_job copies


def _samples(options: Options) -> Samples:
    """The samples of a run: at the chosen detail level, plus the series --naming dcgm writes."""
    if options.naming == "gputext":
        return Samples(options.detail)
    selected = options.counters.selected
    return Samples(options.detail, keep=lambda key, labels: any(d.covers(labels) for d in selected[key]),
                   keep_keys=frozenset(selected))


def _dcgm_naming(ctx: Context, samples: Samples) -> DcgmNaming:
    from .dcgm_exporter import counters_note, identity, nvlink_bandwidth
    from .state import StateUnavailable

    counters = ctx.options.counters
    naming = DcgmNaming(counters)
    naming.holders = ctx.dcgm_holders
    naming.jobs = ctx.gpu_jobs
    note = counters_note(counters)
    if note:
        ctx.note_once(note)
    if ctx.nvml_unavailable:
        return naming
    system, devices = ctx.devices()
    naming.devices = identity(system, devices, ctx.minor_number, counters.naming)
    if counters.wants_nvlink_bandwidth():
        try:
            kept = ctx.state.section("dcgm_nvlink_bandwidth", NVLINK_SUMS)
        except StateUnavailable:
            kept = ctx.dcgm_nvlink_sums  # without state, the repeating mode still has its last cycle's
        naming.nvlink_bandwidth, sums = nvlink_bandwidth(samples, dict(kept), ctx.now)
        kept.clear()
        kept.update(sums)
    return naming


def _say_unanswered(ctx: Context, samples: Samples) -> None:
    """Once, what fields of the counters file a GPU does not answer: a field asked for and never written
    would otherwise look like a bug of gputext's."""
    from .dcgm_exporter import unanswered_notes

    _, devices = ctx.devices()
    for note in unanswered_notes(ctx.options.counters, samples, {d.uuid: str(d.index) for d in devices if d.up}):
        ctx.note_once(note)


def collect(ctx: Context) -> Result:
    from .nvml import NvmlUnavailable

    samples = _samples(ctx.options)
    explicit = bool(ctx.options.collectors)
    names = ctx.options.collectors or tuple(REGISTRY)
    # A collector that has to wait (GPM, between its two samples) has a begin(ctx) step: it starts
    # before any collector runs and finishes in its turn (last), so the wait overlaps the others' work.
    # What begin raises is handled in that turn, as if collect had raised it.
    begun: dict[str, tuple[float, Exception | None]] = {}
    for name in names:
        begin = getattr(load(name), "begin", None)
        if begin is not None:
            started = time.perf_counter()
            try:
                begin(ctx)
                begun[name] = (time.perf_counter() - started, None)
            except Exception as err:  # noqa: BLE001 - reported in the collector's turn below
                begun[name] = (time.perf_counter() - started, err)
    failed = []
    for name in names:
        # popped, and let go of below: an exception held here would hold this frame through its traceback,
        # a cycle that keeps the whole cycle's Samples alive until a full garbage collection
        spent, begin_error = begun.pop(name, (0.0, None))
        started = time.perf_counter()
        try:
            if begin_error is not None:
                raise begin_error
            load(name).collect(ctx, samples)
            success = 1
        except NotApplicable as err:
            if not explicit:
                continue
            ctx.warn(f"collector {name}: {err}")
            success = 0
        except LastingFailure as err:
            ctx.note_once(f"collector {name}: {err}")
            success = 0
        except NvmlUnavailable as err:
            ctx.note_once(str(err), per_boot=False)  # a run that exits 1 always says why
            success = 0
        except Exception as err:  # one failing source must not take the others down
            ctx.warn(f"collector {name} failed: {type(err).__name__}: {err}")
            if ctx.options.debug:
                import traceback  # about 4 ms to import (linecache, tokenize, textwrap): only when asked

                for line in traceback.format_exc().splitlines():  # each line made visible, as one warning
                    ctx.warn(line)
            success = 0
        finally:
            begin_error = None
        if not success:
            failed.append(name)
        samples.add("gputext_collector_success", success, {"collector": name})
        samples.add("gputext_collector_duration_seconds", spent + time.perf_counter() - started,
                    {"collector": name})
    samples.add("gputext_build_info", 1, {"version": __version__})
    if ctx.options.counters is not None and not ctx.nvml_unavailable:
        _say_unanswered(ctx, samples)
    dcgm = _dcgm_naming(ctx, samples) if ctx.options.naming != "gputext" else None
    return Result(samples, ctx.nvml_unavailable, failed, ctx.pod_labels, dcgm)

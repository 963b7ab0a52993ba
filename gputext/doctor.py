"""`gputext doctor`: is this node ready for gputext? One line per prerequisite, with the fix.

It takes collect's options and GPUTEXT_* variables, so it checks what a run with the same environment
(the timer's, with /etc/default/gputext loaded) would use. Each check gives one line:

    ok    nvml: /usr/lib/x86_64-linux-gnu/libnvidia-ml.so.580.159.04 loaded, driver 580.159.04, 8 GPUs
    FAIL  output: /x does not exist; fix: mkdir -p /x
    warn  persistence: ...   (works, but worse than it should; does not fail the check)
    info  dcgm: ...          (an optional source that is absent or not enabled)

A collector is "enabled" when --collectors names it, or when --collectors is empty (all that apply).
An optional source that is missing (no DCGM, no kubelet) is info, unless --collectors names it; one that
is present but unusable (a kubelet socket gputext may not open) fails, since the default run would fail
on it. NVML is read through gputext.run's Context, the same path as collect, without state.
"""

from __future__ import annotations

import grp
import os
import pwd
import socket
import stat
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .cli import UNITS_OUT, host_port
from .readfile import CONFIG_FILE_LIMIT, PROC_FILE_LIMIT, read_bounded_text
from .run import Context, Options
from .terminal import visible

OK, FAIL, WARN, INFO = "ok", "FAIL", "warn", "info"

NODE_EXPORTER_PROGRAMS = ("node_exporter", "prometheus-node-exporter", "node-exporter")
NODE_EXPORTER_USERS = ("prometheus", "node_exporter", "node-exporter")  # Debian's first
# Debian and Ubuntu build prometheus-node-exporter with this default; upstream's default reads no directory.
DEBIAN_TEXTFILE_DIR = "/var/lib/prometheus/node-exporter"
TEXTFILE_FLAG = "--collector.textfile.directory"
DCGM_PORT = 5555  # nv-hostengine's default, also where --dcgm-host names no port
CONNECT_TIMEOUT_SECONDS = 1.0
STALE_SECONDS = 60.0


@dataclass
class Check:
    status: str
    name: str
    message: str

    def line(self) -> str:
        """The check's line; what it quotes from outside (paths, option values) with control characters
        made visible."""
        return visible(f"{self.status:<6}{self.name}: {self.message}")


def diagnose(options: Options, out: str | None, problems: Sequence[str] = ()) -> list[Check]:
    """Every check, in the order a person would fix them. `out` None: the units' default file;
    `problems`: the option values that collect would refuse (each fails a check)."""
    checks: list[Check] = [Check(FAIL, "options", f"{problem}; fix: correct it in /etc/default/gputext or on "
                                 "the command line (collect refuses to run with it)") for problem in problems]
    if os.geteuid() != 0:
        checks.append(Check(INFO, "user", f"running as uid {os.geteuid()}, the units run as root: files, "
                            "sockets and processes may look different to them; run doctor as root"))
    warnings: list[str] = []
    # one NVML session for every check that reads the GPUs: where persistence mode is off, each nvmlInit
    # initialises every GPU again (1-3 s a GPU). No state: doctor changes nothing.
    ctx = Context(options.replace(state_dir=None), warnings.append)
    try:
        checks += check_nvml(ctx, warnings)
        kubelet = _checked("kubelet", "GPUTEXT_POD_RESOURCES_SOCKET", check_kubelet, options)
        checks += [_checked("dcgm", "GPUTEXT_DCGM_BINDINGS", check_dcgm, options), kubelet]
        if kubelet.status == OK:
            checks += check_allocations(ctx)
    finally:
        ctx.close()
    checks.append(_checked("kernel log", "GPUTEXT_KMSG", check_kmsg, options))
    named = out or str(UNITS_OUT)
    target = _replaced_file(named)
    exporters = node_exporters(options)
    checks.append(_checked("output", "GPUTEXT_OUT", check_output, named, out is None,
                           reader(exporters, target.parent)))
    checks.append(_checked("node_exporter", "GPUTEXT_OUT", check_node_exporter, exporters, target.parent,
                           debian_defaults(options)))
    checks.append(_checked("state", "GPUTEXT_STATE_DIR", check_state, options.state_dir))
    return checks


def _checked(name: str, variable: str, check, *args) -> Check:
    """`check(*args)`; where the system refuses a path it looks at (a name over 255 bytes, a loop of
    links), the check fails with that reason instead of ending doctor."""
    try:
        return check(*args)
    except OSError as err:
        where = f" {err.filename}" if err.filename else ""
        return Check(FAIL, name, f"cannot look at{where}: {err.strerror or err}; fix: correct the path ({variable} "
                     "or its option)")


def enabled(options: Options, collector: str) -> bool:
    return not options.collectors or collector in options.collectors


def named(options: Options, collector: str) -> bool:
    return collector in options.collectors


# --- NVML ----------------------------------------------------------------------------------------------

def check_nvml(ctx: Context, warnings: list[str]) -> list[Check]:
    """The GPUs as `ctx`'s NVML session finds them; `warnings`: what the session said to ctx's warn."""
    from .nvml import NvmlUnavailable

    options = ctx.options
    try:
        system, devices = ctx.devices()
        gpm = check_gpm(ctx, system, [dev for dev in devices if dev.up])
        slurm = check_slurm(ctx)
    except NvmlUnavailable as err:
        return [Check(FAIL, "nvml", str(err))]
    loaded = f"{_loaded_library()} loaded, driver {system.driver_version or '?'}"
    if devices:
        checks = [Check(OK, "nvml", f"{loaded}, {_count(len(devices), 'GPU')}")]
    else:
        checks = [Check(FAIL, "nvml", f"{loaded}, but it finds no GPU; fix: check 'nvidia-smi' and that "
                        "/dev/nvidia0.. exist")]
    checks += [Check(INFO, "nvml", warning) for warning in dict.fromkeys(warnings)]
    checks += [Check(FAIL, f"gpu {dev.index}", f"not answering ({dev.error}); fix: check 'nvidia-smi' and "
                     "'dmesg'; a lost GPU needs a reset or a reboot") for dev in devices if not dev.up]
    up = [dev for dev in devices if dev.up]
    checks.append(_mode_check(
        up, "persistence_mode", "persistence", WARN,
        "every run initialises the GPUs again (1-3 s per GPU) and the energy counters restart whenever the "
        "driver unloads; fix: systemctl enable --now nvidia-persistenced (or nvidia-smi -pm 1)"))
    checks.append(_mode_check(
        up, "accounting_mode", "accounting", WARN if enabled(options, "processes") else INFO,
        "processes that start and exit between two runs are missed and start times are first-seen times; "
        "fix: nvidia-smi -am 1 (as root; MIG keeps it off)"))
    checks += [gpm, slurm]
    return [check for check in checks if check is not None]


def check_slurm(ctx: Context) -> Check:
    """Whether Slurm jobs hold GPUs here, how they were found, and what could not be read."""
    from .collectors.slurm import find

    options = ctx.options
    if not enabled(options, "slurm"):
        return Check(INFO, "slurm", "not enabled (--collectors)")
    found = find(ctx)
    jobs = ctx.slurm_jobs()
    mapping = (f"mapping directory {jobs.mapping_dir}" if jobs.mapping_dir is not None and
               jobs.mapping_dir.is_dir() else None)
    if jobs.mapping_dir is not None and mapping is None:
        return Check(FAIL if named(options, "slurm") else WARN, "slurm", f"--hpc-job-mapping-dir {jobs.mapping_dir} "
                     "is not a directory; fix: the directory your Slurm prolog writes, or leave the option out")
    if not found.held:
        cgroups = jobs.running() is not None
        return Check(INFO, "slurm", ("Slurm job cgroups here, but no job holds a GPU now" if cgroups or mapping else
                                     "no Slurm job on this node (no job cgroups, no GPU process in a job"
                                     + ("" if mapping else ", no --hpc-job-mapping-dir") + ")"))
    by_uuid = {dev.uuid: dev.index for dev in ctx.devices()[1]}
    gpus = sorted({by_uuid[uuid] for uuid, _ in found.held})
    ids = sorted(found.jobs, key=int)
    parts = [f"{_count(len(ids), 'job')} ({', '.join(ids[:5])}{', ...' if len(ids) > 5 else ''}) "
             f"on GPU {', '.join(map(str, gpus))}, found from {', '.join(found.how)}"]
    if mapping is None:
        unified = ctx.options.host_path("/sys/fs/cgroup/cgroup.controllers").exists()
        parts.append("no --hpc-job-mapping-dir" + (": on cgroup v2 Slurm keeps a job's devices in an eBPF "
                                                   "program, so a GPU whose job runs nothing on it is not seen"
                                                   if unified else ""))
    unknown = [job.id for job in found.jobs.values() if not job.account]
    if unknown:
        why = (": another user's /proc/<pid>/environ needs CAP_SYS_PTRACE, which the units do not grant "
               "(docs/slurm.md)" if jobs.environ_unreadable else ": no process of theirs to read it from")
        parts.append(f"account and partition unknown for job {', '.join(sorted(unknown, key=int)[:5])}{why}")
    if jobs.unresolved_sluids:
        parts.append(f"{len(jobs.unresolved_sluids)} SLUID job directories whose job ID was not found (no "
                     "readable slurmstepd title or environment): their processes have no job")
    if found.stale:
        parts.append(f"the mapping directory names ended jobs ({', '.join(found.stale[:3])}); fix: the epilog")
    if jobs.bad_lines:
        parts.append(f"{len(jobs.bad_lines)} lines of the mapping directory are not job IDs")
    return Check(OK, "slurm", "; ".join(parts))


def check_gpm(ctx: Context, system, devices: Sequence) -> Check | None:
    """Which GPUs give the gpm collector's profiling metrics. Missing GPM is info (it needs a Hopper or
    newer GPU), unless --collectors names gpm and no GPU has it: collect would fail then."""
    import pynvml

    from .collectors.gpm import wrappers_missing
    from .nvml import DeviceGone

    options = ctx.options
    if not enabled(options, "gpm"):
        return Check(INFO, "gpm", "not enabled (--collectors)")
    if not devices:
        return None  # no GPU answers: the lines above say why
    missing = FAIL if named(options, "gpm") else INFO
    wrappers = wrappers_missing()
    if wrappers:
        return Check(missing, "gpm", f"no profiling metrics: {wrappers}")
    supported, lacking = [], []
    no_function = object()
    for dev in devices:
        try:
            answer = ctx.nvml.call(pynvml.nvmlGpmQueryDeviceSupport, dev.handle, device=dev.name,
                                   no_function=no_function)
        except DeviceGone:
            continue  # reported by the nvml collector's next run
        if answer is no_function:
            return Check(missing, "gpm", f"driver {system.driver_version or '?'} has no GPM "
                         "(nvmlGpmQueryDeviceSupport), so no profiling metrics; they need a Hopper or "
                         "newer GPU and a driver of CUDA 11.8 (R520) or newer")
        (supported if answer is not None and answer.isSupportedDevice else lacking).append(dev)
    if not supported and not lacking:
        return None
    if not lacking:
        return Check(OK, "gpm", f"supported on {_all_gpus(supported)}: a one-shot run waits "
                     f"--gpm-window ({options.gpm_window_seconds:g}s) for its second sample")
    by_model: dict = {}
    for dev in lacking:
        by_model.setdefault(dev.info.get("name") or "?", []).append(dev.index)
    none = "; ".join(f"GPU {_indexes(indexes)} ({model}) {'has' if len(indexes) == 1 else 'have'} none"
                     for model, indexes in by_model.items())
    if not supported:
        return Check(missing, "gpm", f"GPM profiling metrics need Hopper or newer; {none}")
    return Check(INFO, "gpm", f"supported on GPU {_indexes([dev.index for dev in supported])}; {none}: "
                 "GPM profiling metrics need Hopper or newer")


def _all_gpus(devices: Sequence) -> str:
    return "all " + str(len(devices)) + " GPUs" if len(devices) > 1 else f"GPU {devices[0].index}"


def _indexes(indexes: Sequence[int]) -> str:
    """`0..3, 6`: runs of three or more GPUs as first..last."""
    runs: list[list[int]] = []
    for index in sorted(indexes):
        if runs and index == runs[-1][-1] + 1:
            runs[-1].append(index)
        else:
            runs.append([index])
    return ", ".join(f"{run[0]}..{run[-1]}" if len(run) > 2 else ", ".join(map(str, run)) for run in runs)


def _mode_check(devices: Sequence, setting: str, name: str, off_status: str, off_means: str) -> Check | None:
    values = {dev.index: dev.settings.get(setting) for dev in devices}
    off = [str(index) for index, value in values.items() if value == 0]
    if off:
        return Check(off_status, name, f"off on GPU {', '.join(off)}: {off_means}")
    if any(value == 1 for value in values.values()):
        return Check(OK, name, "on" + (f" for all {len(values)} GPUs" if len(values) > 1 else ""))
    return None  # not supported (or no GPU): nothing to say


def _loaded_library() -> str:
    """Where libnvidia-ml.so.1 was loaded from (a person with two drivers installed wants to know)."""
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                path = line.split(None, 5)[-1].strip()
                if "libnvidia-ml.so" in os.path.basename(path):
                    return path
    except OSError:
        pass
    return "libnvidia-ml.so.1"


# --- optional sources ----------------------------------------------------------------------------------

def check_kmsg(options: Options) -> Check:
    """Can the xid collector read the kernel log? `--kmsg -` (the units: systemd opens /dev/kmsg for
    the service) is checked as the host's /dev/kmsg, which a person running doctor opens alike."""
    from .kmsg import STANDARD_INPUT, Counted, KmsgReader, KmsgUnreadable, NotAKernelLog

    if not enabled(options, "xid"):
        return Check(INFO, "kernel log", "not enabled (--collectors)")
    given = options.kmsg
    path = options.host_path("/dev/kmsg") if given is None or str(given) == STANDARD_INPUT else given
    if path.is_fifo():  # records read from a FIFO are gone: doctor would take them from the collector
        return Check(OK, "kernel log", f"{path} is a FIFO, filled by whatever writes it (on Kubernetes, the "
                     "kernel-log container); not read here, so that its XIDs stay for the collector")
    reader = KmsgReader(path)
    try:
        xids = reader.read(Counted()).found
    except FileNotFoundError:
        return Check(FAIL if named(options, "xid") else INFO, "kernel log", f"no kernel log at {path}, so no "
                     "XIDs; fix: in a container, mount the host's /dev/kmsg, or set GPUTEXT_KMSG")
    except KmsgUnreadable as err:
        restrict = _read_text(options.host_path("/proc/sys/kernel/dmesg_restrict"))
        return Check(FAIL if named(options, "xid") else WARN, "kernel log",
                     f"cannot read {err}, so XIDs are not counted (kernel.dmesg_restrict={restrict or '?'}: "
                     "opening the log needs CAP_SYSLOG); fix: run gputext as root with CAP_SYSLOG (the systemd "
                     "units keep that capability), pass the log opened on standard input with --kmsg -, or "
                     "set kernel.dmesg_restrict=0")
    except (OSError, NotAKernelLog) as err:
        return Check(FAIL, "kernel log", f"cannot read {path}: {getattr(err, 'strerror', None) or err}; fix: "
                     "set GPUTEXT_KMSG to /dev/kmsg")
    finally:
        reader.close()
    return Check(OK, "kernel log", f"{path} is readable; {len(xids)} XIDs in it this boot")


def _read_text(path: Path) -> str:
    try:
        return read_bounded_text(path, CONFIG_FILE_LIMIT, "replace").strip()
    except (OSError, ValueError):
        return ""


def check_dcgm(options: Options) -> Check:
    if not enabled(options, "dcgm"):
        return Check(INFO, "dcgm", "not enabled (--collectors)")
    missing = FAIL if named(options, "dcgm") else INFO
    why_not = ("" if named(options, "dcgm") else
               "per-process energy comes from NVML alone; ")
    host, port = host_port(options.dcgm_host, DCGM_PORT)
    try:
        socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_SECONDS).close()
    except OSError as err:
        return Check(missing, "dcgm", f"no DCGM host engine answers on {options.dcgm_host} "
                     f"({err.strerror or err}); {why_not}fix: install DCGM and start nv-hostengine "
                     "(systemctl enable --now nvidia-dcgm), or set GPUTEXT_DCGM_HOST")
    from .collectors.dcgm import DEFAULT_BINDINGS

    candidates = (options.dcgm_bindings,) if options.dcgm_bindings else DEFAULT_BINDINGS
    found = next((d for d in candidates if (d / "pydcgm.py").is_file()), None)
    if found is None:
        return Check(missing, "dcgm", f"nv-hostengine answers on {options.dcgm_host}, but no pydcgm.py in "
                     f"{' or '.join(map(str, candidates))}; {why_not}fix: install DCGM's Python bindings "
                     "(package datacenter-gpu-manager-4), or set GPUTEXT_DCGM_BINDINGS")
    return Check(OK, "dcgm", f"nv-hostengine answers on {options.dcgm_host}; bindings in {found}")


def check_kubelet(options: Options) -> Check:
    if not enabled(options, "kubernetes"):
        return Check(INFO, "kubelet", "not enabled (--collectors)")
    from .collectors.kubernetes import grpc_missing, socket_missing_in_a_pod

    path = options.pod_resources_socket
    if not path.exists():
        misplaced = socket_missing_in_a_pod(path)
        if misplaced:
            return Check(FAIL if named(options, "kubernetes") else WARN, "kubelet", misplaced)
        if named(options, "kubernetes"):
            return Check(FAIL, "kubelet", f"no pod-resources socket at {path}; fix: run on a Kubernetes node "
                         "(kubelet 1.20 or newer), or set GPUTEXT_POD_RESOURCES_SOCKET")
        return Check(INFO, "kubelet", f"no pod-resources socket at {path}: not a Kubernetes node, so no pod "
                     "names")
    if not stat.S_ISSOCK(path.stat().st_mode):
        return Check(FAIL, "kubelet", f"{path} is not a socket; fix: set GPUTEXT_POD_RESOURCES_SOCKET to the "
                     "kubelet's pod-resources socket")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(CONNECT_TIMEOUT_SECONDS)
        try:
            sock.connect(str(path))
        except OSError as err:
            return Check(FAIL, "kubelet", f"cannot connect to {path}: {err.strerror or err}; fix: run gputext "
                         "as root (the units do), and check that the kubelet runs")
    missing = grpc_missing()
    if missing:
        return Check(FAIL, "kubelet", f"{path} accepts connections, but {missing}")
    return Check(OK, "kubelet", f"{path} accepts connections")


def _count(n: int, thing: str) -> str:
    return f"{n} {thing}{'' if n == 1 else 's'}"


def check_allocations(ctx: Context) -> list[Check]:
    """What the kubelet's answer holds (one List call, as a run whose pod cache is old makes): the
    device-plugin and DRA allocations of the GPUs `ctx` found, and what could not be placed."""
    from . import dra
    from .collectors.kubernetes import ask_kubelet, shown, unreadable_name
    from .kubelet import KubeletError
    from .nvml import NvmlUnavailable

    options = ctx.options
    try:
        _, devices = ctx.devices()
        found = ask_kubelet(ctx, devices)
    except (NvmlUnavailable, ImportError):
        return []  # the nvml and kubelet checks say why
    except KubeletError as err:
        return [Check(FAIL, "allocations", f"{err}")]
    claimed = sum(1 for allocation in found.allocations if allocation.device)
    parts = [f"the kubelet reports {_count(len(found.allocations) - claimed, 'device-plugin allocation')} and "
             f"{_count(claimed, 'DRA allocation')} ({dra.DRIVER}) of this node's GPUs (one per container and GPU "
             "or MIG device)"]
    if found.not_created:
        parts.append(f"{_count(len(found.not_created), 'DRA MIG device')} "
                     f"{'has' if len(found.not_created) == 1 else 'have'} no GPU instance yet "
                     f"({', '.join(found.not_created[:5])})")
    if found.named_by_cdi:
        parts.append(f"{_count(found.named_by_cdi, 'DRA device')} named by CDI only (a kubelet before 1.31)")
    status = OK
    if found.unknown:
        status = WARN
        parts.append(f"{_count(len(found.unknown), 'device')} {'names' if len(found.unknown) == 1 else 'name'} "
                     "no GPU NVML lists here "
                     f"({', '.join(map(shown, found.unknown[:5]))})")
    checks = [Check(status, "allocations", "; ".join(parts))]
    checks += [Check(WARN, "dra", unreadable_name(name)) for name in found.unreadable]
    prepared = _prepared_claims(options)
    if prepared and not found.dra_devices:
        checks.append(Check(WARN, "dra", f"NVIDIA's DRA driver has prepared {_count(len(prepared), 'claim')} on "
                            f"this node ({options.host_path(CDI_DIRECTORY)}/{dra.CDI_VENDOR}-claim_*.yaml), but "
                            "the kubelet reports no DRA device: its GPUs get no pod; fix: Kubernetes 1.34 or "
                            "newer, or on 1.27-1.33 the kubelet feature gate "
                            "KubeletPodResourcesDynamicResources=true"))
    return checks


# where NVIDIA's DRA driver writes a CDI spec for each claim it prepares on the node
CDI_DIRECTORY = "/var/run/cdi"


def _prepared_claims(options: Options) -> list[str]:
    from . import dra

    try:
        names = os.listdir(options.host_path(CDI_DIRECTORY))
    except OSError:
        return []
    return [name for name in names if name.startswith(f"{dra.CDI_VENDOR}-claim_") and name.endswith(".yaml")]


# --- the file and who reads it -------------------------------------------------------------------------

@dataclass(frozen=True)
class Reader:
    """The user node_exporter runs as."""

    name: str
    uid: int
    gids: frozenset[int]

    def may(self, st: os.stat_result, bits: int) -> bool:
        """Whether the mode bits allow `bits` (4 read, 1 search) to this user (ACLs are not looked at)."""
        if self.uid == 0:
            return True
        shift = 6 if st.st_uid == self.uid else 3 if st.st_gid in self.gids else 0
        return (st.st_mode >> shift) & bits == bits


@dataclass
class Exporter:
    """A running node_exporter, as /proc shows it."""

    pid: int
    program: str
    directories: list[str]  # the textfile directories it reads; empty: none
    known: bool  # False: no flag, and a default we cannot know
    reader: Reader | None
    contained: bool = False  # in another mount namespace (a container): its paths are not ours

    def reads(self, directory: Path) -> bool:
        return any(_same_dir(Path(d), directory) for d in self.directories)


def node_exporters(options: Options) -> list[Exporter]:
    """The node_exporter processes visible in /proc (under --host-root)."""
    proc = options.host_path("/proc")
    found = []
    try:
        pids = sorted(int(p) for p in os.listdir(proc) if p.isdigit())
    except OSError:
        return []
    ours = _mount_namespace(Path("/proc/self"))
    for pid in pids:
        try:
            argv = read_bounded_text(proc / str(pid) / "cmdline", PROC_FILE_LIMIT, "replace").split("\0")
        except (OSError, ValueError):
            continue  # gone
        program = os.path.basename(argv[0])
        if program in NODE_EXPORTER_PROGRAMS:
            exporter = _exporter(pid, program, argv[1:], proc / str(pid) / "status")
            theirs = _mount_namespace(proc / str(pid))
            exporter.contained = None not in (ours, theirs) and ours != theirs
            found.append(exporter)
    return found


def _mount_namespace(process: Path) -> str | None:
    """`mnt:[4026531841]`, or None where it cannot be read (another user's process without privilege)."""
    try:
        return os.readlink(process / "ns" / "mnt")
    except OSError:
        return None


def _exporter(pid: int, program: str, args: list[str], status: Path | None) -> Exporter:
    directories = [arg.split("=", 1)[1] for arg in args if arg.startswith(TEXTFILE_FLAG + "=")]
    directories += [args[i + 1] for i, arg in enumerate(args[:-1]) if arg == TEXTFILE_FLAG]
    disabled = "--no-collector.textfile" in args or (
        "--collector.disable-defaults" in args and "--collector.textfile" not in args)
    known = True
    if disabled:
        directories = []
    elif not directories:
        if program == "prometheus-node-exporter":
            directories = [DEBIAN_TEXTFILE_DIR]
        else:
            known = False
    return Exporter(pid, program, [d for d in directories if d], known,
                    _process_reader(status) if status else None)


def _process_reader(status: Path) -> Reader | None:
    try:
        fields = dict(line.split(":", 1) for line in read_bounded_text(status, PROC_FILE_LIMIT, "replace").splitlines()
                      if ":" in line)
        uid = int(fields["Uid"].split()[1])  # effective
        gids = {int(fields["Gid"].split()[1])} | {int(g) for g in fields.get("Groups", "").split()}
    except (OSError, KeyError, ValueError, IndexError):
        return None
    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:
        name = f"uid {uid}"
    return Reader(name, uid, frozenset(gids))


def _user_reader() -> Reader | None:
    """The node_exporter user by its usual names, where no process shows who it is."""
    for name in NODE_EXPORTER_USERS:
        try:
            user = pwd.getpwnam(name)
        except KeyError:
            continue
        groups = {g.gr_gid for g in grp.getgrall() if name in g.gr_mem} | {user.pw_gid}
        return Reader(name, user.pw_uid, frozenset(groups))
    return None


def reader(exporters: Sequence[Exporter], directory: Path) -> Reader | None:
    """Who must be able to read the file: the node_exporter reading that directory, else any visible
    one, else the usual user."""
    ranked = sorted(exporters, key=lambda e: not e.reads(directory))
    return next((e.reader for e in ranked if e.reader), None) or _user_reader()


def _same_dir(a: Path, b: Path) -> bool:
    return os.path.realpath(a) == os.path.realpath(b)


def _replaced_file(named: str) -> Path:
    """The file a collect with --out `named` replaces (a symbolic link followed), else `named` itself."""
    from .textfile import OutputRefused, resolve_output

    try:
        destination = resolve_output(named)
    except OutputRefused:
        return Path(named)
    return destination.path if destination.kind == "file" else Path(named)


def check_output(named: str, units_default: bool, who: Reader | None) -> Check:
    from .textfile import OutputRefused, resolve_output

    where = " (the units' default; GPUTEXT_OUT or --out names another)" if units_default else ""
    path = Path(named)
    directory = path.parent
    if directory.is_dir():
        try:
            destination = resolve_output(named)
        except OutputRefused as err:
            return Check(FAIL, "output", f"{err}{where}")
        if destination.kind != "file":
            return Check(INFO, "output", f"{named} is written straight through, not replaced; node_exporter "
                         "reads only *.prom files in its directory")
        path, directory = destination.path, destination.path.parent
    if not path.name.endswith(".prom"):
        return Check(FAIL, "output", f"{path}: node_exporter reads only *.prom files; fix: name it gpu.prom")
    if not directory.is_dir():
        return Check(FAIL, "output", f"{directory} does not exist{where}; fix: mkdir -p {directory}, or set "
                     "GPUTEXT_OUT to a file in the directory node_exporter reads")
    if not os.access(directory, os.W_OK):
        return Check(FAIL, "output", f"{directory} is not writable by uid {os.geteuid()}; fix: run gputext as "
                     f"root (the units do), or give it a directory it may write")
    if who is None:
        return Check(INFO, "output", f"{path}: {directory} is writable{where}; no node_exporter user "
                     f"({', '.join(NODE_EXPORTER_USERS)}) found, so who reads it is not checked")
    for parent in reversed([directory, *directory.parents]):
        st = parent.stat()
        bits = 5 if parent == directory else 1  # list the directory itself, pass through its parents
        if not who.may(st, bits):
            return Check(FAIL, "output", f"{who.name} (node_exporter) cannot {'list' if bits == 5 else 'enter'} "
                         f"{parent} ({_mode(st)}); fix: chmod o+{'rx' if bits == 5 else 'x'} {parent}")
    if path.exists():
        st = path.stat()
        if not who.may(st, 4):
            return Check(FAIL, "output", f"{who.name} (node_exporter) cannot read {path} ({_mode(st)}); fix: "
                         f"chmod 0644 {path} (gputext writes 0644: did another program write it?)")
        age = time.time() - st.st_mtime
        if age > STALE_SECONDS:
            return Check(WARN, "output", f"{path} was last written {age:.0f} s ago{where}; fix: is the timer "
                         "running? systemctl status gputext.timer; journalctl -u gputext.service")
        written = f"written {age:.0f} s ago"
    else:
        written = "not written yet"
    return Check(OK, "output", f"{path}: {directory} writable, readable by {who.name}; {written}{where}")


def _mode(st: os.stat_result) -> str:
    """`mode 0750, owner root:prometheus`"""
    def name(lookup, ident):
        try:
            return lookup(ident)[0]
        except KeyError:
            return str(ident)

    owner = f"{name(pwd.getpwuid, st.st_uid)}:{name(grp.getgrgid, st.st_gid)}"
    return f"mode {stat.S_IMODE(st.st_mode):04o}, owner {owner}"


DEBIAN_DEFAULTS = "/etc/default/prometheus-node-exporter"  # Debian's and Ubuntu's ARGS="..." for the unit


def debian_defaults(options: Options) -> Exporter | None:
    """What Debian's packaged node_exporter reads by its /etc/default file (under --host-root), whether or
    not it runs now; None where the package is not installed."""
    import shlex

    try:
        text = read_bounded_text(options.host_path(DEBIAN_DEFAULTS), CONFIG_FILE_LIMIT, "replace")
    except (OSError, ValueError):
        return None
    args: list[str] = []
    for line in text.splitlines():
        if line.strip().startswith("ARGS="):
            try:
                args = shlex.split(line.strip()[len("ARGS="):])
                args = shlex.split(args[0]) if len(args) == 1 else args  # ARGS="--a --b": one quoted word
            except ValueError:
                args = []
    return _exporter(0, "prometheus-node-exporter", args, None)


def _write_there(directory: str) -> str:
    out = f"{directory.rstrip('/')}/gpu.prom"
    return (f"fix: write there: --out {out} (GPUTEXT_OUT={out} in /etc/default/gputext; a directory other "
            "than the two the units know also goes into their ReadWritePaths=)")


def check_node_exporter(exporters: Sequence[Exporter], directory: Path,
                        debian: Exporter | None = None) -> Check:
    if not exporters:
        if debian is not None and debian.directories:
            if debian.reads(directory):
                return Check(OK, "node_exporter", f"prometheus-node-exporter is not running now; by {DEBIAN_DEFAULTS} "
                             f"it reads {directory}")
            return Check(FAIL, "node_exporter", f"prometheus-node-exporter is not running now; by {DEBIAN_DEFAULTS} "
                         f"it reads {', '.join(debian.directories)}, not {directory}; "
                         + _write_there(debian.directories[0]))
        return Check(INFO, "node_exporter", f"no node_exporter process visible here; make sure the one that "
                     f"serves this node runs with {TEXTFILE_FLAG}={directory}")
    for exporter in exporters:
        if exporter.reads(directory):
            return Check(OK, "node_exporter", f"{exporter.program} (pid {exporter.pid}) reads {directory}")
    exporter = exporters[0]
    if not exporter.known:
        return Check(WARN, "node_exporter", f"{exporter.program} (pid {exporter.pid}) runs without "
                     f"{TEXTFILE_FLAG}: upstream's default reads no textfiles; fix: add "
                     f"{TEXTFILE_FLAG}={directory} to its command line")
    if not exporter.directories:
        return Check(FAIL, "node_exporter", f"{exporter.program} (pid {exporter.pid}) has its textfile "
                     f"collector disabled; fix: run it with --collector.textfile {TEXTFILE_FLAG}={directory}")
    reads = ", ".join(exporter.directories)
    if exporter.contained:
        return Check(WARN, "node_exporter", f"{exporter.program} (pid {exporter.pid}) runs in a container and "
                     f"reads {reads} there; check that this is where {directory} is mounted into it")
    return Check(FAIL, "node_exporter", f"{exporter.program} (pid {exporter.pid}) reads {reads}, not "
                 f"{directory}; " + _write_there(exporter.directories[0]))


def check_state(directory: Path | None) -> Check:
    if directory is None:
        return Check(INFO, "state", "no state directory")
    existing = next(p for p in (directory, *directory.parents) if p.exists())
    if not existing.is_dir():
        return Check(FAIL, "state", f"{existing} is not a directory; fix: set GPUTEXT_STATE_DIR to a directory")
    if not os.access(existing, os.W_OK):
        return Check(FAIL, "state", f"{existing} is not writable by uid {os.geteuid()}: runs keep no state (no "
                     "process energy, more NVML calls); fix: run as root (the units do), or set GPUTEXT_STATE_DIR")
    if existing != directory:
        return Check(OK, "state", f"{directory} will be created by the first run")
    return Check(OK, "state", f"{directory} is writable")


def report(checks: Sequence[Check]) -> str:
    return "".join(check.line() + "\n" for check in checks)


def passed(checks: Sequence[Check]) -> bool:
    return all(check.status != FAIL for check in checks)

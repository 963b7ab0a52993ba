"""One collection: run the chosen collectors into one set of samples, then render it."""

from __future__ import annotations

import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from . import __version__
from .collectors import REGISTRY, LastingFailure, NotApplicable, load
from .exposition import Samples


class UsageProblem(Exception):
    """A mistake in the options; the message says which and what is allowed."""


@dataclass
class Options:
    """Everything a collection needs from the command line; defaults are the CLI's defaults."""

    collectors: Sequence[str] = ()  # empty: every collector that applies
    prefix: str = "gpu_"
    state_dir: Optional[Path] = None
    debug: bool = False
    host_root: Path = Path("/")  # where the host's /proc and /var/log are (a container mounts them elsewhere)
    # processes
    retention_seconds: float = 300.0
    max_processes: int = 1000
    # dcgm
    dcgm_host: str = "localhost:5555"
    dcgm_bindings: Optional[Path] = None  # None: the DCGM 4 and DCGM 3 install paths
    # kubernetes
    pod_resources_socket: Path = Path("/var/lib/kubelet/pod-resources/kubelet.sock")
    kubelet_timeout_seconds: float = 2.0
    gpu_resource_names: Sequence[str] = ()  # beyond nvidia.com/gpu and nvidia.com/mig-*
    pod_cache_ttl_seconds: float = 30.0
    detail: str = "standard"  # catalogue.DETAILS
    # xid
    kmsg: Optional[Path] = None  # None: /dev/kmsg under host_root

    def host_path(self, path: str) -> Path:
        """A host path such as /proc/1/cgroup, under --host-root."""
        return self.host_root / path.lstrip("/")


def parse_collectors(text: str) -> Tuple[str, ...]:
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    unknown = [n for n in names if n not in REGISTRY]
    if unknown:
        raise UsageProblem(f"unknown collector {unknown[0]!r}: choose from {', '.join(REGISTRY)}")
    return names


def warn_to_stderr(message: str) -> None:
    print(f"gputext: {message}", file=sys.stderr)


class Context:
    """What collectors share within a run: options, the NVML session and the device list."""

    def __init__(self, options: Options, warn: Callable[[str], None] = warn_to_stderr):
        from .state import State

        self.options = options
        self.warn = warn
        self._said: set = set()
        # taken (locked) only when a collector asks for it; "no state" is a lasting condition, said once
        self.state = State(options.state_dir, warn, note=self.note_once)
        self._nvml = None
        self._inventory = None
        # what a collector keeps for the next cycle of the repeating mode (an open kernel log)
        self.kept: Dict[str, object] = {}
        self.new_cycle()

    def new_cycle(self) -> None:
        """Start a collection. The repeating mode calls it once per cycle: NVML and the device inventory
        stay, what belongs to one collection starts afresh."""
        self.now = time.time()
        # GPU UUID -> pod/namespace/container for its device series; set by the kubernetes collector
        self.pod_labels: Dict[str, Dict[str, str]] = {}
        # the process series of this run (collectors.processes.Process); set by the processes collector
        self.processes: Optional[list] = None
        self._devices = None
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
        from .state import StateUnavailable, boot_id

        try:
            said = self.state.section("said")
        except StateUnavailable:
            return False  # without state each run says it
        boot = boot_id()
        for old in [text for text, when in said.items() if when != boot]:
            del said[old]  # conditions said in an earlier boot are said again
        if said.get(message) == boot:
            return True
        said[message] = boot
        return False

    @property
    def nvml(self):
        """The NVML session, started on first use. Raises NvmlUnavailable (every time) if it cannot."""
        from .nvml import Nvml

        if self._nvml_error is not None:
            raise self._nvml_error
        if self._nvml is None:
            nvml = Nvml(self.warn)
            try:
                nvml.start()
            except Exception as err:
                self._nvml_error = err
                raise
            self._nvml = nvml
        return self._nvml

    def devices(self):
        """(System, [Device]) of this run, discovered once."""
        if self._devices is None:
            from .devices import Inventory

            if self._inventory is None:
                self._inventory = Inventory(self.nvml, self.options.state_dir)
            self._devices = self._inventory.discover(self.now)
        return self._devices

    def static(self, dev, name: str, read):
        """A static value of a device, cached across runs (see Inventory.static)."""
        return self._inventory.static(dev, name, read)

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
        for kept in self.kept.values():
            if hasattr(kept, "close"):  # an open log
                kept.close()
        self.kept.clear()
        if self._nvml is not None:
            self._nvml.stop()
            self._nvml = None


@dataclass
class Result:
    samples: Samples
    nvml_unavailable: bool
    failed: List[str] = field(default_factory=list)
    pod_labels: Dict[str, Dict[str, str]] = field(default_factory=dict)

    def render(self, prefix: str) -> bytes:
        return self.samples.render(prefix, self.pod_labels)


def collect(ctx: Context) -> Result:
    from .nvml import NvmlUnavailable

    samples = Samples(ctx.options.detail)
    explicit = bool(ctx.options.collectors)
    failed = []
    for name in ctx.options.collectors or tuple(REGISTRY):
        started = time.perf_counter()
        try:
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
            detail = traceback.format_exc() if ctx.options.debug else f"{type(err).__name__}: {err}"
            ctx.warn(f"collector {name} failed: {detail}")
            success = 0
        if not success:
            failed.append(name)
        samples.add("gputext_collector_success", success, {"collector": name})
        samples.add("gputext_collector_duration_seconds", time.perf_counter() - started, {"collector": name})
    samples.add("gputext_build_info", 1, {"version": __version__})
    return Result(samples, ctx.nvml_unavailable, failed, ctx.pod_labels)

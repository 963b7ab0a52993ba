"""Per-process energy as DCGM's host engine reports it (gpu_process_energy_joules_total{source="dcgm"}).

DCGM's "process energy" is the whole GPU's energy during the process's lifetime (REFERENCE.md): the same
quantity as the processes collector's source="nvml" series, measured by the host engine at its own
update rate. It needs a standalone nv-hostengine and DCGM's own Python bindings, which are not on PyPI
but ship with DCGM. A one-shot client must not create a group or a watch that dies with its connection:
gputext connects with persistAfterDisconnect and (re)asks, each run, for the PID watches on the built-in
all-GPUs group, which is idempotent.

Without bindings or host engine the collector does not apply (nothing on stderr) unless it was asked
for with --collectors, in which case it is a failure; the nvml source still serves either way.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

from . import NotApplicable
from .processes import processes_of_run

DEFAULT_BINDINGS = (Path("/usr/share/datacenter-gpu-manager-4/bindings/python3"),  # DCGM 4
                    Path("/usr/local/dcgm/bindings/python3"))  # DCGM 3
ALL_GPUS = 0x7FFFFFFF  # DCGM_GROUP_ALL_GPUS
UPDATE_MICROSECONDS = 1_000_000
MIN_KEEP_SECONDS = 3600.0  # the engine must still hold a long-running process's start


def collect(ctx, samples) -> None:
    pydcgm, dcgm_agent, dcgm_structs = _bindings(ctx.options.dcgm_bindings)
    try:
        handle = pydcgm.DcgmHandle(ipAddress=ctx.options.dcgm_host, persistAfterDisconnect=True)
    except dcgm_structs.DCGMError as err:
        raise NotApplicable(f"no DCGM host engine answers at {ctx.options.dcgm_host}: {err}") from None
    try:
        group = getattr(dcgm_structs, "DCGM_GROUP_ALL_GPUS", ALL_GPUS)
        keep = max(ctx.options.retention_seconds, MIN_KEEP_SECONDS)
        dcgm_agent.dcgmWatchPidFields(handle.handle, group, UPDATE_MICROSECONDS, keep, 0)
        by_pid = {}
        for process in processes_of_run(ctx):
            if process.pid not in by_pid:
                by_pid[process.pid] = _pid_info(dcgm_agent, dcgm_structs, handle.handle, group, process.pid)
            info = by_pid[process.pid]
            for gpu in info.gpus[:info.numGpus] if info is not None else ():
                # DCGM's gpuId is the NVML index on the host; energyConsumed is in mJ or a "blank" marker
                if gpu.gpuId == process.gpu and gpu.energyConsumed < dcgm_structs.DCGM_INT64_BLANK:
                    samples.add("process_energy_joules_total", gpu.energyConsumed / 1000,
                                {**process.labels, "source": "dcgm"})
    finally:
        shutdown = getattr(handle, "Shutdown", None)
        if shutdown is not None:
            shutdown()  # the watches stay: the connection was made with persistAfterDisconnect


def _pid_info(dcgm_agent, dcgm_structs, handle, group, pid):
    try:
        return dcgm_agent.dcgmGetPidInfo(handle, group, pid)
    except dcgm_structs.DCGMError as err:
        if getattr(err, "value", None) == dcgm_structs.DCGM_ST_NO_DATA:
            return None  # the engine has not seen this PID (yet)
        raise


def _bindings(configured):
    """pydcgm, dcgm_agent and dcgm_structs from the configured directory or DCGM's install paths."""
    candidates = (configured,) if configured else DEFAULT_BINDINGS
    for directory in candidates:
        if (directory / "pydcgm.py").is_file():
            if str(directory) not in sys.path:
                sys.path.insert(0, str(directory))
            return tuple(importlib.import_module(name) for name in ("pydcgm", "dcgm_agent", "dcgm_structs"))
    where = " or ".join(str(d) for d in candidates)
    raise NotApplicable(f"DCGM's Python bindings are not in {where}: install DCGM, or name the directory "
                        f"holding pydcgm.py with --dcgm-bindings")

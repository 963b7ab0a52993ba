"""Collectors: one module per source, registered here by name.

A collector module has `collect(ctx, samples)`, and may have `begin(ctx)`, which runs before any
collector's collect (gpm takes its first samples there, so that its wait overlaps the others' work). It
adds samples as it goes, so what it added before an error is still written. It raises NotApplicable when
its source does not exist on this node (no DCGM, no kubelet): that is not a failure unless the user asked
for that collector by name; LastingFailure for a source that exists but cannot be used until someone
acts, which fails the collector quietly after the first run of a boot. The framework (gputext.run) times
every collector and reports its success; modules are imported only when they run.
"""

from __future__ import annotations

import importlib
from types import ModuleType

# name -> module. Order is the order they run and appear in `--help`.
REGISTRY: dict[str, str] = {
    "nvml": "gputext.collectors.nvml",
    "nvlink": "gputext.collectors.nvlink",
    "pcie": "gputext.collectors.pcie",
    "processes": "gputext.collectors.processes",
    "dcgm": "gputext.collectors.dcgm",
    "kubernetes": "gputext.collectors.kubernetes",
    "slurm": "gputext.collectors.slurm",
    "xid": "gputext.collectors.xid",
    "gpm": "gputext.collectors.gpm",  # last: it waits for what is left of its window
}


class NotApplicable(Exception):
    """The collector's source does not exist on this node."""


class LastingFailure(Exception):
    """The source exists but cannot be used until someone acts (a package to install, a permission to
    grant): the collector fails every run, but the message is said once per boot, not every run."""


def load(name: str) -> ModuleType:
    return importlib.import_module(REGISTRY[name])

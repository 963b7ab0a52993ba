"""Which pod and container a process belongs to.

The kubelet's pod-resources API names pods but not their processes; a process's pod comes from its
cgroup path (/proc/<pid>/cgroup: the pod UID and container ID) and the kubelet's log layout, which links
those IDs to names. All host paths go through Options.host_path (--host-root).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Dict


@dataclass(frozen=True)
class PodRef:
    pod: str = ""
    namespace: str = ""
    container: str = ""

    def labels(self) -> Dict[str, str]:
        return {"pod": self.pod, "namespace": self.namespace, "container": self.container}


NOT_IN_A_POD = PodRef()


class PodResolver:
    """Resolves PIDs to pods; one per run, so the log directories are listed at most once."""

    def __init__(self, host_root: Path):
        self.host_root = host_root

    def for_pid(self, pid: int) -> PodRef:
        """The pod of a host PID, or NOT_IN_A_POD (a process outside Kubernetes keeps its series)."""
        return NOT_IN_A_POD

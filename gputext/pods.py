"""Which pod and container a process belongs to.

The kubelet's pod-resources API names pods but not their processes; a process's pod comes from its
cgroup path (/proc/<pid>/cgroup: the pod UID and container ID) and the kubelet's log layout, which links
those IDs to names. All host paths go through --host-root (Options.host_path).

The cgroup path names the pod and container the same way under cgroup v1 (one line per hierarchy) and v2
(one `0::` line), in the forms of both cgroup drivers and the common runtimes:

  systemd   /kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid_with_underscores>.slice/
            cri-containerd-<id>.scope   (CRI-O: crio-<id>.scope, Docker: docker-<id>.scope)
  cgroupfs  /kubepods/burstable/pod<uid>/<id>   (CRI-O: crio-<id>)

Static pods have a UID of 32 hex digits without dashes. The names come from
/var/log/pods/<namespace>_<pod>_<uid>/<container>/ and
/var/log/containers/<pod>_<namespace>_<container>-<container id>.log; names of pods, namespaces and
containers cannot hold an underscore, so both split without ambiguity.
"""

from __future__ import annotations

import os
import re
from collections import namedtuple
from pathlib import Path

from .readfile import PROC_FILE_LIMIT, read_bounded_text

_POD_UID = re.compile(r"(?:^|-)pod([0-9a-f]{8}[-_]?[0-9a-f]{4}[-_]?[0-9a-f]{4}[-_]?[0-9a-f]{4}[-_]?[0-9a-f]{12})"
                      r"(?:\.slice)?$")
_CONTAINER_ID = re.compile(r"(?:(?:cri-containerd|containerd|crio|docker)-)?([0-9a-f]{64})(?:\.scope)?")


class PodRef(namedtuple("PodRef", "pod namespace container", defaults=("", "", ""))):
    """The pod, namespace and container a process runs in ("" where not in a pod)."""

    __slots__ = ()

    def labels(self) -> dict[str, str]:
        return {"pod": self.pod, "namespace": self.namespace, "container": self.container}


NOT_IN_A_POD = PodRef()


def pod_ids(cgroup: str) -> tuple[str | None, str | None]:
    """(pod UID, container ID) from the text of /proc/<pid>/cgroup; None where it names none."""
    for line in cgroup.splitlines():
        path = line.split(":", 2)[-1]
        segments = path.split("/")
        for i, segment in enumerate(segments):
            match = _POD_UID.search(segment)
            if match:
                uid = match.group(1).replace("_", "-")
                child = segments[i + 1] if i + 1 < len(segments) else ""
                container = _CONTAINER_ID.fullmatch(child)
                return uid, container.group(1) if container else None
    return None, None


class PodResolver:
    """Resolves PIDs to pods; one per run, so the log directories are listed at most once."""

    def __init__(self, host_root: Path):
        self.host_root = Path(host_root)
        self._pods: dict[str, str] | None = None  # pod UID -> its /var/log/pods directory name
        self._containers: dict[str, tuple[str, str, str]] | None = None  # id -> (pod, namespace, name)
        self.unnamed_pods: set[str] = set()  # UIDs of pods that processes run in but the log layout lacks

    def for_cgroup(self, cgroup: str) -> PodRef:
        """The pod of a process whose /proc/<pid>/cgroup says `cgroup` (read_cgroup; "" where it could not
        be read), or NOT_IN_A_POD (a process outside Kubernetes keeps its series)."""
        uid, container_id = pod_ids(cgroup)
        if uid is None:
            return NOT_IN_A_POD
        named = self._container_names().get(container_id) if container_id else None
        if named:
            return PodRef(*named)
        directory = self._pod_directories().get(uid)
        if directory is None:
            self.unnamed_pods.add(uid)  # a pod the kubelet has no logs of (or /var/log is not mounted)
            return NOT_IN_A_POD
        namespace, pod, _ = directory.split("_")
        return PodRef(pod, namespace, self._only_container(directory))

    def _pod_directories(self) -> dict[str, str]:
        if self._pods is None:
            self._pods = {}
            for name in _list(self.host_root / "var/log/pods"):
                parts = name.split("_")
                if len(parts) == 3:
                    self._pods[parts[2]] = name
        return self._pods

    def _container_names(self) -> dict[str, tuple[str, str, str]]:
        if self._containers is None:
            self._containers = {}
            for name in _list(self.host_root / "var/log/containers"):
                head, _, container_id = name[:-len(".log")].rpartition("-")
                parts = head.split("_")
                if name.endswith(".log") and len(parts) == 3 and len(container_id) == 64:
                    pod, namespace, container = parts
                    self._containers[container_id] = (pod, namespace, container)
        return self._containers

    def _only_container(self, directory: str) -> str:
        """The container of a pod whose container ID has no log link: known only if the pod has one."""
        containers = _list(self.host_root / "var/log/pods" / directory)
        return containers[0] if len(containers) == 1 else ""


def read_cgroup(host_root: Path, pid: int) -> str:
    """The text of a host process's /proc/<pid>/cgroup, "" where it is gone or not ours to read. It names
    the process's pod and its Slurm job (gputext.slurm): read once for both."""
    try:
        return read_bounded_text(Path(host_root) / "proc" / str(pid) / "cgroup", PROC_FILE_LIMIT, "replace")
    except (OSError, ValueError):
        return ""


def _list(directory: Path) -> list:
    try:
        return os.listdir(directory)
    except OSError:
        return []

"""kubernetes/: the DaemonSet validates offline against the Kubernetes API schemas (kubernetes-validate
--strict, which rejects unknown fields), and its two containers agree with each other and with gputext."""

import os
import posixpath
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import require

ROOT = Path(__file__).resolve().parent.parent
MANIFESTS = sorted((ROOT / "kubernetes").glob("*.yaml"))
# The oldest Kubernetes the manifests must work on (pod-resources List is GA from 1.28), and the newest
# the installed kubernetes-validate knows (its default).
OLDEST = "1.28.0"


def kubernetes_validate() -> str:
    found = shutil.which("kubernetes-validate", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    if found is None:
        if os.environ.get("CI") == "true":
            pytest.fail("kubernetes-validate is not installed (the test extra has it)")
        pytest.skip("kubernetes-validate is not installed")
    return found


@pytest.mark.parametrize("version", [OLDEST, None], ids=["oldest", "newest"])
def test_manifests_validate_strictly(version):
    assert MANIFESTS, "no manifests in kubernetes/"
    command = [kubernetes_validate(), "--strict", *(["-k", version] if version else []), *map(str, MANIFESTS)]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "did not validate" not in proc.stdout + proc.stderr


def daemonset():
    require("yaml")
    import yaml

    for path in MANIFESTS:
        for document in yaml.safe_load_all(path.read_text()):
            if document and document["kind"] == "DaemonSet":
                return document["spec"]["template"]["spec"]
    raise AssertionError("no DaemonSet in kubernetes/")


def mounts(container):
    return {m["mountPath"]: m for m in container.get("volumeMounts", [])}


def test_gputext_and_node_exporter_share_the_textfile_and_gputext_sees_the_host():
    pod = daemonset()
    containers = {c["name"]: c for c in pod["containers"]}
    gputext, exporter = containers["gputext"], containers["node-exporter"]
    env = {e["name"]: e["value"] for e in gputext["env"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert pod["hostPID"] is True

    # the file gputext writes is in the directory node_exporter reads, on the same volume
    assert gputext["command"] == ["gputext"] and gputext["args"][:1] == ["collect"]
    out = gputext["args"][gputext["args"].index("--out") + 1]
    directory = next(a.split("=", 1)[1] for a in exporter["args"] if a.startswith("--collector.textfile.directory="))
    assert posixpath.dirname(out) == directory
    assert mounts(gputext)[directory]["name"] == mounts(exporter)[directory]["name"]

    # every option set on the command line or through the environment is one gputext knows
    help_text = subprocess.run([sys.executable, "-m", "gputext", "collect", "--help"], capture_output=True,
                               text=True, check=True).stdout
    for name in [a for a in gputext["args"] if a.startswith("--")] + [e for e in env if e.startswith("GPUTEXT_")]:
        assert name in help_text, f"{name} is no gputext option"

    # the host paths gputext reads are mounted read-only from the host under --host-root
    root = env["GPUTEXT_HOST_ROOT"]
    for host_path in ("/proc", "/var/log/pods", "/var/log/containers"):
        mount = mounts(gputext)[root + host_path]
        assert mount.get("readOnly") is True
        assert volumes[mount["name"]]["hostPath"]["path"] == host_path
    socket_dir = posixpath.dirname(env["GPUTEXT_POD_RESOURCES_SOCKET"])
    assert mounts(gputext)[socket_dir]["readOnly"] is True
    assert volumes[mounts(gputext)[socket_dir]["name"]]["hostPath"]["path"] == "/var/lib/kubelet/pod-resources"
    assert mounts(gputext)[env["GPUTEXT_STATE_DIR"]]["name"] in volumes

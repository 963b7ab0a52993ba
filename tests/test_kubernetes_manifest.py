"""kubernetes/: the DaemonSets validate offline against the Kubernetes API schemas (kubernetes-validate
--strict, which rejects unknown fields); their containers agree with each other, with gputext and with the
node-exporter Helm values; the PodMonitor has the Prometheus Operator's fields and selects the pods."""

import os
import posixpath
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import parse_exposition, require, value
from fakegpu import h100
from test_xid import GPU0, Log, xid_515

ROOT = Path(__file__).resolve().parent.parent
MANIFESTS = sorted((ROOT / "kubernetes").glob("*.yaml"))
SELF_CONTAINED = ROOT / "kubernetes" / "gputext.yaml"
TEXTFILE_ONLY = ROOT / "kubernetes" / "gputext-textfile-only.yaml"
PODMONITOR = ROOT / "kubernetes" / "podmonitor.yaml"
HELM_VALUES = ROOT / "kubernetes" / "helm" / "prometheus-node-exporter.yaml"
# Objects of the Kubernetes API itself, which kubernetes-validate knows; the PodMonitor is a custom resource.
CORE_MANIFESTS = [path for path in MANIFESTS if path != PODMONITOR]
# kube-prometheus-stack's prometheus-node-exporter.extraArgs (its values.yaml, chart 81.4.5), which values
# given for its subchart replace.
KUBE_PROMETHEUS_STACK_NODE_EXPORTER_ARGS = [
    "--collector.filesystem.mount-points-exclude=^/(dev|proc|sys|var/lib/docker/.+|var/lib/kubelet/.+)($|/)",
    "--collector.filesystem.fs-types-exclude=^(autofs|binfmt_misc|bpf|cgroup2?|configfs|debugfs|devpts|devtmpfs"
    "|fusectl|hugetlbfs|iso9660|mqueue|nsfs|overlay|proc|procfs|pstore|rpc_pipefs|securityfs|selinuxfs|squashfs"
    "|sysfs|tracefs|erofs)$",
]
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
    assert SELF_CONTAINED in CORE_MANIFESTS and TEXTFILE_ONLY in CORE_MANIFESTS
    command = [kubernetes_validate(), "--strict", *(["-k", version] if version else []),
               *map(str, CORE_MANIFESTS)]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    output = proc.stdout + proc.stderr
    assert "did not validate" not in output and "Couldn't find schema" not in output, output
    assert output.count(" passed for resource daemonset/gputext ") == 2, output


def documents(path: Path) -> list:
    require("yaml")
    import yaml

    return [document for document in yaml.safe_load_all(path.read_text()) if document]


def daemonset(path: Path = SELF_CONTAINED) -> dict:
    """The DaemonSet's whole object."""
    (found,) = [document for document in documents(path) if document["kind"] == "DaemonSet"]
    return found


def pod_spec(path: Path = SELF_CONTAINED) -> dict:
    return daemonset(path)["spec"]["template"]["spec"]


def environment(container) -> dict:
    """name: value, or name: its valueFrom for values the kubelet fills in."""
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def mounts(container):
    return {m["mountPath"]: m for m in container.get("volumeMounts", [])}


def test_gputext_and_node_exporter_share_the_textfile_and_gputext_sees_the_host():
    pod = pod_spec()
    containers = {c["name"]: c for c in pod["containers"]}
    gputext, exporter = containers["gputext"], containers["node-exporter"]
    env = environment(gputext)
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


def test_the_textfile_only_daemonset_writes_where_the_helm_values_make_node_exporter_read():
    require("yaml")
    import yaml

    pod = pod_spec(TEXTFILE_ONLY)
    # gputext and its kernel log alone: the cluster's node-exporter publishes the file
    containers = {c["name"]: c for c in pod["containers"]}
    assert set(containers) == {"gputext", "kernel-log"}
    gputext = containers["gputext"]
    # the same containers as the self-contained DaemonSet's, so the two cannot drift apart
    same = {c["name"]: c for c in pod_spec()["containers"]}
    assert gputext == same["gputext"] and containers["kernel-log"] == same["kernel-log"]
    out = gputext["args"][gputext["args"].index("--out") + 1]
    volumes = {v["name"]: v for v in pod["volumes"]}
    textfile = volumes[mounts(gputext)[posixpath.dirname(out)]["name"]]
    assert textfile["hostPath"]["type"] == "DirectoryOrCreate"
    host_directory = textfile["hostPath"]["path"]

    values = yaml.safe_load(HELM_VALUES.read_text())
    (mount,) = values["extraHostVolumeMounts"]
    assert mount["hostPath"] == host_directory and mount["readOnly"] is True
    assert set(mount) <= {"name", "hostPath", "type", "mountPath", "readOnly", "mountPropagation"}  # the chart's
    textfile_arg = f"--collector.textfile.directory={mount['mountPath']}"
    assert values["extraArgs"] == [textfile_arg]  # the prometheus-node-exporter chart's own default is []
    # kube-prometheus-stack's subchart: the same mount, and the stack's own arguments kept (Helm replaces
    # a list given in values whole)
    subchart = values["prometheus-node-exporter"]
    assert subchart["extraHostVolumeMounts"] == values["extraHostVolumeMounts"]
    assert subchart["extraArgs"] == [*KUBE_PROMETHEUS_STACK_NODE_EXPORTER_ARGS, textfile_arg]
    # the directory the systemd units and doctor use on a node without Kubernetes, so one node_exporter
    # configuration serves both
    from gputext import doctor
    assert host_directory == str(doctor.UNITS_OUT.parent)
    # no port and no scrape annotations: nothing scrapes this pod
    assert "annotations" not in daemonset(TEXTFILE_ONLY)["spec"]["template"]["metadata"]
    assert "ports" not in gputext


def test_the_dcgm_host_engine_is_reached_at_the_nodes_address():
    """The pod's localhost is not the node's: GPUTEXT_DCGM_HOST is built from the node's IP, defined
    earlier in the list (Kubernetes expands $(NAME) only from variables before it)."""
    (gputext,) = [c for c in pod_spec()["containers"] if c["name"] == "gputext"]
    names = [e["name"] for e in gputext["env"]]
    env = environment(gputext)
    assert env["GPUTEXT_DCGM_HOST"] == "$(NODE_IP):5555"
    assert env["NODE_IP"] == {"fieldRef": {"fieldPath": "status.hostIP"}}
    assert names.index("NODE_IP") < names.index("GPUTEXT_DCGM_HOST")


# The fields of PodMonitor (monitoring.coreos.com/v1) that the manifest may use, as the Prometheus
# Operator's API reference gives them; unknown fields are errors, as kubernetes-validate --strict makes
# them for the other objects (a misspelt field in a custom resource is silently dropped by the API server).
LABEL_SELECTOR = {"type": "object", "additionalProperties": False,
                  "properties": {"matchLabels": {"type": "object", "additionalProperties": {"type": "string"}},
                                 "matchExpressions": {"type": "array"}}}
RELABEL = {"type": "object", "additionalProperties": False,
           "properties": {name: {"type": kind} for name, kind in (
               ("sourceLabels", "array"), ("separator", "string"), ("targetLabel", "string"),
               ("regex", "string"), ("modulus", "integer"), ("replacement", "string"), ("action", "string"))}}
DURATION = {"type": "string", "pattern": "^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?"
                                          "(([0-9]+)s)?(([0-9]+)ms)?)$"}
POD_MONITOR = {
    "type": "object", "additionalProperties": False, "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"}, "kind": {"const": "PodMonitor"},
        "metadata": {"type": "object", "required": ["name", "namespace"]},
        "spec": {"type": "object", "additionalProperties": False, "required": ["selector", "podMetricsEndpoints"],
                 "properties": {
                     "jobLabel": {"type": "string"}, "podTargetLabels": {"type": "array"},
                     "selector": LABEL_SELECTOR,
                     "namespaceSelector": {"type": "object", "additionalProperties": False,
                                           "properties": {"any": {"type": "boolean"},
                                                          "matchNames": {"type": "array",
                                                                         "items": {"type": "string"}}}},
                     "podMetricsEndpoints": {"type": "array", "minItems": 1, "items": {
                         "type": "object", "additionalProperties": False,
                         "properties": {"port": {"type": "string"}, "path": {"type": "string"},
                                        "scheme": {"enum": ["http", "https"]}, "interval": DURATION,
                                        "scrapeTimeout": DURATION, "honorLabels": {"type": "boolean"},
                                        "relabelings": {"type": "array", "items": RELABEL},
                                        "metricRelabelings": {"type": "array", "items": RELABEL}}}}}}}}


def test_the_podmonitor_has_the_operators_fields_and_scrapes_node_exporter():
    require("jsonschema")  # kubernetes-validate's own dependency
    import jsonschema

    (monitor,) = documents(PODMONITOR)
    jsonschema.validate(monitor, POD_MONITOR)
    # a schema that accepts anything would prove nothing
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**monitor, "spec": {**monitor["spec"], "podMetricEndpoints": []}}, POD_MONITOR)

    target = daemonset()
    assert monitor["metadata"]["namespace"] == target["metadata"]["namespace"]
    assert monitor["spec"]["namespaceSelector"]["matchNames"] == [target["metadata"]["namespace"]]
    labels = target["spec"]["template"]["metadata"]["labels"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= labels.items()
    ports = {port["name"] for c in target["spec"]["template"]["spec"]["containers"] for port in c.get("ports", [])}
    assert {endpoint["port"] for endpoint in monitor["spec"]["podMetricsEndpoints"]} <= ports


@pytest.mark.parametrize("path", [SELF_CONTAINED, TEXTFILE_ONLY], ids=["self-contained", "textfile-only"])
def test_the_namespace_admits_what_the_pod_needs(path):
    """hostPID, host paths and a privileged container are refused under the "baseline" Pod Security
    Standard, the default of many clusters: the namespace the manifest makes says "privileged"."""
    (namespace,) = [d for d in documents(path) if d["kind"] == "Namespace"]
    assert namespace["metadata"]["name"] == daemonset(path)["metadata"]["namespace"]
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "privileged"
    pod = pod_spec(path)
    assert pod["hostPID"] is True and any(v.get("hostPath") for v in pod["volumes"])


@pytest.mark.parametrize("path", [SELF_CONTAINED, TEXTFILE_ONLY], ids=["self-contained", "textfile-only"])
def test_host_paths_that_may_be_elsewhere_do_not_keep_the_pod_from_starting(path):
    """A kubelet with another root directory (k0s, MicroK8s) has no /var/lib/kubelet/pod-resources: with
    `type: Directory` the pod would never start and no GPU metric would be written. Only /proc, which
    every node has, is required."""
    for volume in pod_spec(path)["volumes"]:
        host = volume.get("hostPath")
        if host is not None and host["path"] != "/proc":
            assert host["type"] == "DirectoryOrCreate", volume


def kernel_log_container(path: Path = SELF_CONTAINED) -> dict:
    (found,) = [c for c in pod_spec(path)["containers"] if c["name"] == "kernel-log"]
    return found


@pytest.mark.parametrize("path", [SELF_CONTAINED, TEXTFILE_ONLY], ids=["self-contained", "textfile-only"])
def test_gputext_reads_the_kernel_log_that_only_the_cat_container_may_open(path):
    """The device cgroup lets a container open /dev/kmsg only where it is privileged: that container runs
    cat into a FIFO on a volume it shares with gputext, which stays without capabilities."""
    pod = pod_spec(path)
    containers = {c["name"]: c for c in pod["containers"]}
    gputext, kernel_log = containers["gputext"], kernel_log_container(path)
    privileged = [name for name, c in containers.items() if c.get("securityContext", {}).get("privileged")]
    assert privileged == ["kernel-log"]
    assert gputext["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert gputext["securityContext"]["allowPrivilegeEscalation"] is False
    assert kernel_log["securityContext"]["readOnlyRootFilesystem"] is True
    (shared,) = kernel_log["volumeMounts"]  # nothing of the host but its /dev, which privileged gives
    assert "emptyDir" in {v["name"]: v for v in pod["volumes"]}[shared["name"]]
    fifo = environment(gputext)["GPUTEXT_KMSG"]
    assert mounts(gputext)[posixpath.dirname(fifo)] == {**shared, "readOnly": True}
    assert fifo in kernel_log["command"][-1] and "/dev/kmsg" in kernel_log["command"][-1]


def run_kernel_log_container(tmp_path: Path, kmsg: Path) -> tuple:
    """The kernel-log container's command, with the host's /dev/kmsg and the shared volume moved to
    tmp_path; returns (the process, the FIFO's path, gputext's environment pointing at it)."""
    command = kernel_log_container()["command"]
    assert command[:2] == ["sh", "-c"]
    fifo = environment(pod_spec()["containers"][0])["GPUTEXT_KMSG"]
    shared = tmp_path / "shared"
    shared.mkdir()
    script = command[2].replace("/dev/kmsg", str(kmsg)).replace(posixpath.dirname(fifo), str(shared))
    moved = shared / posixpath.basename(fifo)
    process = subprocess.Popen(["sh", "-c", script], stderr=subprocess.PIPE, text=True)
    return process, moved, {"GPUTEXT_KMSG": str(moved)}


def test_the_kernel_log_container_feeds_gputexts_xid_collector(node, tmp_path):
    node.write([h100(0, accounting_mode=1)])  # no other lasting condition to say
    log = Log(tmp_path)  # a saved log stands in for /dev/kmsg: cat copies either
    log.add("Linux version 6.1.0", xid_515(GPU0, 79))
    process, fifo, env = run_kernel_log_container(tmp_path, log.path)
    try:
        for _ in range(3000):
            if fifo.exists():
                break
            time.sleep(0.01)
        assert fifo.is_fifo()
        # held open so that cat's open() returns and what it writes stays in the pipe until gputext reads it
        reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
        assert process.wait(timeout=60) == 0, process.stderr.read()
        proc = subprocess.run([sys.executable, "-m", "gputext", "collect", "--out", "-", "--host-root",
                               str(log.root), "--state-dir", str(node.state_dir)],
                              env={**node.env(), **env}, capture_output=True, text=True, timeout=60)
        os.close(reader)
    finally:
        process.kill()
        process.wait()
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    assert value(parse_exposition(proc.stdout), "gpu_xid_errors_total", gpu="0", xid="79") == 1


def test_a_node_without_a_kernel_log_gets_every_other_metric_and_doctor_says_why(node, tmp_path):
    node.write([h100(0, accounting_mode=1)])
    process, fifo, env = run_kernel_log_container(tmp_path, tmp_path / "no-kmsg")
    try:
        said = process.stderr.readline()
    finally:
        process.kill()  # it sleeps, so that the pod does not restart it again and again
        process.wait()
    assert said == f"no {tmp_path / 'no-kmsg'} on this node: gputext counts no XIDs\n"
    assert not fifo.exists()
    proc = subprocess.run([sys.executable, "-m", "gputext", "collect", "--out", "-", "--state-dir",
                           str(node.state_dir)], env={**node.env(), **env}, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    series = parse_exposition(proc.stdout)
    assert value(series, "gpu_up", gpu="0") == 1 and value(series, "gputext_collector_success",
                                                             collector="nvml") == 1
    assert value(series, "gputext_collector_success", collector="xid") is None  # does not apply here
    doctor = subprocess.run([sys.executable, "-m", "gputext", "doctor", "--state-dir", str(node.state_dir)],
                            env={**node.env(), **env}, capture_output=True, text=True, timeout=60)
    assert f"no kernel log at {fifo}, so no XIDs" in doctor.stdout

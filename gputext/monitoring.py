"""Alert rules, fleet recording rules and a Grafana dashboard for gputext's metrics.

Generated, not hand-written: every metric name comes from the catalogue through `Names`, so a renamed or
removed metric breaks generation instead of leaving a rule that silently matches nothing. The files in
monitoring/ are this module's output for the default prefix (`python -m gputext.monitoring monitoring`
writes them; a test fails when they drift), and `gputext rules` / `gputext dashboard` print them for
another prefix. Standard library only: the dashboard is plain JSON, the rule files a small YAML subset
written here, so none of this adds a dependency to a node that only collects.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

from .catalogue import BY_KEY

DEFAULT_PREFIX = "gpu_"
# The textfile is stale when node_exporter's mtime of it is older than this. Three runs of the 5 s timer
# (15 s) would page on every slow scrape: the age Prometheus sees is the run interval plus the scrape
# interval (15-30 s usually) plus the rule evaluation interval, so a minute is the shortest threshold that
# stays quiet on a healthy node yet pages within two minutes of gputext stopping. cron's job restarts once
# a minute, which a minute also covers.
DEFAULT_STALE_AFTER = 60
TEXTFILE = "gpu.prom"  # the file name the docs and the units use
# node_exporter 1.5 labels the file with its full path; a bare name matches too ("\\." is a PromQL dot)
TEXTFILE_SELECTOR = 'file=~"(.*/)?' + TEXTFILE.replace(".", "\\\\.") + '"'
NEAR_SLOWDOWN_CELSIUS = 5  # how close to the slowdown threshold warns
IDLE_BELOW = 0.1  # an allocated GPU whose SM active (or, without GPM, utilisation) is below this is idle

# Metrics of collectors still on their own branches, not yet catalogue rows (none now). Add a key while
# its collector is on a branch; tests/test_monitoring.py fails while a key is also a catalogue row.
PENDING: frozenset = frozenset()


class Names:
    """Metric names for one prefix, by catalogue key: names("power_watts") is "gpu_power_watts"."""

    def __init__(self, prefix: str):
        self.prefix = prefix

    def __call__(self, key: str) -> str:
        if key in BY_KEY:
            return BY_KEY[key].name(self.prefix)
        if key in PENDING:
            return self.prefix + key
        raise KeyError(f"{key!r} is not in the metric catalogue (gputext/catalogue.py)")


# --- alerts -------------------------------------------------------------------------------------------

# XIDs that say the GPU, not the application, is broken, grouped by what to do (NVIDIA's guidance): one
# alert each, as alert names with the same labels are duplicates to promtool.
# Application XIDs (13, 31, 43, 45, 68, 109) are left out on purpose: the job's owner sees them fail.
CRITICAL_XIDS = (
    ("GpuXidUncorrectableEcc", "48|95", "an uncorrectable ECC memory error (48 double-bit, 95 uncontained)",
     "Drain the node; once idle, reset the GPU (nvidia-smi -r -i GPU) so that row remapping applies. "
     "Replace the GPU if it recurs or GpuRowRemapFailed fires."),
    ("GpuXidFirmwareStopped", "62|119|120",
     "GPU firmware stopped (62 micro-controller halt, 119/120 GSP timeout or error)",
     "Drain the node and reset the GPU; reboot if the reset fails. Update the driver if it recurs."),
    ("GpuXidRowRemapFailure", "64", "a memory row remapping failure",
     "Drain the node: the memory cannot be repaired in place. Replace the GPU."),
    ("GpuXidNvlinkError", "74", "an NVLink error",
     "Check the links (nvidia-smi nvlink -s, GpuNvlinkDown); drain and reset the GPU, and restart the fabric "
     "manager on NVSwitch systems. Reseat or replace if it recurs."),
    ("GpuXidFallenOffBus", "79", "the GPU fell off the bus",
     "Drain and reboot the node; check the GPU's power, cooling and seating if it recurs."),
)
XID_WINDOW = 600  # an XID alert holds for 10 minutes after the event


def _alert(name, expr, for_, severity, summary, description, action):
    return {"alert": name, "expr": expr, "for": for_, "labels": {"severity": severity},
            "annotations": {"summary": summary, "description": description, "action": action}}


_GPU = "GPU {{ $labels.gpu }} ({{ $labels.uuid }}) on {{ $labels.instance }}"


def alert_rules(prefix: str = DEFAULT_PREFIX, stale_after: int = DEFAULT_STALE_AFTER) -> list[dict]:
    n = Names(prefix)
    xid_last = n("xid_last_time_seconds")
    rules = [
        _alert(name, f'time() - {xid_last}{{xid=~"{codes}"}} < {XID_WINDOW}', "0s", "critical",
               f"{_GPU}: XID {{{{ $labels.xid }}}}",
               f"{_GPU} logged XID {{{{ $labels.xid }}}}, {meaning}, {{{{ $value | humanizeDuration }}}} ago.",
               action)
        for name, codes, meaning, action in CRITICAL_XIDS
    ]
    rules += [
        _alert("GpuXidContainedEcc", f'time() - {xid_last}{{xid="94"}} < {XID_WINDOW}', "0s", "warning",
               f"{_GPU}: XID 94, contained ECC error",
               f"{_GPU} logged XID 94 {{{{ $value | humanizeDuration }}}} ago: an uncorrectable memory error "
               "the driver contained by stopping the application that hit it; the GPU keeps working.",
               "Restart the affected job. Reset the GPU when it is idle, so that the row is remapped; "
               "watch for GpuRowRemapFailed."),
        _alert("GpuLost", f"{n('up')} == 0", "1m", "critical", f"{_GPU} is lost",
               f"{_GPU}, PCI bus {{{{ $labels.pci_bus_id }}}}, no longer answers NVML (GPU_IS_LOST or another "
               "error); its metrics are gone.",
               "Drain the node and reboot it; check the kernel log for XID 79. Replace the GPU if it "
               "recurs."),
        _alert("GpuMissing",
               f"count by (instance) ({n('up')}) < max_over_time(count by (instance) ({n('up')})[1h:1m])",
               "5m", "critical", "{{ $labels.instance }} has fewer GPUs than an hour ago",
               "{{ $labels.instance }} lists {{ $value }} GPUs, fewer than at some time in the last hour: "
               "a GPU fell off the bus or the driver no longer sees it. The alert ends an hour after the loss.",
               "Compare nvidia-smi -L with lspci | grep -i nvidia; drain and reboot the node; check for "
               "XID 79. Replace the GPU if it does not come back."),
        _alert("GpuHardwareSlowdown",
               f'{n("clock_event_active")}{{reason=~"hw_thermal_slowdown|hw_power_brake_slowdown"}} == 1',
               "5m", "warning", f"{_GPU}: {{{{ $labels.reason }}}}",
               f"{_GPU} has held its clocks down for {{{{ $labels.reason }}}} for 5 minutes: hardware "
               "thermal protection or the power-brake signal from the chassis, not software limits.",
               "hw_thermal_slowdown: check the node's fans, air flow and inlet temperature. "
               "hw_power_brake_slowdown: check the power supplies and the chassis's power-brake signal."),
        # Degrees left: the margin to the T.Limit where NVML gives one (Ada and newer, where NVIDIA says to
        # watch it; slowdown comes at or just past 0), else the slowdown threshold less the temperature.
        _alert("GpuTemperatureNearSlowdown",
               f"{n('temperature_margin_celsius')} <= {NEAR_SLOWDOWN_CELSIUS} or "
               f'({n("temperature_threshold_celsius")}{{threshold="slowdown"}} - ignoring (threshold) '
               f"{n('temperature_celsius')} <= {NEAR_SLOWDOWN_CELSIUS} unless {n('temperature_margin_celsius')})",
               "5m", "warning", f"{_GPU} is near its slowdown temperature",
               f"{_GPU} has been within {NEAR_SLOWDOWN_CELSIUS} °C of the temperature at which it slows down "
               "for 5 minutes ({{ $value }} °C left: its margin to the T.Limit where the GPU reports one, "
               "else its slowdown threshold less its temperature).",
               "Check the node's cooling (fans, air flow, inlet temperature, blocked filters)."),
        _alert("GpuEccUncorrectedErrors",
               f'increase({n("ecc_errors_total")}{{type="uncorrected"}}[10m]) > 0', "0s", "critical",
               f"{_GPU}: uncorrectable ECC errors",
               f"{_GPU} counted {{{{ $value }}}} uncorrectable memory errors in the last 10 minutes.",
               "Drain the node; once idle, reset the GPU so that row remapping applies. Replace the GPU if "
               "the errors recur or GpuRowRemapFailed fires."),
        _alert("GpuRowRemapFailed", f"{n('remapped_rows_failed')} == 1", "0s", "critical",
               f"{_GPU}: row remapping failed",
               f"{_GPU} could not remap a faulty memory row: its memory can no longer be repaired.",
               "Drain the node and replace the GPU."),
        _alert("GpuRowRemapPending", f"{n('remapped_rows_pending')} == 1", "15m", "warning",
               f"{_GPU}: row remapping pending",
               f"{_GPU} has a memory row remapping that waits for a GPU reset.",
               "Drain the GPU and reset it (nvidia-smi -r -i GPU) or reboot the node when convenient."),
        _alert("GpuNvlinkDown", f"{n('nvlink_up')} == 0", "5m", "warning",
               f"{_GPU}: NVLink link {{{{ $labels.link }}}} down",
               f"{_GPU}: NVLink link {{{{ $labels.link }}}} has been inactive for 5 minutes; traffic between "
               "GPUs is slower or falls back to PCIe.",
               "Check nvidia-smi nvlink -s and the fabric manager on NVSwitch systems; reset the GPU or "
               "reboot. Silence it for links unused by design."),
        _alert("GpuNvlinkErrors", f"increase({n('nvlink_errors_total')}[10m]) > 0", "10m", "warning",
               f"{_GPU}: NVLink errors rising",
               f"{_GPU} has counted NVLink replay, recovery or CRC errors for 20 minutes "
               "({{ $value }} in the last 10).",
               f"Find the link with gputext collect --detail full ({n('nvlink_link_errors_total')}); reseat or "
               "replace the GPU, bridge or NVSwitch tray if it continues."),
        _alert("GpuPcieReplays", f"increase({n('pcie_replays_total')}[10m]) > 0", "10m", "warning",
               f"{_GPU}: PCIe replays rising",
               f"{_GPU} has retransmitted PCIe packets for 20 minutes ({{{{ $value }}}} in the last 10): "
               "a marginal link.",
               "Check the link width and generation (gputext collect --detail full); reseat the GPU or its "
               "riser, and check the slot."),
        _alert("GputextCollectorFailing", "gputext_collector_success == 0", "5m", "warning",
               "gputext's {{ $labels.collector }} collector fails on {{ $labels.instance }}",
               "The {{ $labels.collector }} collector has failed for 5 minutes; its metrics are missing.",
               "Read journalctl -u gputext.service (or the pod's log) and run gputext doctor on the node."),
        _alert("GputextFileStale",
               f"time() - node_textfile_mtime_seconds{{{TEXTFILE_SELECTOR}}} > {stale_after}",
               "1m", "warning", "gputext's file on {{ $labels.instance }} is stale",
               f"{{{{ $labels.file }}}} was last written {{{{ $value | humanizeDuration }}}} ago (more than "
               f"{stale_after} s): gputext no longer runs, so every GPU metric of the node is old.",
               "systemctl status gputext.timer gputext.service (or the DaemonSet's pod); gputext doctor."),
    ]
    return rules


# --- recording rules ----------------------------------------------------------------------------------

def allocated_per(n: Names, owner: str, key: str = "allocation_info", selector: str = "",
                  idle: bool = False) -> str:
    """GPUs allocated to each `owner` (a namespace's pods, from allocation_info; a Slurm account's jobs,
    from slurm_allocation_info), with `idle`: those below IDLE_BELOW, each GPU once per owner: the
    allocation series (one per container and MIG device, device plugin or DRA claim alike; one per job)
    grouped by GPU, so that a GPU shared by containers, claims, jobs or MIG slices is never counted twice."""
    allocated = f"group by ({owner}, instance, uuid) ({n(key)}{selector})"
    if idle:
        busy = f"({n('sm_active_ratio')} or {n('utilization_ratio')})"  # SM active where GPM has it
        allocated = f"{allocated} and on (instance, uuid) ({busy} < {IDLE_BELOW})"
    return f"count by ({owner}) ({allocated})"


def recording_rules(prefix: str = DEFAULT_PREFIX) -> list[dict]:
    n = Names(prefix)

    def rate_or_gauge(counter: str, gauge: str) -> str:
        # PCIe: where the driver's byte counters are missing or 32-bit, gputext writes the rate gauge instead
        return f"rate({n(counter)}[5m]) or {n(gauge)}"

    energy = f"increase({n('process_attributed_energy_joules_total')}[1h])"
    job_energy = energy_per_job(f'{n("process_attributed_energy_joules_total")}{{slurm_job!=""}}', "1h")
    power = n("power_watts")
    rules = {
        f"instance:{power}:sum": f"sum by (instance) ({power})",
        f"model:{power}:sum": f'sum by (model) (label_replace({power} * on (instance, job, uuid) group_left '
                              f'(name) {n("info")}, "model", "$1", "name", "(.*)"))',
        f"instance:{prefix}nvlink_transmit_bytes:rate5m":
            f"sum by (instance) (rate({n('nvlink_transmit_bytes_total')}[5m]))",
        f"instance:{prefix}nvlink_receive_bytes:rate5m":
            f"sum by (instance) (rate({n('nvlink_receive_bytes_total')}[5m]))",
        f"instance:{prefix}pcie_transmit_bytes:rate5m":
            f"sum by (instance) ({rate_or_gauge('pcie_transmit_bytes_total', 'pcie_transmit_bytes_per_second')})",
        f"instance:{prefix}pcie_receive_bytes:rate5m":
            f"sum by (instance) ({rate_or_gauge('pcie_receive_bytes_total', 'pcie_receive_bytes_per_second')})",
        f"namespace:{prefix}process_attributed_energy_joules:increase1h": f"sum by (namespace) ({energy})",
        f"namespace_pod:{prefix}process_attributed_energy_joules:increase1h":
            f"sum by (namespace, pod) ({energy})",
        f"namespace:{prefix}allocated:count": allocated_per(n, "namespace"),
        f"namespace:{prefix}allocated_idle:count": allocated_per(n, "namespace", idle=True),
        # Slurm: process series carry slurm_job only; the account comes from the allocation series
        f"slurm_job:{prefix}process_attributed_energy_joules:increase1h": f"sum by (slurm_job) ({job_energy})",
        f"slurm_account:{prefix}process_attributed_energy_joules:increase1h":
            f"sum by (slurm_account) ({slurm_account_of(n, job_energy, '1h')})",
        f"slurm_account:{prefix}allocated:count": allocated_per(n, "slurm_account", "slurm_allocation_info"),
        f"slurm_account:{prefix}allocated_idle:count":
            allocated_per(n, "slurm_account", "slurm_allocation_info", idle=True),
    }
    return [{"record": name, "expr": expr} for name, expr in rules.items()]


def energy_per_job(energy: str, window: str) -> str:
    """The attributed energy of each Slurm job's processes over `window`, per node; `energy`: the series
    with its selector, which keeps the processes of jobs (slurm_job!="")."""
    return f"sum by (instance, slurm_job) (increase({energy}[{window}]))"


def slurm_account_of(n: Names, per_job: str, window: str) -> str:
    """`per_job` (series by instance and slurm_job) with the jobs' slurm_account, from the allocation series
    of the window (a job that ended within it keeps its account). Jobs whose account gputext could not
    read (docs/slurm.md) are left out: an empty and a known account of one job would be two matches."""
    return (f"{per_job} * on (instance, slurm_job) group_left (slurm_account) max by (instance, slurm_job, "
            f"slurm_account) (max_over_time({n('slurm_allocation_info')}{{slurm_account!=\"\"}}[{window}]))")


def rule_groups(prefix: str = DEFAULT_PREFIX, stale_after: int = DEFAULT_STALE_AFTER,
                only: str = "all") -> list[dict]:
    groups = {"alerts": {"name": "gputext-alerts", "rules": alert_rules(prefix, stale_after)},
              "recording": {"name": "gputext-recording", "rules": recording_rules(prefix)}}
    return [g for kind, g in groups.items() if only in ("all", kind)]


def rules_file(prefix: str = DEFAULT_PREFIX, stale_after: int = DEFAULT_STALE_AFTER, only: str = "all") -> str:
    return _HEADER + to_yaml({"groups": rule_groups(prefix, stale_after, only)})


def prometheus_rule(prefix: str = DEFAULT_PREFIX, stale_after: int = DEFAULT_STALE_AFTER) -> str:
    """Both groups as a PrometheusRule for Prometheus Operator; kube-prometheus-stack's Prometheus selects
    rules labelled with its release's name (`release: kube-prometheus-stack` for that release name)."""
    manifest = {"apiVersion": "monitoring.coreos.com/v1", "kind": "PrometheusRule",
                "metadata": {"name": "gputext", "labels": {"release": "kube-prometheus-stack"}},
                "spec": {"groups": rule_groups(prefix, stale_after)}}
    return _HEADER + to_yaml(manifest)


_HEADER = "# Generated by gputext (gputext/monitoring.py); regenerate, do not edit.\n"


# --- dashboard ----------------------------------------------------------------------------------------

DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
DEVICE = 'instance=~"$instance", gpu=~"$gpu"'
PROCESS = DEVICE + ', namespace=~"$namespace"'


def _target(expr: str, legend: str = "", instant: bool = False) -> dict:
    return {"expr": expr, "legendFormat": legend, "instant": instant, "range": not instant,
            "format": "table" if instant else "time_series"}


def _panels(n: Names) -> list[dict]:
    """Each panel as title, type, unit, description and targets (laid out by `dashboard`)."""
    gpu = "{{instance}} GPU {{gpu}}"
    rate = "[$__rate_interval]"

    def series(key: str, extra: str = "") -> str:
        return f"{n(key)}{{{DEVICE}{extra}}}"

    def per_gpu_rate(key: str) -> str:
        return f"sum by (instance, gpu) (rate({series(key)}{rate}))"

    job_energy = energy_per_job(series("process_attributed_energy_joules_total", ', slurm_job!=""'), "$__range")

    return [
        ("Temperature", "timeseries", "celsius", "Core temperature and the temperature at which it slows down.",
         [_target(series("temperature_celsius"), gpu),
          _target(series("temperature_threshold_celsius", ', threshold="slowdown"'), gpu + " slowdown")]),
        ("Power", "timeseries", "watt", "Power draw.", [_target(series("power_watts"), gpu)]),
        ("Energy in the time range", "stat", "joule", "Energy the GPU used over the dashboard's time range.",
         [_target(f"increase({series('energy_joules_total')}[$__range])", gpu, instant=True)]),
        ("Memory", "timeseries", "bytes", "Memory used, and the total.",
         [_target(series("memory_used_bytes"), gpu + " used"),
          _target(series("memory_total_bytes"), gpu + " total")]),
        ("Utilisation, SM active, tensor active", "timeseries", "percentunit",
         "Utilisation is the share of time any kernel ran; SM active and tensor active (GPM, Hopper and "
         "newer) say how much of the GPU the kernels kept busy.",
         [_target(series("utilization_ratio"), gpu + " utilisation"),
          _target(series("sm_active_ratio"), gpu + " SM active"),
          _target(series("tensor_active_ratio"), gpu + " tensor active")]),
        ("SM clock", "timeseries", "hertz", "The SM clock.",
         [_target(series("clock_hertz", ', clock="sm"'), gpu)]),
        ("Clock-event reasons", "timeseries", "short",
         "1 while a reason holds the clocks down (standard detail: the hardware slowdowns).",
         [_target(series("clock_event_active"), gpu + " {{reason}}")]),
        ("NVLink bandwidth", "timeseries", "Bps", "Data bytes per second over all the GPU's links.",
         [_target(per_gpu_rate("nvlink_transmit_bytes_total"), gpu + " transmit"),
          _target(per_gpu_rate("nvlink_receive_bytes_total"), gpu + " receive")]),
        ("NVLink links up", "stat", "short", "Active NVLink links per GPU.",
         [_target(f"sum by (instance, gpu) ({series('nvlink_up')})", gpu, instant=True)]),
        ("PCIe bandwidth", "timeseries", "Bps", "Bytes per second over PCIe (the driver's sampled rate "
         "where the byte counters are missing).",
         [_target(f"rate({series('pcie_transmit_bytes_total')}{rate}) or "
                  f"{series('pcie_transmit_bytes_per_second')}", gpu + " transmit"),
          _target(f"rate({series('pcie_receive_bytes_total')}{rate}) or "
                  f"{series('pcie_receive_bytes_per_second')}", gpu + " receive")]),
        ("Errors in the time range", "stat", "short",
         "Uncorrectable ECC errors, NVLink errors and PCIe replays over the dashboard's time range.",
         [_target(f"increase({series('ecc_errors_total', ', type=' + chr(34) + 'uncorrected' + chr(34))}"
                  "[$__range])", gpu + " ECC uncorrected", instant=True),
          _target(f"increase({series('nvlink_errors_total')}[$__range])", gpu + " NVLink", instant=True),
          _target(f"increase({series('pcie_replays_total')}[$__range])", gpu + " PCIe replays", instant=True)]),
        ("XIDs", "table", "short", "XID errors per GPU and code since the driver was loaded, with NVIDIA's "
         "description and what to do.",
         [_target(f"{series('xid_errors_total')} * on (instance, job, xid) group_left (description, "
                  f"action, severity) {n('xid_info')}", instant=True),
          _target(f"{series('xid_last_time_seconds')} * 1000", instant=True)]),
        ("GPUs allocated to pods", "table", "short", "Each container the kubelet gave a GPU or MIG device, "
         "through a device plugin (resource: its name) or a DRA claim (resource: the driver, and the claim).",
         [_target(f"{n('allocation_info')}{{{PROCESS}}}", instant=True)]),
        ("Allocated GPUs per namespace, and idle ones", "stat", "short",
         f"GPUs allocated to each namespace's pods, each GPU once however many containers share it; and "
         f"those of them below {IDLE_BELOW:.0%} SM active (or utilisation, without GPM).",
         [_target(allocated_per(n, "namespace", selector=f"{{{PROCESS}}}"), "{{namespace}}", instant=True),
          _target(allocated_per(n, "namespace", selector=f"{{{PROCESS}}}", idle=True), "{{namespace}} idle",
                  instant=True)]),
        ("Processes", "table", "bytes", "GPU memory of each process, with its pod.",
         [_target(f"{n('process_memory_used_bytes')}{{{PROCESS}}}", instant=True)]),
        ("Attributed energy per process in the time range", "table", "joule",
         "Each process's share of its GPU's energy (split by SM-utilisation samples) over the time range.",
         [_target(f"increase({n('process_attributed_energy_joules_total')}{{{PROCESS}}}[$__range])",
                  instant=True)]),
        ("Attributed energy per namespace in the time range", "stat", "joule",
         "The namespaces' processes' shares of GPU energy over the time range.",
         [_target(f"sum by (namespace) (increase({n('process_attributed_energy_joules_total')}{{{PROCESS}}}"
                  "[$__range]))", "{{namespace}}", instant=True)]),
        ("gputext", "stat", "short", "Collectors that succeed (1) or fail (0), and the age of gputext's file "
         "in seconds.",
         [_target('gputext_collector_success{instance=~"$instance"}', "{{instance}} {{collector}}",
                  instant=True),
          _target(f'time() - node_textfile_mtime_seconds{{instance=~"$instance", {TEXTFILE_SELECTOR}}}',
                  "{{instance}} file age", instant=True)]),
        # Grafana cannot hide a row that has no data (grafana/grafana#10764): the Slurm row is collapsed,
        # so its queries run only where someone opens it
        ("Slurm", "row", "", "", []),
        ("Slurm jobs per GPU", "table", "short", "The jobs that hold each GPU, with their user, account and "
         "partition where gputext could read them (docs/slurm.md).",
         [_target(series("slurm_allocation_info"), instant=True)]),
        ("Attributed energy per Slurm job in the time range", "table", "joule",
         "The job's processes' shares of GPU energy over the time range, all its nodes together.",
         [_target(f"sum by (slurm_job) ({job_energy})", "{{slurm_job}}", instant=True)]),
        ("Attributed energy per Slurm account in the time range", "stat", "joule",
         "The accounts' jobs' shares of GPU energy over the time range (jobs whose account is known).",
         [_target(f"sum by (slurm_account) ({slurm_account_of(n, job_energy, '$__range')})", "{{slurm_account}}",
                  instant=True)]),
    ]


def _variable(name: str, label: str, query: str) -> dict:
    return {"name": name, "label": label, "type": "query", "datasource": DATASOURCE,
            "query": {"query": query, "refId": name}, "definition": query, "refresh": 2, "sort": 3,
            "multi": True, "includeAll": True, "allValue": ".*",
            "current": {"selected": True, "text": ["All"], "value": ["$__all"]}}


def dashboard(prefix: str = DEFAULT_PREFIX) -> dict:
    n = Names(prefix)
    info = n("info")
    panels, x, y = [], 0, 0
    add = panels.append  # into the dashboard, or, after a row, into that (collapsed) row
    for number, (title, kind, unit, description, targets) in enumerate(_panels(n), start=1):
        if kind == "row":  # a line of its own
            if x:
                x, y = 0, y + 8
            row = {"id": number, "type": "row", "title": title, "collapsed": True,
                   "gridPos": {"x": 0, "y": y, "w": 24, "h": 1}, "panels": []}
            panels.append(row)
            add, y = row["panels"].append, y + 1
            continue
        width = 24 if kind == "table" else 12
        if x + width > 24:
            x, y = 0, y + 8
        add({
            "id": number, "type": kind, "title": title, "description": description, "datasource": DATASOURCE,
            "gridPos": {"x": x, "y": y, "w": width, "h": 8},
            "fieldConfig": {"defaults": {"unit": unit}, "overrides": []}, "options": {},
            "targets": [{**t, "refId": chr(ord("A") + i), "datasource": DATASOURCE}
                        for i, t in enumerate(targets)],
        })
        x += width
    return {
        "title": "gputext: NVIDIA GPUs", "uid": "gputext-gpus", "description": "gputext's GPU metrics "
        "(generated by gputext dashboard)", "tags": ["gputext", "gpu", "nvidia"], "editable": True,
        "schemaVersion": 39, "version": 1, "time": {"from": "now-1h", "to": "now"}, "refresh": "30s",
        "templating": {"list": [
            {"name": "datasource", "label": "Data source", "type": "datasource", "query": "prometheus"},
            _variable("instance", "Node", f"label_values({info}, instance)"),
            _variable("gpu", "GPU", f'label_values({info}{{instance=~"$instance"}}, gpu)'),
            # the namespaces of processes and of allocations (a pod may hold a GPU it does not use)
            _variable("namespace", "Namespace",
                      f'label_values({{__name__=~"{n("process_memory_used_bytes")}|{n("allocation_info")}", '
                      f'instance=~"$instance"}}, namespace)'),
        ]},
        "panels": panels,
    }


def dashboard_json(prefix: str = DEFAULT_PREFIX) -> str:
    return json.dumps(dashboard(prefix), indent=2, ensure_ascii=False) + "\n"


# --- YAML ---------------------------------------------------------------------------------------------

_PLAIN = re.compile(r"[A-Za-z][A-Za-z0-9_:./-]*")
_YAML_WORDS = {"y", "n", "yes", "no", "on", "off", "true", "false", "null"}  # would not read as strings


def _scalar(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, (dict, list)):  # only empty ones reach here
        return "{}" if isinstance(value, dict) else "[]"
    if _PLAIN.fullmatch(value) and value.lower() not in _YAML_WORDS:
        return value
    if "'" not in value and "\n" not in value:
        return f"'{value}'"
    return json.dumps(value, ensure_ascii=False)  # a JSON string is a YAML double-quoted scalar


def to_yaml(value, indent: int = 0) -> str:
    """Block-style YAML for dicts, lists and scalars: the subset rule files and manifests need."""
    pad = "  " * indent
    lines = []
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(item, (dict, list)) and item:
                lines += [f"{pad}{key}:", to_yaml(item, indent + 1).rstrip("\n")]
            else:
                lines.append(f"{pad}{key}: {_scalar(item)}")
    else:
        for item in value:
            nested = isinstance(item, (dict, list)) and item
            text = to_yaml(item, indent + 1).rstrip("\n") if nested else pad + "  " + _scalar(item)
            lines.append(pad + "- " + text[len(pad) + 2:])
    return "\n".join(lines) + "\n"


# --- the committed files ------------------------------------------------------------------------------

def committed_files() -> dict[str, str]:
    """monitoring/'s files for the default prefix: name -> content."""
    return {"alerts.yaml": rules_file(only="alerts"), "recording.yaml": rules_file(only="recording"),
            "prometheusrule.yaml": prometheus_rule(), "dashboard.json": dashboard_json()}


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m gputext.monitoring DIRECTORY  (writes monitoring/'s files there)", file=sys.stderr)
        return 2
    for name, text in committed_files().items():
        (Path(argv[0]) / name).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

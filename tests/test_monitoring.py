"""monitoring/: generated from the catalogue, clean to promtool, every alert unit-tested with promtool, and
every dashboard query and recording rule evaluated by a real Prometheus scraping a real node_exporter that
reads gputext's file from the fake NVML."""

import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from conftest import require
from gputext import monitoring
from gputext.catalogue import BY_KEY, METRICS, STANDARD_SUBSET, detail_of
from realtools import require_tool

ROOT = Path(__file__).resolve().parent.parent
MONITORING = ROOT / "monitoring"
REGENERATE = "python -m gputext.monitoring monitoring"


def promtool(*args, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([require_tool("promtool"), *args], capture_output=True, text=True, timeout=60, cwd=cwd)


def all_exprs():
    """(where, PromQL) of every rule and every dashboard target, for the default prefix."""
    for group in monitoring.rule_groups():
        for rule in group["rules"]:
            yield rule.get("alert") or rule["record"], rule["expr"]
    for (title, ref), expr in targets().items():
        yield f"{title} {ref}", expr
    for variable in monitoring.dashboard()["templating"]["list"][1:]:
        yield variable["name"], re.sub(r"label_values\((.*), \w+\)", r"\1", variable["query"]["query"])


PROMQL_WORDS = {"sum", "count", "max", "min", "avg", "group", "by", "on", "ignoring", "group_left", "and",
                "or", "unless", "rate", "increase", "time", "max_over_time", "label_replace", "offset", "bool"}


def metric_names(expr: str) -> set:
    """Identifiers that are metric names: not functions, keywords, label names or strings."""
    expr = re.sub(r'"[^"]*"', '""', expr)  # strings
    expr = re.sub(r"\{[^}]*\}", "{}", expr)  # label matchers
    expr = re.sub(r"\b(by|on|ignoring|group_left)\s*\([^)]*\)", "", expr)  # label lists
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # ranges
    names = set(re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", expr)) - PROMQL_WORDS
    return {n for n in names if not re.fullmatch(r"\d.*|e\d*", n)}


CATALOGUE_NAMES = {m.name("gpu_") for m in METRICS}
NODE_EXPORTER = {"node_textfile_mtime_seconds"}
# Metrics of the gpm and xid collectors, not merged here yet (gputext.monitoring.PENDING); the lead
# empties this set when they merge. Any other unknown name fails.
PENDING = {"gpu_" + key for key in monitoring.PENDING}


def test_committed_files_are_the_generated_ones():
    for name, text in monitoring.committed_files().items():
        path = MONITORING / name
        assert path.exists() and path.read_text() == text, \
            f"monitoring/{name} differs from what gputext generates: regenerate with `{REGENERATE}`"


def test_every_metric_name_is_in_the_catalogue():
    found = set()
    for where, expr in all_exprs():
        names = metric_names(expr)
        unknown = names - CATALOGUE_NAMES - NODE_EXPORTER - PENDING
        assert not unknown, f"{where}: {sorted(unknown)} not in the catalogue: {expr}"
        found |= names
    assert {"gpu_temperature_celsius", "gpu_up", "gputext_collector_success"} <= found  # the parser finds names
    assert PENDING <= found, "a PENDING name is no longer used: drop it from gputext.monitoring.PENDING"


def test_pending_names_are_not_yet_catalogue_rows():
    assert not monitoring.PENDING & set(BY_KEY), "now in the catalogue: remove from gputext.monitoring.PENDING"
    with pytest.raises(KeyError, match="not in the metric catalogue"):
        monitoring.Names("gpu_")("temperature")


def test_rules_and_panels_use_series_the_standard_level_writes():
    for where, expr in all_exprs():
        for name in metric_names(expr) & CATALOGUE_NAMES:
            metric = next(m for m in METRICS if m.name("gpu_") == name)
            assert detail_of(metric) != "full", f"{where}: {name} is written only at --detail full"
            if metric.key in STANDARD_SUBSET:
                label, values = STANDARD_SUBSET[metric.key]
                # without a selector on the label it shows what the level writes; with one, standard's values
                chosen = re.findall(name + r"\{[^}]*" + label + r'=~?"([^"]+)"', expr)
                assert all(set(c.split("|")) <= values for c in chosen), f"{where}: {name}{{{label}={chosen}}}"


def test_promtool_check_rules_is_clean(tmp_path):
    operator = yaml.safe_load((MONITORING / "prometheusrule.yaml").read_text())
    assert operator["apiVersion"] == "monitoring.coreos.com/v1" and operator["kind"] == "PrometheusRule"
    assert operator["metadata"]["labels"] == {"release": "kube-prometheus-stack"}
    assert set(operator) == {"apiVersion", "kind", "metadata", "spec"} and set(operator["spec"]) == {"groups"}
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(operator["spec"]))
    both = [yaml.safe_load((MONITORING / f).read_text())["groups"][0] for f in ("alerts.yaml", "recording.yaml")]
    assert operator["spec"]["groups"] == both
    files = [str(MONITORING / "alerts.yaml"), str(MONITORING / "recording.yaml"), str(spec)]
    proc = promtool("check", "rules", *files)
    assert proc.returncode == 0 and "FAILED" not in proc.stdout + proc.stderr, proc.stdout + proc.stderr
    assert "SUCCESS: 18 rules found" in proc.stdout and "SUCCESS: 14 rules found" in proc.stdout


def test_cli_prints_the_files_and_takes_a_prefix(capsys):
    from gputext.cli import execute

    def run(*args):
        code = execute(list(args))
        out, err = capsys.readouterr()
        assert code == 0, err
        return out

    assert run("rules", "--only", "alerts") == (MONITORING / "alerts.yaml").read_text()
    assert run("rules", "--operator") == (MONITORING / "prometheusrule.yaml").read_text()
    assert run("dashboard") == (MONITORING / "dashboard.json").read_text()
    other = run("rules", "--prefix", "nv_", "--stale-after", "90s") + run("dashboard", "--prefix", "nv_")
    assert "gpu_" not in other.replace("gputext", "")
    assert "nv_temperature_celsius" in other and "nv_xid_last_time_seconds" in other and "> 90" in other


# --- promtool unit tests: every alert fires after its `for:` and stays silent on healthy input ------

N1 = {"instance": "n1", "job": "node", "gpu": "0", "uuid": "GPU-0"}


def series(name, values, **labels):
    merged = {**N1, **labels}
    text = ",".join(f'{k}="{v}"' for k, v in merged.items())
    return {"series": f"{name}{{{text}}}", "values": values}, merged


def xid(code, at_seconds=0):
    return series("gpu_xid_last_time_seconds", f"{at_seconds}x30", xid=str(code))


# alert -> (input series, silent before, fires at, the firing series' labels, healthy input)
def alert_cases():
    cases = {}
    for name, codes, _, _ in monitoring.CRITICAL_XIDS:
        fired = [xid(code) for code in codes.split("|")]
        cases[name] = ([s for s, _ in fired], None, "5m", [labels for _, labels in fired],
                       [xid(code)[0] for code in (13, 31, 43, 45, 94)])  # application XIDs and 94: silent
    contained, labels = xid(94)
    cases["GpuXidContainedEcc"] = ([contained], None, "5m", [labels], [xid(79)[0], xid(13)[0]])
    # and every XID alert ends 10 minutes after the event: checked at 11m below
    lost, labels = series("gpu_up", "0x10")
    cases["GpuLost"] = ([lost], "0m", "2m", [labels], [series("gpu_up", "1x10")[0]])
    up0, up1 = series("gpu_up", "1x120")[0], series("gpu_up", "1x30 stale", gpu="1", uuid="GPU-1")[0]
    cases["GpuMissing"] = ([up0, up1], "33m", "37m", [{"instance": "n1"}],
                           [up0, series("gpu_up", "1x120", gpu="1", uuid="GPU-1")[0]])
    hot, labels = series("gpu_clock_event_active", "1x10", reason="hw_thermal_slowdown")
    cases["GpuHardwareSlowdown"] = ([hot], "4m", "6m", [labels],
                                    [series("gpu_clock_event_active", "1x10", reason="sw_power_cap")[0],
                                     series("gpu_clock_event_active", "0x10",
                                            reason="hw_power_brake_slowdown")[0]])
    threshold = series("gpu_temperature_threshold_celsius", "89x10", threshold="slowdown")[0]
    warm, labels = series("gpu_temperature_celsius", "86x10")
    cases["GpuTemperatureNearSlowdown"] = ([warm, threshold], "4m", "6m", [labels],
                                           [series("gpu_temperature_celsius", "80x10")[0], threshold])
    ecc, labels = series("gpu_ecc_errors_total", "0 0 0 1x10", type="uncorrected")
    cases["GpuEccUncorrectedErrors"] = ([ecc], "2m", "4m", [labels],
                                        [series("gpu_ecc_errors_total", "0+5x10", type="corrected")[0]])
    failed, labels = series("gpu_remapped_rows_failed", "1x10")
    cases["GpuRowRemapFailed"] = ([failed], None, "1m", [labels], [series("gpu_remapped_rows_failed", "0x10")[0]])
    pending, labels = series("gpu_remapped_rows_pending", "1x20")
    cases["GpuRowRemapPending"] = ([pending], "10m", "16m", [labels],
                                   [series("gpu_remapped_rows_pending", "0x20")[0]])
    down, labels = series("gpu_nvlink_up", "0x10", link="3")
    cases["GpuNvlinkDown"] = ([down], "4m", "6m", [labels], [series("gpu_nvlink_up", "1x10", link="3")[0]])
    for alert, metric in (("GpuNvlinkErrors", "gpu_nvlink_errors_total"),
                          ("GpuPcieReplays", "gpu_pcie_replays_total")):
        rising, labels = series(metric, "0+1x40")
        cases[alert] = ([rising], "5m", "12m", [labels], [series(metric, "7x40")[0]])
    failing, labels = series("gputext_collector_success", "0x10", collector="kubernetes")
    labels = {k: v for k, v in labels.items() if k not in ("gpu", "uuid")}
    failing["series"] = failing["series"].replace(',gpu="0",uuid="GPU-0"', "")
    cases["GputextCollectorFailing"] = ([failing], "4m", "6m", [labels], [])
    path = "/var/lib/node_exporter/textfile_collector/gpu.prom"
    mtime = f'node_textfile_mtime_seconds{{instance="n1",job="node",file="{path}"}}'
    stale, fresh = {"series": mtime, "values": "0x10"}, {"series": mtime, "values": "0+60x10"}
    other = {"series": 'node_textfile_mtime_seconds{instance="n1",job="node",file="other.prom"}', "values": "0x10"}
    cases["GputextFileStale"] = ([stale], "2m", "3m", [{"instance": "n1", "job": "node", "file": path}],
                                 [fresh, other])
    return cases


def rules_without_annotations(tmp_path) -> Path:
    """alerts.yaml with annotations removed: promtool compares annotations exactly, and the unit tests are
    about when alerts fire; `promtool check rules` checks the annotations' templates."""
    rules = yaml.safe_load((MONITORING / "alerts.yaml").read_text())
    for rule in rules["groups"][0]["rules"]:
        rule.pop("annotations")
    path = tmp_path / "alerts.yaml"
    path.write_text(yaml.safe_dump(rules))
    return path


def passes_promtool_test(tmp_path, rule_file: Path, tests: list) -> None:
    """`promtool test rules` of `tests` (a unit-test file's tests, evaluated every minute) on `rule_file`."""
    unit = tmp_path / "rules_test.yaml"
    unit.write_text(yaml.safe_dump({"rule_files": [str(rule_file)], "evaluation_interval": "1m", "tests": tests}))
    proc = promtool("test", "rules", str(unit))
    assert proc.returncode == 0 and "SUCCESS" in proc.stdout, proc.stdout + proc.stderr


def alert_test(name, severity, inputs, silent_at, fires_at, labels, healthy):
    def expect(at, alerts):
        return {"eval_time": at, "alertname": name,
                "exp_alerts": [{"exp_labels": {**l, "severity": severity}} for l in alerts]}

    firing = [expect(fires_at, labels)]
    if silent_at is not None:
        firing.append(expect(silent_at, []))
    if name.startswith("GpuXid"):
        firing.append(expect("11m", []))
    tests = [{"interval": "1m", "input_series": inputs, "alert_rule_test": firing}]
    if healthy:
        tests.append({"interval": "1m", "input_series": healthy,
                      "alert_rule_test": [expect(at, []) for at in ("1m", "5m", "30m", "90m")]})
    return tests


def test_every_alert_fires_after_its_for_and_not_on_healthy_input(tmp_path):
    rules = {r["alert"]: r for r in monitoring.alert_rules()}
    cases = alert_cases()
    assert set(cases) == set(rules), "every alert needs a unit test"
    tests = []
    for name, case in cases.items():
        tests += alert_test(name, rules[name]["labels"]["severity"], *case)
    passes_promtool_test(tmp_path, rules_without_annotations(tmp_path), tests)


def test_near_slowdown_uses_the_margin_where_the_gpu_gives_one(tmp_path):
    """Ada and newer give a margin to the T.Limit, which decides there; other GPUs compare their
    temperature with the slowdown threshold. An idle GPU of either kind stays silent."""
    gpu1 = {"gpu": "1", "uuid": "GPU-1"}

    def slowdown(**gpu):
        return series("gpu_temperature_threshold_celsius", "89x10", threshold="slowdown", **gpu)[0]

    hot_margin, hot = series("gpu_temperature_margin_celsius", "3x10")  # an H100 2 °C short of its T.Limit
    cases = [
        # H100s: 3 °C of margin fires whatever the absolute threshold says; 20 °C does not, even where
        # the slowdown threshold less the temperature would (the margin decides where there is one)
        ([hot_margin, series("gpu_temperature_celsius", "84x10")[0], slowdown(),
          series("gpu_temperature_margin_celsius", "20x10", **gpu1)[0],
          series("gpu_temperature_celsius", "86x10", **gpu1)[0], slowdown(**gpu1)], [hot]),
        # an A100 without a margin: 86 °C is within 5 °C of its 89 °C slowdown; GPU 1 at 80 °C is not
        ([series("gpu_temperature_celsius", "86x10")[0], slowdown(),
          series("gpu_temperature_celsius", "80x10", **gpu1)[0], slowdown(**gpu1)], [N1]),
        # idle: an H100 at 41 °C with 46 °C of margin, an A100 at 35 °C
        ([series("gpu_temperature_margin_celsius", "46x10")[0], series("gpu_temperature_celsius", "41x10")[0],
          slowdown(), series("gpu_temperature_celsius", "35x10", **gpu1)[0], slowdown(**gpu1)], []),
    ]
    tests = [{"interval": "1m", "input_series": inputs, "alert_rule_test": [
        {"eval_time": "6m", "alertname": "GpuTemperatureNearSlowdown",
         "exp_alerts": [{"exp_labels": {**labels, "severity": "warning"}} for labels in firing]}]}
        for inputs, firing in cases]
    passes_promtool_test(tmp_path, rules_without_annotations(tmp_path), tests)


# --- queries on metrics not merged yet (GPM, XID): promtool with synthetic series --------------------

GRAFANA = {"$__rate_interval": "5m", "$__range": "1h", "$instance": ".*", "$gpu": ".*", "$namespace": ".*"}


def grafana(expr: str, values=GRAFANA) -> str:
    """A panel's expression as Grafana sends it: variables at All, the intervals given."""
    for name, value in values.items():
        expr = expr.replace(name, value)
    return expr


def targets():
    panels = [inner for p in monitoring.dashboard()["panels"] for inner in [p, *p.get("panels", ())]]
    return {(p["title"], t["refId"]): t["expr"] for p in panels for t in p.get("targets", ())}


INFO79 = {"xid": "79", "description": "GPU has fallen off the bus", "action": "reboot", "severity": "critical"}
SYNTHETIC = [  # (panel, refId) or record -> input series, expected samples
    (("Utilisation, SM active, tensor active", "B"), [series("gpu_sm_active_ratio", "0.7x5")[0]],
     [{"labels": series("gpu_sm_active_ratio", "")[0]["series"], "value": 0.7}]),
    (("Utilisation, SM active, tensor active", "C"), [series("gpu_tensor_active_ratio", "0.25x5")[0]],
     [{"labels": series("gpu_tensor_active_ratio", "")[0]["series"], "value": 0.25}]),
    (("XIDs", "A"),
     [series("gpu_xid_errors_total", "2x5", xid="79")[0], series("gpu_xid_errors_total", "1x5", xid="13")[0],
      {"series": "gpu_xid_info{" + ",".join(f'{k}="{v}"' for k, v in
                                            {"instance": "n1", "job": "node", **INFO79}.items()) + "}",
       "values": "1x5"}],
     [{"labels": "{" + ",".join(f'{k}="{v}"' for k, v in {**N1, **INFO79}.items()) + "}", "value": 2}]),
    (("XIDs", "B"), [series("gpu_xid_last_time_seconds", "1700000000x5", xid="79")[0]],
     [{"labels": series("", "", xid="79")[0]["series"], "value": 1.7e12}]),
]


def test_queries_on_gpm_and_xid_metrics_with_synthetic_series(tmp_path):
    exprs = targets()
    covered = {key for key, _, _ in SYNTHETIC}
    # every query on a pending metric, and the GPM panels (the end-to-end scenario has no GPM), are here
    assert covered >= {key for key, expr in exprs.items() if metric_names(expr) & PENDING}
    tests = [{"interval": "1m", "input_series": inputs,
              "promql_expr_test": [{"expr": grafana(exprs[key]), "eval_time": "2m", "exp_samples": samples}]}
             for key, inputs, samples in SYNTHETIC]
    # idle allocated GPUs: SM active where GPM has it (GPU 0, busy by utilisation), utilisation elsewhere
    allocation = [series("gpu_allocation_info", "1x5", gpu=g, uuid=f"GPU-{g}", pod="p", namespace="ml",
                         container="c", resource="nvidia.com/gpu", gpu_instance="", mig_device="")[0]
                  for g in "012"]
    busy = [series("gpu_sm_active_ratio", "0.05x5")[0], series("gpu_utilization_ratio", "0.9x5")[0],
            series("gpu_utilization_ratio", "0.5x5", gpu="1", uuid="GPU-1")[0],
            series("gpu_utilization_ratio", "0.02x5", gpu="2", uuid="GPU-2")[0]]
    tests.append({"interval": "1m", "input_series": allocation + busy, "promql_expr_test": [
        {"expr": "namespace:gpu_allocated_idle:count", "eval_time": "2m",
         "exp_samples": [{"labels": 'namespace:gpu_allocated_idle:count{namespace="ml"}', "value": 2}]},
        {"expr": "namespace:gpu_allocated:count", "eval_time": "2m",
         "exp_samples": [{"labels": 'namespace:gpu_allocated:count{namespace="ml"}', "value": 3}]}]})
    passes_promtool_test(tmp_path, MONITORING / "recording.yaml", tests)


# --- a real Prometheus: every dashboard query and recording rule, on gputext's file from the fake NVML ----

from fakegpu import GiB, MiB, Field, h100, h100_uuid  # noqa: E402
from fakeslurm import SlurmHost, environment  # noqa: E402
from realtools import NodeExporter, Prometheus  # noqa: E402
from test_pods import host  # noqa: E402,F401  (the fixture: pid 101 is ml/train-a-0/trainer by its cgroup)

ENERGY = [31_536_000_000 + k * 100_000 for k in range(3)]  # GPU 0's energy counter (mJ) at runs 0, 1, 2
SAMPLES = [[(100, 100)], [(1000, 60), (2000, 60)], [(3000, 30)]]  # pid 101's SM samples (time, %) per run


SLURM_PID = 1001  # the first process of tests/fakeslurm.py's host: Slurm job 4711 (alice, physics)


def gpus_at(run: int):
    """Two H100s at run 0, 1 or 2: counters advance by run; GPU 0 is nearly idle (5%) and runs pid 101
    (ml/train-a-0), and the mapping directory gives it to Slurm job 4712, which runs nothing; GPU 1 runs
    Slurm job 4711's pid 1001, has a hardware thermal slowdown and two uncorrected ECC errors (see PODS for
    which pods hold them)."""
    gpus = []
    for index in (0, 1):
        samples = [{"pid": (101, SLURM_PID)[index], "timestamp": t, "sm": sm, "mem": 0, "enc": 0, "dec": 0}
                   for t, sm in SAMPLES[run]]
        gpu = h100(index, temperature=45 + 2 * index, utilization_gpu=5 if index == 0 else 87,
                   clocks_event_reasons=0x40 if index == 1 else 0, energy=ENERGY[run] + index * 1_000_000,
                   pcie_replays=(0, 1, 4)[run], accounting=[], accounting_mode=0, process_samples=samples,
                   processes=[{"pid": (101, SLURM_PID)[index], "used_memory": (10, 20)[index] * GiB}])
        fields = gpu["fields"]
        fields[83] = ENERGY[run] + index * 1_000_000
        fields[4] = (0, 0, 2)[run] if index == 1 else 0  # volatile double-bit ECC: uncorrected
        fields[94] = Field((0, 1, 4)[run], type="uint")  # PCIe replays
        fields[197] = 123_456_789_012 + run * 1_000_000  # PCIe bytes sent
        fields[198] = 234_567_890_123 + run * 3_000_000
        fields[(161, 0)] = (0, 5, 8)[run]  # NVLink replays on link 0
        for link in range(18):
            fields[(138, link)] = 1_000_000 + link * 1000 + run * 1000  # KiB sent
            fields[(139, link)] = 2_000_000 + link * 1000 + run * 2000
        gpus.append(gpu)
    return gpus


def by(result, *labels):
    return {tuple(r["metric"].get(label, "") for label in labels): float(r["value"][1]) for r in result}


def expected_panels(S, W):
    """(panel, refId) -> (key labels, {key: value}); S: seconds between the first sample of run 1 and the
    last of run 2 (the window's samples), W: the window (S + 1 ms), over which increase() extrapolates."""
    inc = W / S
    each = lambda v: {("0",): v, ("1",): v}  # noqa: E731
    link_bytes = 18 * 1000 * 1024  # per run, all links, transmit (receive twice that)
    return {
        ("Temperature", "A"): (("gpu",), {("0",): 45, ("1",): 47}),
        ("Temperature", "B"): (("gpu",), each(89)),
        ("Power", "A"): (("gpu",), each(412.345)),
        ("Energy in the time range", "A"): (("gpu",), each(100 * inc)),
        ("Memory", "A"): (("gpu",), each(40 * GiB + 517 * MiB)),
        ("Memory", "B"): (("gpu",), each(81559 * MiB)),
        ("Utilisation, SM active, tensor active", "A"): (("gpu",), {("0",): 0.05, ("1",): 0.87}),
        ("SM clock", "A"): (("gpu",), each(1.98e9)),
        ("Clock-event reasons", "A"): (("gpu", "reason"), {
            ("0", "hw_thermal_slowdown"): 0, ("0", "hw_power_brake_slowdown"): 0,
            ("1", "hw_thermal_slowdown"): 1, ("1", "hw_power_brake_slowdown"): 0}),
        ("NVLink bandwidth", "A"): (("gpu",), each(link_bytes / S)),
        ("NVLink bandwidth", "B"): (("gpu",), each(2 * link_bytes / S)),
        ("NVLink links up", "A"): (("gpu",), each(18)),
        ("PCIe bandwidth", "A"): (("gpu",), each(1e6 / S)),
        ("PCIe bandwidth", "B"): (("gpu",), each(3e6 / S)),
        # from 0: increase() does not extrapolate a counter below zero, so exactly 2
        ("Errors in the time range", "A"): (("gpu",), {("0",): 0, ("1",): 2}),
        ("Errors in the time range", "B"): (("gpu",), each(3 * inc)),
        ("Errors in the time range", "C"): (("gpu",), each(3 * inc)),
        ("GPUs allocated to pods", "A"): (("gpu", "pod", "container", "resource", "claim"), {
            ("0", "serve-0", "model", "gpu.nvidia.com", "shared"): 1,
            ("0", "serve-0", "proxy", "gpu.nvidia.com", "shared"): 1,
            ("1", "train-a-0", "trainer", "nvidia.com/gpu", ""): 1}),
        # GPU 0 once, though two containers share its claim; only it is idle
        ("Allocated GPUs per namespace, and idle ones", "A"): (("namespace",), {("ml",): 1, ("inference",): 1}),
        ("Allocated GPUs per namespace, and idle ones", "B"): (("namespace",), {("inference",): 1}),
        ("Processes", "A"): (("pid", "pod", "namespace", "container", "slurm_job"),
                             {("101", "train-a-0", "ml", "trainer", ""): 10 * GiB,
                              (str(SLURM_PID), "", "", "", "4711"): 20 * GiB}),
        ("Attributed energy per process in the time range", "A"):
            (("pid", "pod"), {("101", "train-a-0"): 30 * inc, (str(SLURM_PID), ""): 30 * inc}),
        ("Attributed energy per namespace in the time range", "A"):
            (("namespace",), {("ml",): 30 * inc, ("",): 30 * inc}),
        ("Slurm jobs per GPU", "A"): (("gpu", "slurm_job", "slurm_user", "slurm_account"),
                                      {("0", "4712", "", ""): 1, ("1", "4711", "alice", "physics"): 1}),
        ("Attributed energy per Slurm job in the time range", "A"): (("slurm_job",), {("4711",): 30 * inc}),
        ("Attributed energy per Slurm account in the time range", "A"):
            (("slurm_account",), {("physics",): 30 * inc}),
    }


def expected_records(S, W, instance):
    inc = W / S
    link_bytes = 2 * 18 * 1000 * 1024  # per run, both GPUs
    return {
        "instance:gpu_power_watts:sum": (("instance",), {(instance,): 2 * 412.345}),
        "model:gpu_power_watts:sum": (("model",), {("NVIDIA H100 80GB HBM3",): 2 * 412.345}),
        "instance:gpu_nvlink_transmit_bytes:rate5m": (("instance",), {(instance,): link_bytes / S}),
        "instance:gpu_nvlink_receive_bytes:rate5m": (("instance",), {(instance,): 2 * link_bytes / S}),
        "instance:gpu_pcie_transmit_bytes:rate5m": (("instance",), {(instance,): 2e6 / S}),
        "instance:gpu_pcie_receive_bytes:rate5m": (("instance",), {(instance,): 6e6 / S}),
        "namespace:gpu_process_attributed_energy_joules:increase1h":
            (("namespace",), {("ml",): 30 * inc, ("",): 30 * inc}),  # "": the Slurm job's process
        "namespace_pod:gpu_process_attributed_energy_joules:increase1h":
            (("namespace", "pod"), {("ml", "train-a-0"): 30 * inc, ("", ""): 30 * inc}),
        "namespace:gpu_allocated:count": (("namespace",), {("ml",): 1, ("inference",): 1}),
        "namespace:gpu_allocated_idle:count": (("namespace",), {("inference",): 1}),  # GPU 0 at 5%
        "slurm_job:gpu_process_attributed_energy_joules:increase1h": (("slurm_job",), {("4711",): 30 * inc}),
        # job 4712 runs nothing, so its account is not known: left out of the energy, "" in the counts
        "slurm_account:gpu_process_attributed_energy_joules:increase1h":
            (("slurm_account",), {("physics",): 30 * inc}),
        "slurm_account:gpu_allocated:count": (("slurm_account",), {("physics",): 1, ("",): 1}),
        "slurm_account:gpu_allocated_idle:count": (("slurm_account",), {("",): 1}),  # GPU 0 at 5%
    }


def test_real_prometheus_evaluates_every_panel_and_recording_rule(node, tmp_path, host):  # noqa: F811
    require("grpc", "google.protobuf")
    from fakekubelet import claim, claimed, kubelet_socket, pod, serve

    textfiles = tmp_path / "textfile"
    textfiles.mkdir()
    (tmp_path / "prometheus").mkdir()
    # GPU 1 through the device plugin; GPU 0 (minor number 0) through a DRA claim two containers share
    shared = claim("shared", "inference", claimed("gpu-0"))
    pods = [pod("train-a-0", "ml", {"trainer": {"nvidia.com/gpu": [h100_uuid(1)]}}),
            pod("serve-0", "inference", {}, claims={"model": [shared], "proxy": [shared]})]
    assert SlurmHost(host).process("4711", environ=environment("4711")) == SLURM_PID
    mapping = tmp_path / "dcgm-job-map"
    mapping.mkdir()
    (mapping / "0").write_text("4712\n")
    rule_files = [MONITORING / "alerts.yaml", MONITORING / "recording.yaml"]
    energy = 'gpu_energy_joules_total{gpu="0"}[2m]'
    with kubelet_socket() as socket, serve(socket, pods), NodeExporter(textfiles) as exporter, \
            Prometheus(tmp_path / "prometheus", {"node": [exporter.address]}, rule_files) as prom:
        for run in range(3):  # each file seen by at least two scrapes before the next replaces it
            node.write(gpus_at(run))
            proc = node.run("collect", "--out", str(textfiles / "gpu.prom"), "--host-root", str(host),
                            "--pod-resources-socket", str(socket), "--hpc-job-mapping-dir", str(mapping))
            assert proc.returncode == 0, proc.stderr
            # what a run with every source keeps fits the shapes the next run checks it against
            assert "is not what this version writes" not in proc.stderr, proc.stderr
            seen = ENERGY[run] / 1000
            samples = prom.wait_for(energy, lambda r: r and [float(v) for _, v in r[0]["values"]].count(seen) >= 2)
        mtime = (textfiles / "gpu.prom").stat().st_mtime
        points = [(float(t), float(v)) for t, v in samples[0]["values"]]
        first = min(t for t, v in points if v == ENERGY[1] / 1000)
        at = max(t for t, v in points if v == ENERGY[2] / 1000)
        S = at - first
        W = S + 0.001  # from just before run 1's first sample: increase() and rate() see runs 1 and 2 only
        window = f"{round(W * 1000)}ms"

        def evaluate(expr):
            return prom.query(grafana(expr, {**GRAFANA, "$__rate_interval": window, "$__range": window}), at)

        exprs = targets()
        checked = {}
        for key, (labels, expected) in expected_panels(S, W).items():
            got = by(evaluate(exprs[key]), *labels)
            assert got == pytest.approx(expected, rel=1e-6), f"{key}: {exprs[key]}"
            checked[key] = True
        success = by(evaluate(exprs[("gputext", "A")]), "collector")
        assert {"nvml", "nvlink", "pcie", "processes", "kubernetes", "slurm"} <= set(c for c, in success)
        assert set(success.values()) == {1}
        age = by(evaluate(exprs[("gputext", "B")]))
        assert age == pytest.approx({(): at - mtime}, abs=1.5)  # node_exporter's mtime may be whole seconds
        checked[("gputext", "A")] = checked[("gputext", "B")] = True
        synthetic = {key for key, _, _ in SYNTHETIC}  # checked with promtool on synthetic series
        assert set(checked) | synthetic == set(exprs), "every panel query is checked here or with promtool"
        for key in synthetic - set(checked):
            assert evaluate(exprs[key]) == [], f"{key}: this scenario writes no GPM or XID series"

        # two idle H100s (45 and 47 °C, 42 and 40 °C of margin, slowdown at 89 °C) are not near slowdown
        near = next(r["expr"] for r in monitoring.alert_rules() if r["alert"] == "GpuTemperatureNearSlowdown")
        assert by(prom.query("gpu_temperature_margin_celsius", at), "gpu") == {("0",): 42, ("1",): 40}
        assert prom.query(near, at) == []

        records = {r["record"]: r["expr"] for r in monitoring.recording_rules()}
        expected = expected_records(S, W, exporter.address)
        assert set(expected) == set(records)
        for name, (labels, values) in expected.items():
            expr = records[name].replace("[5m]", f"[{window}]").replace("[1h]", f"[{window}]")
            assert by(prom.query(expr, at), *labels) == pytest.approx(values, rel=1e-6), f"{name}: {expr}"
        # and Prometheus loaded both files, evaluates every rule without error, and records every series
        groups = prom.wait_for("vector(1)", lambda _: all(
            rule["health"] == "ok" for g in prom.api("rules")["groups"] for rule in g["rules"]))
        loaded = {rule["name"]: rule for g in prom.api("rules")["groups"] for rule in g["rules"]}
        assert set(loaded) == set(records) | {r["alert"] for r in monitoring.alert_rules()}, groups
        for name, (labels, values) in expected.items():
            recorded = prom.wait_for(name, lambda r: r)
            assert set(by(recorded, *labels)) == set(values), name
            if "[" not in records[name]:  # gauges: the same value at every evaluation
                assert by(recorded, *labels) == pytest.approx(values, rel=1e-9), name


def test_docs_list_every_alert_and_record_as_generated():
    section = (ROOT / "docs/dashboards-and-alerts.md").read_text()
    rows = {m[0]: m[1:] for m in re.findall(r"^\| `(\w+)` \| (\w+) \| (\w+) \|", section, re.M)}
    assert rows == {r["alert"]: (r["labels"]["severity"], r["for"]) for r in monitoring.alert_rules()}
    for record in monitoring.recording_rules():
        assert f"`{record['record']}`" in section, record["record"]

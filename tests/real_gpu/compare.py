"""Compare gputext with nvidia-smi on a machine with a real NVIDIA GPU, and keep what NVML really answers.

    python tests/real_gpu/compare.py [OUTDIR] [--window SECONDS] [--nvml-only]

OUTDIR defaults to tests/data/real_gpu. Commit what it writes there: the fake GPU (tests/fake_nvml) is
checked against it, and these files settle what nvml.h leaves open.

1. `nvml-capture.json`: what NVML answers, read with pynvml only, per GPU:
   - the absolute temperature thresholds (nvmlDeviceGetTemperatureThreshold, every
     nvmlTemperatureThresholds_t value), the margin to the T.Limit (nvmlDeviceGetMarginTemperature) and
     the T.Limit fields 193-196 with their value types (nvml.h: "T.Limit temperatures", offsets);
   - link 0's NVLink version from nvmlDeviceGetNvLinkVersion and from field 166 (nvmlNvlinkVersion_t?);
   - NVLink fields 138/139 (nvml.h: KiB) and PCIe fields 197/198 (bytes) with their value types, read at
     the start and the end of a window over which GPM measures the same traffic (60/61 and 20/21, MiB/s),
     and the unit GPM's rate implies for each counter: about 1024 bytes per unit if it counts KiB, 1 if
     bytes. That needs traffic during the window: run it while a job moves data over NVLink and PCIe
     (nccl-tests' all_reduce_perf, say); without traffic the unit stays "no traffic".
2. `nvidia-smi.csv`, `nvidia-smi-temperature.txt` and `gputext.prom`: nvidia-smi's and gputext's view
   (`gputext collect --detail full`), and `comparison.txt`, one line per value: nvidia-smi's, gputext's,
   and whether they agree. Static values (names, limits, maxima, modes) must match exactly; live ones
   (temperature, power, clocks, utilisation) are read a moment apart, so they match within a tolerance.

Exit 0 when everything agrees, 1 otherwise. `--nvml-only` writes the capture alone (no nvidia-smi needed).
It only reads: it changes no setting of the card.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

DEFAULT_OUT = Path(__file__).resolve().parent.parent / "data" / "real_gpu"

# nvidia-smi query field -> (gputext metric, extra labels, factor from nvidia-smi's unit, tolerance)
# nvidia-smi prints MiB, W, MHz and percent with --format=csv,noheader,nounits
MIB, MHZ = 1024 * 1024, 1e6
FIELDS = {
    "temperature.gpu": ("gpu_temperature_celsius", {}, 1, 3),
    "temperature.memory": ("gpu_memory_temperature_celsius", {}, 1, 3),
    "power.draw": ("gpu_power_watts", {}, 1, 30),
    "enforced.power.limit": ("gpu_power_limit_watts", {}, 1, 0.5),
    "memory.total": ("gpu_memory_total_bytes", {}, MIB, MIB),
    "memory.reserved": ("gpu_memory_reserved_bytes", {}, MIB, MIB),
    "memory.used": ("gpu_memory_used_bytes", {}, MIB, 64 * MIB),
    "utilization.gpu": ("gpu_utilization_ratio", {}, 0.01, 0.2),
    "utilization.memory": ("gpu_memory_utilization_ratio", {}, 0.01, 0.2),
    "clocks.gr": ("gpu_clock_hertz", {"clock": "graphics"}, MHZ, 300 * MHZ),
    "clocks.sm": ("gpu_clock_hertz", {"clock": "sm"}, MHZ, 300 * MHZ),
    "clocks.mem": ("gpu_clock_hertz", {"clock": "memory"}, MHZ, 300 * MHZ),
    "clocks.max.gr": ("gpu_clock_max_hertz", {"clock": "graphics"}, MHZ, 0),
    "clocks.max.sm": ("gpu_clock_max_hertz", {"clock": "sm"}, MHZ, 0),
    "clocks.max.mem": ("gpu_clock_max_hertz", {"clock": "memory"}, MHZ, 0),
    "pcie.link.gen.max": ("gpu_pcie_link_max_generation", {}, 1, 0),
    "pcie.link.width.max": ("gpu_pcie_link_max_width", {}, 1, 0),
}
# nvidia-smi words -> the numbers gputext writes
WORDS = {"Enabled": 1, "Disabled": 0}
MODES = {"persistence_mode": "gpu_persistence_mode", "accounting.mode": "gpu_accounting_mode",
         "ecc.mode.current": "gpu_ecc_mode"}
# the compute mode is a state set: 1 on the series whose mode label is nvidia-smi's word in lower case
INFO = ("uuid", "name", "pci.bus_id", "serial", "vbios_version", "driver_version")
# `nvidia-smi -q -d TEMPERATURE` rows -> (gputext metric, labels, tolerance). Older drivers and GPUs print
# absolute limits ("GPU Slowdown Temp : 89 C"), newer ones on Ada and later the T.Limit form ("GPU
# Slowdown T.Limit Temp : -2 C", "GPU T.Limit Temp" being the margin); a row the driver does not print is
# not checked, an N/A row means gputext must leave the value out.
TEMPERATURE_ROWS = {
    "GPU Shutdown Temp": ("gpu_temperature_threshold_celsius", {"threshold": "shutdown"}, 0),
    "GPU Slowdown Temp": ("gpu_temperature_threshold_celsius", {"threshold": "slowdown"}, 0),
    "GPU Max Operating Temp": ("gpu_temperature_threshold_celsius", {"threshold": "gpu_max"}, 0),
    "Memory Max Operating Temp": ("gpu_temperature_threshold_celsius", {"threshold": "memory_max"}, 0),
    "GPU T.Limit Temp": ("gpu_temperature_margin_celsius", {}, 3),
    "GPU Shutdown T.Limit Temp": ("gpu_temperature_tlimit_offset_celsius", {"threshold": "shutdown"}, 0),
    "GPU Slowdown T.Limit Temp": ("gpu_temperature_tlimit_offset_celsius", {"threshold": "slowdown"}, 0),
    "GPU Max Operating T.Limit Temp": ("gpu_temperature_tlimit_offset_celsius", {"threshold": "gpu_max"}, 0),
    "Memory Max Operating T.Limit Temp": ("gpu_temperature_tlimit_offset_celsius", {"threshold": "memory_max"}, 0),
}

# --- what NVML answers -----------------------------------------------------------------------------

TLIMIT_FIELDS = (193, 194, 195, 196)  # NVML_FI_DEV_TEMPERATURE_{SHUTDOWN,SLOWDOWN,MEM_MAX,GPU_MAX}_TLIMIT
PCIE_FIELDS = {"transmit": 197, "receive": 198}  # NVML_FI_DEV_PCIE_COUNT_TX_BYTES / _RX_BYTES
NVLINK_FIELDS = {"transmit": 138, "receive": 139}  # NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_TX / _RX, "in KiB"
NVLINK_MAX_LINKS = 36
ALL_LINKS = 0xFFFFFFFF  # scopeId: the sum over the GPU's links
# GPM metrics measuring the same traffic, MiB/s (nvml.h NVML_GPM_METRIC_*)
GPM_RATES = {("pcie", "transmit"): 20, ("pcie", "receive"): 21,
             ("nvlink", "receive"): 60, ("nvlink", "transmit"): 61}
VALUE_MEMBERS = {0: "dVal", 1: "uiVal", 2: "ulVal", 3: "ullVal", 4: "sllVal", 5: "siVal", 6: "usVal"}
VALUE_TYPES = {0: "double", 1: "unsigned int", 2: "unsigned long", 3: "unsigned long long",
               4: "signed long long", 5: "signed int", 6: "unsigned short"}


def field_entry(value) -> dict:
    """One nvmlFieldValue_t as data: its return code, value type and timestamp, and its value as the
    union member its type names."""
    entry = {"return": int(value.nvmlReturn), "type": int(value.valueType),
             "type_name": VALUE_TYPES.get(int(value.valueType), "unknown"), "timestamp_us": int(value.timestamp)}
    if value.nvmlReturn == 0 and value.valueType in VALUE_MEMBERS:
        entry["value"] = getattr(value.value, VALUE_MEMBERS[value.valueType])
    return entry


def implied_unit(before: dict, after: dict, gpm_mib_per_s) -> float | None:
    """Bytes per counter unit that GPM's rate over the same window implies: about 1024 for a counter of
    KiB, about 1 for one of bytes. None without traffic, without a rate, or without both readings."""
    if gpm_mib_per_s is None or "value" not in before or "value" not in after:
        return None
    seconds = (after["timestamp_us"] - before["timestamp_us"]) / 1e6
    counted = after["value"] - before["value"]
    if seconds <= 0 or counted <= 0 or gpm_mib_per_s <= 0:
        return None
    return gpm_mib_per_s * (1 << 20) * seconds / counted


def unit_name(bytes_per_unit: float | None) -> str:
    """'KiB' or 'bytes' where the implied unit is within 25% of one, else what stops a verdict."""
    if bytes_per_unit is None:
        return "no traffic"
    for name, size in (("KiB", 1024), ("bytes", 1)):
        if abs(bytes_per_unit / size - 1) <= 0.25:
            return name
    return f"unclear ({bytes_per_unit:.3g} bytes per unit)"


def _answer(pynvml, fn, *args) -> dict:
    try:
        return {"value": fn(*args)}
    except pynvml.NVMLError as err:
        return {"error": err.value}


def _fields(pynvml, handle, keys) -> dict:
    try:
        values = pynvml.nvmlDeviceGetFieldValues(handle, list(keys))
    except pynvml.NVMLError as err:
        return {key: {"return": err.value} for key in keys}
    return {key: field_entry(v) for key, v in zip(keys, values)}


def _gpm_sample(pynvml, handle):
    try:
        if not pynvml.nvmlGpmQueryDeviceSupport(handle).isSupportedDevice:
            return None
        return pynvml.nvmlGpmSampleGet(handle, pynvml.nvmlGpmSampleAlloc())
    except (pynvml.NVMLError, AttributeError):  # no GPM, or an nvidia-ml-py without it
        return None


def _gpm_rates(pynvml, first, second) -> dict:
    """{GPM metric id: MiB/s} between two samples, each metric that answered."""
    if first is None or second is None:
        return {}
    request = pynvml.c_nvmlGpmMetricsGet_t()
    request.version = pynvml.NVML_GPM_METRICS_GET_VERSION
    request.numMetrics = len(GPM_RATES)
    request.sample1, request.sample2 = first, second
    for i, metric in enumerate(GPM_RATES.values()):
        request.metrics[i].metricId = metric
    try:
        pynvml.nvmlGpmMetricsGet(request)
    except pynvml.NVMLError:
        return {}
    finally:
        for sample in (first, second):
            pynvml.nvmlGpmSampleFree(sample)
    return {request.metrics[i].metricId: request.metrics[i].value
            for i in range(len(GPM_RATES)) if request.metrics[i].nvmlReturn == 0}


def _traffic_keys():
    keys = [(fid, 0) for fid in PCIE_FIELDS.values()]
    keys += [(fid, scope) for fid in NVLINK_FIELDS.values() for scope in (*range(NVLINK_MAX_LINKS), ALL_LINKS)]
    return keys


def _units(before: dict, after: dict, rates: dict) -> dict:
    """The unit GPM implies for each traffic counter; NVLink per GPU, from the all-links scope."""
    units = {}
    for (bus, direction), metric in GPM_RATES.items():
        fid = (PCIE_FIELDS if bus == "pcie" else NVLINK_FIELDS)[direction]
        key = (fid, 0 if bus == "pcie" else ALL_LINKS)
        ratio = implied_unit(before.get(key, {}), after.get(key, {}), rates.get(metric))
        units[f"{bus} {direction} (field {fid}, GPM {metric})"] = {"bytes_per_unit": ratio, "unit": unit_name(ratio)}
    return units


def capture_nvml(window: float) -> dict:
    """What NVML answers on every GPU: see the module's docstring."""
    import pynvml

    pynvml.nvmlInit()
    try:
        handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
        gpus = []
        for index, handle in enumerate(handles):
            gpu = {"index": index, "name": _answer(pynvml, pynvml.nvmlDeviceGetName, handle),
                   "uuid": _answer(pynvml, pynvml.nvmlDeviceGetUUID, handle),
                   "architecture": _answer(pynvml, pynvml.nvmlDeviceGetArchitecture, handle),
                   "temperature": _answer(pynvml, pynvml.nvmlDeviceGetTemperatureV, handle,
                                          pynvml.NVML_TEMPERATURE_GPU),
                   "thresholds": {str(t): _answer(pynvml, pynvml.nvmlDeviceGetTemperatureThreshold, handle, t)
                                  for t in range(pynvml.NVML_TEMPERATURE_THRESHOLD_COUNT)},
                   "margin": _answer(pynvml, pynvml.nvmlDeviceGetMarginTemperature, handle)
                   if hasattr(pynvml, "nvmlDeviceGetMarginTemperature") else {"error": "not in this nvidia-ml-py"},
                   "tlimit_fields": {str(fid): entry for (fid, _), entry in
                                     _fields(pynvml, handle, [(fid, 0) for fid in TLIMIT_FIELDS]).items()},
                   # link 0's version both ways: nvml.h says nvmlNvlinkVersion_t (6 = NVLink 4.0)
                   "nvlink_version": {"function": _answer(pynvml, pynvml.nvmlDeviceGetNvLinkVersion, handle, 0),
                                      "field_166": _fields(pynvml, handle, [(166, 0)])[(166, 0)]}}
            gpus.append(gpu)
        # traffic: counters and a GPM sample at the start and the end of the same window, every GPU at once
        keys = _traffic_keys()
        before = [(_fields(pynvml, h, keys), _gpm_sample(pynvml, h)) for h in handles]
        throughput = [{"transmit": _answer(pynvml, pynvml.nvmlDeviceGetPcieThroughput, h, 0),
                       "receive": _answer(pynvml, pynvml.nvmlDeviceGetPcieThroughput, h, 1)} for h in handles]
        time.sleep(window)
        after = [(_fields(pynvml, h, keys), _gpm_sample(pynvml, h)) for h in handles]
        for gpu, (fields0, sample0), (fields1, sample1), kbps in zip(gpus, before, after, throughput):
            rates = _gpm_rates(pynvml, sample0, sample1)
            answered = [key for key in keys if fields0[key].get("return") == 0]
            gpu["traffic"] = {
                "window_seconds": window,
                "fields": {f"{fid}:{scope}": [fields0[(fid, scope)], fields1[(fid, scope)]]
                           for fid, scope in keys if (fid, scope) in answered or scope in (0, ALL_LINKS)},
                "gpm_mib_per_second": {str(metric): rate for metric, rate in rates.items()},
                "pcie_throughput_kb_per_second": kbps,
                "implied_units": _units(fields0, fields1, rates),
            }
        return {"driver_version": _answer(pynvml, pynvml.nvmlSystemGetDriverVersion),
                "nvml_version": _answer(pynvml, pynvml.nvmlSystemGetNVMLVersion),
                "nvidia_ml_py": getattr(pynvml, "__version__", ""), "gpus": gpus}
    finally:
        pynvml.nvmlShutdown()


# --- nvidia-smi and gputext ------------------------------------------------------------------------

def parse_smi_temperature(text: str) -> dict[str, dict[str, int | None]]:
    """`nvidia-smi -q -d TEMPERATURE` as {PCI bus id (upper case): {row: degrees, or None for N/A}}."""
    found: dict[str, dict[str, int | None]] = {}
    rows = None
    for line in text.splitlines():
        gpu = re.fullmatch(r"GPU ([0-9A-Fa-f]{4,8}:[0-9A-Fa-f]{2}:[0-9A-Fa-f]{2}\.[0-9A-Fa-f])\s*", line)
        if gpu:
            rows = found.setdefault(gpu.group(1).upper(), {})
            continue
        row = re.fullmatch(r"\s+(\S[^:]*?)\s*:\s*(-?\d+) C\s*|\s+(\S[^:]*?)\s*:\s*N/A\s*", line)
        if rows is not None and row:
            if row.group(1) is not None:
                rows[row.group(1)] = int(row.group(2))
            else:
                rows[row.group(3)] = None
    return found


def nvidia_smi(out: Path) -> list:
    query = ["index", *INFO, "pstate", *FIELDS, *MODES, "compute_mode"]
    text = subprocess.run(["nvidia-smi", f"--query-gpu={','.join(query)}", "--format=csv,noheader,nounits"],
                          capture_output=True, text=True, check=True).stdout
    (out / "nvidia-smi.csv").write_text(",".join(query) + "\n" + text)
    return [dict(zip(query, (v.strip() for v in line.split(",")))) for line in text.strip().splitlines()]


def nvidia_smi_temperatures(out: Path) -> dict:
    text = subprocess.run(["nvidia-smi", "-q", "-d", "TEMPERATURE"], capture_output=True, text=True,
                          check=True).stdout
    (out / "nvidia-smi-temperature.txt").write_text(text)
    return parse_smi_temperature(text)


def gputext(out: Path) -> dict:
    from prometheus_client.parser import text_string_to_metric_families

    text = subprocess.run([sys.executable, "-m", "gputext", "collect", "--detail", "full", "--out", "-",
                           "--state-dir", str(out / "state")], capture_output=True, text=True).stdout
    (out / "gputext.prom").write_text(text)
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def find(series: dict, name: str, labels: dict):
    found = [v for (n, ls), v in series.items() if n == name and set(labels.items()) <= ls]
    return found[0] if len(found) == 1 else None


def temperature_checks(rows: dict, series: dict, d: dict) -> list:
    """(what, nvidia-smi's, gputext's, agree) for each temperature row nvidia-smi printed."""
    checks = []
    for row, (name, labels, tolerance) in TEMPERATURE_ROWS.items():
        if row not in rows:
            continue
        theirs, ours = rows[row], find(series, name, {**d, **labels})
        agree = ours is None if theirs is None else ours is not None and abs(ours - theirs) <= tolerance
        checks.append((row, theirs, ours, agree))
    return checks


def compare(out: Path) -> int:
    gpus, temperatures, series = nvidia_smi(out), nvidia_smi_temperatures(out), gputext(out)
    rows, bad = [], 0
    for gpu in gpus:
        d = {"gpu": gpu["index"], "uuid": gpu["uuid"]}
        info = find(series, "gpu_info", {**d, "name": gpu["name"], "serial": gpu["serial"],
                                         "vbios_version": gpu["vbios_version"],
                                         "driver_version": gpu["driver_version"]})
        checks = [("info labels", "match", "match" if info == 1 else "differ", info == 1)]
        pstate = find(series, "gpu_performance_state", d)
        checks.append(("pstate", gpu["pstate"], pstate, pstate is not None and f"P{int(pstate)}" == gpu["pstate"]))
        for field, (name, labels, factor, tolerance) in FIELDS.items():
            ours = find(series, name, {**d, **labels})
            try:
                theirs = float(gpu[field]) * factor
            except ValueError:  # [N/A], [Not Supported]: gputext must leave it out
                checks.append((field, gpu[field], ours, ours is None))
                continue
            checks.append((field, theirs, ours, ours is not None and abs(ours - theirs) <= tolerance))
        for field, name in MODES.items():
            ours = find(series, name, d)
            theirs = WORDS.get(gpu[field])
            checks.append((field, gpu[field], ours, ours == theirs if theirs is not None else ours is None))
        mode = find(series, "gpu_compute_mode", {**d, "mode": gpu["compute_mode"].lower()})
        checks.append(("compute_mode", gpu["compute_mode"], mode, mode == 1))
        checks += temperature_checks(temperatures.get(gpu["pci.bus_id"].upper(), {}), series, d)
        for field, theirs, ours, agree in checks:
            bad += not agree
            rows.append(f"gpu {gpu['index']}  {field:34} nvidia-smi {str(theirs):>20}  gputext {str(ours):>20}  "
                        f"{'ok' if agree else 'DIFFERENT'}")
    report = "\n".join(rows) + f"\n{bad} value(s) differ\n"
    (out / "comparison.txt").write_text(report)
    print(report, end="")
    return 1 if bad else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("out", nargs="?", type=Path, default=DEFAULT_OUT, help="where to write (default: %(default)s)")
    parser.add_argument("--window", type=float, default=2.0, help="seconds between the two traffic readings")
    parser.add_argument("--nvml-only", action="store_true", help="write nvml-capture.json only")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    capture = capture_nvml(args.window)
    (args.out / "nvml-capture.json").write_text(json.dumps(capture, indent=1, sort_keys=True) + "\n")
    for gpu in capture["gpus"]:
        for counter, unit in gpu["traffic"]["implied_units"].items():
            print(f"gpu {gpu['index']}  {counter}: {unit['unit']}")
    return 0 if args.nvml_only else compare(args.out)


if __name__ == "__main__":
    sys.exit(main())

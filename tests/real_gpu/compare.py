"""Compare gputext with nvidia-smi on a machine with a real NVIDIA GPU, and keep what both said.

    python tests/real_gpu/compare.py OUTDIR

Runs `nvidia-smi --query-gpu=...` and `gputext collect --out -` back to back, writes both outputs (and
the comparison) into OUTDIR, and prints one line per value: nvidia-smi's, gputext's, and whether they
agree. Static values (names, limits, maxima, modes) must match exactly; live ones (temperature, power,
clocks, utilisation) are read a moment apart, so they match within a tolerance. Exit 0 when everything
agrees, 1 otherwise. Commit OUTDIR's files under tests/data/ so the fake GPU can be checked against them.

It only reads: it changes no setting of the card.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

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
WORDS = {"Enabled": 1, "Disabled": 0, "Default": 0, "Exclusive_Thread": 1, "Prohibited": 2,
         "Exclusive_Process": 3}
MODES = {"persistence_mode": "gpu_persistence_mode", "accounting.mode": "gpu_accounting_mode",
         "compute_mode": "gpu_compute_mode", "ecc.mode.current": "gpu_ecc_mode"}
INFO = ("uuid", "name", "pci.bus_id", "serial", "vbios_version", "driver_version")


def nvidia_smi(out: Path) -> list:
    query = ["index", *INFO, "pstate", *FIELDS, *MODES]
    text = subprocess.run(["nvidia-smi", f"--query-gpu={','.join(query)}", "--format=csv,noheader,nounits"],
                          capture_output=True, text=True, check=True).stdout
    (out / "nvidia-smi.csv").write_text(",".join(query) + "\n" + text)
    return [dict(zip(query, (v.strip() for v in line.split(",")))) for line in text.strip().splitlines()]


def gputext(out: Path) -> dict:
    from prometheus_client.parser import text_string_to_metric_families

    text = subprocess.run([sys.executable, "-m", "gputext", "collect", "--out", "-", "--state-dir",
                           str(out / "state")], capture_output=True, text=True).stdout
    (out / "gputext.prom").write_text(text)
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def find(series: dict, name: str, labels: dict):
    found = [v for (n, ls), v in series.items() if n == name and set(labels.items()) <= ls]
    return found[0] if len(found) == 1 else None


def main() -> int:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "real-gpu")
    out.mkdir(parents=True, exist_ok=True)
    gpus, series = nvidia_smi(out), gputext(out)
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
        for field, theirs, ours, agree in checks:
            bad += not agree
            rows.append(f"gpu {gpu['index']}  {field:22} nvidia-smi {str(theirs):>20}  gputext {str(ours):>20}  "
                        f"{'ok' if agree else 'DIFFERENT'}")
    report = "\n".join(rows) + f"\n{bad} value(s) differ\n"
    (out / "comparison.txt").write_text(report)
    print(report, end="")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())

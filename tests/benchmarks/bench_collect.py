"""Cost of one `gputext collect` process against the fake NVML, as ratios to a floor run alongside it.

    python tests/benchmarks/bench_collect.py [--gpus 8] [--runs 21]

The floor is `python -c "import pynvml, prometheus_client"`: what any Python collector that writes this
format pays before it does anything. Runs alternate (floor, gputext, floor, gputext, ...) so that drift
in a noisy machine hits both alike; each figure is a median, and the ratio is the median of the pairwise
ratios. Wall time is the parent's clock around the child; CPU time is the child's user+system from wait4.
NVML calls per device are counted by the fake library: a cold run (no inventory cache) and a warm one.
Targets: at most 1.5x the floor; at most 12 NVML calls per device for the device metrics (nvml);
NVLink and PCIe add at most 10% to an nvml-only run on 8 GPUs x 18 links.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from fakegpu import H100_NVLINKS, build_fake_nvml, default_system, fake_env, h100, read_calls, render_scenario  # noqa: E402


def timed(cmd, env) -> tuple:
    """(wall seconds, cpu seconds, exit code) of one process."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    return wall, usage.ru_utime + usage.ru_stime, proc.returncode


def gputext_command() -> list:
    script = Path(sys.executable).parent / "gputext"
    return [str(script)] if script.exists() else [sys.executable, "-m", "gputext"]


def calls_per_device(cmd, env, calls_path: Path) -> dict:
    """{device index: calls} for one run of cmd."""
    calls_path.unlink(missing_ok=True)
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)
    counts = read_calls(calls_path)
    return {dev: sum(fns.values()) for dev, fns in counts.items() if dev != "system"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gpus", type=int, default=8)
    parser.add_argument("--runs", type=int, default=21)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="gputext-bench-"))
    libdir = build_fake_nvml(work / "lib")
    scenario = work / "scenario.txt"
    scenario.write_text(render_scenario(default_system(), [h100(i) for i in range(args.gpus)]))
    no_counters = work / "scenario-no-pcie-counters.txt"  # GPUs whose driver lacks fields 197/198
    gpus = [h100(i) for i in range(args.gpus)]
    for gpu in gpus:
        del gpu["fields"][197], gpu["fields"][198]
    no_counters.write_text(render_scenario(default_system(), gpus))
    calls = work / "calls.txt"
    env = fake_env(libdir, scenario)
    out = work / "textfile" / "gpu.prom"
    out.parent.mkdir()

    def collect(collectors: str) -> list:
        return gputext_command() + ["collect", "--out", str(out), "--state-dir", str(work / "state"),
                                    "--collectors", collectors]

    variants = {
        "floor": [sys.executable, "-c", "import pynvml, prometheus_client"],
        "nvml": collect("nvml"),
        "nvml,nvlink,pcie": collect("nvml,nvlink,pcie"),
        "  same, PCIe sampled": collect("nvml,nvlink,pcie"),
    }
    envs = {name: env for name in variants}
    envs["  same, PCIe sampled"] = fake_env(libdir, no_counters)
    # calls: a cold run (no inventory cache) fills the cache, the warm one uses it
    call_counts = {}
    for name in ("nvml", "nvml,nvlink,pcie"):
        shutil.rmtree(work / "state", ignore_errors=True)
        call_env = fake_env(libdir, scenario, calls)
        call_counts[name] = (calls_per_device(variants[name], call_env, calls),
                             calls_per_device(variants[name], call_env, calls))

    for name, cmd in variants.items():  # warm the page cache, .pyc files and inventory caches
        timed(cmd, envs[name])
    wall = {name: [] for name in variants}
    cpu = {name: [] for name in variants}
    for _ in range(args.runs):
        for name, cmd in variants.items():
            w, c, code = timed(cmd, envs[name])
            if code != 0:
                sys.exit(f"{' '.join(cmd)} exited {code}")
            wall[name].append(w)
            cpu[name].append(c)

    med = statistics.median
    print(f"gputext collect, {args.gpus} fake GPUs x {H100_NVLINKS} NVLink links, {args.runs} rounds of "
          f"alternating runs; file {out.stat().st_size} bytes")
    print(f"{'':24}{'wall ms':>10}{'cpu ms':>10}{'wall/floor':>12}{'cpu/floor':>11}")
    for name in variants:
        wall_ratio = med([w / f for w, f in zip(wall[name], wall["floor"])])
        cpu_ratio = med([c / f for c, f in zip(cpu[name], cpu["floor"])])
        print(f"{name:24}{med(wall[name]) * 1e3:10.1f}{med(cpu[name]) * 1e3:10.1f}{wall_ratio:12.2f}{cpu_ratio:11.2f}")
    added = med([a / n for a, n in zip(wall["nvml,nvlink,pcie"], wall["nvml"])]) - 1
    print(f"nvlink+pcie add {added * 100:.1f}% wall to an nvml-only run (target <= 10%); "
          f"target for a run: <= 1.5x floor")
    sampled = med(wall["  same, PCIe sampled"]) - med(wall["nvml,nvlink,pcie"])
    print(f"without PCIe byte counters the 20 ms samples add {sampled * 1e3:.1f} ms in parallel; "
          f"a serial loop would add {args.gpus * 2 * 20} ms")
    print(f"{'NVML calls per device':24}{'cold':>10}{'warm':>10}   (target warm <= 12 for nvml)")
    for name, (cold, warm) in call_counts.items():
        print(f"{'  ' + name:24}{max(cold.values()):10}{max(warm.values()):10}")


if __name__ == "__main__":
    main()

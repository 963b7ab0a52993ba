"""Cost of one `gputext collect` process against the fake NVML, as ratios to a floor run alongside it.

    python tests/benchmarks/bench_collect.py [--gpus 8] [--runs 21] [--cycles 1000] [--cycle-rounds 3]

The floor is what any Python NVML reader pays before it reads a value: `python -c "import pynvml;
pynvml.nvmlInit(); [handles of every GPU]"` against the same fake (common.FLOOR). The earlier floor,
`import pynvml, prometheus_client`, is printed beside it for continuity. Runs alternate (floor, gputext,
floor, gputext, ...) so that drift in a noisy machine hits all alike; each figure is a median, and a ratio
is the median of the pairwise ratios. Wall time is the parent's clock around the child; CPU time is the
child's user+system from wait4. NVML calls per device are counted by the fake library: a cold run (no
inventory cache) and a warm one. Series per GPU are counted in what one run writes at each detail level,
on H100s without and with GPM. The repeating mode's CPU per cycle is measured as bench_repeat.py does
(which also follows its memory and compares source trees). Targets (issue 14): all collectors at most
2.5x the floor, wall and CPU; at most 12 NVML calls per device for the device metrics (nvml); NVLink and
PCIe add at most 10% to an nvml-only run on 8 GPUs x 18 links; at most 5 ms CPU per cycle; at most 80
series per GPU at --detail standard.
"""

from __future__ import annotations

import argparse
import collections
import re
import shutil
import statistics
import subprocess
from pathlib import Path

from bench_repeat import cycles_cpu
from common import FLOOR, OLD_FLOOR, alternate, bench_env, fake_gpus, gputext_command, timed, write_scenario
from fakegpu import H100_NVLINKS, h100, read_calls, with_gpm


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
    parser.add_argument("--cycles", type=int, default=1000, help="cycles of a repeating run (0: none)")
    parser.add_argument("--cycle-rounds", type=int, default=3)
    args = parser.parse_args()

    work, libdir, scenario, env = fake_gpus("gputext-bench-", args.gpus)
    gpus = [h100(i) for i in range(args.gpus)]  # GPUs whose driver lacks fields 197/198
    for gpu in gpus:
        del gpu["fields"][197], gpu["fields"][198]
    no_counters = write_scenario(work / "scenario-no-pcie-counters.txt", gpus)
    calls = work / "calls.txt"
    out = work / "textfile" / "gpu.prom"
    out.parent.mkdir()

    def collect(collectors: str) -> list:
        return gputext_command() + ["collect", "--out", str(out), "--state-dir", str(work / "state"),
                                    *(["--collectors", collectors] if collectors else [])]

    variants = {
        "floor": FLOOR,
        "old floor": OLD_FLOOR,
        "all collectors": collect(""),
        "nvml": collect("nvml"),
        "nvml,nvlink,pcie": collect("nvml,nvlink,pcie"),
        "  same, PCIe sampled": collect("nvml,nvlink,pcie"),
    }
    envs = {name: env for name in variants}
    envs["  same, PCIe sampled"] = bench_env(libdir, no_counters)
    # calls: a cold run (no inventory cache) fills the cache, the warm one uses it
    call_counts = {}
    for name in ("nvml", "nvml,nvlink,pcie"):
        shutil.rmtree(work / "state", ignore_errors=True)
        call_env = bench_env(libdir, scenario, calls)
        call_counts[name] = (calls_per_device(variants[name], call_env, calls),
                             calls_per_device(variants[name], call_env, calls))

    for name, cmd in variants.items():  # warm the page cache, .pyc files and inventory caches
        timed(cmd, envs[name])
    wall, cpu = alternate(variants, args.runs, envs)

    med = statistics.median
    print(f"gputext collect, {args.gpus} fake GPUs x {H100_NVLINKS} NVLink links, {args.runs} rounds of "
          f"alternating runs; file {out.stat().st_size} bytes")
    def ratio(figures, name, floor):
        return med([a / b for a, b in zip(figures[name], figures[floor])])

    print(f"{'':24}{'wall ms':>10}{'cpu ms':>10}{'wall/floor':>12}{'cpu/floor':>11}{'wall/old':>10}"
          f"{'cpu/old':>9}")
    for name in variants:
        print(f"{name:24}{med(wall[name]) * 1e3:10.1f}{med(cpu[name]) * 1e3:10.1f}"
              f"{ratio(wall, name, 'floor'):12.2f}{ratio(cpu, name, 'floor'):11.2f}"
              f"{ratio(wall, name, 'old floor'):10.2f}{ratio(cpu, name, 'old floor'):9.2f}")
    added = med([a / n for a, n in zip(wall["nvml,nvlink,pcie"], wall["nvml"])]) - 1
    print(f"nvlink+pcie add {added * 100:.1f}% wall to an nvml-only run (target <= 10%); "
          f"target for all collectors: <= 2.5x floor, wall and CPU")
    sampled = med(wall["  same, PCIe sampled"]) - med(wall["nvml,nvlink,pcie"])
    print(f"without PCIe byte counters the 20 ms samples add {sampled * 1e3:.1f} ms in parallel; "
          f"a serial loop would add {args.gpus * 2 * 20} ms")
    print(f"{'NVML calls per device':24}{'cold':>10}{'warm':>10}   (target warm <= 12 for nvml)")
    for name, (cold, warm) in call_counts.items():
        print(f"{'  ' + name:24}{max(cold.values()):10}{max(warm.values()):10}")
    if args.cycles:
        # the repeating mode: CPU per cycle = (CPU of N cycles - CPU of 1) / (N - 1), as bench_repeat.py
        # (which also follows memory and compares source trees), each round beside a floor run
        repeat = gputext_command() + ["collect", "--out", str(out), "--state-dir", str(work / "state-repeat"),
                                      "--interval", "1ms"]
        cycles_cpu(repeat, env, 3)
        per_cycle, floors = [], []
        for _ in range(args.cycle_rounds):
            floors.append(timed(FLOOR, env)[1])
            one = cycles_cpu(repeat, env, 1)
            per_cycle.append((cycles_cpu(repeat, env, args.cycles) - one) / (args.cycles - 1))
        print(f"{'repeating, per cycle':24}{'':10}{med(per_cycle) * 1e3:10.2f}{'':12}"
              f"{med([c / f for c, f in zip(per_cycle, floors)]):11.3f}   ({args.cycle_rounds} rounds of "
              f"{args.cycles} cycles, all collectors; target <= 5 ms)")
    print(f"{'series per GPU':24}{'standard':>10}{'full':>10}   (every collector but processes, whose "
          f"series scale with the workload; target standard <= 80)")
    gpm = bench_env(libdir, write_scenario(work / "scenario-gpm.txt", [with_gpm(h100(i)) for i in range(args.gpus)]))
    for name, series_env, state in (("  H100s without GPM", env, "state"), ("  H100s with GPM", gpm, "state-gpm")):
        # its own state dir: the inventory cache keeps which GPUs have GPM
        counts = [series_per_gpu(gputext_command() + ["collect", "--out", "-", "--state-dir", str(work / state),
                                                      "--collectors", ALL_BUT_PROCESSES, "--detail", detail,
                                                      "--gpm-window", "150ms"], series_env)
                  for detail in ("standard", "full")]
        print(f"{name:24}{counts[0]:10}{counts[1]:10}")


ALL_BUT_PROCESSES = "nvml,nvlink,pcie,dcgm,kubernetes,xid,gpm"


def series_per_gpu(cmd: list, env: dict) -> int:
    """The most gpu_* series (the prefixed device series) any one GPU has in what `cmd` writes to
    standard output."""
    text = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False).stdout
    counts = collections.Counter(re.search(r'gpu="(\d+)"', line).group(1) for line in text.splitlines()
                                 if line.startswith("gpu_") and 'gpu="' in line)
    return max(counts.values())


if __name__ == "__main__":
    main()

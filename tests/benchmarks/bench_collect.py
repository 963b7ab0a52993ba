"""Cost of one `gputext collect` process against the fake NVML, as ratios to a floor run alongside it.

    python tests/benchmarks/bench_collect.py [--gpus 8] [--runs 21] [--cycles 1000] [--cycle-rounds 3]
        [--pcie-cycles 40] [--pcie-interval 0.5] [--against DIR]

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

GPUs without PCIe byte counters (issue 25): the pcie collector then samples nvmlDeviceGetPcieThroughput,
which the fake, like the driver, answers after sleeping 20 ms. A one-shot run samples all GPUs at once;
its CPU is compared with a one-shot of nvml,nvlink (target: at most +20%) and its wall time with the
same run on GPUs with counters (target: about one 20 ms sample more). The repeating mode's cycle of
nvml,nvlink,pcie is compared with nvml,nvlink alone (target: at most 1.3x), at --pcie-interval with a
PCIe sample interval three times as long: the proportions of the defaults (the repeating service's 5 s
and --pcie-sample-interval 15 s), so that a pass comes once every three cycles as on a node, in a tenth
of the time (the sample interval is set through GPUTEXT_PCIE_SAMPLE_INTERVAL, which a tree that lacks
the option ignores); the fake counts the threads that sampled (target: none started per cycle). --against DIR (a directory
holding a `gputext/` package, e.g. `git archive main gputext | tar -x -C DIR`) measures that tree's
cycle too, alternated with this one's.
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
from fakegpu import H100_NVLINKS, h100, read_call_blocks, read_calls, with_gpm


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
    parser.add_argument("--pcie-cycles", type=int, default=40, help="cycles of a repeating run with PCIe "
                        "sampled (0: none)")
    parser.add_argument("--pcie-interval", type=float, default=0.5, help="seconds between those cycles")
    parser.add_argument("--against", help="another source tree for the PCIe cycle (a dir holding gputext/)")
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
        "nvml,nvlink": collect("nvml,nvlink"),
        "nvml,nvlink,pcie": collect("nvml,nvlink,pcie"),
        "  same, PCIe sampled": collect("nvml,nvlink,pcie"),
        "  nvml,nvlink there": collect("nvml,nvlink"),
    }
    envs = {name: env for name in variants}
    sampled_env = bench_env(libdir, no_counters)
    envs["  same, PCIe sampled"] = envs["  nvml,nvlink there"] = sampled_env
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
    sampled_cpu = med([a / b for a, b in zip(cpu["  same, PCIe sampled"], cpu["  nvml,nvlink there"])]) - 1
    print(f"  and {sampled_cpu * 100:+.1f}% CPU over a one-shot of nvml,nvlink on those GPUs (target <= +20%)")
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
    if args.pcie_cycles:
        pcie_cycles(work, sampled_env, args)
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
TREE = str(Path(__file__).resolve().parents[2])  # the source tree this benchmark belongs to


def pcie_cycles(work: Path, env: dict, args) -> None:
    """CPU per repeating cycle on GPUs without PCIe byte counters: nvml,nvlink,pcie against nvml,nvlink,
    per tree (this one, and --against), rounds alternating; and the threads that sampled."""
    trees = {"this tree": TREE, **({"against": str(Path(args.against).resolve())} if args.against else {})}
    calls = work / "pcie-calls.txt"

    def command(collectors: str) -> list:
        return gputext_command() + ["collect", "--out", str(work / "pcie-cycles.prom"), "--state-dir",
                                    str(work / "state-pcie-cycles"), "--collectors", collectors,
                                    "--interval", f"{args.pcie_interval}s"]

    env = dict(env, GPUTEXT_PCIE_SAMPLE_INTERVAL=f"{3 * args.pcie_interval}s")
    variants = {(tree, collectors): (command(collectors), dict(env, PYTHONPATH=path))
                for tree, path in trees.items() for collectors in ("nvml,nvlink", "nvml,nvlink,pcie")}
    for cmd, variant_env in variants.values():
        cycles_cpu(cmd, variant_env, 1)  # .pyc files and the inventory cache
    per_cycle = {name: [] for name in variants}
    for _ in range(args.cycle_rounds):
        for name, (cmd, variant_env) in variants.items():
            one = cycles_cpu(cmd, variant_env, 1)
            per_cycle[name].append((cycles_cpu(cmd, variant_env, args.pcie_cycles) - one) / (args.pcie_cycles - 1))
    med = statistics.median
    print(f"repeating cycle on GPUs without PCIe byte counters ({args.cycle_rounds} rounds of "
          f"{args.pcie_cycles} cycles, every {args.pcie_interval}s, PCIe sampled every {3 * args.pcie_interval}s; "
          f"CPU ms per cycle; target pcie <= 1.3x):")
    for tree in trees:
        without, with_pcie = per_cycle[tree, "nvml,nvlink"], per_cycle[tree, "nvml,nvlink,pcie"]
        calls.unlink(missing_ok=True)
        cmd, variant_env = variants[tree, "nvml,nvlink,pcie"]
        cycles_cpu(cmd, dict(variant_env, FAKE_NVML_CALLS=str(calls)), args.pcie_cycles)
        threads = read_call_blocks(calls)[-1]["system"].get("pcie_throughput_threads", 0)
        print(f"  {tree:12} nvml,nvlink {med(without) * 1e3:6.2f}   nvml,nvlink,pcie {med(with_pcie) * 1e3:6.2f}"
              f"   ratio {med([a / b for a, b in zip(with_pcie, without)]):5.2f}   threads that sampled in "
              f"{args.pcie_cycles} cycles: {threads}")


def series_per_gpu(cmd: list, env: dict) -> int:
    """The most gpu_* series (the prefixed device series) any one GPU has in what `cmd` writes to
    standard output."""
    text = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False).stdout
    counts = collections.Counter(re.search(r'gpu="(\d+)"', line).group(1) for line in text.splitlines()
                                 if line.startswith("gpu_") and 'gpu="' in line)
    return max(counts.values())


if __name__ == "__main__":
    main()

"""Cost of the gpm collector: a one-shot run with and without it, and a repeating cycle with it (8 fake
H100s with GPM, all collectors).

    python tests/benchmarks/bench_gpm.py [--runs 15] [--window 1s] [--cycles 200]

One-shot: `gputext collect` with every collector, against the same with `--collectors` naming all but gpm;
runs alternate so that drift hits both alike; medians, and the medians of the pairwise differences and
ratios. Wall time is the parent's clock around the child, CPU time the child's user+system (wait4).
Repeating: one process `--interval 1ms --count N` with and without gpm; per cycle = (its wall or CPU -
one one-shot run) / N. Target (issue 9): a one-shot run's CPU grows by at most 10%, its wall by at most
the window plus 10 ms; a repeating cycle waits for nothing.
"""

from __future__ import annotations

import argparse
import statistics

from common import alternate, bench_env, fake_gpus, gputext_command, timed
from fakegpu import h100, read_call_blocks, with_gpm

ALL_BUT_GPM = "nvml,nvlink,pcie,processes,dcgm,kubernetes"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--window", default="1s")
    parser.add_argument("--cycles", type=int, default=200)
    args = parser.parse_args()
    work, libdir, _, _ = fake_gpus("gputext-bench-gpm-", devices=[with_gpm(h100(i)) for i in range(8)])
    scenario = work / "scenario.txt"
    env = bench_env(libdir, scenario)
    out = work / "gpu.prom"
    base = gputext_command() + ["collect", "--out", str(out), "--state-dir", str(work / "state"),
                                "--gpm-window", args.window]
    variants = {"without gpm": base + ["--collectors", ALL_BUT_GPM], "with gpm": base}
    envs = {name: env for name in variants}
    for cmd in variants.values():  # warm the page cache, .pyc files and inventory cache
        timed(cmd, env)
    wall, cpu = alternate(variants, args.runs, envs)

    med = statistics.median
    print(f"8 fake H100s with GPM x 18 NVLink links, all collectors, --gpm-window {args.window}; "
          f"{args.runs} rounds of alternating one-shot runs")
    print(f"{'':24}{'wall ms':>10}{'cpu ms':>10}")
    for name in variants:
        print(f"{name:24}{med(wall[name]) * 1e3:10.1f}{med(cpu[name]) * 1e3:10.1f}")
    added_wall = med([g - n for g, n in zip(wall["with gpm"], wall["without gpm"])])
    cpu_ratio = med([g / n for g, n in zip(cpu["with gpm"], cpu["without gpm"])])
    print(f"gpm adds {added_wall * 1e3:.1f} ms wall (the window is {args.window}; target <= window + 10 ms) "
          f"and {(cpu_ratio - 1) * 100:+.1f}% CPU (target <= +10%)")

    shot_wall, shot_cpu = med(wall["with gpm"]), med(cpu["with gpm"])
    calls = work / "calls.txt"
    print(f"{'repeating, per cycle':24}{'wall ms':>10}{'cpu ms':>10}   "
          f"({args.cycles} cycles, --interval 1ms)")
    for name, cmd in variants.items():
        calls.unlink(missing_ok=True)
        w, c, code = timed(cmd + ["--interval", "1ms", "--count", str(args.cycles)],
                           bench_env(libdir, scenario, calls))
        if code != 0:
            raise SystemExit(f"repeating run exited {code}")
        one_wall, one_cpu = (shot_wall, shot_cpu) if name == "with gpm" else (med(wall[name]), med(cpu[name]))
        per_wall, per_cpu = (w - one_wall) / args.cycles, (c - one_cpu) / args.cycles
        print(f"{'  ' + name:24}{per_wall * 1e3:10.2f}{per_cpu * 1e3:10.2f}")
        if name == "with gpm":
            system = read_call_blocks(calls)[-1]["system"]
            print(f"  GPM samples left allocated at exit: {system['gpm_samples_live']}, "
                  f"most at once: {system['gpm_samples_peak']}")


if __name__ == "__main__":
    main()

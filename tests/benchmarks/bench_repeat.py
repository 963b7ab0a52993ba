"""The repeating mode against one-shot runs, and its memory over many cycles (8 fake GPUs).

    python tests/benchmarks/bench_repeat.py [--cycles 10000] [--shots 15]

One-shot: median wall and CPU of `gputext collect --out FILE` as a process. Repeating: one process running
`--interval 1ms --count N` back to back; per cycle = (its wall or CPU - one startup) / N, where a startup
is the one-shot run's cost. Resident set size is read from /proc while it runs: after the first cycles and
at the last reading before it ends. Target (issue 6): a cycle costs at most a tenth of a one-shot run, and
memory does not grow.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import time

from common import fake_gpus, gputext_command, timed


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cycles", type=int, default=10_000)
    parser.add_argument("--shots", type=int, default=15)
    args = parser.parse_args()
    work, _, _, env = fake_gpus("gputext-bench-repeat-", 8)
    out = work / "gpu.prom"
    base = gputext_command() + ["collect", "--out", str(out), "--state-dir", str(work / "state")]
    timed(base, env)
    shots = [timed(base, env) for _ in range(args.shots)]
    shot_wall = statistics.median(w for w, _, _ in shots)
    shot_cpu = statistics.median(c for _, c, _ in shots)

    start = time.perf_counter()
    proc = subprocess.Popen(base + ["--interval", "1ms", "--count", str(args.cycles)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    readings = []  # (seconds since start, RSS KiB), every 0.2 s while it runs
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        try:
            readings.append((time.perf_counter() - start, rss_kib(proc.pid)))
        except OSError:
            pass
        time.sleep(0.2)
    wall = time.perf_counter() - start
    cpu = usage.ru_utime + usage.ru_stime
    cycle_wall = (wall - shot_wall) / args.cycles
    cycle_cpu = (cpu - shot_cpu) / args.cycles
    print(f"8 fake GPUs x 18 NVLink links, all collectors; one-shot median of {args.shots}, "
          f"{args.cycles} repeating cycles")
    print(f"{'':24}{'wall ms':>10}{'cpu ms':>10}")
    print(f"{'one-shot run':24}{shot_wall * 1e3:10.1f}{shot_cpu * 1e3:10.1f}")
    print(f"{'repeating, per cycle':24}{cycle_wall * 1e3:10.2f}{cycle_cpu * 1e3:10.2f}")
    print(f"cycle / one-shot: wall {cycle_wall / shot_wall:.3f}, cpu {cycle_cpu / shot_cpu:.3f} (target <= 0.1)")
    settled = [r for r in readings if r[0] >= 2.0] or readings  # after start-up and the first cycles
    quarters = [settled[min(len(settled) - 1, int(len(settled) * q))] for q in (0, 0.25, 0.5, 0.75, 1.0)]
    print("resident set: " + ", ".join(f"{kib} KiB at {t:.0f} s" for t, kib in quarters)
          + f" (growth after the first readings: {quarters[-1][1] - quarters[0][1]:+d} KiB)")


if __name__ == "__main__":
    main()

"""The repeating mode: CPU per cycle against one-shot runs and the floor, and its memory over many cycles
(8 fake H100 x 18 NVLink links, all collectors, --detail standard).

    python tests/benchmarks/bench_repeat.py [--cycles 2000] [--rounds 5] [--against DIR] [--instructions]

Per cycle: a process runs `--interval 1ms --count 1` and another `--count N` (back to back, so every
cycle starts at once); per cycle = (CPU of N cycles - CPU of 1) / (N - 1), so start-up and the first,
cold cycle cancel out. Rounds alternate with the floor (common.FLOOR: start Python, import pynvml,
initialise NVML, a handle of every GPU) and, with --against, with the same run of another source tree (a
directory holding a `gputext/` package, such as `git archive BASE gputext | tar -x -C DIR`), so that drift
in a noisy machine hits all alike; figures are medians, ratios medians of the pairwise ratios. Resident set
size is read from /proc during the last long run: after the first seconds and at its last reading.

--instructions also counts the instructions a cycle executes in user space (valgrind's callgrind: the same
count every time, unlike CPU time on a shared machine; it leaves out the kernel's share, such as writing
the files): (count of N2 cycles - count of N1) / (N2 - N1), for this tree and the --against one.

Target (issue 14): at most 5 ms CPU per cycle; memory flat over 10,000 cycles (--cycles 10000).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from common import FLOOR, fake_gpus, gputext_command, timed

TREE = str(Path(__file__).resolve().parents[2])  # the source tree these benchmarks belong to


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def cycles_cpu(cmd, env, count: int, readings=None) -> float:
    """CPU seconds of one process running `count` cycles; RSS readings (seconds, KiB) appended if asked."""
    if readings is None:
        _, cpu, code = timed(cmd + ["--count", str(count)], env)
    else:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd + ["--count", str(count)], env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            try:
                readings.append((time.perf_counter() - start, rss_kib(proc.pid)))
            except OSError:
                pass
            time.sleep(0.2)
        cpu, code = usage.ru_utime + usage.ru_stime, os.waitstatus_to_exitcode(status)
    if code != 0:
        sys.exit(f"{' '.join(cmd)} exited {code}")
    return cpu


def instructions(cmd, env, count: int) -> int:
    out = subprocess.run(["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null"] + cmd
                         + ["--count", str(count)], env=env, capture_output=True, text=True)
    found = re.search(r"Collected : (\d+)", out.stderr)
    if out.returncode != 0 or not found:
        sys.exit(f"valgrind failed: {out.stderr[-500:]}")
    return int(found.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cycles", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--against", help="another source tree (a directory holding gputext/), alternated")
    parser.add_argument("--instructions", action="store_true", help="count instructions with valgrind")
    args = parser.parse_args()
    if args.instructions and shutil.which("valgrind") is None:
        sys.exit("--instructions needs valgrind (apt-get install valgrind)")
    work, _, _, env = fake_gpus("gputext-bench-repeat-", 8)
    os.chdir(work)  # `python -m` puts the working directory first on sys.path: not a source tree
    trees = {"this tree": TREE}
    if args.against:
        trees["against"] = str(Path(args.against).resolve())
    envs = {name: dict(env, PYTHONPATH=tree) for name, tree in trees.items()}

    def command(name: str) -> list:
        return gputext_command() + ["collect", "--out", str(work / f"{name}.prom"),
                                    "--state-dir", str(work / f"state-{name}"), "--interval", "1ms"]

    for name in trees:  # the inventory cache and .pyc files, as an installed node has them
        cycles_cpu(command(name), envs[name], 3)
    floor, per_cycle = [], {name: [] for name in trees}
    readings = []
    for round_ in range(args.rounds):
        floor.append(timed(FLOOR, env)[1])
        for name in trees:
            last = round_ == args.rounds - 1 and name == "this tree"
            one = cycles_cpu(command(name), envs[name], 1)
            many = cycles_cpu(command(name), envs[name], args.cycles, readings if last else None)
            per_cycle[name].append((many - one) / (args.cycles - 1))

    print(f"8 fake H100 x 18 NVLink links, all collectors, standard; {args.rounds} rounds of "
          f"{args.cycles} cycles, medians")
    print(f"{'':26}{'cpu ms':>10}{'/ floor':>10}")
    print(f"{'floor (one process)':26}{statistics.median(floor) * 1e3:10.1f}{1:10.3f}")
    for name, values in per_cycle.items():
        ratio = statistics.median(v / f for v, f in zip(values, floor))
        print(f"{'cycle, ' + name:26}{statistics.median(values) * 1e3:10.2f}{ratio:10.3f}")
    if args.against:
        ratio = statistics.median(a / b for a, b in zip(per_cycle["this tree"], per_cycle["against"]))
        print(f"this tree / against: {ratio:.3f} (pairwise)")
    settled = [r for r in readings if r[0] >= 2.0] or readings  # after start-up and the first cycles
    if settled:
        quarters = [settled[min(len(settled) - 1, int(len(settled) * q))] for q in (0, 0.25, 0.5, 0.75, 1.0)]
        print("resident set: " + ", ".join(f"{kib} KiB at {t:.0f} s" for t, kib in quarters)
              + f" (growth after the first readings: {quarters[-1][1] - quarters[0][1]:+d} KiB)")
    if args.instructions:
        counts = {}
        for name in trees:
            low, high = instructions(command(name), envs[name], 3), instructions(command(name), envs[name], 13)
            counts[name] = (high - low) / 10
            print(f"instructions per cycle, {name}: {counts[name] / 1e6:.2f} M")
        if args.against:
            print(f"this tree / against: {counts['this tree'] / counts['against']:.3f}")
    shutil.rmtree(work)


if __name__ == "__main__":
    main()

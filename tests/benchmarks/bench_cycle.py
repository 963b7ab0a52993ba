"""Where a repeating cycle's CPU goes: each collector, rendering, the state, the inventory, the file write.

    python tests/benchmarks/bench_cycle.py [--cycles 1000] [--scenario counters|sampled|gpm]

One repeating run (`--interval 1ms`, all collectors, --detail standard, 8 fake H100 x 18 NVLink links)
under Python's profiler, timing the CPU of the main thread (time.thread_time: waits for the disk are not
CPU); each part's share is its cumulative time over the cycles, as a share of the whole cycle
(runner._cycle). The profiler slows Python code more than C (NVML, the kernel), so the shares are
for choosing what to look at next; the cycle's CPU itself comes from bench_repeat.py or bench_collect.py.
The PCIe sampler thread's work happens outside the profiled (main) thread: bench_collect.py measures it.
Scenarios: `counters` (GPUs with PCIe byte counters), `sampled` (without: the sampled fallback), `gpm`
(with counters and GPM).
"""

from __future__ import annotations

import argparse
import os
import pstats
import subprocess
import sys
from pathlib import Path

from common import fake_gpus
from fakegpu import h100, with_gpm

TREE = str(Path(__file__).resolve().parents[2])

# (label, file suffix, function names): a part of the cycle, found in the profile by where it is defined
PARTS = [
    *((f"collector {name}", f"gputext/collectors/{name}.py", ("collect", "begin"))
      for name in ("nvml", "nvlink", "pcie", "processes", "dcgm", "kubernetes", "xid", "gpm")),
    ("render the text", "gputext/exposition.py", ("render",)),
    # reading the state and discovering the devices happen inside the first collector that asks
    ("state: write", "gputext/state.py", ("close",)),
    ("inventory: save", "gputext/devices.py", ("save",)),
    ("write the file", "gputext/runner.py", ("write",)),
]
WHOLE = ("gputext/runner.py", "_cycle")

PROFILED = """
import cProfile, sys, time
sys.argv = ["gputext"] + sys.argv[2:]
from gputext.cli import main
profile = cProfile.Profile(time.thread_time)  # CPU of the main thread: not the waits (fsync), not the sampler's
try:
    profile.runcall(main)
except SystemExit:
    pass
profile.dump_stats(PROFILE)
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cycles", type=int, default=1000)
    parser.add_argument("--scenario", choices=("counters", "sampled", "gpm"), default="counters")
    args = parser.parse_args()
    gpus = [h100(i) for i in range(8)]
    if args.scenario == "sampled":
        for gpu in gpus:
            del gpu["fields"][197], gpu["fields"][198]
    if args.scenario == "gpm":
        gpus = [with_gpm(gpu) for gpu in gpus]
    work, _, _, env = fake_gpus("gputext-bench-cycle-", devices=gpus)
    profile = work / "cycle.prof"
    command = [sys.executable, "-c", PROFILED.replace("PROFILE", repr(str(profile))), "--",
               "collect", "--out", str(work / "gpu.prom"), "--state-dir", str(work / "state"),
               "--interval", "1ms", "--count", str(args.cycles)]
    env = dict(env, PYTHONPATH=TREE)
    subprocess.run(command, env=env, check=True, cwd=work, stderr=subprocess.DEVNULL)
    stats = pstats.Stats(str(profile)).stats

    def cumulative(suffix: str, names: tuple) -> float:
        return sum(entry[3] for (filename, _, name), entry in stats.items()
                   if filename.endswith(suffix) and name in names)

    whole = cumulative(WHOLE[0], (WHOLE[1],))
    print(f"{args.cycles} cycles, scenario {args.scenario}: share of a profiled cycle "
          f"({whole / args.cycles * 1e3:.2f} ms CPU each under the profiler)")
    shown = 0.0
    for label, suffix, names in PARTS:
        part = cumulative(suffix, names)
        shown += part
        print(f"  {label:32}{part / whole * 100:6.1f} %")
    print(f"  {'the rest (framework, logging)':32}{(whole - shown) / whole * 100:6.1f} %")
    os.remove(profile)


if __name__ == "__main__":
    main()

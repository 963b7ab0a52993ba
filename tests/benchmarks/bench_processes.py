"""Cost of the processes collector as processes grow: 8 fake GPUs, 10 against 1000 processes in total.

    python tests/benchmarks/bench_processes.py [--runs 15]

Each case runs `gputext collect --collectors processes` with a warm state (a few runs first, so records,
names and energy samples exist), alternating with the floor `python -c "import pynvml, prometheus_client"`.
Wall times are medians; the growth check is the per-process cost: (1000-case - 10-case) / 990 against
the 10-case's cost per process above the floor. The state file's size is printed for each case.
Target (issue 4): no worse than linear growth.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from bench_collect import gputext_command, timed  # noqa: E402
from fakegpu import build_fake_nvml, default_system, fake_env, h100, render_scenario  # noqa: E402

GPUS = 8


def scenario(total: int, first_pid: int = 100_000) -> str:
    """`total` processes spread over the GPUs, each with a utilisation sample."""
    gpus = []
    for index in range(GPUS):
        pids = range(first_pid + index, first_pid + total, GPUS)
        gpus.append(h100(index, processes=[{"pid": p, "used_memory": 1 << 28} for p in pids],
                         process_samples=[{"pid": p, "timestamp": 1_000 + p, "sm": 1, "mem": 1, "enc": 0, "dec": 0}
                                          for p in pids],
                         accounting=[], accounting_mode=0))
    return render_scenario(default_system(), gpus)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="gputext-bench-processes-"))
    libdir = build_fake_nvml(work / "lib")
    floor = [sys.executable, "-c", "import pynvml, prometheus_client"]
    cases = {}
    for total in (10, 1000):
        path = work / f"scenario-{total}.txt"
        path.write_text(scenario(total))
        state = work / f"state-{total}"
        cmd = gputext_command() + ["collect", "--out", str(work / f"out-{total}.prom"), "--state-dir", str(state),
                                   "--collectors", "processes"]
        env = fake_env(libdir, path)
        for _ in range(3):
            timed(cmd, env)  # warm: records, names, energy samples
        cases[total] = (cmd, env, state)
    walls = {"floor": [], 10: [], 1000: []}
    base_env = cases[10][1]
    for _ in range(args.runs):
        walls["floor"].append(timed(floor, base_env)[0])
        for total, (cmd, env, _) in cases.items():
            wall, _, code = timed(cmd, env)
            if code != 0:
                sys.exit(f"gputext exited {code}")
            walls[total].append(wall)
    med = {k: statistics.median(v) for k, v in walls.items()}
    print(f"processes collector, {GPUS} fake GPUs, {args.runs} rounds, warm state")
    print(f"{'case':16}{'wall ms':>10}{'/floor':>9}{'state bytes':>14}")
    print(f"{'floor':16}{med['floor'] * 1e3:10.1f}{1:9.2f}")
    for total, (_, _, state) in cases.items():
        size = (state / "state.json").stat().st_size
        print(f"{f'{total} processes':16}{med[total] * 1e3:10.1f}{med[total] / med['floor']:9.2f}{size:14}")
    per_process = (med[1000] - med[10]) / 990
    print(f"each process beyond 10 costs {per_process * 1e6:.0f} us; 10 processes cost "
          f"{(med[10] - med['floor']) * 1e3:.1f} ms above the floor (growth is linear when the first is steady)")


if __name__ == "__main__":
    main()

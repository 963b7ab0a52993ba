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

from common import FLOOR, alternate, bench_env, fake_gpus, gputext_command, timed, write_scenario
from fakegpu import h100

GPUS = 8


def devices(total: int, first_pid: int = 100_000) -> list:
    """The GPUs with `total` processes spread over them, each with a utilisation sample."""
    gpus = []
    for index in range(GPUS):
        pids = range(first_pid + index, first_pid + total, GPUS)
        gpus.append(h100(index, processes=[{"pid": p, "used_memory": 1 << 28} for p in pids],
                         process_samples=[{"pid": p, "timestamp": 1_000 + p, "sm": 1, "mem": 1, "enc": 0, "dec": 0}
                                          for p in pids],
                         accounting=[], accounting_mode=0))
    return gpus


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    work, libdir, _, base_env = fake_gpus("gputext-bench-processes-", devices=devices(10))
    envs = {10: base_env, 1000: bench_env(libdir, write_scenario(work / "scenario-1000.txt", devices(1000)))}
    variants = {"floor": FLOOR}
    states = {}
    for total, env in envs.items():
        state = states[total] = work / f"state-{total}"
        cmd = variants[total] = gputext_command() + ["collect", "--out", str(work / f"out-{total}.prom"),
                                                     "--state-dir", str(state), "--collectors", "processes"]
        for _ in range(3):
            timed(cmd, env)  # warm: records, names, energy samples
    walls, _ = alternate(variants, args.runs, {"floor": base_env, **envs})
    med = {k: statistics.median(v) for k, v in walls.items()}
    print(f"processes collector, {GPUS} fake GPUs, {args.runs} rounds, warm state")
    print(f"{'case':16}{'wall ms':>10}{'/floor':>9}{'state bytes':>14}")
    print(f"{'floor':16}{med['floor'] * 1e3:10.1f}{1:9.2f}")
    for total, state in states.items():
        size = (state / "state.json").stat().st_size
        print(f"{f'{total} processes':16}{med[total] * 1e3:10.1f}{med[total] / med['floor']:9.2f}{size:14}")
    per_process = (med[1000] - med[10]) / 990
    print(f"each process beyond 10 costs {per_process * 1e6:.0f} us; 10 processes cost "
          f"{(med[10] - med['floor']) * 1e3:.1f} ms above the floor (growth is linear when the first is steady)")


if __name__ == "__main__":
    main()

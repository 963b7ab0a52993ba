"""Cost of one `gputext collect` process against the fake NVML, as ratios to a floor run alongside it.

    python tests/benchmarks/bench_collect.py [--gpus 8] [--runs 21]

The floor is `python -c "import pynvml, prometheus_client"`: what any Python collector that writes this
format pays before it does anything. Runs alternate (floor, gputext, floor, gputext, ...) so that drift
in a noisy machine hits both alike; each figure is a median, and the ratio is the median of the pairwise
ratios. Wall time is the parent's clock around the child; CPU time is the child's user+system from wait4.
NVML calls per device are counted by the fake library: a cold run (no inventory cache) and a warm one.
Targets (issue 2): at most 1.5x the floor; at most 12 NVML calls per device for the device metrics.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from fakegpu import build_fake_nvml, fake_env, h100, read_calls, render_scenario  # noqa: E402


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
    parser.add_argument("--collectors", default="", help="passed to gputext collect (default: all)")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="gputext-bench-"))
    libdir = build_fake_nvml(work / "lib")
    scenario = work / "scenario.txt"
    scenario.write_text(render_scenario({}, [h100(i) for i in range(args.gpus)]))
    calls = work / "calls.txt"
    env = fake_env(libdir, scenario)
    out = work / "textfile" / "gpu.prom"
    out.parent.mkdir()
    state = work / "state"
    collect = gputext_command() + ["collect", "--out", str(out), "--state-dir", str(state)]
    if args.collectors:
        collect += ["--collectors", args.collectors]
    floor = [sys.executable, "-c", "import pynvml, prometheus_client"]

    # calls first: a cold run fills the inventory cache, the warm one uses it
    cold = calls_per_device(collect, fake_env(libdir, scenario, calls), calls)
    warm = calls_per_device(collect, fake_env(libdir, scenario, calls), calls)

    for cmd in (floor, collect):  # warm the page cache and .pyc files
        timed(cmd, env)
    floor_wall, floor_cpu, run_wall, run_cpu, wall_ratio, cpu_ratio = [], [], [], [], [], []
    for _ in range(args.runs):
        fw, fc, _ = timed(floor, env)
        rw, rc, code = timed(collect, env)
        if code != 0:
            sys.exit(f"gputext collect exited {code}")
        floor_wall.append(fw), floor_cpu.append(fc), run_wall.append(rw), run_cpu.append(rc)
        wall_ratio.append(rw / fw), cpu_ratio.append(rc / fc if fc else float("nan"))

    med = statistics.median
    print(f"gputext collect, {args.gpus} fake GPUs, {args.runs} alternating pairs "
          f"(collectors: {args.collectors or 'all'}); file {out.stat().st_size} bytes")
    print(f"{'':28}{'median ms':>12}{'min ms':>10}{'max ms':>10}")
    for label, xs in (("floor wall", floor_wall), ("gputext wall", run_wall),
                      ("floor cpu", floor_cpu), ("gputext cpu", run_cpu)):
        print(f"{label:28}{med(xs) * 1e3:12.1f}{min(xs) * 1e3:10.1f}{max(xs) * 1e3:10.1f}")
    print(f"{'wall ratio to floor':28}{med(wall_ratio):12.2f}   (target <= 1.5)")
    print(f"{'cpu ratio to floor':28}{med(cpu_ratio):12.2f}")
    print(f"{'NVML calls per device':28}{'cold':>12}{'warm':>10}   (target warm <= 12)")
    for dev in sorted(cold):
        print(f"{'  gpu ' + str(dev):28}{cold[dev]:12}{warm.get(dev, 0):10}")


if __name__ == "__main__":
    main()

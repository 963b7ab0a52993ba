"""What the kubernetes collector adds to a run: with the kubelet's answer cached, and when it asks the kubelet.

    python tests/benchmarks/bench_kubernetes.py [--gpus 8] [--runs 21] [--before DIR]

A real gRPC pod-resources server (tests/fakekubelet.py) on a unix socket serves one pod per GPU and two
pods time-slicing GPU 0; half of the one-GPU pods hold their GPU through a DRA claim (gpu.nvidia.com,
gpu-<minor>), the others through the device plugin. Runs alternate: the floor (`python -c "import pynvml, prometheus_client"`),
`--collectors nvml`, `nvml,kubernetes` with a warm cache (a TTL longer than the benchmark), and
`nvml,kubernetes` with `--pod-cache-ttl 0`, which asks the kubelet every run (imports grpc and protobuf,
connects, calls List), and the cached run beside the processes collector, which opens the state file
anyway (as a default run does). Figures are medians of wall time; "added" is the median pairwise
difference to the run without kubernetes beside it. Target: a warm-cache run adds at most 5 ms.

`--before DIR`: the kubernetes runs (and their nvml baseline) also with the gputext of another tree (say,
`git archive main | tar -x -C DIR`), alternating with this one's, and the ratio of each median to its
`before` twin. Both import gputext from their tree alone (PYTHONSAFEPATH, PYTHONPATH).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

from common import FLOOR, alternate, fake_gpus, gputext_command, timed
from fakegpu import h100_uuid
from fakekubelet import claim, claimed, kubelet_socket, pod, serve

ROOT = Path(__file__).resolve().parent.parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gpus", type=int, default=8)
    parser.add_argument("--runs", type=int, default=21)
    parser.add_argument("--before", type=Path, help="another tree to compare with (see above)")
    args = parser.parse_args()

    work, _, _, env = fake_gpus("gputext-bench-k8s-", args.gpus)
    # fake H100 i has minor number i: DRA's gpu-<i>
    pods = [pod(f"train-{i}", "ml", {"trainer": {"nvidia.com/gpu": [h100_uuid(i)]}}) if i % 2 else
            pod(f"train-{i}", "ml", {}, claims={"trainer": [claim(f"gpu-{i}", "ml", claimed(f"gpu-{i}"))]})
            for i in range(1, args.gpus)]
    pods += [pod(f"share-{i}", "ml", {"worker": {"nvidia.com/gpu": [f"{h100_uuid(0)}::{i}"]}}) for i in range(2)]
    envs = {}

    with kubelet_socket() as socket, serve(socket, pods) as kubelet:
        def collect(collectors: str, state: str, *extra: str) -> list:
            return gputext_command() + ["collect", "--out", str(work / "gpu.prom"), "--state-dir",
                                        str(work / state), "--collectors", collectors,
                                        "--pod-resources-socket", str(socket), *extra]

        variants = {
            "floor": FLOOR,
            "nvml": collect("nvml", "state-nvml"),
            "nvml,kubernetes (cached)": collect("nvml,kubernetes", "state-cached", "--pod-cache-ttl", "24h"),
            "nvml,kubernetes (asks)": collect("nvml,kubernetes", "state-asks", "--pod-cache-ttl", "0"),
            "nvml,processes": collect("nvml,processes", "state-processes"),
            "nvml,processes,kubernetes (cached)": collect("nvml,processes,kubernetes", "state-both",
                                                          "--pod-cache-ttl", "24h"),
        }
        baseline = {name: "nvml,processes" if "processes," in name else "nvml" for name in variants}
        envs = {name: env for name in variants}
        if args.before:
            envs = {name: {**env, "PYTHONSAFEPATH": "1", "PYTHONPATH": str(ROOT)} for name in variants}
            for name in ("nvml", "nvml,kubernetes (cached)", "nvml,kubernetes (asks)"):
                state = variants[name][variants[name].index("--state-dir") + 1]
                before = [sys.executable, "-m", "gputext", *variants[name][len(gputext_command()):]]
                variants["before: " + name] = [state + "-before" if v == state else v for v in before]
                envs["before: " + name] = {**env, "PYTHONSAFEPATH": "1", "PYTHONPATH": str(args.before)}
                baseline["before: " + name] = "before: nvml"
        for name, cmd in variants.items():  # page cache, .pyc files, inventory caches, the kubelet cache
            timed(cmd, envs[name])
        calls_before = kubelet.calls
        wall, cpu = alternate(variants, args.runs, envs)
        calls = kubelet.calls - calls_before

    med = statistics.median
    print(f"gputext collect, {args.gpus} fake GPUs, {len(pods)} pods, {args.runs} rounds of alternating runs")
    print(f"{'':36}{'wall ms':>10}{'added ms':>10}  to")
    for name in variants:
        added = ""
        if "kubernetes" in name:
            added = f"{med([a - b for a, b in zip(wall[name], wall[baseline[name]])]) * 1e3:10.1f}  {baseline[name]}"
        print(f"{name:36}{med(wall[name]) * 1e3:10.1f}{added:>10}")
    asks = sum(1 for name in variants if name.endswith("(asks)"))
    print(f"List calls during the timed runs: {calls} (all from the 'asks' runs: {asks * args.runs})")
    if args.before:
        print(f"this tree against {args.before} (ratios of medians; alternating runs, same kubelet, same GPUs):")
        print(f"  {'':34}{'wall':>6}{'CPU':>7}")
        for name in ("nvml", "nvml,kubernetes (cached)", "nvml,kubernetes (asks)"):
            ratios = [med(times[name]) / med(times["before: " + name]) for times in (wall, cpu)]
            print(f"  {name:34}{ratios[0]:6.3f}{ratios[1]:7.3f}")
    print("target: a cached run adds at most 5 ms (it reads the state file, which processes opens anyway)")


if __name__ == "__main__":
    main()

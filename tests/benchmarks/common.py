"""What the benchmark scripts share: the gputext command, one timed child process, a work dir with the
fake NVML and a scenario, the floor every figure is a ratio to, and the alternating timer.

Importing it puts tests/ and the repository on sys.path, so a script run as
`python tests/benchmarks/bench_X.py` can then import fakegpu and fakekubelet (which imports gputext).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent.parent), str(Path(__file__).resolve().parent.parent.parent)]

from fakegpu import build_fake_nvml, default_system, fake_env, h100, render_scenario  # noqa: E402

# What any Python NVML reader must pay before it reads a value: start Python, import pynvml, initialise
# NVML and get a handle of every GPU (against the same fake library, in the same venv). gputext renders
# the text format itself, so importing prometheus_client is not part of it.
FLOOR = [sys.executable, "-c", "import pynvml; pynvml.nvmlInit(); "
         "[pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]"]
# The floor the earlier benchmarks used, kept beside the new one for continuity: it carries the 30-60 ms
# of importing prometheus_client, which gputext does not pay, and flatters every ratio.
OLD_FLOOR = [sys.executable, "-c", "import pynvml, prometheus_client"]


def gputext_command() -> list:
    script = Path(sys.executable).parent / "gputext"
    return [str(script)] if script.exists() else [sys.executable, "-m", "gputext"]


def timed(cmd, env) -> tuple:
    """(wall seconds, cpu seconds, exit code) of one process."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    return wall, usage.ru_utime + usage.ru_stime, proc.returncode


def bench_env(libdir: Path, scenario: Path, calls: Path | None = None) -> dict:
    """The environment of a benchmarked process: the fake NVML at `scenario` (counting calls into `calls`)."""
    env = fake_env(libdir, scenario, calls)
    # An installed gputext has its .pyc files; without them each run compiles every module it imports
    # (about 20 ms of an nvml run on 2 slow cores, 2 ms for the kubernetes collector alone), which would be
    # measured instead. This environment sets PYTHONDONTWRITEBYTECODE, so the children must not inherit it:
    # the warm-up runs then write the .pyc files (in git-ignored __pycache__ dirs) that the timed runs use.
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def write_scenario(path: Path, devices: list) -> Path:
    path.write_text(render_scenario(default_system(), devices))
    return path


def fake_gpus(prefix: str, gpus: int = 8, devices: list | None = None) -> tuple:
    """(work dir, fake NVML dir, scenario path, env): a new temp dir with the fake library built and a
    scenario of `devices` (default: `gpus` H100s)."""
    work = Path(tempfile.mkdtemp(prefix=prefix))
    libdir = build_fake_nvml(work / "lib")
    scenario = write_scenario(work / "scenario.txt", [h100(i) for i in range(gpus)] if devices is None else devices)
    return work, libdir, scenario, bench_env(libdir, scenario)


def alternate(variants: dict, runs: int, envs: dict) -> tuple:
    """({name: [wall seconds]}, {name: [cpu seconds]}): `runs` rounds, each running every variant once in
    order, so that drift in a noisy machine hits all alike. Exits if a run fails."""
    wall = {name: [] for name in variants}
    cpu = {name: [] for name in variants}
    for _ in range(runs):
        for name, cmd in variants.items():
            w, c, code = timed(cmd, envs[name])
            if code != 0:
                sys.exit(f"{' '.join(cmd)} exited {code}")
            wall[name].append(w)
            cpu[name].append(c)
    return wall, cpu

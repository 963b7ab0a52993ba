"""Per-process energy from the GPU's energy counter, kept between runs. Pure bookkeeping, no NVML.

Two numbers per process, both from the device's cumulative energy counter sampled once per run:

* Window energy (what DCGM calls process energy): the GPU's energy counter at the process's end (or now)
  minus its value at the process's start. Starts and ends fall between two runs' samples; the counter is
  interpolated linearly there. Error bound: the interpolation can be off by at most the GPU's energy in the
  one interval that holds the start, plus the one that holds the end. A process that started before
  gputext first saw the GPU is counted from that first sample (a lower bound). It is the whole GPU's energy
  during the process's lifetime: processes that share a GPU each get all of it.

* Attributed energy: each interval's energy increase is split among the GPU's processes by their share of
  the SM-utilisation samples NVML took in that interval (a process busy in 60% of the sampled time gets
  60% of the interval's energy). What no process is given (idle time, intervals without samples) goes to
  the GPU's unattributed energy. Per GPU, attributed plus unattributed equals the counter's increase since
  gputext first saw the GPU, as long as no exited process has passed its retention.
"""

from __future__ import annotations

from collections.abc import Iterable

Sample = tuple[float, float]  # (unix time, joules)


def interpolate(previous: Sample | None, current: Sample, when: float) -> float:
    """The counter's value at `when`, between two samples; clamped to the samples it knows (a time
    before the earliest known sample reads as that sample: nothing earlier can be known)."""
    t1, e1 = current
    if previous is None or when >= t1:
        return e1
    t0, e0 = previous
    if when <= t0 or t1 <= t0:
        return e0
    return e0 + (e1 - e0) * (when - t0) / (t1 - t0)


def sm_shares(samples: Iterable[tuple[int, int, float]]) -> dict[int, float]:
    """{pid: share of the interval} from (pid, timestamp µs, SM %) samples.

    NVML writes one sample per process per sampling instant; a share is the process's SM percentage
    summed over the instants, over 100% times the number of instants. Shares are scaled down if the
    driver's percentages add up to more than 100% at some instant, so they never exceed the whole."""
    per_pid: dict[int, float] = {}
    instants = set()
    for pid, timestamp, sm in samples:
        instants.add(timestamp)
        per_pid[pid] = per_pid.get(pid, 0.0) + max(sm, 0.0)
    if not instants:
        return {}
    capacity = 100.0 * len(instants)
    total = sum(per_pid.values())
    scale = capacity if total <= capacity else total
    return {pid: busy / scale for pid, busy in per_pid.items()}


def split(delta_joules: float, shares: dict[int, float]) -> tuple[dict[int, float], float]:
    """({pid: joules}, unattributed joules) for one interval; the parts add up to delta_joules."""
    given = {pid: delta_joules * share for pid, share in shares.items()}
    return given, delta_joules - sum(given.values())

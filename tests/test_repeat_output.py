"""The repeating mode writes what one-shot runs write: byte for byte, at the same tick.

The repeating mode keeps things across cycles (the device inventory, NVML's request arrays, label
tuples and rendered line starts); none of that may change a byte of the output. A repeating run of three
cycles is compared with the third of three one-shot runs that share a state directory, each one-shot at
the tick the repeating run's cycle reads (the fake's step values advance by one per read, and every
stepped value here is read once per cycle). Both state directories are warmed by one run first: a run
without the inventory cache reads the NVLink fields twice (once to learn which the GPU answers). Only the
collectors' durations differ legitimately.
"""

import pytest

from conftest import require
from fakegpu import Field, h100, h100_uuid

require("grpc", "google.protobuf")  # the test extra has them

from fakekubelet import kubelet_socket, pod, serve  # noqa: E402

CYCLES = 3
DIFFERS = (b"gputext_collector_duration_seconds",)  # time, not data


def scenario():
    """Three GPUs with something different on each: advancing counters, a link down and a process
    with pod labels, ECC off with clock events active and accounting on."""
    busy = h100(0)
    for link in range(18):
        busy["fields"][(138, link)] = Field(1_000_000 + link, step=4096 + link)  # KiB
        busy["fields"][(139, link)] = Field(2_000_000 + link, step=17)
    busy["fields"][197] = Field(123_456_789_012, type="ull", step=1_000_003)  # PCIe bytes
    busy["fields"][308] = Field(41.5, type="dbl", step=0.25)  # temperature
    busy["fields"][74] = Field(1_250_000_000, step=333_333)  # violation time, ns
    degraded = h100(1, nvlink_state={link: 0 if link == 3 else 1 for link in range(18)})
    degraded["fields"][(165, 3)] = Field(0, type="uint")  # link 3 inactive
    degraded["fields"][(161, 5)] = Field(7, step=1)  # replays
    other = h100(2, accounting_mode=1, clocks_event_reasons=0x4 | 0x40, ecc_mode=(0, 0),
                 processes=[{"pid": 777, "used_memory": 1 << 30}, {"pid": 778, "used_memory": 2 << 30}])
    other["fields"][1] = Field(0, type="uint")  # ECC off
    return [busy, degraded, other]


PODS = [
    pod("train-0", "ml", {"trainer": {"nvidia.com/gpu": [h100_uuid(0)]}}),
    pod("a", "shared", {"main": {"nvidia.com/gpu": [h100_uuid(1) + "::0"]}}),
    pod("b", "shared", {"main": {"nvidia.com/gpu": [h100_uuid(1) + "::1"]}}),
]


def comparable(data: bytes) -> bytes:
    return b"\n".join(line for line in data.split(b"\n") if not line.startswith(DIFFERS))


@pytest.mark.parametrize("detail", ["standard", "full"])
def test_a_repeating_cycle_writes_what_a_one_shot_writes(node, tmp_path, detail):
    node.write(scenario())
    host = tmp_path / "host"  # no host processes: names, start times and pods of the PIDs are empty
    (host / "proc").mkdir(parents=True)
    with kubelet_socket() as socket, serve(socket, PODS):
        common = ["collect", "--detail", detail, "--host-root", str(host),
                  "--pod-resources-socket", str(socket)]
        for state in ("repeat-state", "shot-state"):
            proc = node.run(*common, "--out", str(tmp_path / "warm.prom"), "--state-dir", str(tmp_path / state),
                            state=False)
            assert proc.returncode == 0, proc.stderr
        repeated = tmp_path / "repeat.prom"
        proc = node.run(*common, "--out", str(repeated), "--state-dir", str(tmp_path / "repeat-state"),
                        "--interval", "1ms", "--count", str(CYCLES), state=False)
        assert proc.returncode == 0, proc.stderr
        for tick in range(CYCLES):
            shot = tmp_path / f"shot-{tick}.prom"
            proc = node.run(*common, "--out", str(shot), "--state-dir", str(tmp_path / "shot-state"),
                            tick=tick, state=False)
            assert proc.returncode == 0, proc.stderr
    first, last = (tmp_path / "shot-0.prom").read_bytes(), shot.read_bytes()
    assert comparable(first) != comparable(last)  # the counters advanced: the ticks are compared
    assert b'gpu_temperature_celsius{gpu="0",uuid="' + h100_uuid(0).encode() + b'",pod="train-0"' in last
    assert comparable(repeated.read_bytes()) == comparable(last)

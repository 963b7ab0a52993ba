"""Cost of the xid collector on a busy kernel log: 100,000 records already counted against an empty log.

    python tests/benchmarks/bench_kmsg.py [--runs 15] [--records 100000]

The log is a file in /dev/kmsg's format (one XID in every 1,000 records, on 8 fake GPUs). Two figures:

- whole runs: `gputext collect --collectors xid` with a warm state (everything in the log already counted)
  against the same over an empty log, alternating, medians; the difference is what the busy log costs.
- in this process: KmsgReader skipping every record of the log, against reading the file's bytes with the
  same read size and doing nothing with them (the reading alone); and, for scale, the first run of a
  boot, for which every record is new.

/dev/kmsg itself gives one record per read(), so there the reading is 100,000 system calls whatever
gputext does; the file shows what gputext adds to it (every read's sequence numbers are searched, so that a
log in any order counts each record once: issue 28; also with numbers a wrapped log lost before the first
read, which stay a hole in the state). Target (issue 10): a few ms beyond reading.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

from common import alternate, fake_gpus, gputext_command, timed

from gputext.kmsg import READ_SIZE, Counted, KmsgReader

BUSES = ("18", "2a", "3a", "5d", "9a", "ab", "ba", "db")  # the fake H100s' PCI buses


def write_log(path, records: int) -> None:
    lines = []
    for seq in range(records):
        usec = seq * 1000
        if seq % 1000 == 999:
            bus = BUSES[(seq // 1000) % len(BUSES)]
            text = f"NVRM: Xid (PCI:0000:{bus}:00): 79, pid='<unknown>', name=<unknown>, GPU has fallen off the bus."
        else:
            text = f"eth0: rx queue {seq % 64} refilled, {seq} packets since the last report (driver notice)"
        lines.append(f"6,{seq},{usec},-;{text}\n")
    path.write_text("".join(lines))


def read_only(path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        while os.read(fd, READ_SIZE):
            pass
    finally:
        os.close(fd)


def median_seconds(fn, runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def read_records(path, after, xids: int, holes=()) -> None:
    reader = KmsgReader(path)
    batch = reader.read(Counted(after, holes))
    reader.close()
    assert len(batch.found) == xids and not batch.lost


def device_skip(records: list, holes=()) -> float:
    """Seconds to pass over `records` as /dev/kmsg gives them (one per read, here from memory, so without
    the kernel's cost), all already counted, less the same reads done by a loop that does nothing."""
    import errno
    from unittest import mock

    def reads():
        served = iter(records)

        def read(fd, size):
            for record in served:
                return record
            raise BlockingIOError(errno.EAGAIN, "end")
        return read

    def nothing():
        read = reads()
        while True:
            try:
                read(0, READ_SIZE)
            except BlockingIOError:
                return

    def skip():
        with mock.patch("gputext.kmsg.os.read", reads()):
            reader = KmsgReader(Path("/dev/null"))  # a character device, as /dev/kmsg
            reader.read(Counted(int(records[-1].split(b",", 2)[1]), holes))  # all counted
            reader.close()
    return median_seconds(skip, 15) - median_seconds(nothing, 15)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--records", type=int, default=100_000)
    args = parser.parse_args()
    work, _, _, env = fake_gpus("gputext-bench-kmsg-")
    busy, empty = work / "kmsg-busy", work / "kmsg-empty"
    write_log(busy, args.records)
    empty.write_bytes(b"")

    variants = {}
    for name, log in (("empty log", empty), ("busy log", busy)):
        cmd = variants[name] = gputext_command() + [
            "collect", "--out", str(work / f"{name}.prom"), "--state-dir", str(work / f"state-{name}"),
            "--collectors", "xid", "--kmsg", str(log)]
        for _ in range(3):
            timed(cmd, env)  # warm: the busy log's records are counted once, then only skipped
    walls, cpus = alternate(variants, args.runs, {name: env for name in variants})
    wall = {k: statistics.median(v) for k, v in walls.items()}
    cpu = {k: statistics.median(v) for k, v in cpus.items()}
    size = busy.stat().st_size
    print(f"xid collector, {args.records:,} records ({size / 1e6:.1f} MB) already counted, {args.runs} rounds")
    print(f"{'run':12}{'wall ms':>10}{'cpu ms':>10}{'/empty':>9}")
    for name in variants:
        print(f"{name:12}{wall[name] * 1e3:10.1f}{cpu[name] * 1e3:10.1f}{wall[name] / wall['empty log']:9.3f}")
    print(f"the busy log costs {(wall['busy log'] - wall['empty log']) * 1e3:.1f} ms of wall time per run")

    runs = max(args.runs, 30)
    read = median_seconds(lambda: read_only(busy), runs)
    skip = median_seconds(lambda: read_records(busy, args.records - 1, 0), runs)
    first = median_seconds(lambda: read_records(busy, None, args.records // 1000), runs)
    print(f"in process: reading the file {read * 1e3:.2f} ms; reading and skipping every record "
          f"{skip * 1e3:.2f} ms ({skip / read:.2f} x reading, {(skip - read) * 1e3:.2f} ms beyond it); "
          f"reading every record as new (a boot's first run) {first * 1e3:.1f} ms")
    # A ring buffer that wrapped before the boot's first read: the numbers it lost stay a hole in the state.
    wrapped, lost = work / "kmsg-wrapped", args.records // 10
    wrapped.write_bytes(b"".join(busy.read_bytes().splitlines(keepends=True)[lost:]))
    skip_wrapped = median_seconds(lambda: read_records(wrapped, args.records - 1, 0, [[0, lost - 1]]), runs)
    print(f"a log whose first {lost:,} records were lost before the first read (a hole in the state): skipping "
          f"the rest {skip_wrapped * 1e3:.2f} ms ({skip_wrapped / skip:.2f} x skipping the whole log above)")
    records = [line + b"\n" for line in busy.read_bytes().split(b"\n")[:-1]]
    print(f"as /dev/kmsg gives them (one record per read): {device_skip(records) * 1e3:.2f} ms beyond the "
          f"read() calls to pass over {len(records):,} records already counted; "
          f"{device_skip(records[lost:], [[0, lost - 1]]) * 1e3:.2f} ms for the wrapped log's {len(records) - lost:,}")


if __name__ == "__main__":
    main()

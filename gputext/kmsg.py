"""The kernel log (/dev/kmsg) as records, and the NVIDIA driver's XID lines in it.

/dev/kmsg gives one record per read(): `prio,seq,usec,flags[,more];message\\n`, then continuation lines
that start with a space (`SUBSYSTEM=...`). Non-printable bytes and backslashes in the message are escaped
as `\\xNN`. A read buffer smaller than a record (records are up to 8192 bytes) fails with EINVAL and loses
the record; a record overwritten before it was read gives EPIPE once, and reading goes on with the next
one; a non-blocking read at the end gives EAGAIN. There is no seek to a sequence number, so the log is
read from its start and records up to the last one already counted are skipped by their sequence number,
parsed from the bytes of the header alone: only new records that mention an XID are decoded. The same code
reads a regular file or a FIFO of such records (read() then returns many records at once: split on
newlines), which is how the tests, and a person replaying a saved log with --kmsg, feed it.

A record is known by its sequence number, which the kernel gives each record of a boot once, in increasing
order. `Counted` remembers which numbers were counted: all up to the newest, except the holes that a log
read out of order left. So each record counts once whatever order a file holds: a number seen again (a
log re-read, rotated into place, two boots' logs concatenated) is not counted again, and one that fills
a hole is counted when it comes.

A hostile or malformed line (no header, too long, binary) is skipped, never fatal, and one read of the
log stops after MAX_READ_BYTES or MAX_READ_RECORDS, so that something that is no kernel log (/dev/zero, a
FIFO that never ends) costs a bounded time.
"""

from __future__ import annotations

import errno
import os
import re
import stat
from collections import namedtuple
from pathlib import Path

from .readfile import file_kind, kernel_count

# At least CONSOLE_EXT_LOG_MAX (8192): below a record's size read() fails with EINVAL and the record is gone.
# Larger only makes a regular file cheaper to read (many records per read).
READ_SIZE = 1 << 16
# A line longer than this can only come from a file (kernel records stop at 8192 bytes): skipped.
MAX_LINE = 1 << 14
# One read of the log stops after this much (a kernel log holds at most a few MiB: log_buf_len's
# default is 128 KiB to 1 MiB, CONFIG_LOG_BUF_SHIFT at most 32 MiB); the rest waits for the next read.
MAX_READ_BYTES = 64 << 20
MAX_READ_RECORDS = 1 << 20
# Where records came out of order, at most this many ranges of numbers not yet seen are remembered.
MAX_HOLES = 64
# Only records holding this are decoded and parsed.
MARKER = b"NVRM: Xid ("
# --kmsg - : the log is the standard input gputext was started with (see _open_standard_input)
STANDARD_INPUT = "-"

# Drivers 515-560: `NVRM: Xid (PCI:0000:3b:00): 79, pid='<unknown>', name=<unknown>, text`;
# 570 and newer: `NVRM: Xid (PCI:0000:3b:00 GPU-I:01 GPU-CI:00): 79, pid=1234, name=python3, text`, where
# the MIG and process parts are each optional (krcReportXid in open-gpu-kernel-modules).
_XID_LINE = re.compile(r"NVRM: Xid \(PCI:([0-9a-fA-F]{4,8}):([0-9a-fA-F]{2}):([0-9a-fA-F]{2})(?:\.[0-7])?"
                       r"(?: GPU-I:(\d{1,3}))?(?: GPU-CI:(\d{1,3}))?\): (\d{1,5})(?:,|$)")
# The sequence number of each line in a read that _header() could accept (a superset: see _read_stream).
# (A leading newline rather than ^ in MULTILINE mode lets the search skip from one newline to the next.)
_SEQ = re.compile(rb"\n[^,;\n]*,([0-9]{1,20}),")
_ESCAPE = re.compile(rb"\\x([0-9a-fA-F]{2})")
_PCI = re.compile(r"([0-9a-fA-F]{4,8}):([0-9a-fA-F]{2}):([0-9a-fA-F]{2})(?:\.[0-7])?")

PciAddress = tuple[int, int, int]  # domain, bus, device


class KmsgUnreadable(Exception):
    """The log exists but may not be read (EPERM/EACCES: kernel.dmesg_restrict without CAP_SYSLOG)."""


class Xid(namedtuple("Xid", "seq usec pci code gpu_instance compute_instance", defaults=(None, None))):
    """One XID record: its sequence number, when (`usec`, microseconds since boot: the record's own
    timestamp), the GPU's PciAddress, the code, and the MIG instances where the driver names them."""

    __slots__ = ()


def pci_address(text: str) -> PciAddress | None:
    """(domain, bus, device) of a PCI address as NVML writes it (`00000000:3B:00.0`) or the driver's log
    does (`0000:3b:00`): domain width and case do not matter."""
    match = _PCI.fullmatch(text.strip())
    if not match:
        return None
    return int(match.group(1), 16), int(match.group(2), 16), int(match.group(3), 16)


def pci_text(pci: PciAddress) -> str:
    return f"{pci[0]:04x}:{pci[1]:02x}:{pci[2]:02x}"


def parse_xid(seq: int, usec: int, message: bytes) -> Xid | None:
    """The XID of one record's message (still escaped as in /dev/kmsg), or None if it holds none."""
    text = _ESCAPE.sub(lambda m: bytes([int(m.group(1), 16)]), message).decode("utf-8", "replace")
    match = _XID_LINE.search(text)
    if not match:
        return None
    domain, bus, device, gi, ci, code = match.groups()
    return Xid(seq, usec, (int(domain, 16), int(bus, 16), int(device, 16)), int(code),
               None if gi is None else int(gi), None if ci is None else int(ci))


def _header(line: bytes) -> tuple[int, int, int] | None:
    """(seq, usec, offset of the message) of a record line, or None if it has no valid header."""
    semi = line.find(b";", 0, 128)
    if semi < 0:
        return None
    parts = line[:semi].split(b",", 3)  # prio, seq, usec, flags[,caller=...]
    if len(parts) < 4:
        return None
    try:  # the kernel's seq and usec are 64-bit: a larger number is no record
        return kernel_count(parts[1]), kernel_count(parts[2]), semi + 1
    except ValueError:
        return None


def _open_path(path: Path) -> int:
    try:
        return os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except PermissionError as err:
        raise KmsgUnreadable(f"{path}: {err.strerror}") from None


def _open_standard_input() -> int:
    """The log as opened by whoever started gputext: systemd's StandardInput=file:/dev/kmsg opens it with
    its own right to (CAP_SYSLOG), and /dev/kmsg checks that right only at open(). Reopening /dev/stdin
    would check it again, so the descriptor itself is used (a copy, rewound to the first record)."""
    try:
        fd = os.dup(0)
    except OSError:
        raise FileNotFoundError(errno.ENOENT, "no standard input") from None
    os.set_blocking(fd, False)
    try:
        os.lseek(fd, 0, os.SEEK_SET)  # /dev/kmsg: the first record; a file: its start
    except OSError:
        pass  # a FIFO cannot seek: it is read from where it is
    return fd


class NotAKernelLog(ValueError):
    """The path names something that cannot hold a kernel log (a directory, a socket)."""


class Counted:
    """The sequence numbers of this boot's records that are counted: every one up to `newest`, except
    those in `holes` ([first, last] ranges, lowest first), which a log read out of order skipped. At most
    MAX_HOLES are kept: past that the lowest are given up (their records are then never counted, rather
    than counted twice)."""

    def __init__(self, newest: int | None = None, holes=()):
        self.newest = newest
        self.holes = [list(hole) for hole in holes]

    def __contains__(self, seq: int) -> bool:
        if self.newest is None or seq > self.newest:
            return False
        return not self.holes or not any(first <= seq <= last for first, last in self.holes)

    def counted_from(self) -> int:
        """The lowest number from which every one up to `newest` is counted: above the highest hole."""
        return self.holes[-1][1] + 1 if self.holes else 0

    def covers(self, lowest: int, highest: int) -> bool:
        """Whether every number from `lowest` to `highest` is counted."""
        return self.newest is not None and highest <= self.newest and not any(
            first <= highest and lowest <= last for first, last in self.holes)

    def add(self, seq: int) -> int:
        """Count a record that is not counted yet; returns how many more numbers are missing below the
        newest: those it skipped past the newest (records overwritten before they were read, where the
        log is the kernel's), or -1 where it fills a hole."""
        if self.newest is None or seq > self.newest:
            first = 0 if self.newest is None else self.newest + 1
            self.newest = seq
            if seq > first:
                self.holes.append([first, seq - 1])
                del self.holes[:-MAX_HOLES]
            return seq - first
        for index, (first, last) in enumerate(self.holes):
            if first <= seq <= last:
                self.holes[index:index + 1] = [hole for hole in ([first, seq - 1], [seq + 1, last])
                                               if hole[0] <= hole[1]]
                del self.holes[:-MAX_HOLES]
                return -1
        return 0


class Batch:
    """What one KmsgReader.read() found: the XIDs of records not counted before, how many records were
    lost (overwritten before anyone read them), and whether it stopped at the read bounds."""

    def __init__(self, counted: Counted):
        self.counted = counted
        self.found: list[Xid] = []
        self._missing = 0  # numbers this read skipped, less the holes it filled
        self.cut_short = False

    @property
    def lost(self) -> int:
        """The numbers skipped, less those the same read filled in later (as a rotated log does)."""
        return max(self._missing, 0)

    def take(self, line: bytes) -> int | None:
        """Count one record's line; returns its sequence number (None for a line that is no record)."""
        header = _header(line)
        if header is None:
            return None
        seq, usec, start = header
        if seq not in self.counted:
            self._missing += self.counted.add(seq)
            if MARKER in line:
                xid = parse_xid(seq, usec, line[start:])
                if xid is not None:
                    self.found.append(xid)
        return seq


class KmsgReader:
    """The records of one log, read from its start. The descriptor stays open between reads, so the
    repeating mode reads only what was added since its last cycle."""

    def __init__(self, path: Path):
        self.path = path
        self.last_seq: int | None = None  # the newest record counted when this reader last read
        self._fd: int | None = None
        self._device = False  # /dev/kmsg itself, not a file of records
        self._pending = b""  # a line not yet ended (a file read stops anywhere)
        self._discarding = False  # inside a line longer than MAX_LINE

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _open(self) -> int:
        if self._fd is None:
            fd = _open_standard_input() if str(self.path) == STANDARD_INPUT else _open_path(self.path)
            mode = os.fstat(fd).st_mode
            if not (stat.S_ISCHR(mode) or stat.S_ISREG(mode) or stat.S_ISFIFO(mode)):
                os.close(fd)
                raise NotAKernelLog(f"{self.path} is {file_kind(mode)}, not a kernel log (the character device "
                                    "/dev/kmsg, a file or a FIFO of its records)")
            self._fd, self._device = fd, stat.S_ISCHR(mode)
        return self._fd

    def read(self, counted: Counted) -> Batch:
        """The records not in `counted`, up to the read bounds; `counted` is updated with them. Raises
        KmsgUnreadable, FileNotFoundError, NotAKernelLog, OSError (the descriptor is then closed)."""
        batch = Batch(counted)
        try:
            fd = self._open()
            if self._device:
                self._read_device(fd, batch)
            else:
                self._read_stream(fd, batch)
        except BaseException:
            self.close()
            raise
        self.last_seq = counted.newest
        return batch

    def _read_device(self, fd: int, batch: Batch) -> None:
        """/dev/kmsg: one whole record per read(), each one sequence number after the last unless read()
        failed with EPIPE (the kernel says so whenever it skips any). So a record known to be counted is
        passed over without looking at it: the cost of an old record is its read()."""
        counted = batch.counted
        seq = None  # the sequence number of the record just read, where known without parsing it
        # as of the last record counted; a hole below where the log is read (the records a wrapped ring
        # lost before the boot's first read) then costs nothing
        newest, counted_from = counted.newest, counted.counted_from()
        size = 0
        for _ in range(MAX_READ_RECORDS):
            try:
                record = os.read(fd, READ_SIZE)
            except BlockingIOError:  # EAGAIN: the end
                return
            except OSError as err:
                # EPIPE: records overwritten at our position; EINVAL: a record larger than the buffer,
                # consumed. Either way the next record's own number says where we are.
                if err.errno in (errno.EPIPE, errno.EINVAL):
                    seq = None
                    continue
                raise
            if not record:
                return
            # (a known seq was parsed, so newest is set)
            if seq is not None and seq < newest and (seq + 1 >= counted_from or seq + 1 in counted):
                seq += 1
            else:
                seq = batch.take(record.split(b"\n", 1)[0])
                newest, counted_from = counted.newest, counted.counted_from()
            size += len(record)
            if size > MAX_READ_BYTES:
                break
        batch.cut_short = True

    def _read_stream(self, fd: int, batch: Batch) -> None:
        """A regular file or FIFO: read() returns as many lines as fit, the last perhaps cut short."""
        counted = batch.counted
        reads = size = 0
        while reads < MAX_READ_RECORDS and size < MAX_READ_BYTES:
            try:
                chunk = os.read(fd, READ_SIZE)
            except BlockingIOError:  # a FIFO whose writer has nothing more for now
                return
            if not chunk:  # the end of a file, or of a FIFO without writers
                return
            size += len(chunk)
            data = self._pending + chunk
            cut = data.rfind(b"\n") + 1
            self._pending = data[cut:]
            lines = data[:cut]
            if self._discarding:
                if not cut:
                    self._pending = b""
                    lines = b""
                else:
                    lines = lines[lines.find(b"\n") + 1:]
                    self._discarding = False
            if len(self._pending) > MAX_LINE:
                self._pending, self._discarding = b"", True
            reads += lines.count(b"\n")
            # A read whose numbers all lie in a counted range is passed over after one search for them
            # (_SEQ finds every line that take() could count, and perhaps more): the cost of an old record
            # is small. (Only the range between the lowest and the highest is looked at: a hole that no
            # number of the log will fill, such as the records a wrapped ring buffer lost before the first
            # read, then costs nothing.) Before anything is counted there is nothing to pass over.
            if counted.newest is not None:
                numbers = [int(number) for number in _SEQ.findall(b"\n" + lines)]
                if not numbers or counted.covers(min(numbers), max(numbers)):
                    continue
            for line in lines.split(b"\n"):
                if line and line[:1] != b" " and len(line) <= MAX_LINE:
                    batch.take(line)
        batch.cut_short = True


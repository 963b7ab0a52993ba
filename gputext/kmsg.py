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

A hostile or malformed line (no header, too long, binary) is skipped, never fatal.
"""

from __future__ import annotations

import errno
import os
import re
import stat
from collections import namedtuple
from pathlib import Path

# At least CONSOLE_EXT_LOG_MAX (8192): below a record's size read() fails with EINVAL and the record is gone.
# Larger only makes a regular file cheaper to read (many records per read).
READ_SIZE = 1 << 16
# A line longer than this can only come from a file (kernel records stop at 8192 bytes): skipped.
MAX_LINE = 1 << 14
# Only records holding this are decoded and parsed.
MARKER = b"NVRM: Xid ("
# --kmsg - : the log is the standard input gputext was started with (see _open_standard_input)
STANDARD_INPUT = "-"

# Drivers 515-560: `NVRM: Xid (PCI:0000:3b:00): 79, pid='<unknown>', name=<unknown>, text`;
# 570 and newer: `NVRM: Xid (PCI:0000:3b:00 GPU-I:01 GPU-CI:00): 79, pid=1234, name=python3, text`, where
# the MIG and process parts are each optional (krcReportXid in open-gpu-kernel-modules).
_XID_LINE = re.compile(r"NVRM: Xid \(PCI:([0-9a-fA-F]{4,8}):([0-9a-fA-F]{2}):([0-9a-fA-F]{2})(?:\.[0-7])?"
                       r"(?: GPU-I:(\d{1,3}))?(?: GPU-CI:(\d{1,3}))?\): (\d{1,5})(?:,|$)")
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
    if len(parts) < 4 or not parts[1].isdigit() or not parts[2].isdigit():
        return None
    return int(parts[1]), int(parts[2]), semi + 1


def _last_record_seq(lines: bytes) -> int | None:
    """The sequence number of the last record in `lines` (which ends with a newline)."""
    end = len(lines) - 1
    while end > 0:
        start = lines.rfind(b"\n", 0, end) + 1
        if lines[start:start + 1] != b" ":  # not a continuation line: the record's own line
            header = _header(lines[start:end])
            return header[0] if header else None
        end = start - 1
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


class KmsgReader:
    """The records of one log, read from its start. The descriptor stays open between reads, so the
    repeating mode reads only what was added since its last cycle."""

    def __init__(self, path: Path):
        self.path = path
        self.last_seq: int | None = None  # the newest record read so far
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
            self._fd = _open_standard_input() if str(self.path) == STANDARD_INPUT else _open_path(self.path)
            self._device = stat.S_ISCHR(os.fstat(self._fd).st_mode)
        return self._fd

    def new_xids(self, after: int | None) -> tuple[list[Xid], int]:
        """(XIDs of the records newer than sequence number `after`, how many records newer than `after`
        were lost: overwritten before anyone read them). `after` None: every record of this boot is new
        (sequence numbers start at 0 at boot). Raises KmsgUnreadable, FileNotFoundError, OSError."""
        fd = self._open()
        batch = _Batch(0 if after is None else after + 1)
        if self._device:
            self._read_device(fd, batch)
        else:
            self._read_stream(fd, batch)
        if batch.newest is not None:
            self.last_seq = batch.newest if self.last_seq is None else max(self.last_seq, batch.newest)
        return batch.found, batch.lost

    def _read_device(self, fd: int, batch: "_Batch") -> None:
        """/dev/kmsg: one whole record per read(), each one sequence number after the last unless read()
        failed with EPIPE (the kernel says so whenever it skips any). So a record known to be old is
        passed over without looking at it: the cost of an old record is its read()."""
        seq = None  # the sequence number of the record just read, where known without parsing it
        while True:
            try:
                record = os.read(fd, READ_SIZE)
            except BlockingIOError:  # EAGAIN: the end
                break
            except OSError as err:
                # EPIPE: records overwritten at our position; EINVAL: a record larger than the buffer,
                # consumed. Either way the next record's own number says where we are.
                if err.errno in (errno.EPIPE, errno.EINVAL):
                    seq = None
                    continue
                raise
            if not record:
                break
            if seq is not None:
                seq += 1
                if seq < batch.expected:
                    batch.newest = seq
                    continue
            seq = batch.take(record.split(b"\n", 1)[0])

    def _read_stream(self, fd: int, batch: "_Batch") -> None:
        """A regular file or FIFO: read() returns as many lines as fit, the last perhaps cut short."""
        while True:
            try:
                chunk = os.read(fd, READ_SIZE)
            except BlockingIOError:  # a FIFO whose writer has nothing more for now
                break
            if not chunk:  # the end of a file, or of a FIFO without writers
                break
            data = self._pending + chunk
            cut = data.rfind(b"\n") + 1
            self._pending = data[cut:]
            lines = data[:cut]
            if self._discarding:
                if not cut:
                    self._pending = b""
                    continue
                lines = lines[lines.find(b"\n") + 1:]
                self._discarding = False
            if len(self._pending) > MAX_LINE:
                self._pending, self._discarding = b"", True
            if not lines:
                continue
            # Records come in sequence order: a read whose last record is old holds only old ones.
            newest = _last_record_seq(lines)
            if newest is not None and newest < batch.expected:
                batch.newest = newest
                continue
            for line in lines.split(b"\n"):
                if line and line[:1] != b" " and len(line) <= MAX_LINE:
                    batch.take(line)


class _Batch:
    """What one new_xids() call found: XIDs, lost records, the newest sequence number."""

    def __init__(self, expected: int):
        self.expected = expected  # the sequence number of the first record not yet counted
        self.found: list[Xid] = []
        self.lost = 0
        self.newest: int | None = None

    def take(self, line: bytes) -> int | None:
        """Count one record's line; returns its sequence number (None for a line that is no record)."""
        header = _header(line)
        if header is None:
            return None
        seq, usec, start = header
        self.newest = seq if self.newest is None else max(self.newest, seq)
        if seq >= self.expected:
            self.lost += seq - self.expected
            self.expected = seq + 1
            if MARKER in line:
                xid = parse_xid(seq, usec, line[start:])
                if xid is not None:
                    self.found.append(xid)
        return seq

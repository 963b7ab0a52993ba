"""The xid collector: XIDs counted from a kernel log in /dev/kmsg's format, given with --kmsg."""

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import parse_exposition, value
from fakegpu import h100, h100_uuid
from gputext import kmsg

BOOT_TIME = 1_760_000_000  # the fake host's /proc/stat btime

# PCI buses of h100(0) and h100(1) (fakegpu._HGX_BUSES), as the driver writes them
GPU0, GPU1, GPU5 = "0000:18:00", "0000:2a:00", "0000:ab:00"


def record(seq: int, message: str, usec: int = None, prio: int = 4) -> str:
    """One /dev/kmsg record; usec defaults to seq seconds after boot."""
    usec = seq * 1_000_000 if usec is None else usec
    return f"{prio},{seq},{usec},-;{message}\n"


def xid_515(pci: str, code: int, text: str = "GPU has fallen off the bus.") -> str:
    return f"NVRM: Xid (PCI:{pci}): {code}, pid='<unknown>', name=<unknown>, {text}"


def xid_570(pci: str, code: int, gi=None, ci=None, pid=None, name=None, text="Graphics Exception") -> str:
    attr = f"PCI:{pci}" + (f" GPU-I:{gi:02d}" if gi is not None else "") + (f" GPU-CI:{ci:02d}" if ci is not None
                                                                          else "")
    process = f" pid={pid}, name={name}," if pid is not None else ""
    return f"NVRM: Xid ({attr}): {code},{process} {text}"


class Log:
    """A kernel log file and the fake host root (for /proc/stat's btime) that a run reads."""

    def __init__(self, root: Path):
        self.root = root / "host"
        (self.root / "proc").mkdir(parents=True)
        (self.root / "proc" / "stat").write_text(f"cpu  1 2 3 4\nbtime {BOOT_TIME}\nprocesses 10\n")
        self.path = root / "kmsg"
        self.path.write_bytes(b"")
        self.seq = 0

    def add(self, *messages: str) -> None:
        with open(self.path, "a") as f:
            for message in messages:
                f.write(record(self.seq, message))
                self.seq += 1

    def args(self):
        return ["--collectors", "xid", "--kmsg", str(self.path), "--host-root", str(self.root)]


@pytest.fixture
def log(tmp_path):
    return Log(tmp_path)


def xids(series):
    return {(dict(ls)["gpu"], dict(ls)["xid"], dict(ls)["gpu_instance"], dict(ls)["compute_instance"]): v
            for (n, ls), v in series.items() if n == "gpu_xid_errors_total"}


def state_section(node):
    return json.loads((node.state_dir / "state.json").read_text())["sections"]["xid"]


def test_three_xids_on_two_gpus_are_counted_with_their_times(node, log):
    node.write([h100(0), h100(1)])
    log.add("Linux version 6.1.0", xid_515(GPU0, 79), "usb 1-1: new device", xid_570(GPU1, 13, pid=4242,
            name="python3"), xid_570(GPU0, 79, text="GPU has fallen off the bus."))
    proc, series = node.collect(*log.args())
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    assert xids(series) == {("0", "79", "", ""): 2, ("1", "13", "", ""): 1}
    assert value(series, "gpu_xid_errors_total", uuid=h100_uuid(0), xid="79") == 2
    # the last 79 is record 4 (4 s after boot), the 13 record 3
    assert value(series, "gpu_xid_last_time_seconds", gpu="0", xid="79") == BOOT_TIME + 4
    assert value(series, "gpu_xid_last_time_seconds", gpu="1", xid="13") == BOOT_TIME + 3
    assert value(series, "gpu_xid_info", gpu="0", xid="79", description="GPU has fallen off the bus",
                 action="reboot the node", severity="fatal") == 1
    assert value(series, "gpu_xid_info", gpu="1", xid="13", severity="application") == 1
    assert value(series, "gputext_collector_success", collector="xid") == 1

    again, same = node.collect(*log.args())  # nothing new: nothing changes
    assert again.stderr == "" and same == series
    assert state_section(node)["seq"] == 4


def test_only_new_records_count_after_a_restart(node, log):
    node.write([h100(0)])
    log.add(xid_515(GPU0, 48, "Double Bit ECC Error"))
    assert xids(node.collect(*log.args())[1]) == {("0", "48", "", ""): 1}
    log.add("eth0: link up", xid_515(GPU0, 48, "Double Bit ECC Error"), xid_515(GPU0, 63, "Row remap"))
    _, series = node.collect(*log.args())
    assert xids(series) == {("0", "48", "", ""): 2, ("0", "63", "", ""): 1}
    assert value(series, "gpu_xid_last_time_seconds", xid="48") == BOOT_TIME + 2
    assert xids(node.collect(*log.args())[1]) == {("0", "48", "", ""): 2, ("0", "63", "", ""): 1}


def test_a_new_boot_starts_afresh(node, log):
    """Counts of another boot (another boot id in the state) are dropped, and its sequence number does not
    hide this boot's records."""
    node.write([h100(0)])
    log.add(xid_515(GPU0, 79))
    node.collect(*log.args())
    path = node.state_dir / "state.json"
    document = json.loads(path.read_text())
    document["sections"]["xid"].update(boot="an-earlier-boot", seq=10_000,
                                       counts={f"{GPU0}|79||": [7, 1.0], f"{GPU0}|94||": [3, 1.0]})
    path.write_text(json.dumps(document))
    _, series = node.collect(*log.args())
    assert xids(series) == {("0", "79", "", ""): 1}
    assert state_section(node)["seq"] == 0


def test_mig_instances_become_labels(node, log):
    node.write([h100(0)])
    log.add(xid_570(GPU0, 94, gi=1, ci=0, text="Contained: CE User Channel (0x9). RST: No, D-RST: No"),
            xid_570(GPU0, 94, gi=5, text="Contained: CE User Channel (0x9)."),
            xid_570(GPU0, 94, gi=5, pid=7194, name="python3"), xid_570(GPU0, 94))
    _, series = node.collect(*log.args())
    assert xids(series) == {("0", "94", "1", "0"): 1, ("0", "94", "5", ""): 2, ("0", "94", "", ""): 1}
    assert value(series, "gpu_xid_info", xid="94", description="contained ECC error") == 1  # once per code


def test_pci_addresses_map_whatever_their_case_and_domain_width(node, log):
    """NVML writes 00000000:AB:00.0, the driver 0000:ab:00."""
    node.write([h100(i) for i in range(6)])
    log.add(xid_515(GPU5, 119, "GSP RPC timeout"), xid_515("0000:AB:00", 119, "GSP RPC timeout"))
    _, series = node.collect(*log.args())
    assert xids(series) == {("5", "119", "", ""): 2}
    assert value(series, "gpu_xid_errors_total", uuid=h100_uuid(5)) == 2


def test_an_address_that_is_no_gpu_is_kept_until_it_is(node, log):
    node.write([h100(0)])
    log.add(xid_515(GPU1, 79), xid_515(GPU0, 31, "MMU Fault"))
    proc, series = node.collect(*log.args())
    assert xids(series) == {("0", "31", "", ""): 1}
    assert proc.stderr.count("\n") == 1 and "PCI 0000:2a:00" in proc.stderr, proc.stderr
    assert node.collect(*log.args())[0].stderr == ""  # said once per boot
    node.write([h100(0), h100(1)])  # NVML lists it now
    assert xids(node.collect(*log.args())[1]) == {("0", "31", "", ""): 1, ("1", "79", "", ""): 1}


def test_a_lost_gpu_keeps_its_labels(node, log):
    """XID 79: the GPU fell off the bus and NVML answers GPU_IS_LOST; the address is remembered."""
    node.write([h100(0), h100(1)])
    node.collect(*log.args())
    node.write([h100(0), h100(1, lost=True)])
    (node.state_dir / "inventory.json").unlink()  # so the lost GPU's bus id is not in NVML's answer either
    log.add(xid_515(GPU1, 79))
    _, series = node.collect(*log.args())
    assert value(series, "gpu_xid_errors_total", gpu="1", uuid=h100_uuid(1), xid="79") == 1


def test_overwritten_records_are_counted_and_said(node, log):
    """Records 1-4 were overwritten before a read (EPIPE on /dev/kmsg): the sequence gap says how many."""
    node.write([h100(0)])
    log.path.write_text(record(0, xid_515(GPU0, 79)) + record(5, xid_515(GPU0, 79)) + record(6, "x"))
    proc, series = node.collect(*log.args())
    assert xids(series) == {("0", "79", "", ""): 2}
    assert proc.stderr.strip() == ("gputext: 4 kernel log records were overwritten before gputext read them: "
                                   "XIDs among them are not counted")
    log.path.write_text(record(10, xid_515(GPU0, 79)))  # 7-9 overwritten since: the log starts at 10
    proc, series = node.collect(*log.args())
    assert xids(series) == {("0", "79", "", ""): 3}
    assert "3 kernel log records were overwritten" in proc.stderr


def device_answers(monkeypatch, answers: list) -> None:
    """Make os.read in kmsg answer as /dev/kmsg would: one record per read, in turn, or raise the OSError
    given in its place."""
    def read(fd, size):
        assert size >= 8192  # a smaller buffer loses records larger than it (EINVAL)
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    monkeypatch.setattr(kmsg.os, "read", read)


def test_epipe_from_the_device_goes_on_with_the_next_record(monkeypatch):
    """/dev/kmsg's read() fails with EPIPE once where records were overwritten, then gives the next one."""
    device_answers(monkeypatch, [record(0, "a").encode(), OSError(errno.EPIPE, "Broken pipe"),
                                 record(3, xid_515(GPU0, 79)).encode(),
                                 OSError(errno.EAGAIN, "Resource temporarily unavailable")])
    reader = kmsg.KmsgReader(Path("/dev/null"))  # a character device, as /dev/kmsg: one record per read
    batch = reader.read(kmsg.Counted())
    reader.close()
    assert batch.lost == 2 and reader.last_seq == 3
    assert batch.found == [kmsg.Xid(3, 3_000_000, (0, 0x18, 0), 79)]


def test_old_device_records_are_skipped_by_counting_them(monkeypatch):
    """On /dev/kmsg each read is the next record, so old ones need no parsing, until EPIPE says a gap."""
    records = [record(seq, xid_515(GPU0, 79)).encode() for seq in range(5)]
    device_answers(monkeypatch, records[:3] + [OSError(errno.EPIPE, "Broken pipe"),
                                               record(9, xid_515(GPU0, 13)).encode(),
                                               record(10, xid_515(GPU0, 31)).encode(), OSError(errno.EAGAIN, "again")])
    reader = kmsg.KmsgReader(Path("/dev/null"))
    batch = reader.read(kmsg.Counted(8))
    reader.close()
    assert [(x.seq, x.code) for x in batch.found] == [(9, 13), (10, 31)] and batch.lost == 0
    assert reader.last_seq == 10


def test_device_records_in_a_hole_are_counted_and_the_others_passed_over(monkeypatch):
    """Numbers a file left open (holes) are counted when the device gives them; the records around them,
    and those above the highest hole, are passed over as counted."""
    device_answers(monkeypatch, [record(seq, xid_515(GPU0, seq)).encode() for seq in range(3, 13)]
                   + [OSError(errno.EAGAIN, "")])
    reader = kmsg.KmsgReader(Path("/dev/null"))
    counted = kmsg.Counted(10, [[0, 2], [6, 6]])
    batch = reader.read(counted)
    reader.close()
    assert [(x.seq, x.code) for x in batch.found] == [(6, 6), (11, 11), (12, 12)] and batch.lost == 0
    assert counted.holes == [[0, 2]] and counted.newest == 12


def test_both_driver_formats_parse_with_their_values():
    cases = {
        xid_515("0000:3b:00", 79): kmsg.Xid(1, 2, (0, 0x3b, 0), 79),
        "NVRM: Xid (PCI:0000:01:00 GPU-I:05): 94, pid=7194, Contained: CE User Channel (0x9). RST: No, D-RST: No":
            kmsg.Xid(1, 2, (0, 1, 0), 94, 5),
        xid_570("0001:c1:00", 13, gi=2, ci=1, pid=99, name="a, b"): kmsg.Xid(1, 2, (1, 0xc1, 0), 13, 2, 1),
        "NVRM: Xid (PCI:0000:3b:00): 45, Ch 00000010 caused by previous Xid 62":
            kmsg.Xid(1, 2, (0, 0x3b, 0), 45),
        "NVRM: Xid (PCI:0000:3b:00): 154, GPU recovery action changed from 0x0 (None) to 0x1 (GPU Reset Required)":
            kmsg.Xid(1, 2, (0, 0x3b, 0), 154),
    }
    for message, expected in cases.items():
        assert kmsg.parse_xid(1, 2, message.encode()) == expected, message
    assert kmsg.parse_xid(1, 2, b"NVRM: GPU at PCI:0000:3b:00: GPU-1234") is None
    # the kernel escapes a backslash as \x5c: the text "\x37" stays text, never the digit 7
    assert kmsg.parse_xid(1, 2, b"NVRM: Xid (PCI:0000:3b:00): \\x5cx37, escaped") is None
    assert kmsg.parse_xid(1, 2, b"NVRM: Xid (PCI:0000:3b:00): 79, name=a\\x2c\\x5cb") == kmsg.Xid(
        1, 2, (0, 0x3b, 0), 79)
    assert kmsg.pci_address("00000000:3B:00.0") == kmsg.pci_address("0000:3b:00") == (0, 0x3b, 0)
    assert kmsg.pci_address("not a bus id") is None


def test_malformed_and_hostile_lines_are_skipped(node, log):
    node.write([h100(0)])
    lines = [
        b"garbage without a header\n",
        b"4,x,1;" + xid_515(GPU0, 79).encode() + b"\n",  # bad seq
        b"4,1,2,-" + xid_515(GPU0, 79).encode() + b"\n",  # no ';'
        b"\xff\xfe\x00binary\x01\n",
        record(2, xid_515(GPU0, 79) + "A" * 20_000).encode(),  # longer than any kernel record
        b"4,3,3000000,-;NVRM: Xid (PCI:0000:18:00): 79, binary \xff\xfe and escaped \\x00\\xff text\n",
        b" SUBSYSTEM=pci\n",
        b"4,4,4000000,-;NVRM: Xid (PCI:0000:18:00): 99999999999, far too long a code\n",
        b"4,5,5000000,-;NVRM: Xid (PCI:zzzz:18:00): 79, bad address\n",
        b"A" * 70_000 + b"\n",  # no newline within a whole read
        record(6, xid_515(GPU0, 62, "PMU halt")).encode(),
        b"4,7,7000000,-;" + xid_515(GPU0, 62).encode(),  # cut short: no newline yet
    ]
    log.path.write_bytes(b"".join(lines))
    proc, series = node.collect(*log.args())
    assert proc.returncode == 0, proc.stderr
    assert xids(series) == {("0", "79", "", ""): 1, ("0", "62", "", ""): 1}
    assert value(series, "gpu_xid_last_time_seconds", xid="79") == BOOT_TIME + 3
    assert state_section(node)["seq"] == 6


def test_a_fifo_is_read_until_it_has_nothing_more(node, log, tmp_path):
    """A FIFO with a writer answers EAGAIN at its end, as /dev/kmsg does."""
    node.write([h100(0)])
    fifo = tmp_path / "kmsg.fifo"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # so that the writer's open does not block
    writer = os.open(fifo, os.O_WRONLY)
    try:
        os.write(writer, (record(0, xid_515(GPU0, 79)) + record(1, xid_515(GPU0, 74, "NVLink"))).encode())
        proc, series = node.collect("--collectors", "xid", "--kmsg", str(fifo), "--host-root", str(log.root))
    finally:
        os.close(writer)
        os.close(reader)
    assert proc.returncode == 0, proc.stderr
    assert xids(series) == {("0", "79", "", ""): 1, ("0", "74", "", ""): 1}


def test_an_unreadable_log_is_said_once_per_boot(node, log):
    """Without the right to read the log (EACCES here; /dev/kmsg with kernel.dmesg_restrict=1 and no
    CAP_SYSLOG gives EPERM, handled alike) the collector does not apply: one line, once per boot."""
    node.write([h100(0, accounting_mode=1)])  # no other lasting condition to say
    log.add(xid_515(GPU0, 79))
    log.path.chmod(0)
    # root reads any file: drop the capabilities that let it (the tests run as root)
    caps = "-dac_override,-dac_read_search"
    command = ["setpriv", f"--bounding-set={caps}", f"--inh-caps={caps}", sys.executable, "-m", "gputext",
               "collect", "--out", "-", "--state-dir", str(node.state_dir), "--host-root", str(log.root),
               "--kmsg", str(log.path)]

    def run(*extra):
        return subprocess.run(command + list(extra), env=node.env(), capture_output=True, text=True, timeout=60)

    proc = run("--collectors", "nvml,xid")
    assert proc.returncode == 0
    assert proc.stderr.count("\n") == 1 and "dmesg_restrict" in proc.stderr and "CAP_SYSLOG" in proc.stderr
    series = parse_exposition(proc.stdout)
    assert not xids(series) and value(series, "gpu_up", gpu="0") == 1
    assert value(series, "gputext_collector_success", collector="xid") == 0  # named: it fails
    proc = run()  # all that apply: xid does not, and that was said this boot already
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    series = parse_exposition(proc.stdout)
    assert value(series, "gputext_collector_success", collector="xid") is None
    assert value(series, "gpu_up", gpu="0") == 1


def test_the_log_as_standard_input_needs_no_right_to_open_it(node, log):
    """`--kmsg -` reads the descriptor it was given (systemd's StandardInput=file:/dev/kmsg), from its first
    record, even where gputext itself may not open the log."""
    node.write([h100(0)])
    log.add(xid_515(GPU0, 79), xid_515(GPU0, 79))
    with open(log.path, "rb") as given:
        given.seek(0, os.SEEK_END)  # rewound by gputext
        log.path.chmod(0)
        caps = "-dac_override,-dac_read_search"
        proc = subprocess.run(["setpriv", f"--bounding-set={caps}", f"--inh-caps={caps}", sys.executable, "-m",
                               "gputext", "collect", "--out", "-", "--state-dir", str(node.state_dir),
                               "--collectors", "xid", "--host-root", str(log.root)],
                              env={**node.env(), "GPUTEXT_KMSG": "-"}, stdin=given, capture_output=True,
                              text=True, timeout=60)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    assert xids(parse_exposition(proc.stdout)) == {("0", "79", "", ""): 2}


def test_no_log_at_all_does_not_apply(node, log, tmp_path):
    node.write([h100(0, accounting_mode=1)])
    where = ["--kmsg", str(tmp_path / "none"), "--host-root", str(log.root)]
    proc, series = node.collect(*where)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    assert value(series, "gputext_collector_success", collector="xid") is None
    assert value(series, "gputext_collector_success", collector="nvml") == 1
    proc, series = node.collect("--collectors", "xid", *where)  # asked for by name: it fails, and says why
    assert proc.stderr == f"gputext: collector xid: no kernel log at {tmp_path / 'none'}\n"
    assert value(series, "gputext_collector_success", collector="xid") == 0


def test_the_repeating_mode_reads_only_what_is_new(node, log, tmp_path):
    node.write([h100(0)])
    log.add(xid_515(GPU0, 79))
    out = tmp_path / "gpu.prom"
    runner = subprocess.Popen([sys.executable, "-m", "gputext", "collect", "--state-dir", str(node.state_dir),
                               "--out", str(out), "--interval", "50ms", *log.args()], env=node.env(),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def count():
        return value(parse_exposition(out.read_text()), "gpu_xid_errors_total", gpu="0", xid="79")

    try:
        deadline = time.monotonic() + 30
        while not (out.exists() and count() == 1):
            assert time.monotonic() < deadline, "the first XID was never written"
            time.sleep(0.02)
        log.add("noise", xid_515(GPU0, 79))
        while count() != 2:
            assert time.monotonic() < deadline, "the second XID was never written"
            time.sleep(0.02)
        time.sleep(0.3)  # several more cycles
        assert count() == 2
    finally:
        runner.send_signal(signal.SIGTERM)
        _, stderr = runner.communicate(timeout=30)
    assert runner.returncode == 0 and stderr == "", stderr
    assert state_section(node)["seq"] == 2


def test_a_log_whose_last_part_is_older_counts_each_record_once(node, log):
    """Two boots' logs concatenated (or a log rotated into place): the last records have lower sequence
    numbers than the first. Those numbers were counted; no run counts the first XID again."""
    node.write([h100(0)])
    filler = [f"filler record {n} " + "x" * 60 for n in range(3000)]
    log.add(*filler[:20], xid_515(GPU0, 79), *filler[20:])  # more than one 64 KiB read
    with open(log.path, "a") as f:
        f.writelines(record(seq, "an earlier boot's record") for seq in range(10))
    for _ in range(4):
        proc, series = node.collect(*log.args())
        assert proc.returncode == 0, proc.stderr
        assert xids(series) == {("0", "79", "", ""): 1}
    assert state_section(node)["seq"] == 3000 and state_section(node)["holes"] == []


def test_records_out_of_order_count_once_each(node, log):
    """Gaps, a decrease, a repeat: a record counts once, when its number is first seen."""
    node.write([h100(0)])
    log.path.write_text("".join(record(seq, xid_515(GPU0, 79)) for seq in (5, 3, 5, 7, 4, 4)))
    proc, series = node.collect(*log.args())
    assert xids(series) == {("0", "79", "", ""): 4}  # 5, 3, 7, 4
    with open(log.path, "a") as f:
        f.writelines(record(seq, xid_515(GPU0, 79)) for seq in (3, 6, 0, 7, 8))
    assert xids(node.collect(*log.args())[1]) == {("0", "79", "", ""): 7}  # and 6, 0, 8
    assert xids(node.collect(*log.args())[1]) == {("0", "79", "", ""): 7}
    assert state_section(node)["seq"] == 8 and state_section(node)["holes"] == [[1, 2]]


@pytest.mark.parametrize("source", ["/dev/zero", "/dev/urandom", "standard input /dev/zero", "a FIFO of 'y'"])
def test_what_is_no_kernel_log_is_read_within_a_bound(node, log, source):
    """A character device or FIFO that never ends is read up to the bound, once per run, and said."""
    node.write([h100(0)])
    stdin, writer = None, None
    if source.startswith("standard input"):
        stdin, kmsg_arg = open("/dev/zero", "rb"), "-"
    elif source.startswith("a FIFO"):
        writer = subprocess.Popen(["yes"], stdout=subprocess.PIPE)
        stdin, kmsg_arg = writer.stdout, "-"
    else:
        kmsg_arg = source
    try:
        proc = subprocess.run([sys.executable, "-m", "gputext", "collect", "--out", "-", "--state-dir",
                               str(node.state_dir), "--collectors", "xid", "--host-root", str(log.root)],
                              env={**node.env(), "GPUTEXT_KMSG": kmsg_arg}, stdin=stdin, capture_output=True,
                              text=True, timeout=60)
    finally:
        if writer is not None:
            writer.kill()
            writer.wait()
        stdin is not None and stdin.close()
    assert proc.returncode == 0, proc.stderr
    said = "in one read, more than any kernel log holds"
    if writer is not None:  # a FIFO read empty (its writer not yet scheduled again) ends the read sooner
        assert proc.stderr == "" or said in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr
    else:
        assert said in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr
    assert value(parse_exposition(proc.stdout), "gputext_collector_success", collector="xid") == 1


def test_a_directory_as_the_log_is_said_and_leaks_no_descriptor(tmp_path):
    """The repeating mode keeps one process: each cycle that fails to read the log closes what it opened."""
    from gputext.run import Context, Options, collect

    said = []
    ctx = Context(Options(collectors=("xid",), kmsg=tmp_path, state_dir=tmp_path / "state"), said.append)
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(5):
        result = collect(ctx)
        ctx.end_cycle()
        ctx.new_cycle()
        assert result.failed == ["xid"]
    ctx.close()
    assert len(os.listdir("/proc/self/fd")) == before
    assert said == [f"collector xid: {tmp_path} is a directory, not a kernel log (the character device /dev/kmsg, "
                    "a file or a FIFO of its records): XIDs are not counted; fix: point --kmsg (GPUTEXT_KMSG) at "
                    "the kernel log"]


def test_a_sequence_number_beyond_64_bits_is_no_record(node, log):
    """The kernel's sequence numbers are 64-bit: a line with a larger one (20 digits, but above 2^64 - 1) is
    skipped like any malformed line. Counted, it was saved in the state beyond what the state's shape
    allows, and every next run dropped the XID counts and said so."""
    node.write([h100(0)])
    log.add(xid_515(GPU0, 79))
    with open(log.path, "a") as f:
        f.write(record(1 << 64, xid_515(GPU0, 48), usec=2_000_000))
    for _ in range(2):
        proc, series = node.collect(*log.args())
        assert proc.returncode == 0 and proc.stderr == "", proc.stderr
        assert xids(series) == {("0", "79", "", ""): 1}
    assert state_section(node)["seq"] == 0


def test_a_wrapped_log_keeps_its_lost_numbers_open_and_counts_them_if_they_come(node, log):
    """A log whose first record is not 0 (a ring buffer that wrapped before the first read) leaves the
    lost numbers as a hole: old records around it are passed over, and one that fills it counts once."""
    node.write([h100(0)])
    log.path.write_text("".join(record(seq, xid_515(GPU0, 79) if seq == 150 else f"record {seq}")
                                for seq in range(100, 200)))
    assert xids(node.collect(*log.args())[1]) == {("0", "79", "", ""): 1}
    assert state_section(node)["holes"] == [[0, 99]]
    with open(log.path, "a") as f:
        f.writelines(record(seq, f"record {seq}") for seq in range(100, 200))  # the same records again
        f.write(record(50, xid_515(GPU0, 79)))  # one the ring had lost, from a saved log
    assert xids(node.collect(*log.args())[1]) == {("0", "79", "", ""): 2}
    assert xids(node.collect(*log.args())[1]) == {("0", "79", "", ""): 2}
    assert state_section(node)["holes"] == [[0, 49], [51, 99]]


def test_a_rotated_log_read_whole_loses_nothing(node, log):
    """A log rotated into place (its later half first): the numbers the first half skipped come in the
    second, so no record was lost and none is said to be (the warning said 10 were overwritten)."""
    node.write([h100(0)])
    log.path.write_text("".join(record(seq, xid_515(GPU0, 79) if seq in (3, 15) else f"record {seq}")
                                for seq in [*range(10, 20), *range(10)]))
    proc, series = node.collect(*log.args())
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    assert xids(series) == {("0", "79", "", ""): 2}
    assert state_section(node)["seq"] == 19 and state_section(node)["holes"] == []

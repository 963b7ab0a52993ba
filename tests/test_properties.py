"""Property-based tests (hypothesis) of what gputext reads from outside: kernel-log records and whole logs,
state.json and inventory.json, and /proc and cgroup files.

Whatever the input, a run gives no traceback, ends (a hang fails the subprocess timeout), exits with a
documented code, writes a file that promtool accepts and node_exporter publishes without a scrape error,
and counts each kernel-log record once. The number of examples comes from the hypothesis profile
(conftest.py: "ci" by default; `--hypothesis-profile long` for long local runs).
"""

import json
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import parse_exposition, value
from fakegpu import h100, h100_uuid
from realtools import NodeExporter, promtool_check
from test_xid import BOOT_TIME, GPU0, record, xid_515

from gputext import kmsg, shape
from gputext.collectors import xid as xid_collector
from gputext.run import Context, Options, collect

BOOT_ID = "0f0e0d0c-0b0a-4908-8706-050403020100"
# Runs of gputext as a subprocess cost about half a second each: fewer examples than in-process ones.
SUBPROCESS = settings(max_examples=max(1, settings().max_examples // 8))


@pytest.fixture(scope="module")
def exporter(tmp_path_factory):
    with NodeExporter(tmp_path_factory.mktemp("textfiles")) as running:
        yield running


def published_cleanly(exporter, text: str) -> None:
    """promtool accepts the text, and node_exporter publishes it without a scrape error."""
    checked = promtool_check(text.encode())
    assert checked.returncode == 0, checked.stderr.decode()
    (exporter.directory / "gpu.prom").write_text(text)
    published = parse_exposition(exporter.scrape())
    assert value(published, "node_textfile_scrape_error") == 0


def host_root(directory: Path) -> Path:
    """A host root with /proc/stat (the boot time) and the boot id."""
    random = directory / "proc" / "sys" / "kernel" / "random"
    random.mkdir(parents=True, exist_ok=True)
    (random / "boot_id").write_text(BOOT_ID + "\n")
    (directory / "proc" / "stat").write_text(f"cpu  1 2 3 4\nbtime {BOOT_TIME}\n")
    return directory


# --- kernel-log records: each counted once, whatever the order ----------------------------------------

SEQ = st.integers(0, 40)  # few numbers, so that repeats, gaps and reversals are common
NOISE = st.binary(max_size=30).map(lambda b: b.replace(b";", b"").replace(b"\n", b""))


@st.composite
def logs(draw):
    """(log bytes, where it grows between reads, the XID records' numbers). A record's content depends on
    its number only, as the kernel's does: a number that comes again is the same record again."""
    xid_seqs = draw(st.sets(SEQ))
    order = draw(st.lists(SEQ, max_size=60))
    lines = [record(seq, xid_515(GPU0, 79) if seq in xid_seqs else f"record {seq}").encode() for seq in order]
    for noise in draw(st.lists(NOISE, max_size=5)):
        lines.insert(draw(st.integers(0, len(lines))), noise + b"\n")
    data = b"".join(lines)
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=4)))
    return data, cuts, xid_seqs & set(order)


@given(log=logs(), kept=st.booleans())
def test_each_record_is_counted_once(log, kept):
    """Read as the log grows, by a new reader each time (one-shot runs) or one kept open (the repeating
    mode), with what was counted saved as the state saves it: every XID record counts exactly once."""
    data, cuts, xid_seqs = log
    counted_xids = []
    saved = {}
    reader = None
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "kmsg"
        for end in cuts + [len(data)]:
            path.write_bytes(data[:end])
            if reader is None:
                reader = kmsg.KmsgReader(path)
            counted = kmsg.Counted(saved.get("seq"), saved.get("holes", ()))
            counted_xids += [found.seq for found in reader.read(counted).found]
            if counted.newest is not None:
                saved = json.loads(json.dumps({"seq": counted.newest, "holes": counted.holes}))
                xid_collector.SHAPE(saved, "xid")  # what is saved is what the next run accepts
            if not kept:
                reader.close()
                reader = None
        if reader is not None:
            reader.close()
    assert sorted(counted_xids) == sorted(xid_seqs)


@given(data=st.binary(max_size=4096), size=st.sampled_from([1, 7, 64, kmsg.READ_SIZE]))
def test_any_bytes_read_from_a_device_count_only_whole_records(data, size):
    """Any bytes, in reads of any size, as a character device gives them: no exception, and what is found
    is an XID of a record whose number was not counted before."""
    chunks = [data[i:i + size] for i in range(0, len(data), size)]
    reads = iter(chunks)

    def read(fd, _):
        try:
            return next(reads)
        except StopIteration:
            raise BlockingIOError from None

    reader = kmsg.KmsgReader(Path("/dev/null"))  # a character device, as /dev/kmsg
    reader._open()
    real = kmsg.os.read
    kmsg.os.read = read  # os.read itself, as the tests of the device path do (monkeypatch is per test)
    try:
        counted = kmsg.Counted()
        found = reader.read(counted).found
    finally:
        kmsg.os.read = real
        reader.close()
    assert len({x.seq for x in found}) == len(found)
    assert all(x.seq in counted for x in found)


# --- whole runs of the xid collector on any state.json and any log ------------------------------------

JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(10 ** 30), 10 ** 30) | st.sampled_from([10 ** 400, -5, 2 ** 53 + 1])
    | st.floats() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=12)


def good_state() -> dict:
    return {"version": 1, "sections": {
        "xid": {"boot": BOOT_ID, "seq": 3, "holes": [[1, 1]], "counts": {f"{GPU0}|79||": [2, BOOT_TIME + 3.0]},
                "gpus": {GPU0: ["0", h100_uuid(0)]}, "unconfirmed": [], "unpaired": []},
        "said": {"a lasting condition": BOOT_ID},
    }}


def paths(document, prefix=()):
    """Every path to a value of the document."""
    yield prefix
    if isinstance(document, dict):
        for key, item in document.items():
            yield from paths(item, prefix + (key,))
    elif isinstance(document, list):
        for index, item in enumerate(document):
            yield from paths(item, prefix + (index,))


@st.composite
def states(draw):
    """A good state with one value anywhere replaced by any JSON, or bytes that are no JSON at all."""
    if draw(st.integers(0, 9)) == 0:
        return draw(st.binary(max_size=200) | st.integers(1, 5000).map(lambda n: b"[" * n))
    document = good_state()
    where = draw(st.sampled_from(list(paths(document))))
    if not where:
        return json.dumps(draw(JSON)).encode()
    place = document
    for key in where[:-1]:
        place = place[key]
    place[where[-1]] = draw(JSON)
    return json.dumps(document).encode()


def run_xid(directory: Path, log: Path) -> tuple:
    """One in-process run of the xid collector: (its output, what it said)."""
    said = []
    options = Options(collectors=("xid",), kmsg=log, state_dir=directory / "state", host_root=directory / "host")
    ctx = Context(options, said.append)
    try:
        result = collect(ctx)
    finally:
        ctx.close()
    assert result.failed == [], said
    return result.render(options.prefix).decode(), said


@given(state=states(), log=st.lists(st.sampled_from([record(4, xid_515(GPU0, 79)), record(5, "x"),
                                                     record(2, xid_515(GPU0, 31))]), max_size=4))
def test_any_state_gives_a_good_file_and_counts_nothing_twice(exporter, state, log):
    with tempfile.TemporaryDirectory() as temp:
        directory = Path(temp)
        host_root(directory / "host")
        (directory / "state").mkdir()
        (directory / "state" / "state.json").write_bytes(state)
        (directory / "kmsg").write_text("".join(log))
        text, said = run_xid(directory, directory / "kmsg")
        assert all("Traceback" not in line and " failed" not in line for line in said), said
        published_cleanly(exporter, text)
        again, said_again = run_xid(directory, directory / "kmsg")
        assert xid_series(again) == xid_series(text)  # nothing new in the log: nothing counted again
        assert not [line for line in said_again if "state file" in line], said_again


def xid_series(text: str) -> dict:
    return {key: v for key, v in parse_exposition(text).items() if key[0].startswith("gpu_xid_")}


# --- /proc and cgroup files ---------------------------------------------------------------------------

STAT_FIELD = st.binary(max_size=12).map(lambda b: b.replace(b" ", b"")) | st.integers(0, 10 ** 25).map(
    lambda n: str(n).encode())


@st.composite
def proc_files(draw):
    """/proc/<pid>/stat, cmdline, cgroup and /proc/stat: as the kernel writes them, or anything."""
    name = draw(st.binary(max_size=40))
    fields = [b"S"] + [draw(STAT_FIELD) for _ in range(draw(st.integers(0, 25)))]
    stat = draw(st.just(b"4242 (" + name + b") " + b" ".join(fields)) | st.binary(max_size=200))
    cmdline = draw(st.binary(max_size=100))
    cgroup = draw(st.sampled_from([
        b"0::/kubepods.slice/kubepods-pod0123abcd_0123_4567_89ab_0123456789ab.slice/cri-containerd-"
        + b"a" * 64 + b".scope\n", b""]) | st.binary(max_size=200))
    btime = draw(st.just(f"btime {BOOT_TIME}\n".encode()) | st.binary(max_size=60).map(lambda b: b"btime " + b))
    return stat, cmdline, cgroup, btime


def fake_proc(root: Path, files) -> None:
    stat, cmdline, cgroup, btime = files
    process = root / "proc" / "4242"
    process.mkdir(parents=True, exist_ok=True)
    (process / "stat").write_bytes(stat)
    (process / "cmdline").write_bytes(cmdline)
    (process / "cgroup").write_bytes(cgroup)
    (root / "proc" / "stat").write_bytes(b"cpu  1 2 3 4\n" + btime)


@given(files=proc_files())
def test_any_proc_files_give_a_name_and_time_or_nothing(files):
    from gputext.pods import PodResolver, read_cgroup
    from gputext.procinfo import ProcessTable

    with tempfile.TemporaryDirectory() as temp:
        root = Path(temp)
        fake_proc(root, files)
        described = ProcessTable(root / "proc").describe(4242)
        pod = PodResolver(root).for_cgroup(read_cgroup(root, 4242))
    if described is not None:
        name, started = described
        assert isinstance(name, str) and isinstance(started, float) and 0 <= started <= shape.MAX_NUMBER
    assert all(isinstance(part, str) for part in pod)


@SUBPROCESS
@given(files=proc_files())
def test_any_proc_files_give_a_good_file(fake_libdir, exporter, files):
    """The processes collector end to end on hostile /proc files under --host-root."""
    from conftest import Node

    with tempfile.TemporaryDirectory() as temp:
        node = Node(fake_libdir, Path(temp))
        node.write([h100(0)])
        root = host_root(Path(temp) / "host")
        fake_proc(root, files)
        proc, series = node.collect("--collectors", "processes", "--host-root", str(root))
    assert proc.returncode == 0 and proc.stderr.count("Traceback") == 0, proc.stderr
    assert value(series, "gpu_process_active", pid="4242") == 1
    published_cleanly(exporter, proc.stdout)


# --- inventory.json -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def good_inventory(fake_libdir, tmp_path_factory) -> bytes:
    """An inventory.json as a run with every static value writes it."""
    from conftest import Node

    node = Node(fake_libdir, tmp_path_factory.mktemp("inventory"))
    node.write([h100(0), h100(1)])
    assert node.collect("--detail", "full", "--host-root", str(host_root(node.root / "host")))[0].returncode == 0
    return (node.state_dir / "inventory.json").read_bytes()


@SUBPROCESS
@given(data=st.data())
def test_any_inventory_gives_every_gpu(fake_libdir, exporter, good_inventory, data):
    from conftest import Node

    document = json.loads(good_inventory)
    where = data.draw(st.sampled_from(list(paths(document))))
    replacement = data.draw(JSON)
    if where:
        place = document
        for key in where[:-1]:
            place = place[key]
        place[where[-1]] = replacement
    else:
        document = replacement
    with tempfile.TemporaryDirectory() as temp:
        node = Node(fake_libdir, Path(temp))
        node.write([h100(0), h100(1)])
        node.state_dir.mkdir()
        (node.state_dir / "inventory.json").write_text(json.dumps(document))
        proc, series = node.collect("--collectors", "nvml,nvlink,pcie,gpm", "--detail", "full",
                                    "--host-root", str(host_root(Path(temp) / "host")))
    assert proc.returncode == 0 and "Traceback" not in proc.stderr and " failed" not in proc.stderr, proc.stderr
    for gpu in (0, 1):
        assert value(series, "gpu_up", gpu=str(gpu), uuid=h100_uuid(gpu)) == 1
    assert value(series, "gputext_collector_success", collector="nvlink") == 1
    published_cleanly(exporter, proc.stdout)


def test_the_shapes_accept_what_gputext_writes(good_inventory):
    """The other side of the shapes: what gputext itself writes fits them (a shape that refused it would
    start the cache or a section afresh on every run)."""
    from gputext.devices import CACHE_SHAPE

    CACHE_SHAPE(json.loads(good_inventory), "")
    xid_collector.SHAPE(good_state()["sections"]["xid"], "xid")
    for wrong in (10 ** 400, -(10 ** 400), float("nan"), float("inf"), "1", True, None):
        with pytest.raises(shape.Invalid):
            shape.number(wrong, "x")
        with pytest.raises(shape.Invalid):
            shape.count(wrong, "x")


@given(message=st.binary(max_size=200) | st.builds(
    lambda pci, code, rest: f"NVRM: Xid (PCI:{pci}): {code}, {rest}".encode(),
    st.text("0123456789abcdefABCDEF:.GPU-I ", max_size=24), st.integers(-10, 10 ** 7).map(str) | st.text(max_size=8),
    st.text(max_size=40)))
def test_an_xid_line_parses_to_sane_values_or_to_nothing(message):
    """Any message, near-XID lines included: no exception, and an XID's values are in their ranges."""
    found = kmsg.parse_xid(7, 8, message)
    if found is not None:
        assert found.seq == 7 and 0 <= found.code <= 99999
        assert all(0 <= part < 1 << 32 for part in found.pci) and kmsg.pci_address(kmsg.pci_text(found.pci))
        assert all(i is None or 0 <= i <= 999 for i in (found.gpu_instance, found.compute_instance))

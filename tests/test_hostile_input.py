"""Hostile and broken input at the command line and from the kubelet (issues 27 and 28): option and variable
values out of any sane range, paths the system refuses, control characters in what show, doctor and every
error print, kubelet device IDs and names of any form. Property-based (hypothesis) where the input is free
text, with the properties a run promises: no traceback, a documented exit code, one line per error, the
previous good file kept on failure, and a written file that promtool accepts."""

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import parse_exposition, require, value
from fakegpu import GPM_SM_ACTIVE, h100, h100_uuid, with_gpm
from gputext.cli import COMMANDS, UNITS_OUT, execute
from gputext.terminal import complain, visible
from realtools import promtool_check

DOCTOR_LINE = re.compile(r"^(ok|FAIL|warn|info) {1,4}[\w ]+: \S.*$")
LONG_NAME = "a" * 300  # a path component over NAME_MAX (255 bytes): ENAMETOOLONG


# --- options and help ----------------------------------------------------------------------------------

def test_help_names_the_kind_of_every_value():
    for name, command in COMMANDS.items():
        for option in command.options.values():
            if not option.is_flag:
                assert option.value and option.value != "TEXT", f"{name} {option.flags[0]}"
    lines = {name: {line.strip() for line in command_help(name).splitlines()} for name in COMMANDS}
    assert {"--count N", "--interval DURATION", "-o, --out FILE", "--collectors LIST",
            "--detail standard|full", "--dcgm-host HOST[:PORT]"} <= lines["collect"]
    assert "--stale-after DURATION" in lines["rules"] and "--sample DURATION" in lines["show"]


def command_help(name: str) -> str:
    proc = subprocess.run([sys.executable, "-m", "gputext", name, "--help"], capture_output=True, text=True,
                          env={**os.environ, "COLUMNS": "200"}, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_doctor_help_shows_the_file_it_checks():
    text = " ".join(command_help("doctor").split())
    assert f"[default: the units' file, {UNITS_OUT}]" in text
    assert "default: -]" not in text


@pytest.mark.parametrize("prefix", ["", "9x", "__gpu", "gpu-"])
def test_every_command_that_takes_a_prefix_refuses_the_same_ones(prefix):
    messages = set()
    for command in ("metrics", "rules", "dashboard", "collect"):
        out = ["--out", "-"] if command == "collect" else []
        proc = subprocess.run([sys.executable, "-m", "gputext", command, "--prefix", prefix, *out],
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 2 and proc.stdout == "", (command, proc.stdout[:200])
        (line,) = proc.stderr.splitlines()
        messages.add(line.split(" (see ")[0])
    assert len(messages) == 1, messages  # one validation, one message


@pytest.mark.parametrize("variable, given", [
    ("GPUTEXT_MAX_PROCESSES", "9" * 5000), ("GPUTEXT_COUNT", "9" * 5000), ("GPUTEXT_RETENTION", "9" * 5000),
    ("GPUTEXT_KUBELET_TIMEOUT", "9" * 400 + "h"), ("GPUTEXT_POD_CACHE_TTL", "169h"),
    ("GPUTEXT_GPM_WINDOW", "1" + "0" * 4400), ("GPUTEXT_LOCK_TIMEOUT", "99999999999999999999"),
])
def test_a_variable_out_of_range_is_a_usage_error(node, tmp_path, variable, given):
    """Python's int() refuses more than 4,300 digits, float() makes such a duration infinite, sleep() and
    the lock's timeout overflow: every such value is one line and exit 2, the previous file kept."""
    node.write([h100(0)])
    out = tmp_path / "gpu.prom"
    out.write_text("# the previous file\n")
    env = {**node.env(), variable: given}
    args = ["collect", "--out", str(out), "--state-dir", str(node.state_dir)]
    if variable == "GPUTEXT_COUNT":
        args += ["--interval", "1s"]
    proc = subprocess.run([sys.executable, "-m", "gputext", *args], env=env, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 2, proc.stderr
    (line,) = proc.stderr.splitlines()
    assert line.startswith(f"gputext: invalid {variable}=") and len(line) < 400, line
    assert out.read_text() == "# the previous file\n"


def test_show_and_rules_refuse_a_duration_beyond_range(node):
    node.write([h100(0)])
    for args in (["show", "--sample", "9" * 5000], ["rules", "--stale-after", "9" * 5000]):
        proc = node.run(*args)
        assert proc.returncode == 2 and proc.stdout == "", proc.stderr
        (line,) = proc.stderr.splitlines()
        assert f"invalid {args[1]} '99999" in line


# --- what show, doctor and errors print ----------------------------------------------------------------

@pytest.fixture
def process_named(tmp_path):
    """A process whose name (comm) holds control characters, as any local user can set it."""
    name = "\x1b[2Jx\nevil"
    child = subprocess.Popen([sys.executable, "-c", f"open('/proc/self/comm', 'w').write({name!r}); "
                              "import time; time.sleep(60)"])
    comm = Path(f"/proc/{child.pid}/comm")
    deadline = time.monotonic() + 10
    while comm.read_text() != name + "\n" and time.monotonic() < deadline:
        time.sleep(0.01)
    yield child.pid, name
    child.kill()
    child.wait()


def test_visible_escapes_what_a_terminal_would_act_on_and_nothing_else():
    assert visible("python3 trainer.py – GPU 0 °C") == "python3 trainer.py – GPU 0 °C"
    assert visible("a\x1b[2Jb\nc\td\x9be\u202ef\udcff\x7f") == "a\\x1b[2Jb\\nc\\td\\x9be\\u202ef\\udcff\\x7f"


def test_a_message_quoting_thousands_of_characters_keeps_its_start_and_end(capsys):
    complain("cannot write " + "a" * 5000 + "/gpu.prom: File name too long; fix: name a shorter path")
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("gputext: cannot write aaa") and line.endswith("; fix: name a shorter path")
    assert len(line) < 1100 and "characters)..." in line


def test_show_prints_a_process_name_with_its_control_characters_made_visible(node, process_named):
    pid, _ = process_named
    node.write([h100(0, name="NVIDIA \x1b]0;H100", processes=[{"pid": pid, "used_memory": 1 << 30}])])
    proc = node.run("show", "--sample", "0", "--collectors", "nvml,processes")
    assert proc.returncode == 0, proc.stderr
    assert "\x1b" not in proc.stdout  # not a terminal: no colour, and nothing from outside either
    assert "\\x1b[2Jx\\nevil" in proc.stdout
    assert "\\x1b]0;H100" in proc.stdout


def test_an_error_quoting_a_path_stays_one_line(node, tmp_path):
    node.write([h100(0)])
    proc = node.run("collect", "--out", str(tmp_path / "no\ndirectory" / "gpu.prom"))
    assert proc.returncode == 2
    (line,) = proc.stderr.splitlines()
    assert "no\\ndirectory" in line


def doctor(node, **variables):
    env = {**node.env(), "GPUTEXT_STATE_DIR": str(node.state_dir), **variables}
    proc = subprocess.run([sys.executable, "-m", "gputext", "doctor"], env=env, capture_output=True, text=True,
                          timeout=60)
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode in (0, 1)
    for line in proc.stdout.splitlines():
        assert DOCTOR_LINE.match(line), line
    return proc


@pytest.mark.parametrize("variable, check", [
    ("GPUTEXT_OUT", "output"), ("GPUTEXT_STATE_DIR", "state"), ("GPUTEXT_POD_RESOURCES_SOCKET", "kubelet"),
    ("GPUTEXT_KMSG", "kernel log"),
])
def test_doctor_fails_the_check_of_a_path_the_system_refuses(node, tmp_path, variable, check):
    node.write([h100(0)])
    proc = doctor(node, **{variable: f"{tmp_path}/{LONG_NAME}/gpu.prom", "GPUTEXT_COLLECTORS": "nvml,dcgm,"
                           "kubernetes,xid"})
    assert proc.returncode == 1
    assert re.search(rf"^FAIL  {check}: .*(File name too long|cannot)", proc.stdout, re.M), proc.stdout


@pytest.mark.parametrize("host", ["h\udcff", "hôte", "host:99999", "host:", "a b", "[::1"])
def test_doctor_fails_the_options_check_of_a_bad_dcgm_host(node, host):
    node.write([h100(0)])
    proc = doctor(node, GPUTEXT_DCGM_HOST=host)
    assert proc.returncode == 1
    assert re.search(r"^FAIL  options: invalid GPUTEXT_DCGM_HOST=.*: use a host name or an IP address",
                     proc.stdout, re.M), proc.stdout
    assert re.search(r"^\S+ +dcgm: .*localhost:5555", proc.stdout, re.M)  # checked with the default instead


def test_doctor_shows_a_path_with_a_newline_on_one_line(node, tmp_path):
    node.write([h100(0)])
    proc = doctor(node, GPUTEXT_OUT=str(tmp_path / "a\nb" / "gpu.prom"))
    assert re.search(r"^FAIL  output: .*a\\nb", proc.stdout, re.M), proc.stdout


# --- show's GPU names ----------------------------------------------------------------------------------

def test_show_at_80_columns_keeps_the_end_of_the_gpu_name(node):
    """With GPM's column an 80-column table has no room for `NVIDIA H100 80GB HBM3`: the vendor's name goes
    first, so HBM3 (what tells it from a PCIe or NVL card) stays."""
    node.write([with_gpm(h100(0), {GPM_SM_ACTIVE: 64.0}), with_gpm(h100(1), {GPM_SM_ACTIVE: 12.0})])
    env = {**node.env(), "COLUMNS": "80"}
    proc = subprocess.run([sys.executable, "-m", "gputext", "show", "--sample", "0.3", "--collectors", "nvml,gpm",
                           "--gpm-window", "150ms"], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    devices = proc.stdout.split("\n\n")[0]
    assert "SM ACTIVE" in devices
    assert max(len(line) for line in devices.splitlines()) <= 80
    assert re.search(r"^  0  H100 80GB HBM3  ", devices, re.M), devices


# --- a GPU lost before gputext first saw it ------------------------------------------------------------

def test_a_gpu_whose_uuid_cannot_be_read_is_named_by_its_pci_bus_id(node, tmp_path):
    lost = h100(1, errors={"nvmlDeviceGetUUID": 15})  # GPU_IS_LOST where the UUID is asked
    node.write([h100(0), lost])
    proc, series = node.collect("--collectors", "nvml")
    assert proc.returncode == 0, proc.stderr
    assert value(series, "gpu_up", gpu="1", pci_bus_id=lost["pci_bus_id"]) == 0
    assert value(series, "gpu_up", gpu="0", uuid=h100_uuid(0), pci_bus_id=h100(0)["pci_bus_id"]) == 1
    for (name, labels), _ in series.items():
        if name == "gpu_up":  # a lost GPU is identified by something: never by empty labels alone
            assert dict(labels)["uuid"] or dict(labels)["pci_bus_id"]
    assert promtool_check(proc.stdout.encode()).returncode == 0


def test_a_gpu_lost_after_the_first_run_keeps_its_identity(node):
    node.write([h100(0), h100(1)])
    node.collect("--collectors", "nvml")
    node.write([h100(0), h100(1, lost=True)])
    proc, series = node.collect("--collectors", "nvml")
    assert value(series, "gpu_up", gpu="1", uuid=h100_uuid(1), pci_bus_id=h100(1)["pci_bus_id"]) == 0


# --- properties: option and variable values -----------------------------------------------------------

# numbers as text, up to beyond Python's int() (4,300 digits)
DIGITS = st.one_of(st.text("0123456789", min_size=1, max_size=12), st.integers(1, 6000).map(lambda n: "9" * n))


def _number_like():
    digits = DIGITS
    return st.one_of(digits, st.tuples(st.sampled_from(["", "-", " ", "+"]), digits,
                                       st.sampled_from(["", "ms", "s", "m", "h", ".5", "e9", " s"])).map("".join),
                     st.floats(allow_nan=True, allow_infinity=True).map(str))


TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=40)
# a value as the environment may hold it: any text but NUL, and undecodable bytes (as lone surrogates)
VALUE = st.one_of(TEXT, _number_like(), TEXT.map(lambda text: text + "\udcff"))
PATH_OPTIONS = {"out", "state_dir", "host_root", "dcgm_bindings", "pod_resources_socket", "kmsg", "counters"}
# each collect option but --interval, which repeats until stopped (it is tried with --count 1 below)
OPTIONS = sorted(name for name in COMMANDS["collect"].options if name != "interval")


def relative(value: str) -> str:
    """A path value kept inside the test's directory: the run's working directory."""
    return "x" + value.replace("/", "_").replace("..", "__")


@pytest.fixture
def collect_here(nvml_here, tmp_path, monkeypatch, capsys):
    """collect(args, env) runs `gputext collect` in this process, in a working directory of its own, and
    returns (exit code, stderr); the previous file is tmp_path/gpu.prom."""
    nvml_here.write([h100(0), h100(1)])
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    out = tmp_path / "gpu.prom"

    def collect(args, env):
        for name, given_value in env.items():
            monkeypatch.setenv(name, given_value)
        capsys.readouterr()
        try:
            code = execute(["collect", "--out", str(out), "--state-dir", str(nvml_here.state_dir),
                            "--collectors", "nvml,kubernetes,xid", *args])
        finally:
            for name in env:
                monkeypatch.delenv(name)
        return code, capsys.readouterr().err

    collect.out = out
    return collect


def check_run(collect_here, code: int, stderr: str, previous: bytes | None) -> None:
    assert code in (0, 2), stderr  # 1 is for NVML unreadable
    out = collect_here.out
    if code == 2:
        assert len(stderr.splitlines()) == 1 and stderr.startswith("gputext: "), stderr
        assert len(stderr) < 1100, stderr  # a line a person reads, whatever the value's length
        if previous is not None:
            assert out.read_bytes() == previous  # the previous good file stays
    else:
        written = out.read_bytes()
        check = promtool_check(written)
        assert check.returncode == 0, check.stdout + check.stderr
        # the GPUs were read (gputext_* keeps its name whatever the --prefix)
        assert value(parse_exposition(written.decode()), "gputext_collector_success", collector="nvml") == 1


@settings(max_examples=2 * settings.default.max_examples, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(name=st.sampled_from(OPTIONS), given_value=VALUE, from_environment=st.booleans())
def test_any_value_of_any_option_gives_a_documented_exit(collect_here, name, given_value, from_environment):
    option = COMMANDS["collect"].options[name]
    if name in PATH_OPTIONS:
        given_value = relative(given_value)
    if option.is_flag and not from_environment:
        args, env = [option.flags[0]], {}
    elif from_environment:
        args, env = [], {option.envvar: given_value}
    else:
        args, env = [f"{option.flags[0]}={given_value}"], {}
    previous = collect_here.out.read_bytes() if collect_here.out.exists() else None
    code, stderr = collect_here(args, env)
    check_run(collect_here, code, stderr, previous)


@settings(max_examples=max(10, settings.default.max_examples // 2), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(interval=_number_like())
def test_any_interval_with_a_count_of_one_gives_a_documented_exit(collect_here, interval):
    previous = collect_here.out.read_bytes() if collect_here.out.exists() else None
    code, stderr = collect_here(["--interval", interval, "--count", "1"], {})
    check_run(collect_here, code, stderr, previous)


# --- properties: the kubelet's answers -----------------------------------------------------------------

require("grpc", "google.protobuf")  # the test extra has them

from fakekubelet import claim, claimed, kubelet_socket, pod, serve  # noqa: E402

NAME = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=30)
DEVICE_ID = st.one_of(
    NAME, _number_like(), DIGITS.map(lambda n: f"nvidia{n}"), DIGITS.map(lambda n: f"nvidia0/gi{n}"),
    st.builds(lambda gpu, n: f"{gpu}:{n}", st.integers(0, 3), DIGITS),
    st.builds(lambda gpu, n: f"MIG-{h100_uuid(gpu)}/{n}/0", st.integers(0, 3), DIGITS),
    st.sampled_from([h100_uuid(0) + "::7", "GPU-", "MIG-", "::", "nvidia0/gi", "0:"]))
CONTAINERS = st.dictionaries(NAME, st.dictionaries(st.sampled_from(["nvidia.com/gpu", "nvidia.com/mig-1g.10gb",
                                                                    "example.com/nic"]),
                                                   st.lists(DEVICE_ID, max_size=4), max_size=2), max_size=3)
DRA_NAME = st.one_of(NAME, DIGITS.map(lambda n: f"gpu-{n}"), DIGITS.map(lambda n: f"gpu-vfio-{n}"),
                    st.builds(lambda a, b: f"gpu-0-mig-{a}-{b}-1", DIGITS, DIGITS))
CLAIM = st.builds(lambda name, namespace, device: claim(name, namespace, claimed(device)), NAME, NAME, DRA_NAME)
CLAIMS = st.dictionaries(NAME, st.lists(CLAIM, max_size=2), max_size=2)
PODS = st.lists(st.tuples(NAME, NAME, CONTAINERS, CLAIMS), max_size=4)


@pytest.fixture
def kubelet():
    with kubelet_socket() as socket, serve(socket, []) as lister:
        lister.socket = socket
        yield lister


@settings(max_examples=settings.default.max_examples, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(pods=PODS)
def test_any_kubelet_answer_keeps_the_pod_of_a_known_gpu(collect_here, kubelet, pods):
    """Whatever else the kubelet lists (device-plugin IDs and DRA device names of any form and length, names
    with any character), the pod holding GPU 1 by its UUID gets its labels, and the file is written and
    valid."""
    kubelet.pods = [pod("keeper", "ml", {"main": {"nvidia.com/gpu": [h100_uuid(1)]}}),
                    *(pod(name, namespace, containers, claims) for name, namespace, containers, claims in pods)]
    code, stderr = collect_here(["--pod-resources-socket", str(kubelet.socket), "--pod-cache-ttl", "0"], {})
    check_run(collect_here, code, stderr, None)
    assert code == 0
    series = parse_exposition(collect_here.out.read_bytes().decode())  # as written: a \r stays in its label
    assert value(series, "gputext_collector_success", collector="kubernetes") == 1
    keeper = [labels for (name, labels), _ in series.items() if name == "gpu_allocation_info"
              and ("pod", "keeper") in labels]
    assert keeper and all(("uuid", h100_uuid(1)) in labels for labels in keeper)
    assert all(len(line) < 1000 for line in stderr.splitlines())

"""The systemd units: `systemd-analyze verify` accepts them, `systemd-analyze security` rates them no worse
than docs/running.md says, and they agree with each other, with doctor and with the cron file."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gputext import doctor
from realtools import require_tool

ROOT = Path(__file__).resolve().parent.parent
SYSTEMD = ROOT / "systemd"
UNITS = ("gputext.service", "gputext.timer", "gputext-repeat.service")
SERVICES = ("gputext.service", "gputext-repeat.service")
INSTALLED = "/usr/local/bin/gputext"  # where README installs the command and every unit runs it
# systemd-analyze's threshold is in tenths: fail above 2.1, the exposure both services have now.
EXPOSURE_THRESHOLD = 21
SANDBOX_MARKER = "# --- sandbox"


def directives(unit: str) -> list:
    """(key, value) of every directive in a unit file, in order."""
    pairs = []
    for line in (SYSTEMD / unit).read_text().splitlines():
        if line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            pairs.append((key, value))
    return pairs


def values(unit: str, key: str) -> list:
    return [value for k, value in directives(unit) if k == key]


def gputext_script() -> str:
    """The gputext console script of the environment running the tests."""
    found = shutil.which("gputext", path=str(Path(sys.executable).parent)) or shutil.which("gputext")
    assert found, "the gputext console script is not installed (pip install -e .)"
    return found


def local_units(tmp_path: Path) -> list:
    """The units, copied with ExecStart= pointing at this environment's gputext: verify checks that the
    command exists, and /usr/local/bin/gputext need not exist where the tests run."""
    paths = []
    for unit in UNITS:
        path = tmp_path / unit
        path.write_text((SYSTEMD / unit).read_text().replace(f"ExecStart={INSTALLED} ",
                                                               f"ExecStart={gputext_script()} "))
        paths.append(str(path))
    return paths


def verify(paths: list) -> subprocess.CompletedProcess:
    analyze = require_tool("systemd-analyze")
    return subprocess.run([analyze, "verify", "--man=no", *paths], capture_output=True, text=True, timeout=60)


def test_units_verify(tmp_path):
    proc = verify(local_units(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""


def test_verify_catches_a_broken_unit(tmp_path):
    """The check above is worth something: a typo in a directive, or a missing command, fails it."""
    paths = local_units(tmp_path)
    service = Path(paths[0])
    service.write_text(service.read_text().replace("ProtectHome=yes", "ProtectHome=yess"))
    assert verify(paths).stderr != ""
    service.write_text((SYSTEMD / UNITS[0]).read_text())  # ExecStart=/usr/local/bin/gputext, not here
    if not Path(INSTALLED).exists():
        assert verify(paths).returncode != 0


@pytest.mark.parametrize("unit", SERVICES)
def test_exposure_score(unit):
    analyze = require_tool("systemd-analyze")
    proc = subprocess.run([analyze, "security", "--offline=yes", f"--threshold={EXPOSURE_THRESHOLD}",
                           str(SYSTEMD / unit)], capture_output=True, text=True, timeout=60)
    score = re.search(r"Overall exposure level for \S+: (\d+\.\d+) (\w+)", proc.stdout)
    assert score, proc.stdout + proc.stderr
    print(f"{unit}: exposure {score.group(1)} {score.group(2)}")
    assert proc.returncode == 0, f"{unit} exposure {score.group(1)} is above {EXPOSURE_THRESHOLD / 10}"
    running = (ROOT / "docs/running.md").read_text()
    assert f"exposure level of {EXPOSURE_THRESHOLD / 10} (OK)" in running, "docs/running.md states another score"


def sandbox_lines(unit: str) -> str:
    """The unit's text from the sandbox marker to the next section (or the end)."""
    text = (SYSTEMD / unit).read_text()
    sandbox = text[text.index(SANDBOX_MARKER):]
    return sandbox.split("\n[", 1)[0].rstrip("\n")


def test_both_services_have_the_same_sandbox():
    timer_run, repeating = (sandbox_lines(unit) for unit in SERVICES)
    assert repeating == timer_run and "SystemCallFilter=" in timer_run
    assert values("gputext.service", "ReadWritePaths") == [
        "-/var/lib/node_exporter/textfile_collector -/var/lib/prometheus/node-exporter"]


def test_units_and_doctor_agree():
    for service in SERVICES:
        # gputext opens the kernel log itself, read-only, with the one capability that needs
        assert values(service, "Environment") == [f"GPUTEXT_OUT={doctor.UNITS_OUT}"]
        assert "/dev/kmsg r" in values(service, "DeviceAllow")
        assert values(service, "CapabilityBoundingSet") == ["CAP_SYSLOG"]
        assert values(service, "ProtectKernelLogs") == ["no"]  # it would hide /dev/kmsg
        assert values(service, "EnvironmentFile") == ["-/etc/default/gputext"]
        (command,) = values(service, "ExecStart")
        assert command.split()[:2] == [INSTALLED, "collect"]
    assert str(doctor.UNITS_OUT.parent) in values("gputext.service", "ReadWritePaths")[0]
    assert values("gputext-repeat.service", "ExecStart") == [f"{INSTALLED} collect --interval 5s"]
    assert values("gputext.service", "UnsetEnvironment") == ["GPUTEXT_INTERVAL GPUTEXT_COUNT GPUTEXT_DURATION"]


def test_timer_fires_every_5_seconds():
    analyze = require_tool("systemd-analyze")
    (calendar,) = values("gputext.timer", "OnCalendar")
    proc = subprocess.run([analyze, "calendar", "--iterations=3", calendar], capture_output=True, text=True,
                          timeout=30)
    assert proc.returncode == 0, proc.stderr
    seconds = [int(s) for s in re.findall(r"(?:Next elapse|Iter\. #\d): .* \d\d:\d\d:(\d\d) ", proc.stdout)]
    assert len(seconds) == 3 and {(b - a) % 60 for a, b in zip(seconds, seconds[1:])} == {5}


def test_the_sample_environment_file_sets_only_collect_options(tmp_path):
    """Every variable in systemd/gputext.default (commented out) is an option of collect."""
    from gputext.cli import COMMANDS

    known = {option.envvar for option in COMMANDS["collect"].options.values()}
    named = re.findall(r"^#(GPUTEXT_\w+)=", (SYSTEMD / "gputext.default").read_text(), re.M)
    assert named and set(named) <= known


def unit_syscalls(analyze: str, names: str) -> set:
    """The system calls a SystemCallFilter= value names, its @groups expanded."""
    found = set()
    for name in names.lstrip("~").split():
        if not name.startswith("@"):
            found.add(name)
            continue
        listing = subprocess.run([analyze, "syscall-filter", name], capture_output=True, text=True, timeout=30,
                                 check=True).stdout
        for line in listing.splitlines()[1:]:  # the first line is the group's own name
            entry = line.strip()
            if entry and not entry.startswith("#"):
                found |= unit_syscalls(analyze, entry)
    return found


@pytest.fixture(scope="module")
def allowed_syscalls() -> set:
    """The system calls gputext.service's SystemCallFilter= lines allow."""
    analyze = require_tool("systemd-analyze")
    allow, *deny = values("gputext.service", "SystemCallFilter")
    assert not allow.startswith("~") and all(d.startswith("~") for d in deny)
    return unit_syscalls(analyze, allow) - set().union(*(unit_syscalls(analyze, d) for d in deny))


def test_the_filter_keeps_syslog_out(allowed_syscalls):
    """With CAP_SYSLOG (for opening /dev/kmsg) syslog(2) could clear the kernel's log: the filter refuses it,
    as ProtectKernelLogs= would."""
    assert "syslog" not in allowed_syscalls and "read" in allowed_syscalls


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory, allowed_syscalls) -> Path:
    """tests/sandbox/sandbox.c built with gputext.service's system call filter."""
    compiler = require_tool("cc", "gcc")
    assert values("gputext.service", "SystemCallErrorNumber") == ["EPERM"]
    assert values("gputext.service", "MemoryDenyWriteExecute") == ["yes"]
    allowed = allowed_syscalls
    build = tmp_path_factory.mktemp("sandbox")
    (build / "allowed.h").write_text("".join(f"#ifdef __NR_{name}\n__NR_{name},\n#endif\n"
                                             for name in sorted(allowed)))
    binary = build / "sandbox"
    subprocess.run([compiler, "-O2", "-Wall", f"-I{build}", "-o", str(binary),
                    str(Path(__file__).parent / "sandbox" / "sandbox.c")], check=True, capture_output=True)
    return binary


def test_gputext_runs_under_the_units_system_call_filter(sandbox, node, tmp_path):
    """Every command, a repeating collect included, works with only the system calls the unit allows and
    no writable executable memory (against the fake NVML: the real one adds ioctl(), which is allowed)."""
    from fakegpu import h100
    from fakehost import fake_host, node_exporter

    node.write([h100(0), h100(1)])
    out = tmp_path / "gpu.prom"
    state = ["--state-dir", str(tmp_path / "state")]
    host = fake_host(tmp_path / "host", node_exporter(tmp_path, uid=os.getuid()))
    for args in (["collect", "--out", str(out), *state], ["collect", "--out", str(out), *state],
                 ["collect", "--out", str(out), "--interval", "0.2s", "--count", "2", *state],
                 ["show", "--sample", "0.1"], ["doctor", "--out", str(out), *state, "--host-root", str(host)]):
        proc = subprocess.run([str(sandbox), sys.executable, "-m", "gputext", *args], env=node.env(),
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, f"{args}: {proc.stdout}{proc.stderr}"
        assert "not permitted" not in proc.stdout + proc.stderr
    assert "gpu_up{" in out.read_text()


def test_a_node_without_a_kernel_log_gets_every_other_metric(sandbox, node, tmp_path):
    """LXC and some other containers have no /dev/kmsg. The units open nothing before gputext starts (a
    StandardInput=file:/dev/kmsg would fail the whole unit there, exit 208/STDIN, and no GPU metric would be
    written): /dev/kmsg is named only by DeviceAllow=, which skips a missing device. gputext, run with the
    units' environment on a host root without /dev/kmsg, writes every other metric, and doctor says why
    there are no XIDs."""
    from conftest import parse_exposition, value
    from fakegpu import h100
    from fakehost import fake_host

    for service in SERVICES:
        named = [key for key, value in directives(service) if "/dev/kmsg" in value]
        assert named == ["DeviceAllow"], f"{service}: {named} name /dev/kmsg"
    node.write([h100(0, accounting_mode=1)])
    host = fake_host(tmp_path / "host")
    assert not (host / "dev" / "kmsg").exists()
    out = tmp_path / "gpu.prom"
    env = {name: setting for name, setting in node.env().items() if name != "GPUTEXT_KMSG"}  # as the units
    env.update(setting.split("=", 1) for setting in values("gputext.service", "Environment"))
    env.update(GPUTEXT_OUT=str(out), GPUTEXT_HOST_ROOT=str(host), GPUTEXT_STATE_DIR=str(tmp_path / "state"))
    proc = subprocess.run([str(sandbox), sys.executable, "-m", "gputext", "collect"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    series = parse_exposition(out.read_text())
    assert value(series, "gpu_up", gpu="0") == 1
    assert value(series, "gputext_collector_success", collector="xid") is None  # does not apply here
    proc = subprocess.run([str(sandbox), sys.executable, "-m", "gputext", "doctor"], env=env,
                          capture_output=True, text=True, timeout=60)
    (line,) = [line for line in proc.stdout.splitlines() if " kernel log: " in line]
    assert line.startswith(f"info  kernel log: no kernel log at {host}/dev/kmsg, so no XIDs; fix: ")


def test_the_sandbox_denies_what_the_filter_leaves_out(sandbox):
    proc = subprocess.run([str(sandbox), sys.executable, "-c", "import os; os.sched_setaffinity(0, {0})"],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode != 0 and "PermissionError" in proc.stderr  # sched_setaffinity is in @resources


def test_pod_names_from_the_kubelet_under_the_filter(sandbox, node, tmp_path):
    """gRPC to the kubelet's socket (C-core threads, epoll, AF_UNIX) within the filter."""
    from fakegpu import h100, h100_uuid
    from fakekubelet import kubelet_socket, pod, serve

    node.write([h100(0)])
    out = tmp_path / "gpu.prom"
    trainer = pod("train-0", "ml", {"main": {"nvidia.com/gpu": [h100_uuid(0)]}})
    with kubelet_socket() as socket, serve(socket, [trainer]):
        proc = subprocess.run([str(sandbox), sys.executable, "-m", "gputext", "collect", "--out", str(out),
                               "--collectors", "nvml,kubernetes", "--pod-resources-socket", str(socket),
                               "--state-dir", str(tmp_path / "state")],
                              env=node.env(), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    assert 'pod="train-0",namespace="ml",container="main"' in out.read_text()


@pytest.mark.parametrize("unit, target", [("gputext.timer", "timers.target"),
                                          ("gputext-repeat.service", "multi-user.target")])
def test_enabling_a_unit_starts_it_at_boot(tmp_path, unit, target):
    """`systemctl enable` (offline, into a temp root) links the unit into the target that boot reaches; a
    unit without [Install] would be enabled with a warning and never start after a reboot."""
    systemctl = require_tool("systemctl")
    units = tmp_path / "etc" / "systemd" / "system"
    units.mkdir(parents=True)
    for name in UNITS:
        shutil.copy(SYSTEMD / name, units / name)
    proc = subprocess.run([systemctl, f"--root={tmp_path}", "enable", unit], capture_output=True, text=True,
                          timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert "no installation config" not in proc.stderr
    link = units / f"{target}.wants" / unit
    assert link.is_symlink() and os.readlink(link) == f"/etc/systemd/system/{unit}"


def test_the_one_shot_service_is_started_only_by_its_timer():
    """gputext.service has no [Install]: enabled on its own, it would run once at boot and never again."""
    assert "[Install]" not in (SYSTEMD / "gputext.service").read_text()
    assert "[Install]" in (SYSTEMD / "gputext.timer").read_text()


def test_docs_sections_cited_in_shipped_files_exist():
    """Comments in the units, the cron file, the manifests and the code cite docs pages, and sections by title:
    docs/running.md, "The sandbox"."""
    cited = []
    for folder in ("systemd", "cron", "kubernetes", "gputext"):
        for path in sorted((ROOT / folder).rglob("*")):
            if path.is_file() and path.suffix not in (".pyc", ".so"):
                text = path.read_text(errors="replace").replace("\n# ", " ").replace("\n", " ")
                cited += [(path.name, page, title)
                          for page, title in re.findall(r'(docs/[\w/-]+\.md)(?:, "([^"]+)")?', text)]
    assert cited, "no citation found: the pattern is wrong"
    missing = []
    for name, page, title in cited:
        lines = (ROOT / page).read_text().splitlines() if (ROOT / page).is_file() else []
        headings = {line.lstrip("#").strip() for line in lines if line.startswith("#")}
        if not lines or (title and title not in headings):
            missing.append((name, page, title))
    assert not missing, missing

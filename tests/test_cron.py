"""cron/gputext, the /etc/cron.d file: five time fields, a user, and a gputext command the CLI accepts."""

import re
import shlex
from pathlib import Path

import pytest
from gputext.cli import COMMANDS
from gputext.commandline import parse
from test_systemd import INSTALLED

ROOT = Path(__file__).resolve().parent.parent
CRON_FILE = ROOT / "cron" / "gputext"
# field: (lowest, highest) value
TIME_FIELDS = (("minute", 0, 59), ("hour", 0, 23), ("day of month", 1, 31), ("month", 1, 12),
               ("day of week", 0, 7))
ENVIRONMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*\s*=")


def jobs() -> list:
    """Each job as its six fields and the command line (the rest, which cron hands to the shell)."""
    return [line.split(None, 6) for line in CRON_FILE.read_text().splitlines()
            if line.strip() and not line.startswith("#") and not ENVIRONMENT.match(line)]


def valid_time_field(text: str, low: int, high: int) -> bool:
    """*, N, N-M, lists of those, each with an optional /STEP (names such as mon are not used here)."""
    for part in text.split(","):
        match = re.fullmatch(r"(\*|(\d+)(?:-(\d+))?)(?:/(\d+))?", part)
        if not match:
            return False
        numbers = [int(n) for n in match.group(2, 3) if n is not None]
        if any(not low <= n <= high for n in numbers) or (match.group(4) and int(match.group(4)) == 0):
            return False
    return True


def test_one_job_with_five_time_fields_and_a_user():
    (job,) = jobs()
    assert len(job) == 7, job
    for text, (name, low, high) in zip(job[:5], TIME_FIELDS):
        assert valid_time_field(text, low, high), f"bad {name} field {text!r}"
    assert job[5] == "root"


def test_the_command_is_the_installed_console_script():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11
    (job,) = jobs()
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    program = shlex.split(job[6])[0]
    assert program == INSTALLED  # where README installs it, as the systemd units run it
    assert scripts[Path(program).name] == "gputext.cli:main"


def environment() -> dict:
    """The NAME=value lines cron puts into the job's environment."""
    return dict(line.split("=", 1) for line in CRON_FILE.read_text().splitlines() if ENVIRONMENT.match(line))


def test_collect_accepts_the_arguments():
    """The job runs the repeating mode for just under a minute, writing the file its GPUTEXT_OUT line
    names: collect parses every argument, in the environment cron gives it."""
    (job,) = jobs()
    _, command, *args = shlex.split(job[6])
    assert command == "collect"
    given = parse(COMMANDS["collect"], args, environment(), "gputext")
    assert given.params["interval"] == "5s"
    assert given.params["duration"] == "55s"
    assert given.params["out"] == "/var/lib/node_exporter/textfile_collector/gpu.prom"


def test_options_are_the_files_variables_not_the_command_line():
    """The comment invites GPUTEXT_* lines: an option on the command line would override them."""
    (job,) = jobs()
    assert not [a for a in shlex.split(job[6]) if a in ("--out", "-o") or a.startswith("--out=")]
    assert environment()["GPUTEXT_OUT"].endswith(".prom")
    assert all(name == "SHELL" or name.startswith("GPUTEXT_") or name == "MAILTO" for name in environment())


@pytest.mark.parametrize("text, ok", [("*", True), ("*/5", True), ("0-59/10", True), ("1,15,30", True),
                                      ("60", False), ("*/0", False), ("x", False)])
def test_time_field_check(text, ok):
    assert valid_time_field(text, 0, 59) == ok

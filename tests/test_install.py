"""README's install-and-run command, as .ci/run runs it: the environment it builds works under the units'
ProtectHome=, whatever python3 comes first on PATH and whatever environment an earlier install left; and
.ci/check-install passes an install only where this run installed this checkout and wrote the file."""

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SYSTEM_PYTHON = Path("/usr/bin/python3")
INSTALL = "/opt/gputext"
CHECK = ROOT / ".ci" / "check-install"
VERSION_LINE = 'gputext_build_info{version="%s"} 1'
NVML_LINE = 'gputext_collector_success{collector="nvml"} %d'


def install_block() -> str:
    return subprocess.run([str(ROOT / ".ci" / "readme-install-block")], capture_output=True, text=True,
                          check=True, timeout=30).stdout


def system_python_with_venv() -> Path:
    proc = subprocess.run([str(SYSTEM_PYTHON), "-c", "import ensurepip, venv"], capture_output=True)
    if proc.returncode != 0:
        if os.environ.get("CI") == "true":
            pytest.fail("/usr/bin/python3 with venv and ensurepip is not installed (.ci/run installs python3-venv)")
        pytest.skip("/usr/bin/python3 with venv and ensurepip is not installed (Debian: python3-venv)")
    return SYSTEM_PYTHON


def test_the_environment_is_the_systems_python_even_over_one_from_another(tmp_path):
    """A python3 first on PATH from a directory the units hide (pyenv under /root) and an environment an
    earlier install made from it: the block's venv step, run as it is, leaves an environment that still
    runs once that directory is hidden (ProtectHome= makes /root and /home inaccessible)."""
    system = system_python_with_venv()
    (venv_step,) = [command.strip() for command in install_block().split("&&") if " -m venv " in command]
    assert INSTALL in venv_step
    home = tmp_path / "root" / ".pyenv" / "bin"
    home.mkdir(parents=True)
    (home / "python3").symlink_to(os.path.realpath(system))  # another python3, where the units cannot see
    target = tmp_path / "opt" / "gputext"
    subprocess.run([str(home / "python3"), "-m", "venv", "--without-pip", str(target)], check=True, timeout=60)
    path = f"{home}{os.pathsep}/usr/local/bin:/usr/bin:/bin"
    subprocess.run(["bash", "-euo", "pipefail", "-c", venv_step.replace(INSTALL, str(target))],
                   env={"PATH": path, "HOME": str(tmp_path)}, check=True, timeout=300)

    (tmp_path / "root").rename(tmp_path / "hidden")  # what ProtectHome= does to /root
    proc = subprocess.run([str(target / "bin" / "python"), "-c", "import sys; print(sys.base_prefix)"],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == subprocess.run([str(system), "-c", "import sys; print(sys.base_prefix)"],
                                                 capture_output=True, text=True, check=True).stdout.strip()
    assert os.path.realpath(target / "bin" / "python") == os.path.realpath(system)


def test_every_step_runs_the_installed_environment_or_a_system_command():
    """No step runs python3 or pip from PATH: that is whatever the user's shell has first."""
    for command in install_block().split("&&"):
        program = command.split()[0]
        assert program not in ("python3", "python", "pip", "pip3"), command


# --- .ci/check-install -----------------------------------------------------------------------------------

@pytest.fixture
def install(tmp_path):
    """A Python whose gputext is a copy of this checkout's (as pip installs it), a file made before
    the run, and the metrics file the run writes, written after it."""
    site = tmp_path / "site"
    shutil.copytree(ROOT / "gputext", site / "gputext", ignore=shutil.ignore_patterns("__pycache__", "*.so"))
    python = tmp_path / "python"
    # -S: no site-packages, so an editable install of the checkout cannot stand in for the copy
    python.write_text(f'#!/bin/sh\nPYTHONPATH={site} exec {sys.executable} -S "$@"\n')
    python.chmod(python.stat().st_mode | stat.S_IXUSR)
    started = tmp_path / "started"
    started.touch()
    os.utime(started, (1_000_000_000, 1_000_000_000))
    prom = tmp_path / "gpu.prom"
    from gputext import __version__

    return {"site": site, "python": python, "started": started, "prom": prom, "version": __version__}


def written(install, *lines, when=1_000_000_100):
    install["prom"].write_text("".join(line + "\n" for line in lines))
    os.utime(install["prom"], (when, when))


def check(install, status: int) -> subprocess.CompletedProcess:
    return subprocess.run([str(CHECK), str(status), str(install["started"]), str(install["prom"]),
                           str(install["python"])], capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("status, nvml", [(1, 0), (0, 1)], ids=["no GPU", "GPU"])
def test_check_install_passes_this_runs_file(install, status, nvml):
    written(install, VERSION_LINE % install["version"], NVML_LINE % nvml)
    proc = check(install, status)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr


def test_check_install_fails_an_exit_1_with_a_file_from_an_earlier_run(install):
    """A failed pip install over an old install: the old gputext is not run, the old file stays."""
    written(install, VERSION_LINE % install["version"], NVML_LINE % 0, when=999_999_999)
    proc = check(install, 1)
    assert proc.returncode == 1 and "older than this run" in proc.stderr


def test_check_install_fails_an_exit_1_without_a_file(install):
    proc = check(install, 1)
    assert proc.returncode == 1 and f"wrote no {install['prom']}" in proc.stderr


def test_check_install_fails_an_install_of_other_code(install):
    """The file is new, but the installed modules are not this checkout's (an install that stopped
    half-way, or one from another checkout)."""
    written(install, VERSION_LINE % install["version"], NVML_LINE % 0)
    with (install["site"] / "gputext" / "cli.py").open("a") as module:
        module.write("# changed\n")
    proc = check(install, 1)
    assert proc.returncode == 1 and "gputext/cli.py is not this checkout's" in proc.stderr


def test_check_install_fails_where_gputext_does_not_import(install):
    shutil.rmtree(install["site"] / "gputext")
    written(install, VERSION_LINE % install["version"], NVML_LINE % 0)
    proc = check(install, 1)
    assert proc.returncode == 1 and "cannot import gputext" in proc.stderr


@pytest.mark.parametrize("lines, said", [
    ([VERSION_LINE % "0.0.1", NVML_LINE % 0], "not written by gputext"),
    (["VERSION", NVML_LINE % 1], 'lacks gputext_collector_success{collector="nvml"} 0'),
], ids=["another version", "NVML read"])
def test_check_install_fails_an_exit_1_that_is_not_gputexts_documented_one(install, lines, said):
    written(install, *[line.replace("VERSION", VERSION_LINE % install["version"]) for line in lines])
    proc = check(install, 1)
    assert proc.returncode == 1 and said in proc.stderr, proc.stderr


@pytest.mark.parametrize("status", [2, 100, 127])
def test_check_install_fails_every_other_exit(install, status):
    written(install, VERSION_LINE % install["version"], NVML_LINE % 0)
    proc = check(install, status)
    assert proc.returncode == 1 and f"(exit {status}): failed" in proc.stderr

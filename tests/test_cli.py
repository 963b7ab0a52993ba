"""The command line through typer's test runner: every command and option documented, collect's env vars
shown, and show/doctor/metrics/--version run in this process against the fake NVML."""

import ctypes
import io
import os
import re

import pytest
import typer.main
from typer.testing import CliRunner

from gputext import __version__, show
from gputext.catalogue import METRICS
from gputext.cli import app
from gputext.run import Options
from fakegpu import LIB_NAME, h100
from fakehost import fake_host, node_exporter

runner = CliRunner()


def invoke(*args, env=None):
    return runner.invoke(app, list(args), env=env, catch_exceptions=False)


@pytest.fixture
def nvml_here(node, monkeypatch):
    """The fake NVML for commands run in this process. The loader resolves LD_LIBRARY_PATH only when a
    process starts, but dlopen() finds a library already loaded by its soname, so after this pynvml's
    CDLL("libnvidia-ml.so.1") gets the fake; it reads the scenario named in the environment at each init."""
    ctypes.CDLL(str(node.libdir / LIB_NAME), mode=ctypes.RTLD_GLOBAL)
    monkeypatch.setenv("FAKE_NVML_SCENARIO", str(node.scenario))
    monkeypatch.setenv("STATE_DIRECTORY", str(node.state_dir))
    return node


def commands():
    return typer.main.get_command(app).commands


def test_every_command_and_option_has_help():
    assert set(commands()) >= {"collect", "metrics", "show", "doctor"}
    for name, command in commands().items():
        assert command.help, f"command {name} has no help"
        for param in command.params:
            assert param.param_type_name == "option", f"{name}: {param.name} is not an option"
            assert param.help, f"{name} {param.opts[0]} has no help"


def test_collect_help_shows_every_env_var():
    result = invoke("collect", "--help", env={"COLUMNS": "200"})
    assert result.exit_code == 0
    for param in commands()["collect"].params:
        if param.name != "help":
            env = "GPUTEXT_" + param.name.upper()
            assert param.envvar == env
            assert env in result.output


def test_show_and_doctor_read_collects_env_vars():
    collect_options = {p.name: p for p in commands()["collect"].params}
    for name in ("show", "doctor"):
        for param in commands()[name].params:
            if param.name in collect_options:
                assert param.envvar == collect_options[param.name].envvar
                assert param.default == collect_options[param.name].default
    doctor_reads = {p.name for p in commands()["doctor"].params}
    assert {"out", "collectors", "state_dir", "dcgm_host", "pod_resources_socket"} <= doctor_reads


def test_version():
    result = invoke("--version")
    assert result.exit_code == 0
    assert result.output == f"gputext {__version__}\n"


def test_metrics_lists_the_catalogue():
    plain = invoke("metrics").output
    markdown = invoke("metrics", "--markdown").output.splitlines()
    assert markdown[0] == "| name | type | unit | labels | collector | detail | help |"
    assert len(markdown) == 2 + len(METRICS)
    for metric in METRICS:
        assert metric.name("gpu_") in plain
    assert "`node_temperature_celsius`" in invoke("metrics", "--markdown", "--prefix", "node_").output


def test_show_in_process(nvml_here):
    nvml_here.write([h100(0, temperature=45), h100(1, temperature=61)])
    result = invoke("show", "--sample", "0", "--collectors", "nvml,nvlink,pcie")
    assert result.exit_code == 0
    devices = result.output.split("\n\n")[0]  # the first table
    assert re.search(r"^  0  NVIDIA H100 80GB HBM3  45 °C ", devices, re.M)
    assert re.search(r"^  1  NVIDIA H100 80GB HBM3  61 °C ", devices, re.M)
    assert "\x1b[" not in result.output  # not a terminal
    assert "rates need --sample above 0" in result.output


def test_show_rejects_a_bad_sample(nvml_here):
    nvml_here.write([h100(0)])
    result = invoke("show", "--sample", "soon")
    assert result.exit_code == 2


def test_doctor_in_process(nvml_here, tmp_path):
    nvml_here.write([h100(0)], system={"driver_version": "580.159.04"})
    out = tmp_path / "textfile" / "gpu.prom"
    out.parent.mkdir()
    host = fake_host(tmp_path / "host", node_exporter(out.parent, uid=os.getuid()))
    result = invoke("doctor", "--host-root", str(host), "--state-dir", str(tmp_path / "state"),
                    env={"GPUTEXT_OUT": str(out), "GPUTEXT_COLLECTORS": "nvml"})
    assert result.exit_code == 0, result.output
    assert re.search(r"^ok    nvml: .*loaded, driver 580\.159\.04, 1 GPU$", result.output, re.M)
    assert re.search(rf"^\w+ +output: {re.escape(str(out))}: ", result.output, re.M)
    assert "info  kubelet: not enabled (--collectors)" in result.output

    result = invoke("doctor", "--host-root", str(host),
                    env={"GPUTEXT_OUT": str(tmp_path / "missing" / "gpu.prom")})
    assert result.exit_code == 1
    assert f"FAIL  output: {tmp_path / 'missing'} does not exist" in result.output


def test_show_colours_a_terminal_unless_no_color(nvml_here, monkeypatch):
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    nvml_here.write([h100(0, temperature=90)])
    options = Options(collectors=("nvml",))
    monkeypatch.delenv("NO_COLOR", raising=False)
    coloured, _ = show.run(options, 0, Terminal())
    assert "\x1b[31m90 °C\x1b[0m" in coloured  # hot
    monkeypatch.setenv("NO_COLOR", "1")
    plain, nvml_read = show.run(options, 0, Terminal())
    assert nvml_read and "\x1b[" not in plain and "90 °C" in plain

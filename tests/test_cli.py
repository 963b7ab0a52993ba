"""The command line run in this process (gputext.cli.execute): every command and option documented,
collect's env vars shown, the parser's forms and messages, and show/doctor/metrics/--version against the
fake NVML."""

import io
import os
import re
import subprocess
import sys

import pytest

from gputext import __version__, show
from gputext.catalogue import METRICS
from gputext.cli import COMMANDS, execute
from gputext.run import Options
from fakegpu import h100
from fakehost import fake_host, node_exporter

class Result:
    def __init__(self, exit_code, output, stderr):
        self.exit_code, self.output, self.stderr = exit_code, output, stderr


@pytest.fixture
def invoke(capsys, monkeypatch):
    """invoke(*args, env=None) runs `gputext *args` here with `env` added to the environment."""
    def run(*args, env=None):
        for name, value in (env or {}).items():
            monkeypatch.setenv(name, value)
        capsys.readouterr()
        code = execute(list(args))
        captured = capsys.readouterr()
        for name in env or {}:
            monkeypatch.delenv(name)
        return Result(code, captured.out, captured.err)
    return run


def test_every_command_and_option_has_help(invoke):
    assert set(COMMANDS) == {"collect", "metrics", "rules", "dashboard", "show", "doctor"}
    for name, command in COMMANDS.items():
        assert command.help, f"command {name} has no help"
        for option in command.options.values():
            assert option.help, f"{name} {option.flags[0]} has no help"
            assert option.flags[0] in invoke(name, "--help").output


def test_collect_help_shows_every_env_var(invoke):
    result = invoke("collect", "--help", env={"COLUMNS": "200"})
    assert result.exit_code == 0 and result.output.startswith("Usage: gputext collect [OPTIONS]\n")
    for option in COMMANDS["collect"].options.values():
        env = "GPUTEXT_" + option.name.upper()
        assert option.envvar == env
        assert env in result.output
    assert "[env var: GPUTEXT_OUT; default: -]" in " ".join(result.output.split())  # wrapped at 120


def test_show_and_doctor_read_collects_env_vars():
    collect_options = COMMANDS["collect"].options
    for name in ("show", "doctor"):
        for option in COMMANDS[name].options.values():
            if option.name in collect_options:
                assert option.envvar == collect_options[option.name].envvar
                if (name, option.name) != ("doctor", "out"):  # doctor checks the units' file by default
                    assert option.default == collect_options[option.name].default
    doctor_reads = set(COMMANDS["doctor"].options)
    assert {"out", "collectors", "state_dir", "dcgm_host", "pod_resources_socket"} <= doctor_reads


def test_the_command_line_forms_click_took(invoke, tmp_path):
    """--opt value, --opt=value, -o value, -ovalue; the last of a repeated option wins; a variable
    counts only when the command line leaves the option out, and an empty one counts as not set."""
    from gputext.commandline import parse

    collect = COMMANDS["collect"]
    for args in (["--out", "a.prom"], ["--out=a.prom"], ["-o", "a.prom"], ["-oa.prom"], ["-o", "b", "--out", "a.prom"]):
        given = parse(collect, args, {}, "gputext")
        assert given.params["out"] == "a.prom" and given.sources["out"] == "command line", args
    given = parse(collect, ["--prefix", "cli_"], {"GPUTEXT_PREFIX": "env_", "GPUTEXT_DETAIL": "full",
                                                  "GPUTEXT_NAMING": ""}, "gputext")
    assert given.params["prefix"] == "cli_" and given.sources["prefix"] == "command line"
    assert given.params["detail"] == "full" and given.sources["detail"] == "environment"
    assert given.params["naming"] == "gputext" and given.sources["naming"] == "default"
    assert given.params["debug"] is False
    assert parse(collect, ["--debug"], {}, "gputext").params["debug"] is True


@pytest.mark.parametrize("args, line", [
    ([], "gputext: name a command: collect, metrics, rules, dashboard, show, doctor (see 'gputext --help')"),
    (["bogus"], "gputext: No such command 'bogus'. (see 'gputext --help')"),
    (["--bogus"], "gputext: No such option: --bogus (see 'gputext --help')"),
    (["collect", "--bogus"], "gputext: No such option: --bogus (see 'gputext collect --help')"),
    (["collect", "-x"], "gputext: No such option: -x (see 'gputext collect --help')"),
    (["collect", "--out"], "gputext: Option '--out' requires an argument. (see 'gputext collect --help')"),
    (["collect", "--debug=yes"], "gputext: Option '--debug' does not take a value. (see 'gputext collect --help')"),
    (["collect", "gpu.prom"], "gputext: Got unexpected extra argument (gpu.prom) (see 'gputext collect --help')"),
    (["rules", "--only", "alerts", "--operator"],
     "gputext: --operator holds both groups: leave --only out (see 'gputext rules --help')"),
])
def test_usage_errors_are_one_line_and_exit_2(invoke, args, line):
    result = invoke(*args)
    assert (result.exit_code, result.output, result.stderr) == (2, "", line + "\n")


def test_a_flag_from_the_environment(node):
    """GPUTEXT_DEBUG takes what click took for a flag's variable; anything else is a usage error."""
    node.write([h100(0, temperature=45)])

    def collect(debug):
        return subprocess.run([sys.executable, "-m", "gputext", "collect", "--out", "-", "--collectors", "nvml",
                               "--state-dir", str(node.state_dir)], env={**node.env(), "GPUTEXT_DEBUG": debug},
                              capture_output=True, text=True, timeout=60)

    proc = collect("maybe")
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.splitlines() == [
        "gputext: invalid GPUTEXT_DEBUG='maybe' (from the environment): use 1, true, yes or on; or 0, false, no "
        "or off (see 'gputext collect --help')"]
    proc = collect("yes")
    assert proc.returncode == 0 and 'gpu_temperature_celsius{gpu="0"' in proc.stdout


def test_program_help_lists_every_command(invoke):
    result = invoke("--help")
    assert result.exit_code == 0
    for name in COMMANDS:
        assert re.search(rf"^  {name} +\S", result.output, re.M), name


def test_version(invoke):
    result = invoke("--version")
    assert result.exit_code == 0
    assert result.output == f"gputext {__version__}\n"


def test_metrics_lists_the_catalogue(invoke):
    plain = invoke("metrics").output
    markdown = invoke("metrics", "--markdown").output.splitlines()
    assert markdown[0] == "| name | type | unit | labels | collector | detail | dcgm-exporter | help |"
    assert len(markdown) == 2 + len(METRICS)
    temperature = next(line for line in markdown if line.startswith("| `gpu_temperature_celsius` |"))
    assert "| `DCGM_FI_DEV_GPU_TEMP`, `DCGM_FI_DEV_GPU_TEMP_CELSIUS` |" in temperature
    assert "`DCGM_FI_DEV_XID_ERRORS` (computed from it)" in next(
        line for line in markdown if line.startswith("| `gpu_xid_last_time_seconds` |"))
    for metric in METRICS:
        assert metric.name("gpu_") in plain
    assert "`node_temperature_celsius`" in invoke("metrics", "--markdown", "--prefix", "node_").output


def test_show_in_process(invoke, nvml_here):
    nvml_here.write([h100(0, temperature=45), h100(1, temperature=61)])
    result = invoke("show", "--sample", "0", "--collectors", "nvml,nvlink,pcie")
    assert result.exit_code == 0
    devices = result.output.split("\n\n")[0]  # the first table
    assert re.search(r"^  0  NVIDIA H100 80GB HBM3  45 °C ", devices, re.M)
    assert re.search(r"^  1  NVIDIA H100 80GB HBM3  61 °C ", devices, re.M)
    assert "\x1b[" not in result.output  # not a terminal
    assert "rates need --sample above 0" in result.output


def test_show_rejects_a_bad_sample(invoke, nvml_here):
    nvml_here.write([h100(0)])
    result = invoke("show", "--sample", "soon")
    assert result.exit_code == 2


def test_doctor_in_process(invoke, nvml_here, tmp_path):
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

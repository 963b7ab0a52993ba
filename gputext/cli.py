"""The command line: a thin layer over gputext.run.

Exit codes (also in docs/guarantees.md and `gputext collect --help`):
  0  the file was written
  1  the file was written, but NVML could not be read at all (no driver, no library)
  2  a usage error, or the file could not be written (the previous file is left as it was)

Every option of `collect` can come from the environment as GPUTEXT_<OPTION>. The parser
(gputext.commandline) keeps each value's text and where it came from; values are read here, so that a
bad one is reported as the user gave it: `invalid GPUTEXT_INTERVAL='abc' (from the
environment)` names the variable, not an option the user never typed. `show` and `doctor` read the same
options and variables with the same code; `doctor` reports each bad one as a failed check.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable
from pathlib import Path

from . import __version__
from .catalogue import DCGM_4_8, DCGM_4_10, DCGM_NAMINGS, DETAILS, FULL, STANDARD
from .collectors import REGISTRY
from .commandline import (DEFAULT, ENVIRONMENT, Answered, Command, Given, Option, UsageError, choose,
                          parse)
from .runner import EXIT_NO_NVML, EXIT_NOT_WRITTEN
from .terminal import complain

PROGRAM = "gputext"
DEFAULT_STATE_DIR = "/var/lib/gputext"
# What systemd/gputext.service writes unless /etc/default/gputext says otherwise (its Environment= line;
# tests/test_systemd.py checks that the two agree): what doctor checks without --out.
UNITS_OUT = Path("/var/lib/node_exporter/textfile_collector/gpu.prom")
NAMINGS = ("gputext",) + DCGM_NAMINGS
DCGM_MAPPING_VARIABLE = "DCGM_HPC_JOB_MAPPING_DIR"

EXIT_CODES_HELP = (
    "Exit codes: 0 file written; 1 file written, but NVML could not be read at all (no driver, no "
    "library); 2 usage error, or the file could not be written (the previous file is left as it was)."
)
HELP = "NVIDIA GPU metrics for node_exporter's textfile collector. " + EXIT_CODES_HELP


def default_state_dir() -> str:
    """systemd's StateDirectory= sets STATE_DIRECTORY (a colon-separated list); else /var/lib/gputext."""
    from_systemd = os.environ.get("STATE_DIRECTORY", "")
    return from_systemd.split(":")[0] if from_systemd else DEFAULT_STATE_DIR


class Exit(Exception):
    """End the command with this exit code (what it had to say is said)."""

    def __init__(self, code: int):
        super().__init__(code)
        self.code = code


def fail(message: str, code: int) -> None:
    complain(message)
    raise Exit(code)


def say(text: str) -> None:
    sys.stdout.write(text)


# --- reading option values -----------------------------------------------------------------------------

class UsageProblem(Exception):
    """A bad option value; the message names it as the user gave it."""


_DURATION = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?)\s*(ms|s|m|h)?\s*")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, None: 1}
# The largest values any option takes: far beyond a sensible setting, and far below what the clock,
# sleep() and gRPC deadlines overflow at (a number of 5,000 digits is also beyond Python's int())
MOST_SECONDS = 7 * 24 * 3600
MOST_WAIT_SECONDS = 60  # of what every one-shot run may wait (the GPM window, the kubelet's answer)
MOST_NUMBER = 1_000_000
SHOWN_VALUE_CHARACTERS = 100  # of a bad value in its message
_WHOLE = re.compile(r"[0-9]{1,9}")
# a name or an IPv4 address, or an IPv6 address in brackets, each with an optional port; or a bare IPv6 address
_IPV6 = r"[0-9A-Fa-f:.]+(?:%[A-Za-z0-9._-]+)?"
_HOST_PORT = re.compile(rf"(?:[A-Za-z0-9._-]+|\[{_IPV6}\])(?::[0-9]{{1,5}})?|(?=[^%]*:[^%]*:){_IPV6}")
_TRUE = ("1", "true", "t", "yes", "y", "on")  # what click took for a flag's variable
_FALSE = ("0", "false", "f", "no", "n", "off")
DURATION_FORMS = "a duration such as 5s, 250ms, 5m or 1h (a bare number is seconds)"
GPM_MIN_WINDOW_SECONDS = 0.1  # nvml.h: two GPM samples "should be greater than 100ms" apart


def quoted(value) -> str:
    """A value as a message quotes it: repr()'s quotes and escapes, cut where it is long (a message stays a
    line a person reads)."""
    if isinstance(value, str) and len(value) > SHOWN_VALUE_CHARACTERS:
        return repr(value[:SHOWN_VALUE_CHARACTERS // 2]) + f"...({len(value)} characters)"
    return repr(value)


class Values:
    """The option values of one command as given, read into what gputext needs. A bad value raises
    UsageProblem, or, where `problems` is a list (doctor), is recorded there and read as its default."""

    def __init__(self, given: Given, problems: list[str] | None = None):
        self.params = given.params
        self.sources = given.sources
        self.option = given.option
        self.problems = problems

    def raw(self, name: str):
        return self.params[name]

    def given(self, name: str) -> str:
        """How the user gave the value: `--interval 'abc'` or `GPUTEXT_INTERVAL='abc' (from the environment)`."""
        option = self.option(name)
        value = quoted(self.raw(name))
        if self.sources[name] == ENVIRONMENT:
            return f"{option.envvar}={value} (from the environment)"
        return f"{option.flags[0]} {value}"

    def problem(self, message: str) -> None:
        if self.problems is None:
            raise UsageProblem(message)
        self.problems.append(message)

    def bad(self, name: str, why: str):
        """Report a bad value. A caller that goes on (doctor) gets the option's default instead, which
        also replaces the value for later reads."""
        self.problem(f"invalid {self.given(name)}: {why}")
        default = self.option(name).default
        self.params[name] = default
        return default

    def flag(self, name: str) -> bool:
        """A flag: True given on the command line, or its variable's text (GPUTEXT_DEBUG=1)."""
        value = self.raw(name)
        if isinstance(value, bool):
            return value
        text = value.strip().lower()
        if text in _TRUE or text in _FALSE:
            return text in _TRUE
        return self.bad(name, "use 1, true, yes or on; or 0, false, no or off")

    def seconds(self, name: str, *, positive: bool = False, most: float = MOST_SECONDS) -> float | None:
        """A duration in seconds, at most `most`; None where the option was not given (its default is None)."""
        text = self.raw(name)
        if text is None:
            return None
        match = _DURATION.fullmatch(text)
        if not match:
            return self._seconds_default(name, f"use {DURATION_FORMS}")
        value = float(match.group(1)) * _UNITS[match.group(2)]
        if positive and value <= 0:
            return self._seconds_default(name, "use a duration above 0, or leave the option out")
        if value > most:
            return self._seconds_default(name, f"use a duration of at most {duration_text(most)}")
        return value

    def _seconds_default(self, name: str, why: str) -> float | None:
        default = self.bad(name, why)
        return None if default is None else self.seconds(name)

    def number(self, name: str, *, minimum: int = 0) -> int:
        text = self.raw(name).strip()
        if not _WHOLE.fullmatch(text) or not minimum <= int(text) <= MOST_NUMBER:
            return int(self.bad(name, f"use a whole number from {minimum} to {MOST_NUMBER}"))
        return int(text)

    def text(self, name: str, fix: str = "leave the option out for its default") -> str:
        """A value that cannot be empty (a path, a host): `--out ''` is refused as empty, not looked for."""
        text = self.raw(name)
        if not text.strip():
            return self.bad(name, f"the value is empty; {fix}")
        return text

    def dcgm_host(self) -> str:
        """host, host:port, [IPv6]:port: what DCGM's host engine listens on."""
        given = self.text("dcgm_host")
        if not _HOST_PORT.fullmatch(given) or not 0 <= host_port(given, 0)[1] <= 65535:
            return self.bad("dcgm_host", "use a host name or an IP address, optionally with :PORT (such as "
                            "localhost:5555, 10.0.0.7 or [::1]:5555)")
        return given

    def collectors(self) -> tuple:
        names = tuple(n.strip() for n in self.raw("collectors").split(",") if n.strip())
        unknown = [n for n in names if n not in REGISTRY]
        if unknown:
            self.bad("collectors", f"unknown collector {quoted(unknown[0])}: choose from {', '.join(REGISTRY)}")
            return ()
        return names

    def detail(self) -> str:
        detail = self.raw("detail").strip().lower()
        if detail not in DETAILS:
            return self.bad("detail", f"choose {' or '.join(DETAILS)}") or STANDARD
        return detail

    def naming(self) -> str:
        naming = self.raw("naming").strip().lower()
        if naming not in NAMINGS:
            return self.bad("naming", f"choose {', '.join(NAMINGS[:-1])} or {NAMINGS[-1]}")
        given = self.sources["naming"] != DEFAULT
        if naming == "gputext" and self.raw("counters") and not given:
            return DCGM_4_8  # a counters file is dcgm-exporter's: its series are DCGM's
        return naming

    def counters(self, naming: str, prefix: str):
        """dcgm_exporter.Counters from --counters, else dcgm-exporter's defaults (for --naming dcgm and
        dcgm-4.10); `prefix`: the device metrics' (a file's NVML field may not take a name gputext writes)."""
        path = self.raw("counters")
        dcgm = naming in DCGM_NAMINGS
        if not path and not dcgm:
            return None  # the common case imports nothing of dcgm_exporter
        from .dcgm_exporter import CountersError, default_counters, parse_counters

        if not path:
            return default_counters(naming)
        try:
            counters = parse_counters(Path(path), prefix, naming if dcgm else DCGM_4_8)
        except CountersError as err:
            self.bad("counters", str(err))
            return default_counters(naming) if dcgm else None
        if not dcgm:  # gputext's names: only the file's NVML fields apply
            return type(counters)((), (), counters.fields, (), counters.source)
        return counters

    def gpm_window(self) -> float:
        seconds = self.seconds("gpm_window", most=MOST_WAIT_SECONDS)
        if seconds <= GPM_MIN_WINDOW_SECONDS:
            self.bad("gpm_window", "NVML needs more than 100ms between two GPM samples; use, say, 1s")
            seconds = self.seconds("gpm_window")
        return seconds

    def prefix(self) -> str:
        prefix = self.raw("prefix")
        if not re.fullmatch(r"[a-zA-Z_][a-zA-Z0-9_]*", prefix) or prefix.startswith("__"):
            why = ("an empty prefix would write series named up and info, which clash with Prometheus's own "
                   "up" if not prefix else "use letters, digits and underscores, not starting with a digit "
                   "or with __ (reserved by Prometheus)")
            return self.bad("prefix", why)
        return prefix


def duration_text(seconds: int) -> str:
    """`168h`, `1m`, `90s`: a limit as the user writes durations."""
    for unit, size in (("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def host_port(text: str, default_port: int) -> tuple[str, int]:
    """("localhost", 5555) from "localhost:5555", "localhost" or "[::1]:5555"; the port is -1 where it is
    not a port number ("host:abc")."""
    host, colon, port = text.rpartition(":")
    if not colon or "]" in port or (host.count(":") and not host.startswith("[")):  # no port, or bare IPv6
        return text.strip("[]"), default_port
    return host.strip("[]"), int(port) if re.fullmatch(r"[0-9]{1,5}", port) else -1


def run_options(values: Values, state_dir: str | None = None):
    """gputext.run.Options from the values of collect's options (shared by collect, show and doctor)."""
    from .run import Options

    names = values.params
    naming = values.naming() if "naming" in names else "gputext"
    prefix = values.prefix() if "prefix" in names else "gpu_"
    state = state_dir if state_dir is not None else (names.get("state_dir") or default_state_dir())
    return Options(
        collectors=values.collectors(), prefix=prefix,
        state_dir=Path(state) if state else None, debug=values.flag("debug"),
        host_root=Path(values.text("host_root")), retention_seconds=values.seconds("retention"),
        max_processes=values.number("max_processes"), dcgm_host=values.dcgm_host(),
        dcgm_bindings=Path(names["dcgm_bindings"]) if names["dcgm_bindings"] else None,
        pod_resources_socket=Path(values.text("pod_resources_socket")),
        kubelet_timeout_seconds=values.seconds("kubelet_timeout", positive=True, most=MOST_WAIT_SECONDS),
        gpu_resource_names=tuple(n.strip() for n in names["gpu_resource_names"].split(",") if n.strip()),
        pod_cache_ttl_seconds=values.seconds("pod_cache_ttl"),
        gpm_window_seconds=values.gpm_window(),
        pcie_sample_interval_seconds=values.seconds("pcie_sample_interval"),
        kmsg=Path(names["kmsg"]) if names["kmsg"] else None,
        hpc_job_mapping_dir=hpc_job_mapping_dir(names["hpc_job_mapping_dir"]),
        # show writes nothing that is stored, so it reads everything (its tables use full's series)
        detail=values.detail() if "detail" in names else FULL,
        naming=naming, counters=values.counters(naming, prefix) if "counters" in names else None,
    )


def hpc_job_mapping_dir(given: str | None) -> Path | None:
    """--hpc-job-mapping-dir (GPUTEXT_HPC_JOB_MAPPING_DIR), else dcgm-exporter's DCGM_HPC_JOB_MAPPING_DIR,
    so that a node moving from dcgm-exporter keeps its environment file."""
    directory = given or os.environ.get(DCGM_MAPPING_VARIABLE)
    return Path(directory) if directory else None


class Schedule:
    """When and for how long `collect` runs, and how long it waits for the output's lock."""

    def __init__(self, interval: float, count: int, duration: float, lock_timeout: float):
        self.interval = interval  # 0: one collection
        self.count = count  # 0: no limit
        self.duration = duration  # 0: no limit
        self.lock_timeout = lock_timeout


def schedule(values: Values) -> Schedule:
    every = values.seconds("interval", positive=True) or 0.0
    count = values.number("count")
    duration = values.seconds("duration", positive=True) or 0.0
    if (count or duration) and not every:
        given = values.given("count") if count else values.given("duration")
        values.problem(f"{given} goes with --interval (GPUTEXT_INTERVAL): a single collection has no count or "
                       "duration")
    lock_timeout = values.seconds("lock_timeout")
    if lock_timeout is None:
        lock_timeout = 0.8 * every if every else 4.0
    return Schedule(every, count, duration, lock_timeout)


def usage(command: str) -> Callable[[str], None]:
    """How a command ends on a usage problem: one line, and where the help is."""
    def end(message: str) -> None:
        fail(f"{message} (see 'gputext {command} --help')", EXIT_NOT_WRITTEN)
    return end


# --- options ------------------------------------------------------------------------------------------

# collect's options, in the order its help lists them. Each can also come from GPUTEXT_<OPTION>.
COLLECT_OPTIONS = [
    Option(("--out", "-o"), "-", "The .prom file to write atomically, a FIFO or character device to write "
           "through, or - for standard output.", value="FILE"),
    Option(("--collectors",), "", "Comma-separated collectors to run; known: " + ", ".join(REGISTRY)
           + " [default: all that apply].", value="LIST"),
    Option(("--prefix",), "gpu_", "Prefix of the device metric names; the gputext_* self-metrics keep theirs. "
           "Not empty: the names up and info would clash with Prometheus's up.", value="PREFIX"),
    Option(("--detail",), "standard", "standard: the series operators watch every day (at most 80 per GPU); "
           "full: every series gputext knows, for debugging a node.", value="standard|full"),
    Option(("--naming",), "gputext", f"gputext: gputext's metric names; {DCGM_4_8}: dcgm-exporter's as 4.x up to "
           f"4.8 writes them (what Grafana dashboard 12239 queries); {DCGM_4_10}: as 4.9 and 4.10 renamed them "
           "(DCGM 4.7's names, base units). Both with dcgm-exporter's labels and units, from NVML alone.",
           value="|".join(NAMINGS)),
    Option(("--counters",), None, "dcgm-exporter's counters file (CSV): the DCGM fields to write, by either "
           "generation's names (implies --naming dcgm unless --naming is given), and NVML fields by NVML_FI_* "
           "name or number [default: dcgm-exporter's default counters].", value="FILE"),
    Option(("--state-dir",), None, "Where gputext keeps what one run passes to the next [default: "
           "$STATE_DIRECTORY, else /var/lib/gputext].", value="DIR"),
    Option(("--host-root",), "/", "Where the host's / is mounted (for /proc and /var/log when gputext runs in "
           "a container), like node_exporter's --path.rootfs.", value="DIR"),
    Option(("--retention",), "5m", "How long an exited process keeps its series.", value="DURATION"),
    Option(("--max-processes",), "1000", "Most process series per GPU; the rest are counted in "
           "gputext_processes_dropped.", value="N"),
    Option(("--dcgm-host",), "localhost:5555", "The DCGM host engine (nv-hostengine) for per-process energy.",
           value="HOST[:PORT]"),
    Option(("--dcgm-bindings",), None, "The directory holding DCGM's Python bindings (pydcgm.py) [default: "
           "DCGM 4's, then DCGM 3's install path].", value="DIR"),
    Option(("--pod-resources-socket",), "/var/lib/kubelet/pod-resources/kubelet.sock",
           "The kubelet's pod-resources socket.", value="SOCKET"),
    Option(("--kubelet-timeout",), "2s", "How long one call to the kubelet may take.", value="DURATION"),
    Option(("--gpu-resource-names",), "", "Comma-separated extra resource names that are GPUs (nvidia.com/gpu "
           "and nvidia.com/mig-* always are).", value="LIST"),
    Option(("--pod-cache-ttl",), "30s", "How long the kubelet's answer is reused (0: ask every run).",
           value="DURATION"),
    Option(("--hpc-job-mapping-dir",), None, "dcgm-exporter's job-mapping directory, where a site's Slurm "
           "prolog writes a file per GPU (<index> or <index>.<gpu instance>) of job IDs: GPUs of jobs with no "
           "process on them [default: $DCGM_HPC_JOB_MAPPING_DIR, else none].", value="DIR"),
    Option(("--gpm-window",), "1s", "Time between the two GPM samples of a one-shot run (above 100ms); the "
           "repeating mode diffs against its previous cycle instead.", value="DURATION"),
    Option(("--pcie-sample-interval",), "15s", "On GPUs without PCIe byte counters, how often the repeating "
           "mode samples the PCIe rate (each sample blocks 20ms per GPU and direction in the driver; a "
           "one-shot run samples once).", value="DURATION"),
    Option(("--kmsg",), None, "The kernel log the xid collector counts XIDs in: /dev/kmsg, a file of records "
           "in its format, or - for standard input as opened by the caller (the systemd units) [default: "
           "/dev/kmsg under --host-root].", value="FILE"),
    Option(("--debug",), help="Show tracebacks of failing collectors.", is_flag=True),
    Option(("--interval",), None, "Repeat every INTERVAL (e.g. 5s; a bare number is seconds) in one process "
           "until stopped (SIGTERM/SIGINT), --count or --duration.", value="DURATION"),
    Option(("--count",), "0", "With --interval: stop after this many files (0: no limit).", value="N"),
    Option(("--duration",), None, "With --interval: stop after this long, above 0 (e.g. 55s for cron; leave it "
           "out for no limit).", value="DURATION"),
    Option(("--lock-timeout",), None, "How long to wait for another gputext run writing the same file before "
           "leaving it to that run (exit 2) [default: 80% of --interval, else 4s].", value="DURATION"),
]
_COLLECT = {option.name: option for option in COLLECT_OPTIONS}

# The collect options that make up gputext.run.Options: show and doctor take them too (the same Option:
# flags, variables, defaults and help), so they look at what a collect with the same environment would use.
RUN_OPTIONS = ("collectors", "host_root", "retention", "max_processes", "dcgm_host", "dcgm_bindings",
               "pod_resources_socket", "kubelet_timeout", "gpu_resource_names", "pod_cache_ttl", "gpm_window",
               "pcie_sample_interval", "kmsg", "hpc_job_mapping_dir", "debug")


def collect_options(*names) -> list:
    return [_COLLECT[name] for name in names]


# --prefix of the commands that print files for a prefix (metrics, rules, dashboard)
PREFIX_OPTION = Option(("--prefix",), "gpu_", "Prefix of the device metric names.", value="PREFIX")


# --- commands ------------------------------------------------------------------------------------------

def collect(given: Given) -> int:
    from .run import Context
    from .runner import Output, OutputLocked, not_written, once, repeat
    from .textfile import OutputRefused, resolve_output, stdout_destination

    end = usage("collect")
    values = Values(given)
    try:
        out = values.text("out", "name the file to write, such as gpu.prom, or - for standard output")
        options = run_options(values)
        when = schedule(values)
        destination = stdout_destination() if out == "-" else resolve_output(out)
    except (UsageProblem, OutputRefused) as err:
        end(str(err))
    _warn_about_name(destination)

    output = Output(destination, when.lock_timeout)
    context = Context(options)
    try:
        if when.interval:
            return repeat(context, output, when.interval, when.count, when.duration)
        return once(context, output)
    except OutputLocked as err:
        fail(str(err), EXIT_NOT_WRITTEN)
    except OSError as err:
        fail(not_written(output, err), EXIT_NOT_WRITTEN)
    finally:
        context.close()


def _warn_about_name(destination) -> None:
    if destination.kind != "file":
        return
    name = destination.path.name
    if name.endswith(".tmp"):
        usage("collect")(f"invalid --out {quoted(destination.named)}: gputext's own temp files end in .tmp; name a "
                         "file such as gpu.prom")
    if not name.endswith(".prom"):
        complain(f"note: node_exporter reads only *.prom files; {name} will be ignored by it")


def metrics(given: Given) -> int:
    from .catalogue import METRICS, detail_of

    values = Values(given)
    try:
        prefix = values.prefix()
    except UsageProblem as err:
        usage("metrics")(str(err))
    if values.flag("dcgm"):
        from .dcgm_exporter import markdown_table

        say(markdown_table(prefix) + "\n")
        return 0
    if values.flag("markdown"):
        from .reference import metrics_table

        say(metrics_table(prefix) + "\n")
        return 0
    lines = [f"{m.name(prefix)}  {m.type}  unit={m.unit or '-'}  labels={','.join(m.all_labels)}  "
             f"collector={m.source}  detail={detail_of(m)}\n    {m.help}" for m in METRICS]
    say("\n".join(lines) + "\n")
    return 0


def rules(given: Given) -> int:
    from . import monitoring

    values = Values(given)
    only = values.raw("only")
    try:
        prefix = values.prefix()
        stale = values.seconds("stale_after", positive=True)
        operator = values.flag("operator")
        if only not in ("alerts", "recording", "all"):
            values.problem(f"invalid --only {quoted(only)}: choose alerts, recording or all")
        if operator and only != "all":
            values.problem("--operator holds both groups: leave --only out")
    except UsageProblem as err:
        usage("rules")(str(err))
    stale = round(stale)
    say(monitoring.prometheus_rule(prefix, stale) if operator else monitoring.rules_file(prefix, stale, only))
    return 0


def dashboard(given: Given) -> int:
    from . import monitoring

    try:
        prefix = Values(given).prefix()
    except UsageProblem as err:
        usage("dashboard")(str(err))
    say(monitoring.dashboard_json(prefix))
    return 0


def show(given: Given) -> int:
    from .show import run as show_gpus

    values = Values(given)
    try:
        options = run_options(values, state_dir="")
        seconds = values.seconds("sample")
    except UsageProblem as err:
        usage("show")(str(err))
    text, nvml_read = show_gpus(options, seconds, sys.stdout)
    say(text)
    return 0 if nvml_read else EXIT_NO_NVML


def doctor(given: Given) -> int:
    from .doctor import diagnose, passed, report

    problems: list[str] = []
    values = Values(given, problems)
    options = run_options(values)
    schedule(values)
    out = given.params["out"]
    checks = diagnose(options, None if out in (None, "-") else values.text("out"), problems)
    say(report(checks))
    return 0 if passed(checks) else 1


COMMANDS = {command.name: command for command in [
    Command("collect", "Collect once and write the metrics file. " + EXIT_CODES_HELP, COLLECT_OPTIONS, collect),
    Command("metrics", "Print the metric catalogue: every series gputext can write.", [
        Option(("--markdown",), help="Print a Markdown table (docs/reference/metrics.md).", is_flag=True, env=False),
        PREFIX_OPTION,
        Option(("--dcgm",), help="Print dcgm-exporter's names that --naming dcgm and dcgm-4.10 write, with "
               "the gputext series each stands for (a Markdown table: docs/dcgm-exporter.md's).", is_flag=True,
               env=False),
    ], metrics),
    Command("rules", "Print Prometheus rules for gputext's metrics: alerts (with what to do) and the fleet's "
            "recording rules, for --prefix. Load the file with rule_files "
            "(docs/dashboards-and-alerts.md).", [
        PREFIX_OPTION,
        Option(("--only",), "all", "Which group: alerts, recording or all.", value="alerts|recording|all",
               env=False),
        Option(("--operator",), help="Print a PrometheusRule (Prometheus Operator, kube-prometheus-stack) "
               "holding both groups.", is_flag=True, env=False),
        Option(("--stale-after",), "1m", "Page when gputext's file is older than this (more than 3 collection "
               "intervals plus the scrape interval).", value="DURATION", env=False),
    ], rules),
    Command("dashboard", "Print a Grafana dashboard (JSON, to import) of gputext's metrics for --prefix.",
            [PREFIX_OPTION], dashboard),
    Command("show", "Print this node's GPUs for a person at a terminal: temperature, power, memory, "
            "utilisation, NVLink and PCIe rates, and processes with their pods and Slurm jobs. Takes collect's "
            "options and GPUTEXT_* variables; writes no file and no state. Exit code 1 when NVML cannot be read.", [
        Option(("--sample",), "1s", "Time between the two collections that NVLink and PCIe rates are measured "
               "over (0: one collection, no rates).", value="DURATION", env=False),
        *collect_options(*RUN_OPTIONS),
    ], show),
    Command("doctor", "Check that this node is ready, one line per prerequisite with the fix: collect's "
            "options and GPUTEXT_* variables, NVML and the driver, persistence and accounting modes, DCGM, the "
            "kubelet socket, the Slurm jobs that hold GPUs, the output directory and node_exporter reading it, the "
            "state directory. Takes collect's options and variables, so it checks what the timer uses; without "
            "--out it checks the file the systemd units write by default. Exit code 0 when everything enabled is "
            "ready, 1 otherwise.",
            [Option(("--out", "-o"), None, f"The file collect writes, to check [default: the units' file, "
                    f"{UNITS_OUT}].", value="FILE"),
             *collect_options("prefix", "detail", "naming", "counters", "state_dir", *RUN_OPTIONS,
                              "interval", "count", "duration", "lock_timeout")],
            doctor),
]}


def execute(argv: list) -> int:
    """Run the command line `argv` (without the program's name); the exit code. A usage error is one
    line on stderr that says where the help is."""
    try:
        command, args = choose(PROGRAM, HELP, COMMANDS, argv, __version__)
        return command.run(parse(command, args, os.environ, PROGRAM))
    except Answered as answer:
        say(str(answer))
        return 0
    except UsageError as err:
        complain(f"{err} (see '{err.where} --help')")
        return EXIT_NOT_WRITTEN
    except Exit as done:
        return done.code
    except KeyboardInterrupt:  # Ctrl-C in a one-shot run (the repeating mode stops on SIGINT by itself)
        complain("interrupted")
        return 130


def main() -> None:
    """The entry point (`gputext`, `python -m gputext`)."""
    sys.exit(execute(sys.argv[1:]))

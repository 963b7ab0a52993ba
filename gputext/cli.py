"""The command line: a thin layer over gputext.run.

Exit codes (also in README and `gputext collect --help`):
  0  the file was written
  1  the file was written, but NVML could not be read at all (no driver, no library)
  2  a usage error, or the file could not be written (the previous file is left as it was)

Every option of `collect` can come from the environment as GPUTEXT_<OPTION>. Values are read here, not
by click, so that a bad one is reported as the user gave it: `invalid GPUTEXT_INTERVAL='abc' (from the
environment)` names the variable, not an option the user never typed. `show` and `doctor` read the same
options and variables with the same code; `doctor` reports each bad one as a failed check.
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional

import typer

from . import __version__
from .catalogue import DETAILS, FULL, STANDARD
from .collectors import REGISTRY
from .runner import EXIT_NO_NVML, EXIT_NOT_WRITTEN

DEFAULT_STATE_DIR = "/var/lib/gputext"
NAMINGS = ("gputext", "dcgm")

EXIT_CODES_HELP = (
    "Exit codes: 0 file written; 1 file written, but NVML could not be read at all (no driver, no "
    "library); 2 usage error, or the file could not be written (the previous file is left as it was)."
)

app = typer.Typer(
    add_completion=False,
    no_args_is_help=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    help="NVIDIA GPU metrics for node_exporter's textfile collector. " + EXIT_CODES_HELP,
)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"gputext {__version__}")
        raise typer.Exit()


@app.callback(invoke_without_command=True)
def _root(
    ctx: typer.Context,
    version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                 help="Print the version and exit."),
) -> None:
    if ctx.invoked_subcommand is None:
        commands = ", ".join(typer.main.get_command(app).commands)
        fail(f"name a command: {commands} (see 'gputext --help')", EXIT_NOT_WRITTEN)


def default_state_dir() -> str:
    """systemd's StateDirectory= sets STATE_DIRECTORY (a colon-separated list); else /var/lib/gputext."""
    from_systemd = os.environ.get("STATE_DIRECTORY", "")
    return from_systemd.split(":")[0] if from_systemd else DEFAULT_STATE_DIR


def fail(message: str, code: int) -> None:
    typer.echo(f"gputext: {message}", err=True)
    raise typer.Exit(code)


def env_name(option: str) -> str:
    """GPUTEXT_<OPTION> for an option such as --pod-cache-ttl (so a systemd EnvironmentFile can set it)."""
    return "GPUTEXT_" + option.lstrip("-").replace("-", "_").upper()


def _option(default, *names, help, **kw):
    """A collect option whose value may also come from GPUTEXT_<OPTION>."""
    return typer.Option(default, *names, envvar=env_name(names[0]), show_envvar=True, help=help, **kw)


# --- reading option values -----------------------------------------------------------------------------

class UsageProblem(Exception):
    """A bad option value; the message names it as the user gave it."""


_DURATION = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, None: 1}
DURATION_FORMS = "a duration such as 5s, 250ms, 5m or 1h (a bare number is seconds)"
GPM_MIN_WINDOW_SECONDS = 0.1  # nvml.h: two GPM samples "should be greater than 100ms" apart


class Values:
    """The option values of one command as given, read into what gputext needs. A bad value raises
    UsageProblem, or, where `problems` is a list (doctor), is recorded there and read as its default."""

    def __init__(self, ctx: typer.Context, problems: Optional[List[str]] = None):
        self.ctx = ctx
        self.problems = problems

    def raw(self, name: str):
        return self.ctx.params[name]

    def given(self, name: str) -> str:
        """How the user gave the value: `--interval 'abc'` or `GPUTEXT_INTERVAL='abc' (from the environment)`."""
        param = next(p for p in self.ctx.command.params if p.name == name)
        source = self.ctx.get_parameter_source(name)  # click's ParameterSource (typer may ship its own click)
        if getattr(source, "name", None) == "ENVIRONMENT":
            return f"{param.envvar}={self.raw(name)!r} (from the environment)"
        return f"{param.opts[0]} {self.raw(name)!r}"

    def problem(self, message: str) -> None:
        if self.problems is None:
            raise UsageProblem(message)
        self.problems.append(message)

    def bad(self, name: str, why: str):
        """Report a bad value. A caller that goes on (doctor) gets the option's default instead, which
        also replaces the value for later reads."""
        self.problem(f"invalid {self.given(name)}: {why}")
        default = next(p for p in self.ctx.command.params if p.name == name).default
        self.ctx.params[name] = default
        return default

    def seconds(self, name: str, *, positive: bool = False) -> Optional[float]:
        """A duration in seconds; None where the option was not given (its default is None)."""
        text = self.raw(name)
        if text is None:
            return None
        match = _DURATION.fullmatch(text)
        if not match:
            return self._seconds_default(name, f"use {DURATION_FORMS}")
        value = float(match.group(1)) * _UNITS[match.group(2)]
        if positive and value <= 0:
            return self._seconds_default(name, "use a duration above 0, or leave the option out")
        return value

    def _seconds_default(self, name: str, why: str) -> Optional[float]:
        default = self.bad(name, why)
        return None if default is None else self.seconds(name)

    def number(self, name: str, *, minimum: int = 0) -> int:
        text = self.raw(name).strip()
        if not re.fullmatch(r"-?\d+", text) or int(text) < minimum:
            return int(self.bad(name, f"use a whole number, {minimum} or more"))
        return int(text)

    def collectors(self) -> tuple:
        names = tuple(n.strip() for n in self.raw("collectors").split(",") if n.strip())
        unknown = [n for n in names if n not in REGISTRY]
        if unknown:
            self.bad("collectors", f"unknown collector {unknown[0]!r}: choose from {', '.join(REGISTRY)}")
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
            return self.bad("naming", f"choose {' or '.join(NAMINGS)}")
        given = getattr(self.ctx.get_parameter_source("naming"), "name", None) != "DEFAULT"
        if naming == "gputext" and self.raw("counters") and not given:
            return "dcgm"  # a counters file is dcgm-exporter's: its series are DCGM's
        return naming

    def counters(self, naming: str):
        """dcgm_exporter.Counters from --counters, else dcgm-exporter's defaults (for --naming dcgm)."""
        path = self.raw("counters")
        if not path and naming != "dcgm":
            return None  # the common case imports nothing of dcgm_exporter
        from .dcgm_exporter import CountersError, default_counters, parse_counters

        if not path:
            return default_counters()
        try:
            counters = parse_counters(Path(path))
        except CountersError as err:
            self.bad("counters", str(err))
            return default_counters() if naming == "dcgm" else None
        if naming != "dcgm":  # gputext's names: only the file's NVML fields apply
            return type(counters)((), (), counters.fields, (), counters.source)
        return counters

    def gpm_window(self) -> float:
        seconds = self.seconds("gpm_window")
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


def run_options(values: Values, state_dir: Optional[str] = None):
    """gputext.run.Options from the values of collect's options (shared by collect, show and doctor)."""
    from .run import Options

    names = values.ctx.params
    naming = values.naming() if "naming" in names else "gputext"
    state = state_dir if state_dir is not None else (names.get("state_dir") or default_state_dir())
    return Options(
        collectors=values.collectors(), prefix=values.prefix() if "prefix" in names else "gpu_",
        state_dir=Path(state) if state else None, debug=names["debug"],
        host_root=Path(names["host_root"]), retention_seconds=values.seconds("retention"),
        max_processes=values.number("max_processes"), dcgm_host=names["dcgm_host"],
        dcgm_bindings=Path(names["dcgm_bindings"]) if names["dcgm_bindings"] else None,
        pod_resources_socket=Path(names["pod_resources_socket"]),
        kubelet_timeout_seconds=values.seconds("kubelet_timeout", positive=True),
        gpu_resource_names=tuple(n.strip() for n in names["gpu_resource_names"].split(",") if n.strip()),
        pod_cache_ttl_seconds=values.seconds("pod_cache_ttl"),
        gpm_window_seconds=values.gpm_window(),
        kmsg=Path(names["kmsg"]) if names["kmsg"] else None,
        # show writes nothing that is stored, so it reads everything (its tables use full's series)
        detail=values.detail() if "detail" in names else FULL,
        naming=naming, counters=values.counters(naming) if "counters" in names else None,
    )


@dataclass
class Schedule:
    """When and for how long `collect` runs, and how long it waits for the output's lock."""

    interval: float = 0.0  # 0: one collection
    count: int = 0  # 0: no limit
    duration: float = 0.0  # 0: no limit
    lock_timeout: float = 4.0


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


# --- commands ------------------------------------------------------------------------------------------

@app.command(help="Collect once and write the metrics file. " + EXIT_CODES_HELP)
def collect(
    ctx: typer.Context,
    out: str = _option("-", "--out", "-o", help="The .prom file to write atomically, a FIFO or character "
                       "device to write through, or - for standard output."),
    collectors: str = _option("", "--collectors", help="Comma-separated collectors to run (default: all that "
                              "apply). Known: " + ", ".join(REGISTRY) + "."),
    prefix: str = _option("gpu_", "--prefix", help="Prefix of the device metric names (not empty)."),
    detail: str = _option("standard", "--detail", help="standard: the series operators watch every day (at "
                          "most 80 per GPU); full: every series gputext knows, for debugging a node."),
    naming: str = _option("gputext", "--naming", help="gputext: gputext's metric names; dcgm: dcgm-exporter's "
                          "(DCGM_FI_*, with its labels and units), from NVML alone."),
    counters: Optional[str] = _option(None, "--counters", help="dcgm-exporter's counters file (CSV): the DCGM "
                                      "fields to write (implies --naming dcgm), and NVML fields by NVML_FI_* "
                                      "name or number [default: dcgm-exporter's default counters]."),
    state_dir: Optional[str] = _option(None, "--state-dir", help="Where gputext keeps what one run passes to "
                                       "the next [default: $STATE_DIRECTORY, else /var/lib/gputext]."),
    host_root: str = _option("/", "--host-root", help="Where the host's / is mounted (for /proc and /var/log "
                             "when gputext runs in a container), like node_exporter's --path.rootfs."),
    retention: str = _option("5m", "--retention", help="How long an exited process keeps its series."),
    max_processes: str = _option("1000", "--max-processes", help="Most process series per GPU; the rest are "
                                 "counted in gputext_processes_dropped."),
    dcgm_host: str = _option("localhost:5555", "--dcgm-host", help="The DCGM host engine (nv-hostengine) "
                             "for per-process energy."),
    dcgm_bindings: Optional[str] = _option(None, "--dcgm-bindings", help="Directory of DCGM's Python bindings "
                                           "[default: DCGM 4's, then DCGM 3's install path]."),
    pod_resources_socket: str = _option("/var/lib/kubelet/pod-resources/kubelet.sock", "--pod-resources-socket",
                                        help="The kubelet's pod-resources socket."),
    kubelet_timeout: str = _option("2s", "--kubelet-timeout", help="How long to wait for the kubelet."),
    gpu_resource_names: str = _option("", "--gpu-resource-names", help="Comma-separated extra resource names "
                                      "that are GPUs (nvidia.com/gpu and nvidia.com/mig-* always are)."),
    pod_cache_ttl: str = _option("30s", "--pod-cache-ttl", help="How long the kubelet's answer is reused (0: "
                                 "ask every run)."),
    gpm_window: str = _option("1s", "--gpm-window", help="Time between the two GPM samples of a one-shot run "
                              "(above 100ms); the repeating mode diffs against its previous cycle instead."),
    kmsg: Optional[str] = _option(None, "--kmsg", help="The kernel log the xid collector counts XIDs in: "
                                  "/dev/kmsg, a file of records in its format, or - for standard input as "
                                  "opened by the caller (the systemd units) [default: /dev/kmsg under "
                                  "--host-root]."),
    debug: bool = _option(False, "--debug", help="Show tracebacks of failing collectors."),
    interval: Optional[str] = _option(None, "--interval", help="Repeat every INTERVAL (e.g. 5s; a bare number "
                                      "is seconds) in one process until stopped (SIGTERM/SIGINT), --count or "
                                      "--duration."),
    count: str = _option("0", "--count", help="With --interval: stop after this many files (0: no limit)."),
    duration: Optional[str] = _option(None, "--duration", help="With --interval: stop after this long (e.g. 55s "
                                      "for cron; leave it out for no limit)."),
    lock_timeout: Optional[str] = _option(None, "--lock-timeout", help="How long to wait for another gputext "
                                          "run writing the same file before leaving it to that run (exit 2) "
                                          "[default: 80% of --interval, else 4s]."),
) -> None:
    from .run import Context
    from .runner import Output, OutputLocked, not_written, once, repeat
    from .textfile import OutputRefused, resolve_output, stdout_destination

    end = usage("collect")
    values = Values(ctx)
    try:
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
            code = repeat(context, output, when.interval, when.count, when.duration)
        else:
            code = once(context, output)
    except OutputLocked as err:
        fail(str(err), EXIT_NOT_WRITTEN)
    except OSError as err:
        fail(not_written(output, err), EXIT_NOT_WRITTEN)
    finally:
        context.close()
    raise typer.Exit(code)


def _warn_about_name(destination) -> None:
    if destination.kind != "file":
        return
    name = destination.path.name
    if name.endswith(".tmp"):
        usage("collect")(f"invalid --out {destination.named!r}: gputext's own temp files end in .tmp; name a "
                         "file such as gpu.prom")
    if not name.endswith(".prom"):
        typer.echo(f"gputext: note: node_exporter reads only *.prom files; {name} will be ignored by it", err=True)


@app.command(help="Print the metric catalogue: every series gputext can write.")
def metrics(
    markdown: bool = typer.Option(False, "--markdown", help="Print a Markdown table (README's metric table)."),
    prefix: str = _option("gpu_", "--prefix", help="Prefix of the device metric names."),
    dcgm: bool = typer.Option(False, "--dcgm", help="Print dcgm-exporter's names that --naming dcgm writes, "
                              "with the gputext series each stands for (a Markdown table: README's)."),
) -> None:
    from .catalogue import METRICS, detail_of

    if dcgm:
        from .dcgm_exporter import markdown_table

        typer.echo(markdown_table(prefix))
        return
    if markdown:
        typer.echo("| name | type | unit | labels | collector | detail | help |")
        typer.echo("| --- | --- | --- | --- | --- | --- | --- |")
        for m in METRICS:
            labels = ", ".join(f"`{label}`" for label in m.all_labels)
            typer.echo(f"| `{m.name(prefix)}` | {m.type} | {m.unit} | {labels} | {m.source} | {detail_of(m)} | "
                       f"{m.help} |")
        return
    for m in METRICS:
        typer.echo(f"{m.name(prefix)}  {m.type}  unit={m.unit or '-'}  labels={','.join(m.all_labels)}  "
                   f"collector={m.source}  detail={detail_of(m)}\n    {m.help}")


@app.command(help="Print Prometheus rules for gputext's metrics: alerts (with what to do) and the fleet's "
             "recording rules, for --prefix. Load the file with rule_files (README, \"Dashboards and "
             "alerts\").")
def rules(
    ctx: typer.Context,
    prefix: str = _option("gpu_", "--prefix", help="Prefix of the device metric names."),
    only: str = typer.Option("all", "--only", help="Which group: alerts, recording or all."),
    operator: bool = typer.Option(False, "--operator", help="Print a PrometheusRule (Prometheus Operator, "
                                  "kube-prometheus-stack) holding both groups."),
    stale_after: str = typer.Option("1m", "--stale-after", help="Page when gputext's file is older than this "
                                    "(more than 3 collection intervals plus the scrape interval)."),
) -> None:
    from . import monitoring

    values = Values(ctx)
    try:
        prefix = values.prefix()
        stale = values.seconds("stale_after", positive=True)
        if only not in ("alerts", "recording", "all"):
            values.problem(f"invalid --only {only!r}: choose alerts, recording or all")
        if operator and only != "all":
            values.problem("--operator holds both groups: leave --only out")
    except UsageProblem as err:
        usage("rules")(str(err))
    stale = round(stale)
    text = monitoring.prometheus_rule(prefix, stale) if operator else monitoring.rules_file(prefix, stale, only)
    typer.echo(text, nl=False)


@app.command(help="Print a Grafana dashboard (JSON, to import) of gputext's metrics for --prefix.")
def dashboard(
    ctx: typer.Context,
    prefix: str = _option("gpu_", "--prefix", help="Prefix of the device metric names."),
) -> None:
    from . import monitoring

    try:
        prefix = Values(ctx).prefix()
    except UsageProblem as err:
        usage("dashboard")(str(err))
    typer.echo(monitoring.dashboard_json(prefix), nl=False)


# The collect options that make up gputext.run.Options: show and doctor take them too (same flags,
# variables, defaults and help), so they look at what a collect with the same environment would use.
RUN_OPTIONS = ("collectors", "host_root", "retention", "max_processes", "dcgm_host", "dcgm_bindings",
               "pod_resources_socket", "kubelet_timeout", "gpu_resource_names", "pod_cache_ttl", "gpm_window",
               "kmsg", "debug")


def _collect_parameters(names):
    import inspect

    parameters = inspect.signature(collect).parameters
    return [parameters[name] for name in names]


def _with_collect_options(*names):
    """Give a command collect's options `names` (flags, GPUTEXT_ variables, defaults and help); typer
    passes them in the command's **values, and the typer.Context shows where each came from."""
    def decorate(command):
        import inspect

        own = [p for p in inspect.signature(command).parameters.values() if p.kind is not p.VAR_KEYWORD]
        command.__signature__ = inspect.Signature(own + _collect_parameters(names))
        command.__annotations__ = {**command.__annotations__, **{n: collect.__annotations__[n] for n in names}}
        return command
    return decorate


@app.command(help="Print this node's GPUs for a person at a terminal: temperature, power, memory, "
             "utilisation, NVLink and PCIe rates, and processes with their pods. Takes collect's options "
             "and GPUTEXT_* variables; writes no file and no state. Exit code 1 when NVML cannot be read.")
@_with_collect_options(*RUN_OPTIONS)
def show(
    ctx: typer.Context,
    sample: str = typer.Option("1s", "--sample", help="Time between the two collections that NVLink and PCIe "
                               "rates are measured over (0: one collection, no rates)."),
    **_values,
) -> None:
    from .show import run as show_gpus

    values = Values(ctx)
    try:
        options = run_options(values, state_dir="")
        seconds = values.seconds("sample")
    except UsageProblem as err:
        usage("show")(str(err))
    text, nvml_read = show_gpus(options, seconds, sys.stdout)
    typer.echo(text, nl=False)
    if not nvml_read:
        raise typer.Exit(EXIT_NO_NVML)


@app.command(help="Check that this node is ready, one line per prerequisite with the fix: collect's options "
             "and GPUTEXT_* variables, NVML and the driver, persistence and accounting modes, DCGM, the kubelet "
             "socket, the output directory and node_exporter reading it, the state directory. Takes collect's "
             "options and variables, so it checks what the timer uses; without --out it checks the file the "
             "systemd units write by default. Exit code 0 when everything enabled is ready, 1 otherwise.")
@_with_collect_options("out", "prefix", "detail", "naming", "counters", "state_dir", *RUN_OPTIONS, "interval",
                       "count", "duration", "lock_timeout")
def doctor(ctx: typer.Context, **_values) -> None:
    from .doctor import diagnose, passed, report

    problems: List[str] = []
    values = Values(ctx, problems)
    options = run_options(values)
    schedule(values)
    out = ctx.params["out"]
    checks = diagnose(options, None if out == "-" else out, problems)
    typer.echo(report(checks), nl=False)
    raise typer.Exit(0 if passed(checks) else 1)


def main() -> None:
    """Entry point: one line on stderr for usage errors (click would print a multi-line block)."""
    try:
        # prog_name: `python -m gputext` says "gputext" too, as every other message does
        code = app(standalone_mode=False, prog_name="gputext")
    except Exception as err:
        # click's UsageError; matched by shape because typer ships its own copy of click in some versions
        if getattr(err, "exit_code", None) == 2 and hasattr(err, "format_message"):
            where = getattr(getattr(err, "ctx", None), "command_path", "") or "gputext"
            typer.echo(f"gputext: {err.format_message()} (see '{where} --help')", err=True)
            sys.exit(EXIT_NOT_WRITTEN)
        if type(err).__name__ == "Abort":  # Ctrl-C
            typer.echo("gputext: interrupted", err=True)
            sys.exit(130)
        raise
    sys.exit(code or 0)

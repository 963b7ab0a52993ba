"""The command line: a thin layer over gputext.run.

Exit codes (also in README and `gputext collect --help`):
  0  the file was written
  1  the file was written, but NVML could not be read at all (no driver, no library)
  2  a usage error, or the file could not be written (the previous file is left as it was)
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import Optional

import typer

from . import __version__
from .collectors import REGISTRY
from .runner import EXIT_NO_NVML, EXIT_NOT_WRITTEN
DEFAULT_STATE_DIR = "/var/lib/gputext"

EXIT_CODES_HELP = (
    "Exit codes: 0 file written; 1 file written, but NVML could not be read at all (no driver, no "
    "library); 2 usage error, or the file could not be written (the previous file is left as it was)."
)

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    help="NVIDIA GPU metrics for node_exporter's textfile collector. " + EXIT_CODES_HELP,
)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"gputext {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                 help="Print the version and exit."),
) -> None:
    pass


def default_state_dir() -> str:
    """systemd's StateDirectory= sets STATE_DIRECTORY (a colon-separated list); else /var/lib/gputext."""
    from_systemd = os.environ.get("STATE_DIRECTORY", "")
    return from_systemd.split(":")[0] if from_systemd else DEFAULT_STATE_DIR


def fail(message: str, code: int) -> None:
    typer.echo(f"gputext: {message}", err=True)
    raise typer.Exit(code)


def parse_duration(text: str, option: str) -> float:
    """Seconds from '5s', '250ms', '5m', '1h' or a plain number of seconds."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*", text)
    if not match:
        fail(f"invalid {option} {text!r}: use a duration such as 5s, 250ms, 5m or 1h", EXIT_NOT_WRITTEN)
    return float(match.group(1)) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600, None: 1}[match.group(2)]


def _option(default, *names, help, env=None, **kw):
    """A collect option whose env var is GPUTEXT_<OPTION> (so a systemd EnvironmentFile can set it)."""
    env = env or "GPUTEXT_" + names[0].lstrip("-").replace("-", "_").upper()
    return typer.Option(default, *names, envvar=env, show_envvar=True, help=help, **kw)


@app.command(help="Collect once and write the metrics file. " + EXIT_CODES_HELP)
def collect(
    out: str = _option("-", "--out", "-o", help="The .prom file to write atomically, or - for standard output."),
    collectors: str = _option("", "--collectors", help="Comma-separated collectors to run (default: all that "
                              "apply). Known: " + ", ".join(REGISTRY) + "."),
    prefix: str = _option("gpu_", "--prefix", help="Prefix of the device metric names."),
    state_dir: Optional[str] = _option(None, "--state-dir", help="Where gputext keeps what one run passes to "
                                       "the next [default: $STATE_DIRECTORY, else /var/lib/gputext]."),
    host_root: str = _option("/", "--host-root", help="Where the host's / is mounted (for /proc and /var/log "
                             "when gputext runs in a container), like node_exporter's --path.rootfs."),
    retention: str = _option("5m", "--retention", help="How long an exited process keeps its series."),
    max_processes: int = _option(1000, "--max-processes", help="Most process series per GPU; the rest are "
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
    pod_cache_ttl: str = _option("30s", "--pod-cache-ttl", help="How long the kubelet's answer is reused."),
    debug: bool = _option(False, "--debug", help="Show tracebacks of failing collectors."),
    interval: Optional[str] = _option(None, "--interval", help="Repeat every INTERVAL (e.g. 5s) in one process "
                                      "until stopped (SIGTERM/SIGINT), --count or --duration."),
    count: int = _option(0, "--count", help="With --interval: stop after this many files (0: no limit)."),
    duration: Optional[str] = _option(None, "--duration", help="With --interval: stop after this long (e.g. 55s "
                                      "for cron)."),
    lock_timeout: Optional[str] = _option(None, "--lock-timeout", help="How long to wait for another gputext "
                                          "run writing the same file before leaving it to that run (exit 2) "
                                          "[default: 80% of --interval, else 4s]."),
) -> None:
    from .run import Context
    from .runner import Output, OutputLocked, not_written, once, repeat

    if not _valid_prefix(prefix):
        fail(f"invalid --prefix {prefix!r}: use letters, digits and underscores, not starting with a digit",
             EXIT_NOT_WRITTEN)
    target = None if out == "-" else Path(out)
    if target is not None:
        _check_target(target)

    options = run_options(
        collectors=collectors, prefix=prefix, state_dir=Path(state_dir or default_state_dir()), debug=debug,
        host_root=host_root, retention=retention, max_processes=max_processes, dcgm_host=dcgm_host,
        dcgm_bindings=dcgm_bindings, pod_resources_socket=pod_resources_socket, kubelet_timeout=kubelet_timeout,
        gpu_resource_names=gpu_resource_names, pod_cache_ttl=pod_cache_ttl)
    every = parse_duration(interval, "--interval") if interval else 0.0
    if interval and every <= 0:
        fail("invalid --interval: use a duration above 0, such as 5s", EXIT_NOT_WRITTEN)
    if (count or duration) and not every:
        fail("--count and --duration go with --interval", EXIT_NOT_WRITTEN)
    if count < 0:
        fail(f"invalid --count {count}: use 0 or more", EXIT_NOT_WRITTEN)
    wait = parse_duration(lock_timeout, "--lock-timeout") if lock_timeout else (0.8 * every if every else 4.0)
    output = Output(target, wait)
    ctx = Context(options)
    try:
        if every:
            code = repeat(ctx, output, every, count, parse_duration(duration, "--duration") if duration else 0.0)
        else:
            code = once(ctx, output)
    except OutputLocked as err:
        fail(str(err), EXIT_NOT_WRITTEN)
    except OSError as err:
        fail(not_written(output, err), EXIT_NOT_WRITTEN)
    finally:
        ctx.close()
    raise typer.Exit(code)


def run_options(*, collectors: str, state_dir: Optional[Path], host_root: str, retention: str,
                max_processes: int, dcgm_host: str, dcgm_bindings: Optional[str], pod_resources_socket: str,
                kubelet_timeout: str, gpu_resource_names: str, pod_cache_ttl: str, debug: bool,
                prefix: str = "gpu_"):
    """gputext.run.Options from the values of collect's options (shared by collect, show and doctor); a
    bad value ends the command (exit 2)."""
    from .run import Options, UsageProblem, parse_collectors

    try:
        chosen = parse_collectors(collectors)
    except UsageProblem as err:
        fail(str(err), EXIT_NOT_WRITTEN)
    if max_processes < 0:
        fail(f"invalid --max-processes {max_processes}: use 0 or more", EXIT_NOT_WRITTEN)
    return Options(
        collectors=chosen, prefix=prefix, state_dir=state_dir, debug=debug,
        host_root=Path(host_root), retention_seconds=parse_duration(retention, "--retention"),
        max_processes=max_processes, dcgm_host=dcgm_host,
        dcgm_bindings=Path(dcgm_bindings) if dcgm_bindings else None,
        pod_resources_socket=Path(pod_resources_socket),
        kubelet_timeout_seconds=parse_duration(kubelet_timeout, "--kubelet-timeout"),
        gpu_resource_names=tuple(n.strip() for n in gpu_resource_names.split(",") if n.strip()),
        pod_cache_ttl_seconds=parse_duration(pod_cache_ttl, "--pod-cache-ttl"),
    )


def _valid_prefix(prefix: str) -> bool:
    return re.fullmatch(r"([a-zA-Z_][a-zA-Z0-9_]*)?", prefix) is not None


def _check_target(target: Path) -> None:
    """Refuse early, before touching NVML, what can never be written."""
    if target.name.endswith(".tmp") or not target.name:
        fail(f"invalid --out {str(target)!r}: name a file such as gpu.prom", EXIT_NOT_WRITTEN)
    if not target.name.endswith(".prom"):
        typer.echo(f"gputext: note: node_exporter reads only *.prom files; {target.name} will be ignored by it",
                   err=True)
    if not target.parent.is_dir():
        fail(f"cannot write {target}: directory {target.parent} does not exist", EXIT_NOT_WRITTEN)
    if target.is_dir():
        fail(f"cannot write {target}: it is a directory", EXIT_NOT_WRITTEN)


@app.command(help="Print the metric catalogue: every series gputext can write.")
def metrics(
    markdown: bool = typer.Option(False, "--markdown", help="Print a Markdown table (README's metric table)."),
    prefix: str = _option("gpu_", "--prefix", help="Prefix of the device metric names."),
) -> None:
    from .catalogue import METRICS

    if markdown:
        typer.echo("| name | type | unit | labels | collector | help |")
        typer.echo("| --- | --- | --- | --- | --- | --- |")
        for m in METRICS:
            labels = ", ".join(f"`{label}`" for label in m.all_labels)
            typer.echo(f"| `{m.name(prefix)}` | {m.type} | {m.unit} | {labels} | {m.source} | {m.help} |")
        return
    for m in METRICS:
        typer.echo(f"{m.name(prefix)}  {m.type}  unit={m.unit or '-'}  labels={','.join(m.all_labels)}  "
                   f"collector={m.source}\n    {m.help}")


def _collect_option(name: str):
    """collect's option `name` (flags, GPUTEXT_ variable, default, help) for a command that must read what
    collect reads."""
    import inspect

    return inspect.signature(collect).parameters[name].default


def _with_run_options(command):
    """Give a command collect's options that gputext.run.Options is made of (the parameters of
    run_options, same flags, GPUTEXT_ variables, defaults and help); they arrive in its **run_values."""
    import inspect

    names = [n for n in inspect.signature(run_options).parameters if n not in ("state_dir", "prefix")]
    own = [p for p in inspect.signature(command).parameters.values() if p.kind is not p.VAR_KEYWORD]
    command.__signature__ = inspect.Signature(own + [inspect.signature(collect).parameters[n] for n in names])
    command.__annotations__ = {**command.__annotations__, **{n: collect.__annotations__[n] for n in names}}
    return command


@app.command(help="Print this node's GPUs for a person at a terminal: temperature, power, memory, "
             "utilisation, NVLink and PCIe rates, and processes with their pods. Takes collect's options "
             "and GPUTEXT_* variables; writes no file and no state. Exit code 1 when NVML cannot be read.")
@_with_run_options
def show(
    sample: str = typer.Option("1s", "--sample", help="Time between the two collections that NVLink and PCIe "
                               "rates are measured over (0: one collection, no rates)."),
    **run_values,
) -> None:
    from .show import run as show_gpus

    seconds = parse_duration(sample, "--sample")
    text, nvml_read = show_gpus(run_options(state_dir=None, **run_values), seconds, sys.stdout)
    typer.echo(text, nl=False)
    if not nvml_read:
        raise typer.Exit(EXIT_NO_NVML)


@app.command(help="Check that this node is ready, one line per prerequisite with the fix: NVML and the "
             "driver, persistence and accounting modes, DCGM, the kubelet socket, the output directory and "
             "node_exporter reading it, the state directory. Takes collect's options and GPUTEXT_* "
             "variables, so it checks what the timer uses; without --out it checks the file the systemd units "
             "write by default. Exit code 0 when everything enabled is ready, 1 otherwise.")
@_with_run_options
def doctor(
    out: str = _collect_option("out"),
    state_dir: Optional[str] = _collect_option("state_dir"),
    **run_values,
) -> None:
    from .doctor import diagnose, passed, report

    options = run_options(state_dir=Path(state_dir or default_state_dir()), **run_values)
    checks = diagnose(options, None if out == "-" else Path(out))
    typer.echo(report(checks), nl=False)
    raise typer.Exit(0 if passed(checks) else 1)


def main() -> None:
    """Entry point: one line on stderr for usage errors (click would print a multi-line block)."""
    try:
        code = app(standalone_mode=False)
    except Exception as err:
        # click's UsageError; matched by shape because typer ships its own copy of click in some versions
        if getattr(err, "exit_code", None) == 2 and hasattr(err, "format_message"):
            typer.echo(f"gputext: {err.format_message()} (see 'gputext --help')", err=True)
            sys.exit(EXIT_NOT_WRITTEN)
        if type(err).__name__ == "Abort":  # Ctrl-C
            typer.echo("gputext: interrupted", err=True)
            sys.exit(130)
        raise
    sys.exit(code or 0)

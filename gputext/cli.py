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

EXIT_OK, EXIT_NO_NVML, EXIT_NOT_WRITTEN = 0, 1, 2
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


@app.command(help="Collect once and write the metrics file. " + EXIT_CODES_HELP)
def collect(
    out: str = typer.Option("-", "--out", "-o", envvar="GPUTEXT_OUT", show_envvar=True,
                            help="The .prom file to write atomically, or - for standard output."),
    collectors: str = typer.Option("", "--collectors", envvar="GPUTEXT_COLLECTORS", show_envvar=True,
                                   help="Comma-separated collectors to run (default: all that apply). "
                                        "Known: " + ", ".join(REGISTRY) + "."),
    prefix: str = typer.Option("gpu_", "--prefix", envvar="GPUTEXT_PREFIX", show_envvar=True,
                               help="Prefix of the device metric names."),
    state_dir: Optional[str] = typer.Option(None, "--state-dir", envvar="GPUTEXT_STATE_DIR", show_envvar=True,
                                            help="Where gputext keeps what one run passes to the next "
                                                 "[default: $STATE_DIRECTORY, else /var/lib/gputext]."),
    debug: bool = typer.Option(False, "--debug", envvar="GPUTEXT_DEBUG", show_envvar=True,
                               help="Show tracebacks of failing collectors."),
) -> None:
    from .run import Context, Options, UsageProblem, collect as run_collect, parse_collectors

    try:
        chosen = parse_collectors(collectors)
    except UsageProblem as err:
        fail(str(err), EXIT_NOT_WRITTEN)
    if not _valid_prefix(prefix):
        fail(f"invalid --prefix {prefix!r}: use letters, digits and underscores, not starting with a digit",
             EXIT_NOT_WRITTEN)
    target = None if out == "-" else Path(out)
    if target is not None:
        _check_target(target)

    options = Options(collectors=chosen, prefix=prefix, state_dir=Path(state_dir or default_state_dir()),
                      debug=debug)
    ctx = Context(options)
    try:
        result = run_collect(ctx)
    finally:
        ctx.close()
    data = result.samples.render(prefix)

    if target is None:
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
    else:
        from .textfile import write_atomically

        try:
            write_atomically(target, data)
        except OSError as err:
            fail(f"cannot write {target}: {err.strerror or err}; the previous file is unchanged",
                 EXIT_NOT_WRITTEN)
    if result.nvml_unavailable:
        raise typer.Exit(EXIT_NO_NVML)


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
    prefix: str = typer.Option("gpu_", "--prefix", envvar="GPUTEXT_PREFIX", show_envvar=True,
                               help="Prefix of the device metric names."),
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

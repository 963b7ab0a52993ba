"""The reference generated from the code: the metric table (from the catalogue), dcgm-exporter's names
(from the catalogue's Dcgm rows), the options (from the command-line definitions in gputext.cli) and the
man page (from the same help text), so that none of them can drift from what gputext does.

`python -m gputext.reference` rewrites them in a checkout: the blocks between `<!-- NAME:start -->` and
`<!-- NAME:end -->` in docs/ (the prose around them is written by hand) and man/gputext.1. A test fails
when a committed file differs from what this module gives, and names that command. Standard library
only, imported by no collection run.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from .catalogue import METRICS, detail_of
from .cli import MOST_NUMBER, MOST_SECONDS, MOST_WAIT_SECONDS, duration_text
from .commandline import Option

DEFAULT_PREFIX = "gpu_"
MAN_PAGE = "man/gputext.1"
# How an option's value may come from the environment: the options reference and the man page say it.
ENVIRONMENT_HELP = (
    "Every option of `collect` can also come from the environment as `GPUTEXT_<OPTION>` (`--out` is "
    "`GPUTEXT_OUT`, `--pod-cache-ttl` is `GPUTEXT_POD_CACHE_TTL`), so a systemd `EnvironmentFile` can set "
    "them; `show` and `doctor` read the same options and variables. An option on the command line wins over "
    "its variable; a variable set to nothing counts as not set (an `EnvironmentFile` line `GPUTEXT_PREFIX=` "
    "keeps the default); `GPUTEXT_DEBUG` takes `1`, `true`, `yes` or `on` (`0`, `false`, `no`, `off`). "
    "Durations take `ms`, `s`, `m` or `h` (`5s`, `250ms`); a bare number is seconds.",
    "A bad value, from an option or from a `GPUTEXT_*` variable, is one line on stderr naming it as it was "
    "given (`invalid GPUTEXT_INTERVAL='abc' (from the environment): ...`) and exit 2; `gputext doctor` "
    "reports the same values as `FAIL  options`. A value out of range is such a value: a whole number (N) is "
    f"0 to {MOST_NUMBER}, a DURATION at most `{duration_text(MOST_SECONDS)}`, and what every one-shot run may "
    f"wait for (`--gpm-window`, `--kubelet-timeout`) at most `{duration_text(MOST_WAIT_SECONDS)}`; "
    "`--dcgm-host` is a host name or IP address with an optional `:PORT`; an empty `--out`, `--host-root`, "
    "`--pod-resources-socket` or `--dcgm-host` on the command line is refused as empty.",
)
_DEFAULT_IN_HELP = re.compile(r" ?\[default: ([^\]]*)\]")


# --- the metric table -----------------------------------------------------------------------------------

def metrics_table(prefix: str) -> str:
    """Every catalogue row as a Markdown table (`gputext metrics --markdown`)."""
    from .dcgm_exporter import dcgm_names

    rows = ["| name | type | unit | labels | collector | detail | dcgm-exporter | help |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for m in METRICS:
        labels = ", ".join(f"`{label}`" for label in m.all_labels)
        dcgm = ", ".join(dcgm_names(m))
        rows.append(f"| `{m.name(prefix)}` | {m.type} | {m.unit} | {labels} | {m.source} | {detail_of(m)} | "
                    f"{dcgm} | {_cell(m.help)} |")
    return "\n".join(rows)


# --- the options ----------------------------------------------------------------------------------------

def option_default(option: Option) -> tuple:
    """(the default as a reader needs it, whether that is the literal value): the value, or what the help
    says in `[default: ...]`."""
    said = _DEFAULT_IN_HELP.search(option.help)
    if said:
        return said.group(1), False
    if option.is_flag:
        return "off", False
    return (option.default, True) if option.default else ("none", False)


def _default_cell(option: Option) -> str:
    text, literal = option_default(option)
    return f"`{text}`" if literal else _markdown(text)


def option_help(option: Option) -> str:
    return _DEFAULT_IN_HELP.sub("", option.help)


def options_markdown(commands: dict) -> str:
    """A section per command: its help and a table of its own options; the options a command shares with
    `collect` are named, not repeated."""
    shared = {id(option) for option in commands["collect"].options.values()}
    out = ["\n\n".join(ENVIRONMENT_HELP)]
    for command in commands.values():
        own = [o for o in command.options.values() if command.name == "collect" or id(o) not in shared]
        taken = [o for o in command.options.values() if command.name != "collect" and id(o) in shared]
        out.append(f"## `gputext {command.name}`\n\n{_markdown(command.help)}")
        if own:
            out.append("\n".join(["| option | variable | default | meaning |", "| --- | --- | --- | --- |"] + [
                f"| {_cell(', '.join(f'`{flag}`' for flag in o.flags) + ('' if o.is_flag else f' {o.value}'))} | "
                f"{f'`{o.envvar}`' if o.envvar else ''} | "
                f"{_cell(_default_cell(o))} | {_cell(_markdown(option_help(o)))} |" for o in own]))
        if taken:
            out.append("And `collect`'s " + ", ".join(f"`{o.flags[0]}`" for o in taken)
                       + ", with the same variables and defaults.")
    return "\n\n".join(out)


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _markdown(text: str) -> str:
    """Help text as Markdown: options, names, paths and patterns as code (a `*` in plain text would start
    emphasis)."""
    return _CODE.sub(lambda m: f"`{m.group(1)}`{m.group(2)}", text)


# a word that is an option, or holds _ * / $ < (a name, a path, a pattern), without its closing punctuation
_CODE = re.compile(r"(?<![\w`])((?:--[\w-]|[\w.*/<>$:-]*[_*/$<])[\w.*/<>$:-]*?)([.,;:]?)(?=[\s)\]]|$)")


# --- the man page ---------------------------------------------------------------------------------------

def man_page(program: str, help: str, commands: dict) -> str:
    """gputext(1) in troff's man macros, from the help that `gputext --help` and `COMMAND --help` print."""
    lines = [".\\\" Generated by `python -m gputext.reference` from gputext/cli.py: edit the help there.",
             f'.TH {program.upper()} 1 "" "{program}" "User Commands"',
             ".SH NAME", f"{program} \\- {_roff(help.split('. ')[0].rstrip('.'))}",
             ".SH SYNOPSIS", f".B {program}", ".I command", "[\\fIoptions\\fR]", ".br",
             f".B {program}", "[\\fB\\-\\-version\\fR] [\\fB\\-\\-help\\fR]",
             ".SH DESCRIPTION", _roff(help), ".SH COMMANDS"]
    for command in commands.values():
        lines += [f'.SS "{program} {command.name}"', _roff(command.help)]
        for option in command.options.values():
            flags = ", ".join(f"\\fB{_roff(flag)}\\fR" for flag in option.flags)
            lines += [".TP", flags if option.is_flag else f"{flags} \\fI{_roff(option.value)}\\fR",
                      _roff(option_help(option) + f" Default: {option_default(option)[0]}."
                            + (f" Variable: {option.envvar}." if option.envvar else ""))]
    lines += [".SH ENVIRONMENT", "\n.PP\n".join(_roff(paragraph.replace("`", "")) for paragraph in ENVIRONMENT_HELP)]
    lines += [".SH EXIT STATUS", ".TP", "0", "the file was written", ".TP", "1",
              "the file was written, but NVML could not be read at all (no driver, no library)", ".TP", "2",
              "a usage error, or the file could not be written; the previous file is left as it was",
              ".SH FILES", ".TP", "/etc/default/gputext", "the GPUTEXT_* variables of the systemd units",
              ".TP", "/var/lib/gputext", "the state directory (what one run passes to the next)",
              ".SH SEE ALSO", "The documentation in the docs/ folder of gputext's source, or its site built with "
              "mkdocs.", ""]
    return "\n".join(lines)


def _roff(text: str) -> str:
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return "\\&" + text if text.startswith((".", "'")) else text


# --- the files ------------------------------------------------------------------------------------------

def generated(root: Path) -> dict:
    """Path (under root) -> the text it should have: the marked blocks filled in, the man page written."""
    from .cli import COMMANDS, HELP, PROGRAM
    from .dcgm_exporter import markdown_table

    blocks = {"docs/reference/metrics.md": {"metrics": metrics_table(DEFAULT_PREFIX)},
              "docs/dcgm-exporter.md": {"dcgm": markdown_table(DEFAULT_PREFIX)},
              "docs/reference/options.md": {"options": options_markdown(COMMANDS)}}
    files = {path: _fill((root / path).read_text(), path, names) for path, names in blocks.items()}
    files[MAN_PAGE] = man_page(PROGRAM, HELP, COMMANDS)
    return files


def _fill(text: str, path: str, blocks: dict) -> str:
    for name, content in blocks.items():
        start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
        block = re.compile(f"^{start}\n.*?^{end}$", re.M | re.S)
        if not block.search(text):
            raise SystemExit(f"{path} lacks the {start} and {end} lines around its generated part")
        text = block.sub(lambda _: f"{start}\n{content}\n{end}", text, count=1)
    return text


def main(argv: list) -> int:
    root = Path(argv[0]) if argv else Path(".")
    if len(argv) > 1 or not (root / "docs").is_dir():
        print("usage: python -m gputext.reference [CHECKOUT]  (rewrites the generated reference in its docs/ "
              "and man/; run it from the repository root)", file=sys.stderr)
        return 2
    for path, text in generated(root).items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

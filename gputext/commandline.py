"""The command-line parser: commands whose options may also come from environment variables, with
where each value came from, and a help text.

gputext used typer (on click). Its import was about 35 ms of CPU of a run that the timer starts every few
seconds (`python -X importtime`; a third of what starting Python and importing pynvml costs), for a
parser of a dozen `--option value` pairs. argparse would cost about 5 ms and still need its messages
rewritten to one line and its defaults tracked by hand for the GPUTEXT_ variables. This module parses
what click did for gputext, and the messages say the same:
  --out FILE, --out=FILE, -o FILE, -oFILE; a flag takes no value; the last of a repeated option wins;
  --help anywhere prints the command's help; an empty variable counts as not set (as click's did, so an
  EnvironmentFile line `GPUTEXT_PREFIX=` leaves the default).
It imports nothing: `--help` imports shutil and textwrap when it is asked for.
"""

from __future__ import annotations

COMMAND_LINE = "command line"
ENVIRONMENT = "environment"
DEFAULT = "default"


class UsageError(Exception):
    """A command line that cannot be parsed; `where` is the command whose --help says how."""

    def __init__(self, message: str, where: str):
        super().__init__(message)
        self.where = where


def env_name(flag: str) -> str:
    """GPUTEXT_<OPTION> for an option such as --pod-cache-ttl (so a systemd EnvironmentFile can set it)."""
    return "GPUTEXT_" + flag.lstrip("-").replace("-", "_").upper()


class Option:
    """One option: its flags (the first is the one messages name), its default, its help, the kind of
    value it takes as help shows it (DURATION, N, FILE, LIST, or the choices: standard|full), whether it
    is a flag (takes no value) and whether GPUTEXT_<OPTION> sets it too."""

    __slots__ = ("flags", "name", "default", "help", "value", "is_flag", "envvar")

    def __init__(self, flags: tuple, default=None, help: str = "", *, value: str = "", is_flag: bool = False,
                 env: bool = True):
        self.flags = flags
        self.name = flags[0].lstrip("-").replace("-", "_")
        self.default = False if is_flag else default
        self.help = help
        self.value = value
        self.is_flag = is_flag
        self.envvar = env_name(flags[0]) if env else None

    def usage(self) -> str:
        flags = ", ".join(sorted(self.flags, key=len))  # -o, --out
        return flags if self.is_flag else f"{flags} {self.value}"

    def notes(self) -> str:
        """`[env var: GPUTEXT_OUT; default: -]`, as click's help showed them."""
        notes = [f"env var: {self.envvar}"] if self.envvar else []
        if not self.is_flag and self.default:
            notes.append(f"default: {self.default}")
        return f"  [{'; '.join(notes)}]" if notes else ""


class Command:
    """A command: its name, its help (the first sentence is its line in `gputext --help`), its options
    and the function that runs it with the Given values and returns the exit code."""

    __slots__ = ("name", "help", "options", "run")

    def __init__(self, name: str, help: str, options: list, run):
        self.name = name
        self.help = help
        self.options = {option.name: option for option in options}
        self.run = run


class Given:
    """A command's option values as the user gave them (strings, True for a flag on the command line,
    the environment's text for a flag from its variable), and where each came from."""

    def __init__(self, command: Command, values: dict, sources: dict):
        self.command = command
        self.params = values
        self.sources = sources

    def option(self, name: str) -> Option:
        return self.command.options[name]


class Answered(Exception):
    """--help or --version was given: print this text and exit 0."""


def choose(program: str, help: str, commands: dict, argv: list, version: str) -> tuple:
    """(the Command named in `argv`, the arguments after its name). Raises UsageError, or Answered for
    `program --help` and `program --version`."""
    args = list(argv)
    while args and args[0].startswith("-") and args[0] != "-":
        arg = args.pop(0)
        if arg == "--version":
            raise Answered(f"{program} {version}\n")
        if arg in ("--help", "-h"):
            raise Answered(program_help(program, help, commands))
        raise UsageError(f"No such option: {arg}", program)
    if not args:
        raise UsageError(f"name a command: {', '.join(commands)}", program)
    name = args.pop(0)
    if name not in commands:
        raise UsageError(f"No such command '{name}'.", program)
    return commands[name], args


def parse(command: Command, args: list, environ, program: str) -> Given:
    """The values of `command`'s options from `args` (what follows the command's name), then the
    environment, then the defaults. Raises UsageError, or Answered for --help."""
    where = f"{program} {command.name}"
    by_flag = {flag: option for option in command.options.values() for flag in option.flags}
    values, sources = {}, {}
    args = list(args)
    while args:
        arg = args.pop(0)
        if arg in ("--help", "-h"):
            raise Answered(command_help(command, program))
        if arg == "--":
            if args:
                raise UsageError(f"Got unexpected extra argument ({args[0]})", where)
            break
        if not arg.startswith("-") or arg == "-":
            raise UsageError(f"Got unexpected extra argument ({arg})", where)
        if arg.startswith("--"):
            flag, equals, value = arg.partition("=")
        else:  # -o FILE or -oFILE
            flag, value = arg[:2], arg[2:]
            equals = "=" if value else ""
        option = by_flag.get(flag)
        if option is None:
            raise UsageError(f"No such option: {flag}", where)
        if option.is_flag:
            if equals:
                raise UsageError(f"Option '{flag}' does not take a value.", where)
            value = True
        elif not equals:
            if not args:
                raise UsageError(f"Option '{flag}' requires an argument.", where)
            value = args.pop(0)
        values[option.name] = value
        sources[option.name] = COMMAND_LINE
    for option in command.options.values():
        if option.name in values:
            continue
        from_env = environ.get(option.envvar) if option.envvar else None
        if from_env:
            values[option.name], sources[option.name] = from_env, ENVIRONMENT
        else:
            values[option.name], sources[option.name] = option.default, DEFAULT
    return Given(command, values, sources)


def _wrapped(text: str, indent: int, hanging: int = 0) -> list:
    import shutil
    import textwrap

    width = max(60, min(shutil.get_terminal_size((80, 24)).columns, 120))
    return textwrap.wrap(text, width, initial_indent=" " * indent, subsequent_indent=" " * (indent + hanging),
                         break_long_words=False, break_on_hyphens=False)


def command_help(command: Command, program: str) -> str:
    lines = [f"Usage: {program} {command.name} [OPTIONS]", "", *_wrapped(command.help, 2), "", "Options:"]
    for option in command.options.values():
        lines.append("  " + option.usage())
        lines.extend(_wrapped(option.help + option.notes(), 8))
    lines += ["  -h, --help", *_wrapped("Show this message and exit.", 8)]
    return "\n".join(lines) + "\n"


def program_help(program: str, help: str, commands: dict) -> str:
    lines = [f"Usage: {program} [--version] [--help] COMMAND [OPTIONS]", "", *_wrapped(help, 2), "", "Commands:"]
    width = max(len(name) for name in commands) + 2
    for name, command in commands.items():
        first = command.help.split(". ")[0].rstrip(".") + "."
        lines += _wrapped(f"{name:<{width}}{first}", 2, hanging=width)
    lines += ["", f"Options of a command: {program} COMMAND --help"]
    return "\n".join(lines) + "\n"

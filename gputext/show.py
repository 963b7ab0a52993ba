"""`gputext show`: this node's GPUs as tables, for a person at a terminal.

It runs the collectors of `gputext collect` (gputext.run) twice, --sample apart, in one NVML session, and
reads their samples: gauges from the second run (and SM activity, where GPM gives it); NVLink and PCIe
rates from the byte counters' increase over the time between the two runs (where a GPU has no PCIe byte
counters, the driver's own sampled rate).
It keeps no state, so a run by hand never disturbs the timer's, and it gathers the collectors' warnings
to print them below the tables instead of on stderr. Tables fit the terminal's width (COLUMNS, else 100
where the output is not a terminal), names cut to fit; "°C" and "…" become ASCII where the locale cannot
show them; colour only on a terminal and never where NO_COLOR is set (https://no-color.org).
"""

from __future__ import annotations

import os
import shutil
import sys
import textwrap
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from .catalogue import BY_KEY
from .exposition import Samples
from .run import Context, Options, collect
from .state import State
from .terminal import visible

WIDTH = 100  # where the output is not a terminal and COLUMNS is not set
MIN_WIDTH = 40
GIB = 1 << 30
ELLIPSIS = "…"


@dataclass
class Sampled:
    """Two collections and the seconds between their starts (0 when only one was taken)."""

    first: Samples
    last: Samples
    seconds: float
    failed: list[str] = field(default_factory=list)
    nvml_unavailable: bool = False


def sample(options: Options, seconds: float, warn: Callable[[str], None]) -> Sampled:
    """Collect, wait `seconds`, collect again (once only if `seconds` is 0); NVML is initialised once."""
    ctx = Context(options, warn)
    ctx.state = State(None, lambda message: None)  # no state, on purpose: nothing to warn about
    try:
        started = time.monotonic()
        first = collect(ctx)
        if seconds <= 0 or first.nvml_unavailable:
            return Sampled(first.samples, first.samples, 0.0, first.failed, first.nvml_unavailable)
        time.sleep(max(0.0, seconds - (time.monotonic() - started)))
        again = time.monotonic()
        ctx.end_cycle()
        ctx.new_cycle()  # as the repeating mode does: the same NVML session, this run's time
        last = collect(ctx)
        return Sampled(first.samples, last.samples, again - started, last.failed, last.nvml_unavailable)
    finally:
        ctx.close()


# --- reading the samples -------------------------------------------------------------------------------

def labelled(samples: Samples, key: str) -> list[tuple[dict[str, str], float]]:
    """(labels by name, value) of each series of a metric."""
    names = BY_KEY[key].all_labels
    return [(dict(zip(names, values)), value) for values, value in samples.series(key).items()]


def per_gpu(samples: Samples, key: str) -> dict[str, float]:
    """{gpu index: value} of a device metric without labels of its own."""
    return {labels["gpu"]: value for labels, value in labelled(samples, key)}


def per_gpu_sum(samples: Samples, key: str) -> dict[str, float]:
    """{gpu index: sum over the metric's other labels} (NVLink bytes over all links)."""
    sums: dict[str, float] = {}
    for labels, value in labelled(samples, key):
        sums[labels["gpu"]] = sums.get(labels["gpu"], 0.0) + value
    return sums


def rate(first: Samples, last: Samples, key: str, seconds: float) -> dict[str, float]:
    """{gpu: increase per second} of a counter summed per GPU; a GPU whose counter went back (driver
    reload, link reset) or that appears in one run only has no rate."""
    if seconds <= 0:
        return {}
    before, after = per_gpu_sum(first, key), per_gpu_sum(last, key)
    return {gpu: (after[gpu] - before[gpu]) / seconds
            for gpu in after if gpu in before and after[gpu] >= before[gpu]}


@dataclass
class Row:
    gpu: str
    name: str = ""
    up: bool = True
    temperature: float | None = None
    power: float | None = None
    power_limit: float | None = None
    memory_used: float | None = None
    memory_total: float | None = None
    utilization: float | None = None
    sm_active: float | None = None  # GPM, Hopper and newer
    memory_utilization: float | None = None
    links_up: int | None = None
    links: int | None = None
    nvlink_tx: float | None = None
    nvlink_rx: float | None = None
    pcie_tx: float | None = None
    pcie_rx: float | None = None


def gpu_rows(s: Sampled) -> list[Row]:
    last = s.last
    names = {labels["gpu"]: labels["name"] for labels, _ in labelled(last, "info")}
    links_up: dict[str, int] = {}
    links: dict[str, int] = {}
    for labels, value in labelled(last, "nvlink_up"):
        links[labels["gpu"]] = links.get(labels["gpu"], 0) + 1
        links_up[labels["gpu"]] = links_up.get(labels["gpu"], 0) + int(value == 1)
    columns = {
        "temperature": per_gpu(last, "temperature_celsius"),
        "power": per_gpu(last, "power_watts"),
        "power_limit": per_gpu(last, "power_limit_watts"),
        "memory_used": per_gpu(last, "memory_used_bytes"),
        "memory_total": per_gpu(last, "memory_total_bytes"),
        "utilization": per_gpu(last, "utilization_ratio"),
        # the whole GPU's (a MIG GPU has its GPU instances' only: none for the GPU)
        "sm_active": {labels["gpu"]: value for labels, value in labelled(last, "sm_active_ratio")
                      if not labels["gpu_instance"]},
        "memory_utilization": per_gpu(last, "memory_utilization_ratio"),
        "nvlink_tx": rate(s.first, last, "nvlink_transmit_bytes_total", s.seconds),
        "nvlink_rx": rate(s.first, last, "nvlink_receive_bytes_total", s.seconds),
        # the counters where the GPU has them, else the driver's 20 ms sample (never both for one GPU)
        "pcie_tx": {**per_gpu(last, "pcie_transmit_bytes_per_second"),
                    **rate(s.first, last, "pcie_transmit_bytes_total", s.seconds)},
        "pcie_rx": {**per_gpu(last, "pcie_receive_bytes_per_second"),
                    **rate(s.first, last, "pcie_receive_bytes_total", s.seconds)},
    }
    rows = []
    for gpu, up in sorted(per_gpu(last, "up").items(), key=lambda item: int(item[0])):
        row = Row(gpu, name=names.get(gpu, ""), up=up == 1, links_up=links_up.get(gpu), links=links.get(gpu))
        for attribute, values in columns.items():
            setattr(row, attribute, values.get(gpu))
        rows.append(row)
    return rows


@dataclass
class ProcessRow:
    gpu: str
    pid: str
    name: str
    memory: float | None
    sm: float | None
    pod: str
    namespace: str
    job: str  # the Slurm job, "" outside Slurm


def process_rows(samples: Samples) -> list[ProcessRow] | None:
    """The running processes, or None where the processes collector did not run (no section then)."""
    if samples.series("gputext_collector_success").get(("processes",)) != 1:
        return None
    # the process_* series share their label sets: label values join them
    memory = samples.series("process_memory_used_bytes")
    sm = samples.series("process_sm_utilization_ratio")
    running = {values for values, active in samples.series("process_active").items() if active} | set(memory)
    names = BY_KEY["process_active"].all_labels
    rows = []
    for values in running:
        labels = dict(zip(names, values))
        rows.append(ProcessRow(labels["gpu"], labels["pid"], labels["process_name"], memory.get(values),
                               sm.get(values), labels["pod"], labels["namespace"], labels["slurm_job"]))
    return sorted(rows, key=lambda row: (int(row.gpu), int(row.pid)))


@dataclass
class AllocationRow:
    gpu: str
    gpu_instance: str
    pod: str
    namespace: str
    container: str
    resource: str
    claim: str


def allocation_rows(samples: Samples) -> list[AllocationRow]:
    """The containers the kubelet gave GPUs, through device plugins and DRA claims alike."""
    rows = [AllocationRow(labels["gpu"], labels["gpu_instance"], labels["pod"], labels["namespace"],
                          labels["container"], labels["resource"], labels["claim"])
            for labels, _ in labelled(samples, "allocation_info")]
    return sorted(rows, key=lambda row: (int(row.gpu), row.gpu_instance, row.namespace, row.pod, row.container))


# --- formatting ----------------------------------------------------------------------------------------

def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def _percent(ratio: float | None) -> str:
    return "-" if ratio is None else f"{ratio * 100:.0f}%"


def bytes_per_second(value: float | None) -> str:
    """Decimal units, as link speeds are quoted: 1.23 GB/s."""
    if value is None:
        return "-"
    for unit, size in (("TB/s", 1e12), ("GB/s", 1e9), ("MB/s", 1e6), ("kB/s", 1e3)):
        if value >= size:
            return f"{value / size:.{2 if value < 10 * size else 1}f} {unit}"
    return f"{value:.0f} B/s"


def _gib(value: float | None) -> str:
    return "-" if value is None else f"{value / GIB:.1f}"


def _pair(a: str, b: str) -> str:
    return "-" if a == b == "-" else f"{a} / {b}"


class Style:
    """ANSI colour where wanted (a plain Style paints nothing), the width to fit, and whether the
    terminal takes the non-ASCII "°C" and "…"."""

    def __init__(self, colour: bool, width: int = WIDTH, unicode: bool = True):
        self.colour = colour
        self.width = max(MIN_WIDTH, width)
        self.ellipsis = ELLIPSIS if unicode else "..."
        self.celsius = " °C" if unicode else " C"

    def paint(self, text: str, code: str) -> str:
        return f"\x1b[{code}m{text}\x1b[0m" if self.colour and text else text

    def bold(self, text: str) -> str:
        return self.paint(text, "1")

    def warn(self, text: str) -> str:
        return self.paint(text, "33")

    def bad(self, text: str) -> str:
        return self.paint(text, "31")


def shows_unicode(stream, env=os.environ) -> bool:
    """Whether the user's locale (LC_ALL, LC_CTYPE, LANG, the first one set) is UTF-8 and the stream
    encodes it. Python itself cannot tell: under the C locale it switches its streams to UTF-8 (PEP 538,
    540), setting LC_CTYPE=C.UTF-8 in its own environment, so that value is skipped in UTF-8 mode."""
    chosen = ""
    for name in ("LC_ALL", "LC_CTYPE", "LANG"):
        value = env.get(name, "")
        if name == "LC_CTYPE" and value == "C.UTF-8" and sys.flags.utf8_mode:
            continue  # most likely Python's coercion, not the user's setting
        if value:
            chosen = value
            break
    codeset = chosen.partition(".")[2].partition("@")[0].lower().replace("-", "")
    if codeset != "utf8":
        return False
    encoding = getattr(stream, "encoding", None)  # None: an in-memory text stream, which takes anything
    try:
        (ELLIPSIS + "°").encode(encoding or "utf-8")
    except (UnicodeEncodeError, LookupError):
        return False
    return True


def terminal_width() -> int:
    """COLUMNS, else the terminal's width, else WIDTH (output to a file or a pipe)."""
    return shutil.get_terminal_size((WIDTH, 24)).columns


def wants_colour(stream) -> bool:
    """Colour on a terminal, unless NO_COLOR is set to anything but the empty string."""
    return not os.environ.get("NO_COLOR") and hasattr(stream, "isatty") and stream.isatty()


@dataclass
class Column:
    title: str
    right: bool = False  # numbers align right
    shrinks: bool = False  # text that may be cut (with …) to fit the width
    shorter: Callable[[str], str] | None = None  # a cell's shorter form, used before any cell is cut


def table(columns: Sequence[Column], rows: Iterable[Sequence[str]], style: Style,
          paint: Callable[[int, int, str], str] = lambda row, column, text: text) -> list[str]:
    """Lines of an aligned table no wider than the style's width where the text columns can give way;
    `paint(row, column, padded text)` colours a cell. Cells hold names from outside (GPU, process, pod):
    their control characters are made visible before anything is measured or cut."""
    rows = [[visible(cell) for cell in row] for row in rows]
    widths = [max([len(c.title)] + [len(row[i]) for row in rows]) for i, c in enumerate(columns)]
    excess = sum(widths) + 2 * (len(columns) - 1) - style.width
    for i, column in enumerate(columns):
        if excess > 0 and column.shorter:
            for row in rows:
                row[i] = column.shorter(row[i])
            narrower = max([len(column.title)] + [len(row[i]) for row in rows])
            excess -= widths[i] - narrower
            widths[i] = narrower
    shrinking = sorted((i for i, c in enumerate(columns) if c.shrinks), key=lambda i: -widths[i])
    for floor in (8, 0):  # first down to 8 characters each, then down to their titles
        for i in shrinking:
            cut = min(excess, widths[i] - max(len(columns[i].title), floor))
            if cut > 0:
                widths[i] -= cut
                excess -= cut

    def line(cells: Sequence[str], row: int) -> str:
        out = []
        for i, (column, cell) in enumerate(zip(columns, cells)):
            if len(cell) > widths[i]:
                cell = cell[: widths[i] - len(style.ellipsis)] + style.ellipsis
            padded = cell.rjust(widths[i]) if column.right else cell.ljust(widths[i])
            out.append(paint(row, i, padded) if row >= 0 else padded)
        return "  ".join(out).rstrip()

    header = line([c.title for c in columns], -1)
    return [style.bold(header)] + [line(row, n) for n, row in enumerate(rows)]


HOT_CELSIUS, WARM_CELSIUS = 85, 75


def render(s: Sampled, warnings: Sequence[str], style: Style) -> str:
    rows = gpu_rows(s)
    out: list[str] = []
    if s.nvml_unavailable:
        out.append(style.bad("NVML cannot be read on this node (see below)."))
    elif not rows:
        out.append("No GPUs found.")
    else:
        out.append(_summary(s.last, rows))
        out += _device_table(rows, style)
        out.append("")
        out += _traffic_table(rows, s.seconds, style)
    allocations = allocation_rows(s.last)
    if allocations:
        out.append("")
        out += _allocation_table(allocations, style)
    processes = process_rows(s.last)
    if processes is not None:
        out.append("")
        out += _process_table(processes, style) if processes else ["No processes on the GPUs."]
    notes = [visible(note) for note in warnings] + [f"collector {name} failed" for name in s.failed
                                                     if not s.nvml_unavailable]
    if notes:
        out.append("")
        for note in notes:
            out += [style.warn(line) for line in textwrap.wrap(note, style.width, initial_indent="! ",
                                                                 subsequent_indent="  ")]
    return "\n".join(out) + "\n"


def _summary(samples: Samples, rows: list[Row]) -> str:
    """`driver 580.159.04, CUDA 13.0, 8 GPUs` (the info series carry the versions)."""
    info = next(iter(labelled(samples, "info")), None)
    parts = [f"driver {info[0]['driver_version']}", f"CUDA {info[0]['cuda_driver_version']}"] if info else []
    return visible(", ".join(parts + [f"{len(rows)} GPU{'s' if len(rows) != 1 else ''}"]))


def _device_table(rows: list[Row], style: Style) -> list[str]:
    # SM ACTIVE (GPM) where any GPU has it: a node before Hopper gets no column of dashes
    gpm = any(row.sm_active is not None for row in rows)
    columns = [Column("GPU", right=True), Column("NAME", shrinks=True, shorter=without_vendor),
               Column("TEMP", right=True),
               Column("POWER W", right=True), Column("MEMORY GiB", right=True), Column("UTIL", right=True),
               *([Column("SM ACTIVE", right=True)] if gpm else []), Column("MEM UTIL", right=True)]
    cells = []
    for row in rows:
        if not row.up:
            cells.append([row.gpu, "not answering"] + [""] * (len(columns) - 2))
            continue
        cells.append([row.gpu, row.name, "-" if row.temperature is None else f"{row.temperature:.0f}{style.celsius}",
                      _pair(_number(row.power), _number(row.power_limit)),
                      _pair(_gib(row.memory_used), _gib(row.memory_total)), _percent(row.utilization),
                      *([_percent(row.sm_active)] if gpm else []), _percent(row.memory_utilization)])

    def paint(n: int, column: int, text: str) -> str:
        row = rows[n]
        if not row.up and column == 1:
            return style.bad(text)
        if column == 2 and row.temperature is not None:
            if row.temperature >= HOT_CELSIUS:
                return style.bad(text)
            if row.temperature >= WARM_CELSIUS:
                return style.warn(text)
        return text

    return table(columns, cells, style, paint)


def without_vendor(name: str) -> str:
    """`H100 80GB HBM3` for `NVIDIA H100 80GB HBM3`: every GPU here is NVIDIA's, and the end of the
    name is what tells HBM3 from PCIe or NVL."""
    return name.removeprefix("NVIDIA ")


def _traffic_table(rows: list[Row], seconds: float, style: Style) -> list[str]:
    columns = [Column("GPU", right=True), Column("NVLINK UP", right=True), Column("NVLINK TX", right=True),
               Column("NVLINK RX", right=True), Column("PCIE TX", right=True), Column("PCIE RX", right=True)]
    cells = [[row.gpu, "-" if row.links is None else f"{row.links_up}/{row.links}",
              bytes_per_second(row.nvlink_tx), bytes_per_second(row.nvlink_rx),
              bytes_per_second(row.pcie_tx), bytes_per_second(row.pcie_rx)] for row in rows if row.up]
    over = f"over {seconds:.1f} s" if seconds > 0 else "rates need --sample above 0"
    return [style.bold(f"Traffic ({over})")] + table(columns, cells, style)


def _process_table(rows: list[ProcessRow], style: Style) -> list[str]:
    jobs = any(row.job for row in rows)  # a JOB column only on a Slurm node
    columns = [Column("GPU", right=True), Column("PID", right=True), Column("PROCESS", shrinks=True),
               Column("MEMORY GiB", right=True), Column("SM", right=True), Column("POD", shrinks=True),
               Column("NAMESPACE", shrinks=True)] + ([Column("JOB", shrinks=True)] if jobs else [])
    cells = [[row.gpu, row.pid, row.name or "?", _gib(row.memory), _percent(row.sm), row.pod or "-",
              row.namespace or "-"] + ([row.job or "-"] if jobs else []) for row in rows]
    return [style.bold("Processes")] + table(columns, cells, style)


def _allocation_table(rows: list[AllocationRow], style: Style) -> list[str]:
    columns = [Column("GPU", right=True), Column("MIG GI", right=True), Column("POD", shrinks=True),
               Column("NAMESPACE", shrinks=True), Column("CONTAINER", shrinks=True),
               Column("RESOURCE", shrinks=True), Column("CLAIM", shrinks=True)]
    cells = [[row.gpu, row.gpu_instance or "-", row.pod, row.namespace, row.container, row.resource,
              row.claim or "-"] for row in rows]
    return [style.bold("Allocated to pods")] + table(columns, cells, style)


def unique(items: Iterable[str]) -> list[str]:
    """Items in their first order, each once (both runs warn about the same things)."""
    return list(dict.fromkeys(items))


def run(options: Options, seconds: float, stream) -> tuple[str, bool]:
    """The text for `stream`, and whether NVML could be read."""
    warnings: list[str] = []
    sampled = sample(options, seconds, warnings.append)
    style = Style(wants_colour(stream), terminal_width(), shows_unicode(stream))
    text = render(sampled, unique(warnings), style)
    return text, not sampled.nvml_unavailable

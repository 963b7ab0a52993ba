"""Samples of one run, checked against the catalogue, rendered in the Prometheus text format (0.0.4).

The renderer is written here, not taken from prometheus_client: importing prometheus_client costs about
30 ms and its generate_latest re-validates every label name of every sample (about 45 ms for the 2,000
series of an 8-GPU NVLink node), together more than all the NVML work of a run that happens every few
seconds. The format is small: HELP and TYPE lines, then `name{label="value"} number` per series, with
label values escaped (backslash, double quote, newline: process names may hold any of them) and HELP text
escaped (backslash, newline). No sample timestamps (node_exporter drops a textfile that has them) and no
`_created` series. The tests check the output with prometheus_client's parser, promtool and node_exporter.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Collection, Mapping

from .catalogue import FULL, FULL_ONLY, METRICS, POD_LABELS, STANDARD_SUBSET

# NVML_VALUE_NOT_AVAILABLE as the unsigned and signed types carry it (gputext.nvml reads field values against
# them too, for the unsigned types only). The metrics that can be negative (a temperature margin, a T.Limit
# offset) are read as signed numbers and do not pass through clean().
NOT_AVAILABLE = frozenset({0xFFFFFFFF, 0xFFFFFFFFFFFFFFFF, -1})


def clean(value: object) -> float | None:
    """The value as a number fit for the textfile, or None for "not available" markers and non-numbers:
    an int stays an int (exact, and written without a float's conversions), anything else becomes a
    finite float."""
    if value is None or value in NOT_AVAILABLE:  # compared before float(): 2**64-1 is not exact as a float
        return None
    if value.__class__ is int:
        return value
    value = float(value)
    return value if math.isfinite(value) else None


Keep = Callable[[str, Mapping[str, str]], bool]


class Extra:
    """A family outside the catalogue: an NVML field a counters file names (gputext.dcgm_exporter)."""

    def __init__(self, name: str, type_: str, help_: str, labels: tuple[str, ...]):
        self.name, self.type, self.help, self.labels = name, type_, help_, labels
        self.series: dict[tuple[str, ...], float] = {}


# (name, the pod labels of the run where the family gets them) -> {label values: the start of the line
# ('gpu_up{gpu="0",uuid="GPU-..."} ')}, as the last render wrote them: the repeating mode writes the
# same series every cycle, and joining and escaping their labels was the largest part of a render. Only
# the last render's lines are kept, so memory stays flat.
_LINES: dict[tuple[str, object], dict[tuple[str, ...], str]] = {}
_EXACT = 2 ** 53  # integers below it are exact as floats and are written without a fraction
_ALL_LABELS = {m.key: m.all_labels for m in METRICS}
_LABEL_COUNT = {key: len(names) for key, names in _ALL_LABELS.items()}


class Level:
    """Which series a run writes: those of its detail level (the catalogue's FULL_ONLY and STANDARD_SUBSET),
    plus those --naming dcgm writes under DCGM's names whatever the level: keep(key, labels), asked only
    for the rows in keep_keys."""

    def __init__(self, detail: str = FULL, keep: Keep | None = None, keep_keys: frozenset = frozenset()):
        self.detail = detail
        self.left_out = frozenset() if detail == FULL else FULL_ONLY
        self.subset = {} if detail == FULL else STANDARD_SUBSET
        self.keep, self.keep_keys = keep, keep_keys
        # what a collector's kept label tuples depend on (Device.derived): keep follows from the options,
        # which do not change while a device lives
        self.key = (detail, keep_keys)
        # STANDARD_SUBSET by the deciding label's position in the catalogue's order, for label tuples
        self.subset_rows = {key: (_ALL_LABELS[key].index(label), values)
                            for key, (label, values) in self.subset.items()}

    def wants(self, key: str) -> bool:
        return key not in self.left_out or key in self.keep_keys

    def keeps(self, key: str, labels: Mapping[str, str]) -> bool:
        subset = self.subset.get(key)
        if key not in self.left_out and (subset is None or labels.get(subset[0]) in subset[1]):
            return True
        return key in self.keep_keys and self.keep(key, labels)

    def keeps_row(self, key: str, label_values: tuple[str, ...]) -> bool:
        """keeps() for label values in the catalogue's order."""
        subset = self.subset_rows.get(key)
        if key not in self.left_out and (subset is None or label_values[subset[0]] in subset[1]):
            return True
        return key in self.keep_keys and self.keep(key, dict(zip(_ALL_LABELS[key], label_values)))


class DeviceRows:
    """The label values of one GPU's series, for collectors that keep them across cycles (with the
    device, Device.derived): get(key, *values of the labels after gpu and uuid) gives the label values in
    the catalogue's order, or None where the level does not write that series. Each is made once, so
    only for label values from a fixed set (links, clocks, reasons), never per process."""

    def __init__(self, level: Level, gpu: tuple[str, str]):
        self._level, self._gpu = level, gpu
        self._rows: dict[tuple[str, tuple[str, ...]], tuple[str, ...] | None] = {}

    def get(self, key: str, *extra: str) -> tuple[str, ...] | None:
        try:
            return self._rows[key, extra]
        except KeyError:
            pass
        names = _ALL_LABELS[key]
        label_values = self._gpu + extra
        if len(names) != len(label_values):
            raise ValueError(f"{key}: {len(label_values)} label values, the catalogue has {len(names)}")
        row = self._rows[key, extra] = (label_values if self._level.keeps(key, dict(zip(names, label_values)))
                                        else None)
        return row


class Samples:
    def __init__(self, detail: str = FULL, keep: Keep | None = None,
                 keep_keys: frozenset = frozenset()) -> None:
        self._series: dict[str, dict[tuple[str, ...], float]] = {}
        self.detail = detail
        # the catalogue's detail levels, applied as samples arrive (nothing is kept to be dropped later)
        self.level = Level(detail, keep, keep_keys)
        self._left_out, self._subset = self.level.left_out, self.level.subset
        self.extras: dict[str, Extra] = {}

    def wants(self, key: str) -> bool:
        """Whether this level writes any series of `key` (a collector may skip reading what it does not)."""
        return self.level.wants(key)

    def keeps(self, key: str, labels: Mapping[str, str]) -> bool:
        """Whether add() would keep a series of `key` with these labels (only the labels that decide:
        a collector asks before it reads a value, to read only what is written)."""
        return self.level.keeps(key, labels)

    def add_extra(self, name: str, type_: str, help_: str, value, labels: Mapping[str, str]) -> None:
        """A sample of a family outside the catalogue (an NVML field a counters file names), whose value
        is clean already, as Nvml.field_list gives it (a signed field's -1 is a value there); None is
        left out."""
        if value is None:
            return
        family = self.extras.get(name)
        if family is None:
            family = self.extras[name] = Extra(name, type_, help_, tuple(labels))
        family.series[tuple(labels[label] for label in family.labels)] = value

    def add(self, key: str, value, labels: Mapping[str, str]) -> None:
        """Record one sample; label values are strings. None, NaN and NVML's not-available markers are
        left out, as are series the detail level does not write. Labels must be exactly the catalogue's:
        anything else is a bug, raised as ValueError."""
        if (key in self._left_out or key in self._subset) and not self.keeps(key, labels):
            return
        value = clean(value)
        if value is None:
            return
        names = _ALL_LABELS[key]
        try:  # same count and every catalogue label present: the same label set
            if len(labels) != len(names):
                raise KeyError
            label_values = tuple([labels[name] for name in names])
        except KeyError:
            raise ValueError(f"{key}: labels {sorted(labels)} differ from the catalogue's {sorted(names)}") from None
        self._series.setdefault(key, {})[label_values] = value

    def add_row(self, key: str, value, label_values: tuple[str, ...]) -> None:
        """add() for a collector that has the label values already in the catalogue's order (the NVLink
        collector's 440 series a cycle on 8 GPUs, the device collectors' kept DeviceRows): no label dict
        is built and checked for each."""
        if len(label_values) != _LABEL_COUNT[key]:
            raise ValueError(f"{key}: {len(label_values)} label values, the catalogue has {_LABEL_COUNT[key]}")
        if (key in self._left_out or key in self._subset) and not self.level.keeps_row(key, label_values):
            return
        value = clean(value)
        if value is not None:
            self._series.setdefault(key, {})[label_values] = value

    def add_values(self, key: str, rows) -> None:
        """add_row() for many series of one key, each (label values, value), whose values are clean
        already: numbers as clean() gives them, or None for none (Nvml.field_list's answers, and
        numbers a collector made from them). They are not cleaned again: the NVLink collector adds
        hundreds a cycle."""
        if key in self._left_out or key in self._subset:
            for label_values, value in rows:
                self.add_row(key, value, label_values)
            return
        count = _LABEL_COUNT[key]
        series = self._series.setdefault(key, {})
        for label_values, value in rows:
            if len(label_values) != count:
                raise ValueError(f"{key}: {len(label_values)} label values, the catalogue has {count}")
            if value is not None:
                series[label_values] = value

    def add_kept(self, rows) -> None:
        """Many (key, value, label values) whose label values are DeviceRows' (the level is applied
        and the count checked there) and whose values are clean already (numbers as clean() gives
        them, or None for none)."""
        series = self._series
        for key, value, label_values in rows:
            if value is not None:
                family = series.get(key)
                if family is None:
                    family = series[key] = {}
                family[label_values] = value

    def series(self, key: str) -> dict[tuple[str, ...], float]:
        return dict(self._series.get(key, {}))

    def render(self, prefix: str, pod_labels: Mapping[str, Mapping[str, str]] | None = None,
               skip: Collection[tuple[str, tuple[str, ...]]] = (), extras: bool = True) -> bytes:
        """The text exposition. `pod_labels` maps a GPU UUID to the pod/namespace/container labels its
        device series gain (where exactly one container holds that GPU). `skip` holds (key, label values)
        of series written elsewhere (under dcgm-exporter's names), `extras` whether to write the families
        outside the catalogue."""
        global _LINES
        lines = []
        escaped: dict[str, str] = {}  # label values repeat on every line of a GPU: escape each once
        lines_now: dict[tuple[str, object], dict[tuple[str, ...], str]] = {}
        pods = tuple(sorted((uuid, tuple(extra[k] for k in POD_LABELS))
                            for uuid, extra in pod_labels.items())) if pod_labels else None
        all_series = self._series
        for metric, name, help_line, type_line, gets_pod_labels in _families(prefix):
            series = all_series.get(metric.key)
            if series and skip:
                series = {values: v for values, v in series.items() if (metric.key, values) not in skip}
            if not series:
                continue
            lines.append(help_line)
            lines.append(type_line)
            enrich = pod_labels if gets_pod_labels and pod_labels else None
            cache_key = (name, pods if enrich else None)
            starts = _LINES.get(cache_key)
            try:  # the same series as last time (a miss, or fewer: the starts are made afresh)
                line_starts = [starts[label_values] for label_values in series] if starts else None
            except KeyError:
                line_starts = None
            if line_starts is None or len(starts) != len(series):
                starts = {label_values: (starts.get(label_values) if starts else None)
                          or _line_start(metric, name, label_values, enrich, escaped) for label_values in series}
                line_starts = list(starts.values())
            lines_now[cache_key] = starts
            lines.extend(map(str.__add__, line_starts, _format_numbers(series.values())))
        for family in self.extras.values() if extras else ():
            render_family(lines, family.name, family.type, family.help,
                          ((dict(zip(family.labels, label_values)), value)
                           for label_values, value in family.series.items()))
        _LINES = lines_now  # what this render used, for the next one (no more: processes come and go)
        lines.append("")
        # A name read from /proc may hold undecodable bytes (surrogates after os.fsdecode): never fail on it.
        return "\n".join(lines).encode("utf-8", "replace")


@functools.lru_cache(maxsize=None)
def _families(prefix: str) -> tuple[tuple, ...]:
    """(metric, name, HELP line, TYPE line, whether it gets pod labels) of every catalogue row, in
    order, for a prefix: the same every render."""
    return tuple((metric, metric.name(prefix), f"# HELP {metric.name(prefix)} {_escape_help(metric.help)}",
                  f"# TYPE {metric.name(prefix)} {metric.type}", metric.gets_pod_labels) for metric in METRICS)


def _line_start(metric, name: str, label_values: tuple[str, ...], pod_labels, escaped: dict[str, str]) -> str:
    """'name{label="value",...} ' of a series; with the pod labels of its GPU where `pod_labels` has them."""
    extra = pod_labels.get(label_values[1]) if pod_labels else None  # label_values[1] is the uuid
    if extra:
        label_values = label_values + tuple(extra[k] for k in POD_LABELS)
    if not label_values:
        return name + " "
    values = []
    for v in label_values:
        e = escaped.get(v)
        if e is None:
            e = escaped[v] = _escape_label_value(v)
        values.append(e)
    labels = metric.all_labels + (POD_LABELS if extra else ())
    return name + "{" + ",".join(f'{label}="{value}"' for label, value in zip(labels, values)) + "} "


def render_family(lines: list[str], name: str, type_: str, help_: str, series) -> None:
    """HELP, TYPE and one line per (labels, value) of `series` (labels a dict, in the order to write)."""
    lines.append(f"# HELP {name} {_escape_help(help_)}")
    lines.append(f"# TYPE {name} {type_}")
    for labels, value in series:
        text = ",".join(f'{label}="{_escape_label_value(v)}"' for label, v in labels.items())
        lines.append(f"{name}{{{text}}} {_format_number(value)}" if text else f"{name} {_format_number(value)}")


def _escape_label_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _format_numbers(values) -> list[str]:
    """Each value as text: integers without a fraction (readable for a person at `--out -`), everything
    else as repr. An int is written exactly; a float as an integer only below 2**53, where it is exact.
    One comprehension: a render writes thousands, and an int, as most NVML counters are, costs a third
    of a float."""
    return [str(v) if v.__class__ is int else str(int(v)) if v.is_integer() and -_EXACT < v < _EXACT else repr(v)
            for v in values]


def _format_number(value: float) -> str:
    return _format_numbers((value,))[0]

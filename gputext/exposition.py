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

import math
from typing import Any, Dict, Mapping, Optional, Tuple

from .catalogue import BY_KEY, FULL, FULL_ONLY, METRICS, POD_LABELS, STANDARD_SUBSET, written_at

# NVML_VALUE_NOT_AVAILABLE as the unsigned and signed types carry it. No metric here is ever negative.
_SENTINELS = frozenset({0xFFFFFFFF, 0xFFFFFFFFFFFFFFFF, -1})


def clean(value: Any) -> Optional[float]:
    """The value as a number fit for the textfile, or None for "not available" markers and non-numbers."""
    if value is None or value in _SENTINELS:  # compared before float(): 2**64-1 is not exact as a float
        return None
    value = float(value)
    return value if math.isfinite(value) else None


class Samples:
    def __init__(self, detail: str = FULL) -> None:
        self._series: Dict[str, Dict[Tuple[str, ...], float]] = {}
        self.detail = detail
        # the catalogue's detail levels, applied as samples arrive (nothing is kept to be dropped later)
        self._left_out = frozenset() if detail == FULL else FULL_ONLY
        self._subset = {} if detail == FULL else STANDARD_SUBSET

    def wants(self, key: str) -> bool:
        """Whether this level writes any series of `key` (a collector may skip reading what it does not)."""
        return written_at(self.detail, key)

    def add(self, key: str, value, labels: Mapping[str, str]) -> None:
        """Record one sample; label values are strings. None, NaN and NVML's not-available markers are
        left out, as are series the detail level does not write. Labels must be exactly the catalogue's:
        anything else is a bug, raised as ValueError."""
        if key in self._left_out:
            return
        subset = self._subset.get(key)
        if subset is not None and labels.get(subset[0]) not in subset[1]:
            return
        value = clean(value)
        if value is None:
            return
        names = BY_KEY[key].all_labels
        try:  # same count and every catalogue label present: the same label set
            if len(labels) != len(names):
                raise KeyError
            label_values = tuple([labels[name] for name in names])
        except KeyError:
            raise ValueError(f"{key}: labels {sorted(labels)} differ from the catalogue's {sorted(names)}") from None
        self._series.setdefault(key, {})[label_values] = value

    def series(self, key: str) -> Dict[Tuple[str, ...], float]:
        return dict(self._series.get(key, {}))

    def render(self, prefix: str, pod_labels: Optional[Mapping[str, Mapping[str, str]]] = None) -> bytes:
        """The text exposition. `pod_labels` maps a GPU UUID to the pod/namespace/container labels its
        device series gain (where exactly one container holds that GPU)."""
        lines = []
        escaped: Dict[str, str] = {}  # label values repeat on every line of a GPU: escape each once
        for metric in METRICS:
            series = self._series.get(metric.key)
            if not series:
                continue
            name = metric.name(prefix)
            lines.append(f"# HELP {name} {_escape_help(metric.help)}")
            lines.append(f"# TYPE {name} {metric.type}")
            line = name
            if metric.all_labels:  # e.g. 'gpu_up{gpu="%s",uuid="%s"} %s'
                line += "{" + ",".join(f'{label}="%s"' for label in metric.all_labels) + "}"
            line += " %s"
            enrich = pod_labels if metric.gets_pod_labels else None
            for label_values, value in series.items():
                extra = enrich.get(label_values[1]) if enrich else None  # label_values[1] is the uuid
                if extra:
                    label_values = label_values + tuple(extra[k] for k in POD_LABELS)
                values = []
                for v in label_values:
                    e = escaped.get(v)
                    if e is None:
                        e = escaped[v] = _escape_label_value(v)
                    values.append(e)
                values.append(_format_number(value))
                lines.append((line if not extra else _with_pod_labels(line)) % tuple(values))
        lines.append("")
        # A name read from /proc may hold undecodable bytes (surrogates after os.fsdecode): never fail on it.
        return "\n".join(lines).encode("utf-8", "replace")


def _with_pod_labels(line: str) -> str:
    return line.replace("} %s", "".join(f',{label}="%s"' for label in POD_LABELS) + "} %s", 1)


def _escape_label_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _format_number(value: float) -> str:
    """Integers without a fraction (readable for a person at `--out -`), everything else as repr."""
    if value.is_integer() and abs(value) < 2 ** 53:
        return str(int(value))
    return repr(value)

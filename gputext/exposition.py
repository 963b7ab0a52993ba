"""Samples of one run, checked against the catalogue, rendered in the Prometheus text format.

Rendering uses prometheus_client's metric families and its exposition writer, which escapes label values
(quotes, backslashes, newlines in process names) and HELP text. Families are built here from plain samples
rather than from prometheus_client's Counter/Gauge objects: no `_created` series, no sample timestamps
(node_exporter drops a textfile that has them), no process_/python_ series from a default registry.
"""

from __future__ import annotations

import math
from typing import Any, Dict, Mapping, Optional, Tuple

from .catalogue import BY_KEY, METRICS

# NVML_VALUE_NOT_AVAILABLE as the unsigned and signed types carry it. No metric here is ever negative.
_SENTINELS = frozenset({0xFFFFFFFF, 0xFFFFFFFFFFFFFFFF, -1})


def clean(value: Any) -> Optional[float]:
    """The value as a number fit for the textfile, or None for "not available" markers and non-numbers."""
    if value is None or value in _SENTINELS:  # compared before float(): 2**64-1 is not exact as a float
        return None
    value = float(value)
    return value if math.isfinite(value) else None


class Samples:
    def __init__(self) -> None:
        self._series: Dict[str, Dict[Tuple[str, ...], float]] = {}

    def add(self, key: str, value, labels: Mapping[str, str]) -> None:
        """Record one sample. None, NaN and NVML's not-available markers are left out."""
        value = clean(value)
        if value is None:
            return
        metric = BY_KEY[key]
        if set(labels) != set(metric.all_labels):
            raise ValueError(f"{key}: labels {sorted(labels)} differ from the catalogue's "
                             f"{sorted(metric.all_labels)}")
        label_values = tuple(str(labels[name]) for name in metric.all_labels)
        self._series.setdefault(key, {})[label_values] = value

    def series(self, key: str) -> Dict[Tuple[str, ...], float]:
        return dict(self._series.get(key, {}))

    def render(self, prefix: str) -> bytes:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
        from prometheus_client.exposition import generate_latest

        families = []
        for metric in METRICS:
            series = self._series.get(metric.key)
            if not series:
                continue
            family_type = CounterMetricFamily if metric.type == "counter" else GaugeMetricFamily
            family = family_type(metric.name(prefix), metric.help, labels=metric.all_labels)
            for label_values, value in series.items():
                family.add_metric(label_values, value)
            families.append(family)
        return generate_latest(_Families(families))


class _Families:
    """The minimal registry generate_latest needs: something with collect()."""

    def __init__(self, families):
        self._families = families

    def collect(self):
        return iter(self._families)

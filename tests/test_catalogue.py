"""The catalogue follows Prometheus naming conventions (tests/test_docs.py checks the reference made from it)."""

import re

import pytest

from gputext.catalogue import METRICS

UNIT_SUFFIX = {"celsius": "_celsius", "watts": "_watts", "joules": "_joules", "bytes": "_bytes",
               "hertz": "_hertz", "seconds": "_seconds", "ratio": "_ratio",
               "bytes_per_second": "_bytes_per_second"}


@pytest.mark.parametrize("metric", METRICS, ids=lambda m: m.key)
def test_metric_follows_conventions(metric):
    name = metric.name("gpu_")
    assert re.fullmatch(r"[a-z_][a-z0-9_]*", name)
    assert metric.type in ("gauge", "counter")
    assert name.endswith("_total") == (metric.type == "counter")
    base = name[: -len("_total")] if metric.type == "counter" else name
    if metric.unit:
        assert base.endswith(UNIT_SUFFIX[metric.unit]), f"{name} lacks its unit suffix"
    assert metric.help and metric.help.endswith(".")
    assert len(set(metric.all_labels)) == len(metric.all_labels)
    if metric.prefixed:
        assert metric.all_labels[:2] == ("gpu", "uuid")
    else:
        assert name.startswith("gputext_")


def test_names_are_unique():
    names = [m.name("gpu_") for m in METRICS]
    assert len(names) == len(set(names))

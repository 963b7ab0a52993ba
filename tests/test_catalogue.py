"""The catalogue follows Prometheus naming conventions, and the metric reference is generated from it."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

from gputext.catalogue import METRICS

ROOT = Path(__file__).resolve().parent.parent
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


def test_metric_reference_is_the_catalogue():
    generated = subprocess.run([sys.executable, "-m", "gputext", "metrics", "--markdown"], capture_output=True,
                               text=True, check=True).stdout.strip()
    reference = (ROOT / "docs/reference/metrics.md").read_text()
    block = re.search(r"<!-- metrics:start -->\n(.*?)\n<!-- metrics:end -->", reference, re.S)
    assert block, "docs/reference/metrics.md lacks the metrics:start/metrics:end markers"
    assert block.group(1).strip() == generated, (
        "docs/reference/metrics.md differs from the catalogue: regenerate it with "
        "`gputext metrics --markdown`")


def test_dcgm_table_is_the_catalogue():
    generated = subprocess.run([sys.executable, "-m", "gputext", "metrics", "--dcgm"], capture_output=True,
                               text=True, check=True).stdout.strip()
    block = re.search(r"<!-- dcgm:start -->\n(.*?)\n<!-- dcgm:end -->", (ROOT / "docs/dcgm-exporter.md").read_text(),
                      re.S)
    assert block, "docs/dcgm-exporter.md lacks the dcgm:start/dcgm:end markers"
    assert block.group(1).strip() == generated, (
        "docs/dcgm-exporter.md's DCGM table differs from the catalogue: regenerate it with `gputext metrics --dcgm`")

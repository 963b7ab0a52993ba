"""`--detail standard|full`: the series budget of the default level, and that a series means the same at
both levels (standard only leaves series out)."""

import collections
import subprocess
import sys

from conftest import parse_exposition
from fakegpu import h100, with_gpm
from gputext.catalogue import BY_KEY, FULL_ONLY, METRICS, STANDARD_SUBSET

BUDGET_PER_GPU = 80  # issue 14: 8 x H100 x 18 NVLink links, every collector but processes
ALL_BUT_PROCESSES = "nvml,nvlink,pcie,dcgm,kubernetes,gpm"
FAST_GPM = ("--gpm-window", "150ms")


def eight_h100s(node):
    node.write([with_gpm(h100(i)) for i in range(8)])


def per_gpu(series) -> collections.Counter:
    counts = collections.Counter()
    for name, labels in series:
        gpu = dict(labels).get("gpu")
        if gpu is not None and name.startswith("gpu_"):
            counts[gpu] += 1
    return counts


def test_standard_fits_the_budget_per_gpu(node):
    eight_h100s(node)
    proc, standard = node.collect("--collectors", ALL_BUT_PROCESSES, *FAST_GPM)
    assert proc.returncode == 0, proc.stderr
    counts = per_gpu(standard)
    assert "gpu_sm_active_ratio" in {name for name, _ in standard}
    assert sorted(counts) == [str(i) for i in range(8)]
    assert max(counts.values()) <= BUDGET_PER_GPU, counts
    # the headline stays: every link's state and traffic
    for link in range(18):
        for name in ("gpu_nvlink_up", "gpu_nvlink_transmit_bytes_total", "gpu_nvlink_receive_bytes_total"):
            assert any(n == name and dict(labels)["link"] == str(link) and dict(labels)["gpu"] == "7"
                       for n, labels in standard), (name, link)


def test_full_writes_what_standard_leaves_out_with_the_same_values(node):
    eight_h100s(node)
    _, standard = node.collect("--collectors", ALL_BUT_PROCESSES, *FAST_GPM)
    proc, full = node.collect("--collectors", ALL_BUT_PROCESSES, "--detail", "full", *FAST_GPM)
    assert proc.returncode == 0, proc.stderr
    assert sum(per_gpu(full).values()) > 3 * sum(per_gpu(standard).values())
    ignored = {"gputext_collector_duration_seconds", "gpu_gpm_window_seconds"}  # times of this run
    # every standard series is in full, with the same value (counters move: the fake's advance per read)
    for key, value in standard.items():
        name = key[0]
        if name in ignored or name.endswith("_total"):
            assert key in full, key
            continue
        assert full.get(key) == value, key
    names_full = {name for name, _ in full}
    names_standard = {name for name, _ in standard}
    assert "gpu_nvlink_link_errors_total" in names_full - names_standard
    assert "gpu_power_limit_watts" in names_full - names_standard
    for name in names_standard - {"gputext_build_info", "gputext_collector_success"}:
        assert name.startswith("gpu_") and name[4:] not in FULL_ONLY


def test_standard_subsets_keep_their_label_values_only(node):
    node.write([h100(0)])
    _, s = node.collect("--collectors", "nvml")
    for key, (label, kept) in STANDARD_SUBSET.items():
        values = {dict(labels)[label] for name, labels in s if name == "gpu_" + key}
        assert values and values <= kept, (key, values)


def test_detail_from_the_environment_and_a_bad_one(node):
    node.write([h100(0)])
    env = {**node.env(), "GPUTEXT_DETAIL": "full"}
    proc = subprocess.run([sys.executable, "-m", "gputext", "collect", "--out", "-", "--collectors", "nvml",
                           "--state-dir", str(node.state_dir)], env=env, capture_output=True, text=True,
                          timeout=60)
    assert "gpu_power_limit_watts" in {name for name, _ in parse_exposition(proc.stdout)}
    bad = node.run("collect", "--out", "-", "--detail", "everything")
    assert bad.returncode == 2
    assert bad.stderr.splitlines() == [
        "gputext: invalid --detail 'everything': choose standard or full (see 'gputext collect --help')"]


def test_every_full_only_or_subset_key_is_in_the_catalogue():
    keys = {m.key for m in METRICS}
    assert FULL_ONLY <= keys and set(STANDARD_SUBSET) <= keys
    for key, (label, _) in STANDARD_SUBSET.items():
        assert label in BY_KEY[key].labels

"""What `--counters FILE` refuses, and what it says about the fields it cannot give: a typo, an empty file,
a name gputext writes itself, numbers NVML cannot take, a file that is not a file. Each is exit 2 with one
line that names the file (and the line), and no output file. Then the same as properties, over files
hypothesis makes: in-process for the parser, end to end (exit code, the previous file, promtool and
node_exporter) for fewer of them."""

import os
import re
import string

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import parse_exposition, value
from fakegpu import h100
from gputext.catalogue import DCGM_NAMINGS, METRICS
from gputext.dcgm_exporter import (LABEL_FIELDS, NOT_FROM_NVML, CountersError, known, parse_counters,
                                   written_names)
from realtools import NodeExporter, promtool_check


def two_gpus(node, memory_temperature=True):
    second = h100(1)
    if not memory_temperature:
        del second["fields"][82]  # NVML_FI_DEV_MEMORY_TEMP: NOT_SUPPORTED, as on a T4
    node.write([h100(0, temperature=45), second])


def refused(node, tmp_path, text, *args, **kw):
    """Runs collect with `text` as the counters file; returns its one line of stderr."""
    counters = tmp_path / "counters.csv"
    counters.write_text(text, **kw)
    out = tmp_path / "gpu.prom"
    proc = node.run("collect", "--out", str(out), "--counters", str(counters), *args)
    assert proc.returncode == 2, proc.stderr
    (message,) = proc.stderr.splitlines()
    assert message.startswith(f"gputext: invalid --counters '{counters}': "), message
    assert not out.exists()
    return message


@pytest.mark.parametrize("line, problem", [
    ("DCGM_FI_DEV_GPU_TEMPERATURE, gauge, GPU temperature (in C).",
     "DCGM_FI_DEV_GPU_TEMPERATURE is not a DCGM field gputext knows: check its spelling"),
    ("DCGM_FI_DRIVER_VERSON, label, Driver Version", "DCGM_FI_DRIVER_VERSON is not a DCGM field gputext knows"),
    ("DCGM_EXP_NO_SUCH_THING, gauge, x", "DCGM_EXP_NO_SUCH_THING is not a DCGM field gputext knows"),
])
def test_an_unknown_dcgm_name_is_refused_with_its_line(node, tmp_path, line, problem):
    two_gpus(node)
    message = refused(node, tmp_path, f"DCGM_FI_DEV_POWER_USAGE, gauge, Power draw (in W).\n\n{line}\n")
    assert f"counters.csv:3: {problem}" in message


def test_a_dcgm_field_of_dcgm_exporters_own_files_that_nvml_lacks_is_said_and_skipped(node, tmp_path):
    two_gpus(node)
    counters = tmp_path / "counters.csv"
    counters.write_text("DCGM_FI_DEV_GPU_TEMP, gauge, GPU temperature (in C).\n"
                        "DCGM_FI_DEV_VGPU_LICENSE_STATUS, gauge, vGPU License status\n"
                        "DCGM_FI_DEV_BRAND, label, Device Brand\n")
    proc, s = node.collect("--counters", str(counters), "--collectors", "nvml")
    assert proc.returncode == 0, proc.stderr
    assert ("gputext does not write DCGM_FI_DEV_VGPU_LICENSE_STATUS, DCGM_FI_DEV_BRAND (no NVML source, or a unit "
            "not confirmed: docs/dcgm-exporter.md); skipped" in proc.stderr)
    assert value(s, "DCGM_FI_DEV_GPU_TEMP", gpu="0") == 45


@pytest.mark.parametrize("text", ["", "\n\n", "# only comments\n# DCGM_FI_DEV_GPU_TEMP, gauge, x\n",
                                  "DCGM_FI_DEV_VGPU_LICENSE_STATUS, gauge, vGPU License status\n"])
def test_a_file_that_names_nothing_gputext_writes_is_refused(node, tmp_path, text):
    two_gpus(node)
    message = refused(node, tmp_path, text)
    assert "counters.csv: names no field gputext can write" in message


@pytest.mark.parametrize("line, args, problem", [
    # the issue's own case: node_exporter dropped the whole file over a second gpu_up family
    ("83, counter, energy, gpu_up", (), "gpu_up is a name gputext writes itself (a gputext metric)"),
    ("NVML_FI_DEV_MEMORY_TEMP, gauge, x, gpu_memory_temperature_celsius", (),
     "gpu_memory_temperature_celsius is a name gputext writes itself"),
    # a counter `x` is x_total to Prometheus (OpenMetrics), and gpu_energy_joules_total is gputext's
    ("83, counter, energy, gpu_energy_joules", (), "gpu_energy_joules is a name gputext writes itself"),
    ("83, gauge, energy, gputext_build_info", (), "gputext_build_info is a name gputext writes itself"),
    ("83, counter, energy, DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION", (),
     "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION is a name gputext writes itself (a DCGM field)"),
    # the names in use: with another prefix, nv_up is gputext's
    ("83, gauge, energy, nv_up", ("--prefix", "nv_"), "nv_up is a name gputext writes itself"),
    # node_exporter's own: a file's node_textfile_scrape_error replaces the real one, which would hide errors
    ("83, gauge, energy, node_textfile_scrape_error", (),
     "node_textfile_scrape_error is in node_exporter's own namespace (node_, go_, process_, promhttp_)"),
    ("83, gauge, energy, go_goroutines", (), "go_goroutines is in node_exporter's own namespace"),
])
def test_a_name_gputext_writes_is_refused(node, tmp_path, line, args, problem):
    two_gpus(node)
    message = refused(node, tmp_path, f"DCGM_FI_DEV_GPU_TEMP, gauge, GPU temperature (in C).\n{line}\n", *args)
    assert f"counters.csv:2: {problem}" in message, message
    assert message.endswith("give the field a name of its own in the 4th column (see 'gputext collect --help')")


def test_gpu_up_is_a_name_of_the_file_under_another_prefix(node, tmp_path):
    two_gpus(node)
    counters = tmp_path / "counters.csv"
    counters.write_text("83, counter, Energy (mJ)., gpu_up\n")
    proc, s = node.collect("--prefix", "nv_", "--counters", str(counters), "--collectors", "nvml")
    assert proc.returncode == 0, proc.stderr
    assert value(s, "gpu_up_total", gpu="0") == 31_536_000_000 and value(s, "nv_up", gpu="0") == 1


@pytest.mark.parametrize("lines, problem", [
    (["138:1, counter, x, nvml_link", "138:2, gauge, x, nvml_link"], "nvml_link is a counter on line 1"),
    (["197, counter, x, nvml_pcie", "198, gauge, x, nvml_pcie_total"],
     "nvml_pcie_total and nvml_pcie (line 1) are one name to Prometheus"),
    (["138:1, counter, x, nvml_link", "139, counter, x, nvml_link"], "nvml_link is written with and without a scope"),
])
def test_two_families_of_one_name_are_refused(node, tmp_path, lines, problem):
    two_gpus(node)
    message = refused(node, tmp_path, "\n".join(lines) + "\n")
    assert f"counters.csv:2: {problem}" in message, message


@pytest.mark.parametrize("field, problem", [
    ("9" * 4000, "NVML field id 99999999999999999999... is out of range: NVML takes 0 to 4294967295"),
    ("9" * 5000, "5018 characters; a line (field, type, help, name) holds at most 4096"),
    (str(2 ** 32), "NVML field id 4294967296 is out of range"),
    ("138:" + "7" * 4000, "NVML field scope 77777777777777777777... is out of range"),
    (f"138:{2 ** 32}", "NVML field scope 4294967296 is out of range"),
])
def test_a_field_id_or_scope_nvml_cannot_take_is_refused(node, tmp_path, field, problem):
    two_gpus(node)
    message = refused(node, tmp_path, f"DCGM_FI_DEV_GPU_TEMP, gauge, x\n{field}, gauge, x, nvml_x\n")
    assert f"counters.csv:2: {problem}" in message, message
    assert len(message) < 300


def test_a_help_text_over_128_kib_is_refused(node, tmp_path):
    two_gpus(node)
    line = "DCGM_FI_DEV_GPU_TEMP, gauge, " + "h" * (128 * 1024 + 1)
    message = refused(node, tmp_path, line + "\n")
    assert f"counters.csv:1: {len(line)} characters; a line (field, type, help, name) holds at most 4096" in message


@pytest.mark.parametrize("content, problem", [
    (b"DCGM_FI_DEV_GPU_TEMP, gauge, \xff\xfe\n", "is not UTF-8 text (byte 29)"),
    (b"DCGM_FI_DEV_GPU_TEMP, gauge, a\0b\n", "counters.csv:1: control character U+0000 in the line"),
    (b"DCGM_FI_DEV_GPU_TEMP, gauge, a\x1b[2Jb\n", "counters.csv:1: control character U+001B in the line"),
    (b"DCGM_FI_DEV_GPU_TEMP, gauge,\n", "counters.csv:1: DCGM_FI_DEV_GPU_TEMP has no help text"),
    (b"#" * (2 * 1024 * 1024), "is larger than 1024 KiB"),
])
def test_a_file_gputext_cannot_read_as_a_counters_file_is_refused(node, tmp_path, content, problem):
    two_gpus(node)
    counters = tmp_path / "counters.csv"
    counters.write_bytes(content)
    proc = node.run("collect", "--out", str(tmp_path / "gpu.prom"), "--counters", str(counters))
    assert proc.returncode == 2 and len(proc.stderr.splitlines()) == 1, proc.stderr
    assert problem in proc.stderr


def test_dev_zero_and_a_fifo_are_refused_without_reading_or_waiting(node, tmp_path):
    two_gpus(node)
    fifo = tmp_path / "counters.fifo"
    os.mkfifo(fifo)  # nobody writes it: an open that blocks would hang the run (node.run's timeout)
    for path in ("/dev/zero", str(fifo), str(tmp_path)):
        proc = node.run("collect", "--out", str(tmp_path / "gpu.prom"), "--counters", path)
        assert proc.returncode == 2, proc.stderr
        (message,) = proc.stderr.splitlines()
        assert f"counters file {path} is not a regular file: name a CSV file" in message
    assert not (tmp_path / "gpu.prom").exists()


def test_a_field_a_gpu_does_not_answer_is_said_once(node, tmp_path):
    """GPU 1 has no memory temperature, and NVML field 999 is unknown to the driver: said once, by GPU,
    not on every run (state) nor every cycle (repeating mode); the rest is written."""
    two_gpus(node, memory_temperature=False)
    counters = tmp_path / "counters.csv"
    counters.write_text("DCGM_FI_DEV_MEMORY_TEMP, gauge, Memory temperature (in C).\n"
                        "DCGM_FI_DEV_GPU_TEMP, gauge, GPU temperature (in C).\n"
                        "999, gauge, Not a field this driver has., nvml_nine\n")
    said = {f"gputext: counters file {counters}: GPU 0 gave no value for nvml_nine (not supported there); left out",
            f"gputext: counters file {counters}: GPU 1 gave no value for DCGM_FI_DEV_MEMORY_TEMP, nvml_nine "
            "(not supported there); left out"}
    proc, s = node.collect("--counters", str(counters), "--collectors", "nvml")
    assert proc.returncode == 0 and set(proc.stderr.splitlines()) == said, proc.stderr
    assert value(s, "DCGM_FI_DEV_MEMORY_TEMP", gpu="0") == 52 and value(s, "DCGM_FI_DEV_MEMORY_TEMP", gpu="1") is None
    proc, _ = node.collect("--counters", str(counters), "--collectors", "nvml")
    assert proc.returncode == 0 and proc.stderr == ""  # the same boot: said already
    # without state, the repeating mode says it once for its many cycles
    proc = node.run("collect", "--out", str(tmp_path / "gpu.prom"), "--counters", str(counters),
                    "--collectors", "nvml", "--interval", "50ms", "--count", "3", state=False)
    assert proc.returncode == 0
    assert sorted(line for line in proc.stderr.splitlines() if "gave no value" in line) == sorted(said)


def test_a_field_of_a_collector_that_did_not_run_is_not_blamed_on_the_gpu(node, tmp_path):
    two_gpus(node)
    counters = tmp_path / "counters.csv"
    counters.write_text("DCGM_FI_DEV_GPU_TEMP, gauge, GPU temperature (in C).\n"
                        "DCGM_FI_DEV_PCIE_REPLAY_COUNTER, counter, Total number of PCIe retries.\n")
    proc, s = node.collect("--counters", str(counters), "--collectors", "nvml")
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    assert value(s, "DCGM_FI_DEV_GPU_TEMP", gpu="1") == 41


# --- properties ----------------------------------------------------------------------------------------

DCGM_NAMES = sorted(set(known()) | set(LABEL_FIELDS) | NOT_FROM_NVML)
GPUTEXT_NAMES = sorted(m.name("gpu_") for m in METRICS)
_name_chars = string.ascii_letters + string.digits + "_:"
metric_names = st.one_of(st.sampled_from(GPUTEXT_NAMES + ["nvml_a", "nvml_a_total", "nvml_b", "gpu_upp",
                                                          "node_textfile_scrape_error", "go_goroutines"]),
                         st.text(_name_chars, min_size=1, max_size=12), st.text(max_size=6))
fields = st.one_of(
    st.sampled_from(DCGM_NAMES), st.sampled_from(["DCGM_FI_DEV_GPU_TEMPP", "DCGM_EXP_X", "DCGM_FI_"]),
    st.sampled_from(["NVML_FI_DEV_MEMORY_TEMP", "NVML_FI_DEV_PCIE_COUNT_TX_BYTES", "NVML_FI_NOPE"]),
    st.builds(lambda n, s: f"{n}:{s}" if s is not None else str(n),
              st.one_of(st.integers(0, 400), st.integers(0, 2 ** 34)), st.none() | st.integers(0, 2 ** 33)),
    st.text(string.digits + ":", min_size=1, max_size=30), st.text(max_size=8))
kinds = st.one_of(st.sampled_from(["gauge", "counter", "label"]), st.text(max_size=6))
helps = st.one_of(st.text(max_size=30), st.sampled_from(['"quoted, with a comma"', "back\\slash", "tab\there"]))
entries = st.builds(lambda f, k, h, n, sep: sep.join([f, k, h] + ([n] if n is not None else [])),
                    fields, kinds, helps, st.none() | metric_names, st.sampled_from([", ", ",", " ,  "]))
lines = st.one_of(entries, entries, entries, st.sampled_from(["", "# a comment", "   ", "#"]), st.text(max_size=20))
files = st.lists(lines, max_size=8).map("\n".join)
# files that are mostly right, so that runs get as far as writing: known names, small field ids, a help text
plain_helps = st.text(st.characters(blacklist_categories=("Cc", "Cs")), min_size=1, max_size=20)
good_entries = st.one_of(
    st.builds(", ".join, st.tuples(st.sampled_from(sorted(known())), st.sampled_from(["gauge", "counter"]),
                                   plain_helps)),
    st.builds(lambda f, s, k, h, n: f"{f}{s}, {k}, {h}, {n}", st.integers(0, 300).map(str),
              st.sampled_from(["", ":0", ":3"]), st.sampled_from(["gauge", "counter"]), plain_helps,
              st.from_regex(r"nvml_[a-z]{1,3}(_total)?", fullmatch=True)))
good_files = st.lists(good_entries, min_size=1, max_size=6).map("\n".join)


@settings(max_examples=3 * settings.default.max_examples, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=files, prefix=st.sampled_from(["gpu_", "nv_"]))
def test_any_file_is_read_or_refused_with_one_line(tmp_path, text, prefix):
    path = tmp_path / "counters.csv"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    try:
        counters = parse_counters(path, prefix)
    except CountersError as err:
        message = str(err)
        assert "\n" not in message and len(message) < 600
        assert message.startswith(str(path)) or message.startswith(f"counters file {path}")
        return
    written = written_names(prefix)
    families = {}
    for field in counters.fields:
        stem = re.sub("_total$", "", field.name)
        # neither a name gputext writes nor one of node_exporter's own
        assert stem not in written and not field.name.startswith(("node_", "go_"))
        assert families.setdefault(stem, (field.name, field.type)) == (field.name, field.type)  # one family
        assert 0 <= field.field_id < 2 ** 32 and (field.scope is None or 0 <= field.scope < 2 ** 32)
    assert counters.metrics or counters.labels or counters.fields
    assert {d.name for d in counters.metrics} <= set(known())


@pytest.fixture(scope="module")
def exporter(tmp_path_factory):
    with NodeExporter(tmp_path_factory.mktemp("textfile")) as running:
        yield running


PREVIOUS = "# a previous run's file\ngpu_up{gpu=\"0\",uuid=\"x\"} 1\n"


@settings(max_examples=max(5, settings.default.max_examples // 8), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(text=st.one_of(files, good_files), naming=st.sampled_from(DCGM_NAMINGS))
def test_a_run_with_any_file_exits_as_documented_and_writes_what_node_exporter_reads(node, exporter, text, naming):
    two_gpus(node)
    counters = node.root / "counters.csv"
    counters.write_text(text, encoding="utf-8", errors="surrogatepass")
    out = exporter.directory / "gpu.prom"
    out.write_text(PREVIOUS)
    proc = node.run("collect", "--out", str(out), "--naming", naming, "--counters", str(counters), "--collectors",
                    "nvml")
    assert proc.returncode in (0, 2), proc.stderr
    assert "Traceback" not in proc.stderr
    assert all(line.startswith("gputext: ") for line in proc.stderr.splitlines()), proc.stderr
    if proc.returncode == 2:
        assert len(proc.stderr.splitlines()) == 1 and out.read_text() == PREVIOUS
        return
    written = out.read_text()
    assert written != PREVIOUS
    lint = promtool_check(written.encode())
    assert lint.returncode in (0, 3), lint.stderr  # 3: lint problems only, checked below
    # promtool may lint the names the file chose (camelCase labels of dcgm-exporter, a counter without
    # _total, a user's abbreviation): those are the file's; gputext's own names must pass
    chosen = {name.removesuffix("_total") for name, _ in parse_exposition(written)}  # as prometheus_client reads them
    chosen = {name for name in chosen if name.startswith("DCGM_") or name in text}
    problems = [line for line in lint.stderr.decode().splitlines()
                if line.split(" ")[0].removesuffix("_total") not in chosen]
    assert not problems, problems
    published = parse_exposition(exporter.scrape())
    assert value(published, "node_textfile_scrape_error") == 0
    assert value(published, "DCGM_FI_DEV_GPU_TEMP", gpu="0") in (45, None)

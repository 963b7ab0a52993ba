"""tests/real_gpu/compare.py, the script a session with a lent GPU runs first: its NVML capture against the
fake GPU, its parser of `nvidia-smi -q -d TEMPERATURE`, the unit it infers for the traffic counters, and
its comparison of nvidia-smi's temperature rows with what gputext writes."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from fakegpu import A100_THRESHOLDS, Scenario, fake_env, h100, pre_ada, with_gpm

SCRIPT = Path(__file__).resolve().parent / "real_gpu" / "compare.py"
_spec = importlib.util.spec_from_file_location("real_gpu_compare", SCRIPT)
compare = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(compare)

# nvidia-smi -q -d TEMPERATURE of an H100 on a driver that prints the T.Limit form, and of an A100
HOPPER = """
==============NVSMI LOG==============

Timestamp                                 : Mon Dec  7 16:00:00 2026
Driver Version                            : 580.159.04
CUDA Version                              : 13.0

Attached GPUs                             : 2
GPU 00000000:18:00.0
    Temperature
        GPU Current Temp                  : 41 C
        GPU T.Limit Temp                  : 46 C
        GPU Shutdown T.Limit Temp         : -5 C
        GPU Slowdown T.Limit Temp         : -2 C
        GPU Max Operating T.Limit Temp    : 0 C
        GPU Target Temperature            : N/A
        Memory Current Temp               : 52 C
        Memory Max Operating T.Limit Temp : 0 C

GPU 00000000:2A:00.0
    Temperature
        GPU Current Temp                  : 41 C
        GPU Shutdown Temp                 : 92 C
        GPU Slowdown Temp                 : 89 C
        GPU Max Operating Temp            : 85 C
        GPU Target Temperature            : N/A
        Memory Current Temp               : 52 C
        Memory Max Operating Temp         : 95 C
"""


def test_the_temperature_page_parses_by_pci_bus_id():
    rows = compare.parse_smi_temperature(HOPPER)
    assert rows["00000000:18:00.0"] == {
        "GPU Current Temp": 41, "GPU T.Limit Temp": 46, "GPU Shutdown T.Limit Temp": -5,
        "GPU Slowdown T.Limit Temp": -2, "GPU Max Operating T.Limit Temp": 0, "GPU Target Temperature": None,
        "Memory Current Temp": 52, "Memory Max Operating T.Limit Temp": 0}
    assert rows["00000000:2A:00.0"]["GPU Slowdown Temp"] == 89


ROW_NAME = st.text(st.sampled_from("ABCGMPTUaeilmoprstu. "), min_size=1, max_size=30).map(str.strip).filter(
    lambda name: name and ":" not in name)


@settings(max_examples=200)
@given(st.text(max_size=400))
def test_any_text_parses_without_error(text):
    assert isinstance(compare.parse_smi_temperature(text), dict)


@settings(max_examples=100)
@given(st.dictionaries(ROW_NAME, st.one_of(st.none(), st.integers(-300, 300)), max_size=8))
def test_rows_round_trip(rows):
    text = "GPU 00000000:18:00.0\n    Temperature\n" + "".join(
        f"        {name:34}: {'N/A' if value is None else f'{value} C'}\n" for name, value in rows.items())
    assert compare.parse_smi_temperature(text) == {"00000000:18:00.0": rows}


def test_the_unit_gpm_implies_for_a_counter():
    rate = 1000.0  # MiB/s over 2 s
    at = lambda value, us: {"value": value, "timestamp_us": us, "return": 0}  # noqa: E731
    kib = compare.implied_unit(at(5_000, 1_000_000), at(5_000 + 2_048_000, 3_000_000), rate)
    as_bytes = compare.implied_unit(at(0, 1_000_000), at(2_097_152_000, 3_000_000), rate)
    assert (kib, as_bytes) == (1024, 1)
    assert (compare.unit_name(kib), compare.unit_name(as_bytes), compare.unit_name(1100)) == ("KiB", "bytes", "KiB")
    assert compare.unit_name(compare.implied_unit(at(7, 0), at(7, 2_000_000), rate)) == "no traffic"
    assert compare.implied_unit(at(0, 0), {"return": 3, "timestamp_us": 9}, rate) is None
    assert compare.unit_name(32.0) == "unclear (32 bytes per unit)"


def test_the_nvml_capture_against_the_fake(fake_libdir, tmp_path):
    scenario = Scenario([with_gpm(h100(0)), pre_ada(h100(1), A100_THRESHOLDS)]).write(tmp_path / "gpus.txt")
    proc = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path / "out"), "--nvml-only", "--window", "0.15"],
                          env=fake_env(fake_libdir, scenario), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "gpu 0  nvlink transmit (field 138, GPM 61): no traffic" in proc.stdout  # the fake's counters stand
    capture = json.loads((tmp_path / "out" / "nvml-capture.json").read_text())
    h100_, a100 = capture["gpus"]
    assert {t: a.get("value", a.get("error")) for t, a in h100_["thresholds"].items()} == {
        "0": 92, "1": 89, "2": 95, "3": 87, "4": 3, "5": 3, "6": 3, "7": 3}
    assert h100_["margin"] == {"value": 46}
    version = h100_["nvlink_version"]
    assert (version["function"], version["field_166"]["value"]) == ({"value": 6}, 6)
    assert {fid: (f["type_name"], f["value"]) for fid, f in h100_["tlimit_fields"].items()} == {
        "193": ("signed int", -5), "194": ("signed int", -2), "195": ("signed int", 0), "196": ("signed int", 0)}
    traffic = h100_["traffic"]
    assert traffic["gpm_mib_per_second"] == {"20": 2384.0, "21": 8680.0, "60": 18000.0, "61": 18900.0}
    first, last = traffic["fields"]["139:4294967295"]  # all links: the sum of the 18
    assert first["value"] == last["value"] == sum(2_000_000 + link * 1000 for link in range(18))
    assert {"197:0", "198:0", "138:17"} <= set(traffic["fields"]) and "138:18" not in traffic["fields"]
    assert a100["margin"] == {"error": 3} and {f["return"] for f in a100["tlimit_fields"].values()} == {3}
    assert a100["thresholds"]["3"] == {"value": 85}


def test_temperature_rows_agree_with_what_gputext_writes(node):
    from conftest import parse_exposition

    node.write([h100(0), pre_ada(h100(1), A100_THRESHOLDS)])
    proc = node.run("collect", "--detail", "full", "--out", "-")
    assert proc.returncode == 0, proc.stderr
    series = parse_exposition(proc.stdout)
    rows = compare.parse_smi_temperature(HOPPER)
    checks = compare.temperature_checks(rows["00000000:18:00.0"], series, {"gpu": "0"})
    checks += compare.temperature_checks(rows["00000000:2A:00.0"], series, {"gpu": "1"})
    assert [(what, agree) for what, _, _, agree in checks] == [
        ("GPU T.Limit Temp", True), ("GPU Shutdown T.Limit Temp", True), ("GPU Slowdown T.Limit Temp", True),
        ("GPU Max Operating T.Limit Temp", True), ("Memory Max Operating T.Limit Temp", True),
        ("GPU Shutdown Temp", True), ("GPU Slowdown Temp", True), ("GPU Max Operating Temp", True),
        ("Memory Max Operating Temp", True)]
    # a value nvidia-smi prints as N/A must be absent from gputext's file; a different one is told
    rows = {"GPU Slowdown Temp": None, "GPU Shutdown Temp": 90}
    assert [agree for *_, agree in compare.temperature_checks(rows, series, {"gpu": "1"})] == [False, False]


def test_the_whole_comparison_against_the_fake_and_a_stand_in_nvidia_smi(fake_libdir, tmp_path):
    """nvidia-smi as an H100 node's prints it (the fake's values), gputext from the fake: all agree."""
    from fakegpu import default_system, h100_uuid

    gpu = h100(0)
    csv = ", ".join(["0", h100_uuid(0), gpu["name"], "00000000:18:00.0", gpu["serial"], gpu["vbios_version"],
                     default_system()["driver_version"], "P0", "41", "52", "412.34", "700.00", "81559", "542",
                     "41477", "87", "43", "1980", "1980", "2619", "1980", "1980", "2619", "5", "16",
                     "Enabled", "Disabled", "Enabled", "Default"])
    page = HOPPER.split("GPU 00000000:2A:00.0")[0]
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    smi = bin_dir / "nvidia-smi"
    smi.write_text(f"#!{sys.executable}\nimport sys\n"
                   f"print({page!r} if '-q' in sys.argv else {csv!r})\n")
    smi.chmod(0o755)
    scenario = Scenario([gpu]).write(tmp_path / "gpus.txt")
    env = fake_env(fake_libdir, scenario)
    env["PATH"] = f"{bin_dir}:{env['PATH']}"
    env["PYTHONPATH"] = str(SCRIPT.parent.parent.parent)  # gputext from this tree
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, str(SCRIPT), str(out), "--window", "0.15"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = (out / "comparison.txt").read_text()
    assert report.endswith("\n0 value(s) differ\n") and "GPU Slowdown T.Limit Temp" in report
    assert {p.name for p in out.iterdir()} >= {"nvml-capture.json", "nvidia-smi.csv", "nvidia-smi-temperature.txt",
                                               "gputext.prom", "comparison.txt"}

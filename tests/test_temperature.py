"""Temperature limits as NVML gives them: absolute thresholds in °C (nvmlDeviceGetTemperatureThreshold, read
once with the inventory), the margin to the T.Limit (nvmlDeviceGetMarginTemperature, Ada and newer, every
run), and the T.Limit fields 193-196, which are signed offsets from the T.Limit, not temperatures."""

from conftest import value
from fakegpu import A100_THRESHOLDS, T4_THRESHOLDS, Field, h100, pre_ada

THRESHOLD = "gpu_temperature_threshold_celsius"
MARGIN = "gpu_temperature_margin_celsius"
OFFSET = "gpu_temperature_tlimit_offset_celsius"
NAMES = ("shutdown", "slowdown", "memory_max", "gpu_max")


def thresholds(s, name, gpu):
    return {t: value(s, name, gpu=gpu, threshold=t) for t in NAMES}


def test_an_idle_h100_writes_degrees_and_its_margin_not_offsets_as_degrees(node):
    node.write([h100(0, temperature=41)])
    proc, s = node.collect()
    assert proc.returncode == 0, proc.stderr
    # standard: the slowdown temperature in degrees (not the T.Limit field's -2) and the margin
    assert thresholds(s, THRESHOLD, "0") == {"shutdown": None, "slowdown": 89, "memory_max": None, "gpu_max": None}
    assert value(s, MARGIN, gpu="0") == 46
    assert not [n for n, _ in s if n == OFFSET]
    proc, s = node.collect("--detail", "full")
    assert thresholds(s, THRESHOLD, "0") == {"shutdown": 92, "slowdown": 89, "memory_max": 95, "gpu_max": 87}
    assert thresholds(s, OFFSET, "0") == {"shutdown": -5, "slowdown": -2, "memory_max": 0, "gpu_max": 0}


def test_older_gpus_write_the_thresholds_they_answer_and_no_margin(node):
    node.write([pre_ada(h100(0), A100_THRESHOLDS), pre_ada(h100(1), T4_THRESHOLDS)])
    proc, s = node.collect("--detail", "full")
    assert proc.returncode == 0, proc.stderr
    assert thresholds(s, THRESHOLD, "0") == {"shutdown": 92, "slowdown": 89, "memory_max": 95, "gpu_max": 85}
    assert thresholds(s, THRESHOLD, "1") == {"shutdown": 96, "slowdown": 93, "memory_max": None, "gpu_max": 85}
    assert not [n for n, _ in s if n in (MARGIN, OFFSET)]


def test_past_the_tlimit_the_margin_and_offsets_are_negative_numbers_not_markers(node):
    # -1 is NVML_VALUE_NOT_AVAILABLE for unsigned values only: a margin or an offset of -1 is a value
    gpu = h100(0, temperature=88)  # 1 °C past its 87 °C T.Limit
    gpu["fields"][195] = Field(-1, type="sint")
    node.write([gpu])
    proc, s = node.collect("--detail", "full")
    assert value(s, MARGIN, gpu="0") == -1
    assert value(s, OFFSET, gpu="0", threshold="memory_max") == -1


def test_thresholds_are_read_once_and_kept_with_the_inventory(node):
    node.write([h100(0), pre_ada(h100(1), A100_THRESHOLDS)])
    counts = []
    for _ in range(2):
        node.calls.unlink(missing_ok=True)
        proc, s = node.collect("--detail", "full")
        assert proc.returncode == 0, proc.stderr
        assert value(s, THRESHOLD, gpu="1", threshold="gpu_max") == 85
        counts.append({gpu: (calls.get("nvmlDeviceGetTemperatureThreshold", 0),
                             calls.get("nvmlDeviceGetMarginTemperature", 0))
                       for gpu, calls in node.call_counts().items() if gpu != "system"})
    # the margin changes, so it is read every run (the A100's answer is NOT_SUPPORTED)
    assert counts == [{0: (4, 1), 1: (4, 1)}, {0: (0, 1), 1: (0, 1)}]


def test_a_gpu_that_answers_no_threshold_writes_none(node):
    node.write([h100(0, temperature_threshold={}, temperature_margin=None)])
    proc, s = node.collect("--detail", "full")
    assert proc.returncode == 0, proc.stderr
    assert not [n for n, _ in s if n in (THRESHOLD, MARGIN)]
    assert value(s, "gpu_temperature_celsius", gpu="0") == 41


def test_a_counters_file_field_keeps_a_signed_minus_one(node, tmp_path):
    # an NVML field a counters file adds is read in the same call and written as NVML answered it
    gpu = h100(0)
    gpu["fields"][194] = Field(-1, type="sint")
    node.write([gpu])
    counters = tmp_path / "counters.csv"
    counters.write_text("NVML_FI_DEV_TEMPERATURE_SLOWDOWN_TLIMIT, gauge, Slowdown T.Limit offset., slowdown_tlimit\n")
    proc, s = node.collect("--naming", "gputext", "--counters", str(counters), "--collectors", "nvml")
    assert proc.returncode == 0, proc.stderr
    assert value(s, "slowdown_tlimit", gpu="0") == -1

"""NVLink per-link and PCIe counters end to end against the fake NVML."""

import pytest

from conftest import names_for_gpu, value
from fakegpu import H100_NVLINKS, Field, h100, read_call_blocks, with_gpm
from realtools import promtool_check

KIB = 1024


def hgx_with_link_down(tx_step=1000, rx_step=2000):
    """8 H100 x 18 links; link 3 of GPU 2 is down; every link's data counters advance by a step per tick."""
    gpus = []
    for index in range(8):
        gpu = h100(index)
        for link in range(H100_NVLINKS):
            gpu["fields"][(138, link)] = Field(10_000 * (index + 1) + link, type="ull", step=tx_step)
            gpu["fields"][(139, link)] = Field(20_000 * (index + 1) + link, type="ull", step=rx_step)
        gpus.append(gpu)
    gpus[2]["nvlink_state"][3] = 0
    gpus[2]["fields"][(165, 3)] = Field(0, type="uint")
    return gpus


def test_per_link_bytes_are_exact_and_only_grow(node):
    node.write(hgx_with_link_down())
    assert node.collect("--collectors", "nvlink", tick=0)[0].returncode == 0  # learns links and fields
    runs = []
    for tick in (5, 6):
        proc, s = node.collect("--collectors", "nvlink", tick=tick)
        assert proc.returncode == 0 and proc.stderr == "", proc.stderr
        runs.append(s)
    first, second = runs
    for index in range(8):
        for link in range(H100_NVLINKS):
            labels = {"gpu": str(index), "link": str(link)}
            tx = value(first, "gpu_nvlink_transmit_bytes_total", **labels)
            rx = value(first, "gpu_nvlink_receive_bytes_total", **labels)
            if (index, link) == (2, 3):
                assert tx is None and rx is None
                assert value(first, "gpu_nvlink_up", **labels) == 0
                assert value(first, "gpu_nvlink_raw_transmit_bytes_total", **labels) is None
                continue
            assert value(first, "gpu_nvlink_up", **labels) == 1
            assert tx == (10_000 * (index + 1) + link + 5 * 1000) * KIB
            assert rx == (20_000 * (index + 1) + link + 5 * 2000) * KIB
            assert value(second, "gpu_nvlink_transmit_bytes_total", **labels) == tx + 1000 * KIB
            assert value(second, "gpu_nvlink_receive_bytes_total", **labels) == rx + 2000 * KIB
    for (name, labels), v in first.items():
        if name.endswith("_total"):
            assert second[(name, labels)] >= v, (name, labels)


def test_link_speed_errors_and_peer(node):
    gpu = h100(0)
    gpu["fields"][(161, 4)] = 7
    gpu["fields"][(163, 4)] = 2
    node.write([gpu])
    proc, s = node.collect("--detail", "full")
    link4 = {"gpu": "0", "link": "4"}
    assert value(s, "gpu_nvlink_speed_bytes_per_second", **link4) == 26_562e6
    assert value(s, "gpu_nvlink_link_errors_total", **link4, type="replay") == 7
    assert value(s, "gpu_nvlink_link_errors_total", **link4, type="crc") == 2
    assert value(s, "gpu_nvlink_link_errors_total", **link4, type="recovery") == 0
    assert value(s, "gpu_nvlink_link_errors_total", **link4, type="recovery_failed") is None  # NVLink 5 only
    # NVML answers nvmlNvlinkVersion_t (6 = NVLink 4.0), written as the version it names
    assert value(s, "gpu_nvlink_info", **link4, version="4.0", remote_pci_bus_id="00000000:05:00.0") == 1
    assert value(s, "gpu_nvlink_info", gpu="0", link="17", remote_pci_bus_id="00000000:08:00.0") == 1
    assert value(s, "gpu_nvlink_raw_transmit_bytes_total", **link4) == (1_100_000 + 4 * 1000) * KIB
    # the per-GPU sum: every link's replays, recoveries and CRC errors (only link 4 has any)
    assert value(s, "gpu_nvlink_errors_total", gpu="0") == 9


def test_standard_detail_keeps_link_traffic_and_state_and_sums_errors(node):
    gpu = h100(0)
    gpu["fields"][(161, 4)] = 7
    gpu["fields"][(163, 4)] = 2
    gpu["fields"][(161, 9)] = 1
    node.write([gpu])
    proc, s = node.collect("--collectors", "nvlink")
    assert proc.returncode == 0, proc.stderr
    families = {name for name, _ in s if name.startswith("gpu_")}
    assert families == {"gpu_nvlink_up", "gpu_nvlink_transmit_bytes_total", "gpu_nvlink_receive_bytes_total",
                        "gpu_nvlink_errors_total"}
    assert value(s, "gpu_nvlink_errors_total", gpu="0") == 10
    assert value(s, "gpu_nvlink_up", gpu="0", link="4") == 1
    # the peer of each link (one NVML call per link, static) is not read where nvlink_info is not written
    calls = node.call_counts()[0]
    assert calls["nvmlDeviceGetFieldValues"] >= 1 and "nvmlDeviceGetNvLinkRemotePciInfo_v2" not in calls


def test_blackwell_byte_counters_and_recovery_events(node):
    gpu = h100(0, nvlink_state={0: 1, 1: 1}, nvlink_version={0: 7, 1: 7}, nvlink_remote_pci={})
    fields = {fid: v for fid, v in gpu["fields"].items() if not isinstance(fid, tuple)}
    fields[91] = 2
    for link in (0, 1):
        fields[(165, link)] = Field(1, type="uint")
        fields[(202, link)] = 5_000_000 + link  # NVLink5: bytes, not KiB
        fields[(204, link)] = 6_000_000 + link
        fields[(214, link)] = 1
        fields[(215, link)] = 3
    gpu["fields"] = fields
    node.write([gpu])
    proc, s = node.collect("--detail", "full")
    assert proc.returncode == 0, proc.stderr
    assert value(s, "gpu_nvlink_transmit_bytes_total", gpu="0", link="1") == 5_000_001
    assert value(s, "gpu_nvlink_receive_bytes_total", gpu="0", link="0") == 6_000_000
    assert value(s, "gpu_nvlink_link_errors_total", gpu="0", link="0", type="recovery") == 3
    assert value(s, "gpu_nvlink_link_errors_total", gpu="0", link="0", type="recovery_failed") == 1
    assert value(s, "gpu_nvlink_link_errors_total", gpu="0", link="0", type="replay") is None
    assert value(s, "gpu_nvlink_errors_total", gpu="0") == 6  # recoveries of both links; failed ones are among them
    assert value(s, "gpu_nvlink_info", gpu="0", link="0", version="5.0", remote_pci_bus_id="") == 1


def test_counters_beyond_two_to_the_53_are_written_exactly(node):
    """A busy NVLink passes 2**53 bytes (9 PB) within hours: a float would round the counter (and rate()
    over two rounded readings is off); the integer the driver gives is written, digit for digit."""
    gpu = h100(0)
    kib = 2 ** 53 // KIB + 12_345  # in KiB, as field 138 counts
    gpu["fields"][(138, 0)] = Field(kib, type="ull")
    node.write([gpu])
    proc, s = node.collect("--collectors", "nvlink")
    assert proc.returncode == 0, proc.stderr
    line = next(l for l in proc.stdout.splitlines()
                if l.startswith('gpu_nvlink_transmit_bytes_total{') and 'link="0"' in l)
    assert line.endswith(f" {kib * KIB}")  # 9007199267382272, not 9.007199267382272e+15


@pytest.mark.parametrize("link_count_field", [0, None], ids=["count-0", "count-unsupported"])
def test_gpu_without_nvlink_writes_no_nvlink_series_and_no_error(node, link_count_field):
    gpu = h100(0, nvlink_state={}, nvlink_version={}, nvlink_remote_pci={}, nvlink_remote_type={})
    gpu["fields"] = {fid: v for fid, v in gpu["fields"].items() if not isinstance(fid, tuple)}
    gpu["fields"][91] = link_count_field
    node.write([gpu])
    for _ in range(2):  # cold, then warm from the cache
        proc, s = node.collect("--collectors", "nvml,nvlink")
        assert proc.returncode == 0 and proc.stderr == ""
        assert not [n for n in names_for_gpu(s, "0") if n.startswith("gpu_nvlink")]
        assert value(s, "gputext_collector_success", collector="nvlink") == 1
    warm = node.call_counts()[0]
    assert warm.get("nvmlDeviceGetNvLinkState", 0) <= 36  # probed once, when the cache was made


def test_nvlink_warm_run_is_one_field_call_per_gpu(node):
    node.write([h100(0), h100(1)])
    node.collect("--collectors", "nvlink")
    node.calls.unlink()
    node.collect("--collectors", "nvlink")
    for gpu in (0, 1):
        counts = node.call_counts()[gpu]
        assert counts.get("nvmlDeviceGetFieldValues") == 1
        assert "nvmlDeviceGetNvLinkRemotePciInfo_v2" not in counts  # peers come from the cache


def test_pcie_counters_link_and_errors(node):
    gpu = h100(0, pcie_gen=4, pcie_gen_max=5, pcie_width=8, pcie_width_max=16)
    gpu["fields"].update({197: 123_456_789_012, 198: 234_567_890_123, 94: Field(17, type="uint"),
                          95: Field(1, type="uint"), 173: 11, 176: 2})
    node.write([gpu])
    proc, s = node.collect("--detail", "full", "--collectors", "pcie")
    assert proc.returncode == 0, proc.stderr
    d = {"gpu": "0"}
    assert value(s, "gpu_pcie_transmit_bytes_total", **d) == 123_456_789_012
    assert value(s, "gpu_pcie_receive_bytes_total", **d) == 234_567_890_123
    assert value(s, "gpu_pcie_replays_total", **d) == 17
    assert value(s, "gpu_pcie_replay_rollovers_total", **d) == 1
    assert value(s, "gpu_pcie_errors_total", **d, type="correctable") == 11
    assert value(s, "gpu_pcie_errors_total", **d, type="bad_tlp") == 2
    assert value(s, "gpu_pcie_errors_total", **d, type="fatal") == 0
    assert value(s, "gpu_pcie_link_generation", **d) == 4
    assert value(s, "gpu_pcie_link_max_generation", **d) == 5
    assert value(s, "gpu_pcie_link_width", **d) == 8
    assert value(s, "gpu_pcie_link_max_width", **d) == 16
    assert value(s, "gpu_pcie_transmit_bytes_per_second", **d) is None
    assert "nvmlDeviceGetPcieThroughput" not in node.call_counts()[0]  # never the 20 ms sample


def test_pcie_sampled_rate_only_where_counters_are_missing(node):
    old = h100(0, pcie_tx_kbps=1500, pcie_rx_kbps=2500)
    del old["fields"][197], old["fields"][198]
    new = h100(1)
    node.write([old, new])
    proc, s = node.collect("--collectors", "pcie")
    assert proc.returncode == 0, proc.stderr
    assert value(s, "gpu_pcie_transmit_bytes_per_second", gpu="0") == 1_500_000
    assert value(s, "gpu_pcie_receive_bytes_per_second", gpu="0") == 2_500_000
    assert value(s, "gpu_pcie_transmit_bytes_total", gpu="0") is None
    assert value(s, "gpu_pcie_transmit_bytes_per_second", gpu="1") is None
    counts = node.call_counts()
    assert counts[0]["nvmlDeviceGetPcieThroughput"] == 2
    assert "nvmlDeviceGetPcieThroughput" not in counts[1]


def without_pcie_counters(gpu: dict) -> dict:
    del gpu["fields"][197], gpu["fields"][198]
    return gpu


def two_gpus_without_pcie_counters() -> list:
    return [without_pcie_counters(h100(0, pcie_tx_kbps=1500, pcie_rx_kbps=2500)),
            without_pcie_counters(h100(1, pcie_tx_kbps=3000, pcie_rx_kbps=4000))]


def test_repeating_mode_samples_pcie_in_one_thread_not_one_per_cycle(node, tmp_path):
    """The first cycle samples both directions of both GPUs at once (4 threads); every later cycle (the
    sample interval is shorter than the cycle's here) hands its samples to the one sampler thread. A
    thread per sample and cycle would show 4 x 6 threads."""
    node.write(two_gpus_without_pcie_counters())
    out = tmp_path / "gpu.prom"
    proc = node.run("collect", "--out", str(out), "--collectors", "pcie", "--interval", "150ms", "--count", "6",
                    "--pcie-sample-interval", "100ms")
    assert proc.returncode == 0, proc.stderr
    from conftest import parse_exposition

    s = parse_exposition(out.read_text())  # the last cycle: the values of the pass the fifth asked for
    assert value(s, "gpu_pcie_transmit_bytes_per_second", gpu="0") == 1_500_000
    assert value(s, "gpu_pcie_receive_bytes_per_second", gpu="0") == 2_500_000
    assert value(s, "gpu_pcie_transmit_bytes_per_second", gpu="1") == 3_000_000
    assert value(s, "gpu_pcie_receive_bytes_per_second", gpu="1") == 4_000_000
    blocks = read_call_blocks(node.calls)
    assert blocks[-1]["system"]["pcie_throughput_threads"] == 4 + 1
    # the first cycle's 4 samples, then at most a pass of 4 per later cycle: fewer where a pass was still
    # running when the next cycle came (a loaded machine), and the sixth cycle's pass may be stopped by
    # the end of the run; at least one whole pass
    calls = sum(block[dev].get("nvmlDeviceGetPcieThroughput", 0) for block in blocks for dev in (0, 1))
    assert 4 + 4 <= calls <= 4 + 4 * 5


def test_repeating_mode_samples_pcie_once_per_sample_interval(node, tmp_path):
    """At the default sample interval (15 s) six cycles of 150 ms write the first cycle's samples: no
    pass, no sampler thread."""
    node.write(two_gpus_without_pcie_counters())
    out = tmp_path / "gpu.prom"
    proc = node.run("collect", "--out", str(out), "--collectors", "pcie", "--interval", "150ms", "--count", "6")
    assert proc.returncode == 0, proc.stderr
    from conftest import parse_exposition

    s = parse_exposition(out.read_text())
    assert value(s, "gpu_pcie_receive_bytes_per_second", gpu="1") == 4_000_000
    blocks = read_call_blocks(node.calls)
    assert blocks[-1]["system"]["pcie_throughput_threads"] == 4
    assert sum(block[dev].get("nvmlDeviceGetPcieThroughput", 0) for block in blocks for dev in (0, 1)) == 4


def test_show_stops_the_sampler_thread_and_exits(node):
    """`show` collects twice: with a sample interval shorter than its look, the second collection starts
    the sampler; closing the run stops it (between two samples, before NVML shuts down) and the
    process exits. The sampler may have been stopped before its first sample."""
    node.write(two_gpus_without_pcie_counters())
    proc = node.run("show", "--sample", "50ms", "--collectors", "nvml,pcie", "--pcie-sample-interval", "10ms")
    assert proc.returncode == 0, proc.stderr
    from gputext.show import bytes_per_second

    assert bytes_per_second(4_000_000) in proc.stdout  # GPU 1's receive rate, from the first collection
    assert read_call_blocks(node.calls)[-1]["system"]["pcie_throughput_threads"] in (4, 5)


def test_gpus_whose_gpm_writes_the_pcie_rates_are_not_sampled(node):
    """At --detail full the gpm collector writes GPM's PCIe rates: the 20 ms samples would repeat them."""
    rates = {20: 2384, 21: 1200}  # MiB/s
    node.write([with_gpm(without_pcie_counters(h100(0, pcie_tx_kbps=1500)), rates),
                without_pcie_counters(h100(1, pcie_tx_kbps=3000, pcie_rx_kbps=4000))])
    proc, s = node.collect("--collectors", "pcie,gpm", "--detail", "full", "--gpm-window", "150ms")
    assert proc.returncode == 0, proc.stderr
    assert value(s, "gpu_gpm_pcie_transmit_bytes_per_second", gpu="0") == 2384 * 2**20
    assert value(s, "gpu_gpm_pcie_receive_bytes_per_second", gpu="0") == 1200 * 2**20
    assert value(s, "gpu_pcie_transmit_bytes_per_second", gpu="0") is None
    assert value(s, "gpu_pcie_transmit_bytes_per_second", gpu="1") == 3_000_000  # no GPM: sampled
    counts = node.call_counts()
    assert "nvmlDeviceGetPcieThroughput" not in counts[0]
    assert counts[1]["nvmlDeviceGetPcieThroughput"] == 2
    # at standard GPM's PCIe rates are not written, and without the gpm collector nothing measures them:
    # the sampled rate stays
    for args in (("--collectors", "pcie,gpm", "--gpm-window", "150ms"), ("--collectors", "pcie", "--detail", "full")):
        proc, s = node.collect(*args)
        assert value(s, "gpu_pcie_transmit_bytes_per_second", gpu="0") == 1_500_000, args
    # a DCGM naming writes GPM's PCIe rates at standard too (DCGM_FI_PROF_PCIE_*): not sampled then either
    for naming, name in (("dcgm", "DCGM_FI_PROF_PCIE_TX_BYTES"),
                         ("dcgm-4.10", "DCGM_FI_PROF_PCIE_TX_BYTES_PER_SECOND")):
        node.calls.unlink(missing_ok=True)
        proc, s = node.collect("--naming", naming, "--collectors", "pcie,gpm", "--gpm-window", "150ms")
        assert value(s, name, gpu="0") == 2384 * 2**20, naming
        assert "nvmlDeviceGetPcieThroughput" not in node.call_counts()[0], naming


def test_pcie_32_bit_counters_give_the_sampled_rate_not_a_wrapping_counter(node):
    gpu = h100(0, pcie_tx_kbps=700, pcie_rx_kbps=900)
    gpu["fields"].update({197: Field(4_000_000_000, type="uint"), 198: Field(5, type="uint")})
    node.write([gpu])
    proc, s = node.collect("--collectors", "pcie")
    assert value(s, "gpu_pcie_transmit_bytes_total", gpu="0") is None
    assert value(s, "gpu_pcie_receive_bytes_total", gpu="0") is None
    assert value(s, "gpu_pcie_transmit_bytes_per_second", gpu="0") == 700_000
    assert value(s, "gpu_pcie_receive_bytes_per_second", gpu="0") == 900_000


def test_lost_gpu_skipped_by_nvlink_and_pcie(node):
    node.write([h100(0), {**h100(1), "lost": True}])
    proc, s = node.collect()
    assert proc.returncode == 0
    assert names_for_gpu(s, "1") == {"gpu_up"}
    assert value(s, "gpu_nvlink_up", gpu="0", link="0") == 1
    for collector in ("nvml", "nvlink", "pcie"):
        assert value(s, "gputext_collector_success", collector=collector) == 1


def test_hgx_file_passes_promtool(node):
    node.write(hgx_with_link_down())
    proc = node.run("collect", "--out", "-")
    lint = promtool_check(proc.stdout.encode())
    assert lint.returncode == 0 and lint.stdout == b"" and lint.stderr == b"", lint

"""Tests of the fake libnvidia-ml.so.1, driven through the real pynvml.

Every check runs pynvml in a subprocess whose LD_LIBRARY_PATH puts the fake
first; the subprocess prints one JSON document that the test asserts on.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import fakegpu
from fakegpu import Field, Scenario, default_system, fake_env, h100, read_call_blocks, read_calls, step

PRELUDE = textwrap.dedent(
    """
    import ctypes, json, sys, time
    import pynvml as N

    def err(fn, *args):
        try:
            fn(*args)
        except N.NVMLError as e:
            return e.value
        return None

    def txt(x):
        return x.decode() if isinstance(x, bytes) else x

    def out(obj):
        print(json.dumps(obj))
    """
)


@pytest.fixture(scope="session")
def libdir(tmp_path_factory) -> Path:
    return fakegpu.build_fake_nvml(tmp_path_factory.mktemp("fake_nvml_lib"))


def run(libdir, tmp_path, code, devices=None, system=None, scenario_text=None, calls=None, tick=None,
        expect_rc=0):
    scen = tmp_path / "scenario.txt"
    if scenario_text is not None:
        scen.write_text(scenario_text)
    else:
        Scenario(devices=devices if devices is not None else [h100(0)], system=system).write(scen)
    env = fake_env(libdir, scen, calls_path=calls, tick=tick)
    proc = subprocess.run([sys.executable, "-c", PRELUDE + textwrap.dedent(code)], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == expect_rc, proc.stderr
    if expect_rc != 0:
        return proc
    lines = proc.stdout.strip().splitlines()
    assert lines, f"no output; stderr:\n{proc.stderr}"
    return json.loads(lines[-1])


# --------------------------------------------------------------------------
# build and symbols
# --------------------------------------------------------------------------

def test_build_is_warning_free(tmp_path):
    proc = fakegpu.compile_fake_nvml(tmp_path)
    assert proc.stderr.strip() == ""
    assert (tmp_path / "libnvidia-ml.so.1").is_file()


def test_build_error_is_reported(tmp_path, monkeypatch):
    monkeypatch.setenv("CC", "cc -DFAKE_NVML_BREAK=1 -include /nonexistent/header.h")
    with pytest.raises(fakegpu.FakeNvmlBuildError) as exc:
        fakegpu.build_fake_nvml(tmp_path)
    assert "nonexistent/header.h" in str(exc.value)


def _c_exports() -> list[str]:
    src = (fakegpu.FAKE_NVML_DIR / "fake_nvml.c").read_text()
    block = src[src.index("#define FN_LIST(X)"):src.index("#define AS_ENUM")]
    return re.findall(r"X\((\w+)\)", block)


def test_every_symbol_is_exported_and_known_to_pynvml(libdir, tmp_path):
    names = _c_exports()
    assert len(names) == len(set(names)) > 60
    pynvml_src = Path(importlib.util.find_spec("pynvml").origin).read_text()
    loaded = set(re.findall(r'_nvmlGetFunctionPointer\("(\w+)"\)', pynvml_src))
    # every symbol we fake is one pynvml loads, except the two legacy inits
    assert set(names) - loaded == {"nvmlInit", "nvmlInit_v2"}
    got = run(libdir, tmp_path, f"""
        lib = ctypes.CDLL("libnvidia-ml.so.1")
        maps = open("/proc/self/maps").read()
        out({{"missing": [n for n in {names!r} if not hasattr(lib, n)],
              "ours": {str(libdir.resolve())!r} in maps}})
    """)
    assert got == {"missing": [], "ours": True}


# --------------------------------------------------------------------------
# values round-trip
# --------------------------------------------------------------------------

def test_h100_values_round_trip(libdir, tmp_path):
    dev = h100(0, clocks_event_reasons=0x4, fan_count=2, fan_speed={0: 35, 1: 40})
    got = run(libdir, tmp_path, """
        N.nvmlInit()
        h = N.nvmlDeviceGetHandleByIndex(0)
        pci = N.nvmlDeviceGetPciInfo(h)
        ext = N.nvmlPciInfoExt_v1_t(); ext.version = N.nvmlPciInfoExt_v1
        N.nvmlDeviceGetPciInfoExt(h, ctypes.byref(ext))
        m1 = N.nvmlDeviceGetMemoryInfo(h)
        m2 = N.nvmlDeviceGetMemoryInfo(h, version=N.nvmlMemory_v2)
        u = N.nvmlDeviceGetUtilizationRates(h)
        rpci = N.nvmlDeviceGetNvLinkRemotePciInfo(h, 17)
        out({
          "driver": N.nvmlSystemGetDriverVersion(), "nvml": N.nvmlSystemGetNVMLVersion(),
          "cuda": N.nvmlSystemGetCudaDriverVersion(), "cuda2": N.nvmlSystemGetCudaDriverVersion_v2(),
          "count": N.nvmlDeviceGetCount(), "index": N.nvmlDeviceGetIndex(h),
          "uuid": N.nvmlDeviceGetUUID(h), "name": N.nvmlDeviceGetName(h),
          "serial": N.nvmlDeviceGetSerial(h), "vbios": N.nvmlDeviceGetVbiosVersion(h),
          "brand": N.nvmlDeviceGetBrand(h), "minor": N.nvmlDeviceGetMinorNumber(h),
          "arch": N.nvmlDeviceGetArchitecture(h),
          "pci": [txt(pci.busIdLegacy), txt(pci.busId), pci.domain, pci.bus, pci.device,
                  pci.pciDeviceId, pci.pciSubSystemId],
          "pciext": [txt(ext.busId), ext.bus, ext.pciDeviceId, ext.baseClass, ext.subClass],
          "tempV": N.nvmlDeviceGetTemperatureV(h, N.NVML_TEMPERATURE_GPU),
          "temp": N.nvmlDeviceGetTemperature(h, N.NVML_TEMPERATURE_GPU),
          "mem1": [m1.total, m1.free, m1.used], "mem2": [m2.version, m2.total, m2.reserved, m2.free, m2.used],
          "util": [u.gpu, u.memory],
          "enc": N.nvmlDeviceGetEncoderUtilization(h), "dec": N.nvmlDeviceGetDecoderUtilization(h),
          "clock": [N.nvmlDeviceGetClockInfo(h, t) for t in range(4)],
          "clock2": [N.nvmlDeviceGetClock(h, t, N.NVML_CLOCK_ID_CURRENT) for t in range(4)],
          "maxclock": [N.nvmlDeviceGetMaxClockInfo(h, t) for t in range(4)],
          "reasons": [N.nvmlDeviceGetCurrentClocksEventReasons(h), N.nvmlDeviceGetCurrentClocksThrottleReasons(h)],
          "pstate": N.nvmlDeviceGetPerformanceState(h),
          "fans": N.nvmlDeviceGetNumFans(h),
          "fan": [N.nvmlDeviceGetFanSpeed_v2(h, 0), N.nvmlDeviceGetFanSpeed_v2(h, 1), N.nvmlDeviceGetFanSpeed(h)],
          "fan_bad": err(N.nvmlDeviceGetFanSpeed_v2, h, 2),
          "persist": N.nvmlDeviceGetPersistenceMode(h), "acct": N.nvmlDeviceGetAccountingMode(h),
          "compute": N.nvmlDeviceGetComputeMode(h), "mig": N.nvmlDeviceGetMigMode(h),
          "power": N.nvmlDeviceGetPowerUsage(h), "limit": N.nvmlDeviceGetEnforcedPowerLimit(h),
          "mlimit": N.nvmlDeviceGetPowerManagementLimit(h), "energy": N.nvmlDeviceGetTotalEnergyConsumption(h),
          "ecc": N.nvmlDeviceGetEccMode(h),
          "eccerr": [N.nvmlDeviceGetTotalEccErrors(h, t, c) for t in (0, 1) for c in (0, 1)],
          "pcie": [N.nvmlDeviceGetCurrPcieLinkGeneration(h), N.nvmlDeviceGetMaxPcieLinkGeneration(h),
                   N.nvmlDeviceGetGpuMaxPcieLinkGeneration(h), N.nvmlDeviceGetCurrPcieLinkWidth(h),
                   N.nvmlDeviceGetMaxPcieLinkWidth(h), N.nvmlDeviceGetPcieReplayCounter(h)],
          "pcie_tp": [N.nvmlDeviceGetPcieThroughput(h, 0), N.nvmlDeviceGetPcieThroughput(h, 1)],
          "nvl_state": [N.nvmlDeviceGetNvLinkState(h, l) for l in range(18)],
          "nvl_version": [N.nvmlDeviceGetNvLinkVersion(h, l) for l in range(18)],
          "nvl_type": [N.nvmlDeviceGetNvLinkRemoteDeviceType(h, l) for l in range(18)],
          "nvl_18": err(N.nvmlDeviceGetNvLinkState, h, 18),
          "nvl_36": err(N.nvmlDeviceGetNvLinkState, h, 36),
          "rpci": [txt(rpci.busId), rpci.bus, rpci.pciDeviceId],
        })
        N.nvmlShutdown()
    """, devices=[dev])
    total, used, reserved = dev["memory_total"], dev["memory_used"], dev["memory_reserved"]
    free = total - used - reserved
    assert got == {
        "driver": "580.159.04", "nvml": "13.580.159.04", "cuda": 13000, "cuda2": 13000,
        "count": 1, "index": 0, "uuid": dev["uuid"], "name": "NVIDIA H100 80GB HBM3",
        "serial": dev["serial"], "vbios": "96.00.99.00.01", "brand": 14, "minor": 0, "arch": 9,
        "pci": ["0000:18:00.0", "00000000:18:00.0", 0, 0x18, 0, 0x233010DE, 0x16C110DE],
        "pciext": ["00000000:18:00.0", 0x18, 0x233010DE, 3, 2],
        "tempV": 41, "temp": 41,
        "mem1": [total, free, used + reserved],
        "mem2": [0x02000028, total, reserved, free, used],
        "util": [87, 43], "enc": [0, 167000], "dec": [0, 167000],
        "clock": [1980, 1980, 2619, 1755], "clock2": [1980, 1980, 2619, 1755],
        "maxclock": [1980, 1980, 2619, 1755], "reasons": [4, 4], "pstate": 0,
        "fans": 2, "fan": [35, 40, 35], "fan_bad": fakegpu.NVML_ERROR_INVALID_ARGUMENT,
        "persist": 1, "acct": 0, "compute": 0, "mig": [0, 0],
        "power": 412345, "limit": 700000, "mlimit": 700000, "energy": dev["energy"],
        "ecc": [1, 1], "eccerr": [0, 0, 0, 0],
        "pcie": [5, 5, 5, 16, 16, 0], "pcie_tp": [1234567, 2345678],
        "nvl_state": [1] * 18, "nvl_version": [6] * 18, "nvl_type": [2] * 18,  # nvmlNvlinkVersion_t 4.0
        "nvl_18": fakegpu.NVML_ERROR_NOT_SUPPORTED, "nvl_36": fakegpu.NVML_ERROR_INVALID_ARGUMENT,
        "rpci": ["00000000:08:00.0", 8, fakegpu.NVSWITCH_PCI_DEVICE_ID],
    }


def test_exact_scenario_text_and_overrides(libdir, tmp_path):
    text = textwrap.dedent("""\
        system driver_version 999.1.2   # trailing comment
        device
        uuid GPU-11111111-2222-3333-4444-555555555555
        name NVIDIA Test-GPU#1 with  spaces  # '#' after a space starts a comment
        temperature 45
        temperature 46                 # later lines win
        clocks_event_reasons 0x8000000000000000
        ecc_errors 1 1 12345678901234
        """)
    got = run(libdir, tmp_path, """
        N.nvmlInit()
        h = N.nvmlDeviceGetHandleByUUID("GPU-11111111-2222-3333-4444-555555555555")
        out([N.nvmlSystemGetDriverVersion(), N.nvmlDeviceGetName(h), N.nvmlDeviceGetTemperature(h, 0),
             N.nvmlDeviceGetCurrentClocksEventReasons(h), N.nvmlDeviceGetTotalEccErrors(h, 1, 1),
             err(N.nvmlDeviceGetTotalEccErrors, h, 0, 0), err(N.nvmlDeviceGetTotalEccErrors, h, 2, 0)])
    """, scenario_text=text)
    assert got == ["999.1.2", "NVIDIA Test-GPU#1 with  spaces", 46, 1 << 63, 12345678901234,
                   fakegpu.NVML_ERROR_NOT_SUPPORTED, fakegpu.NVML_ERROR_INVALID_ARGUMENT]


# --------------------------------------------------------------------------
# errors
# --------------------------------------------------------------------------

def test_missing_keys_are_not_supported(libdir, tmp_path):
    dev = h100(0, temperature=None, power_usage=None, memory_used=None, name=None,
               pcie_tx_kbps=None, nvlink_state={0: 1}, clock_sm=None, mig_mode=None)
    got = run(libdir, tmp_path, """
        N.nvmlInit()
        h = N.nvmlDeviceGetHandleByIndex(0)
        t0 = time.monotonic()
        tx = err(N.nvmlDeviceGetPcieThroughput, h, 0)
        out({"temp": err(N.nvmlDeviceGetTemperature, h, 0), "tempV": err(N.nvmlDeviceGetTemperatureV, h, 0),
             "power": err(N.nvmlDeviceGetPowerUsage, h),
             "mem": err(N.nvmlDeviceGetMemoryInfo, h), "mem2": err(N.nvmlDeviceGetMemoryInfo, h, N.nvmlMemory_v2),
             "name": err(N.nvmlDeviceGetName, h), "tx": tx, "rx": N.nvmlDeviceGetPcieThroughput(h, 1),
             "nvl0": N.nvmlDeviceGetNvLinkState(h, 0), "nvl1": err(N.nvmlDeviceGetNvLinkState, h, 1),
             "sm": err(N.nvmlDeviceGetClockInfo, h, 1), "gr": N.nvmlDeviceGetClockInfo(h, 0),
             "mig": err(N.nvmlDeviceGetMigMode, h), "migmax": N.nvmlDeviceGetMaxMigDeviceCount(h),
             "fans": err(N.nvmlDeviceGetNumFans, h), "fan": err(N.nvmlDeviceGetFanSpeed, h),
             "str": str(N.NVMLError(3))})
    """, devices=[dev])
    ns = fakegpu.NVML_ERROR_NOT_SUPPORTED
    assert got == {"temp": ns, "tempV": ns, "power": ns, "mem": ns, "mem2": ns, "name": ns, "tx": ns,
                   "rx": 2345678, "nvl0": 1, "nvl1": ns, "sm": ns, "gr": 1980, "mig": ns, "migmax": 0,
                   "fans": ns, "fan": ns,  # an SXM H100 has no fan: NOT_SUPPORTED, as nvml.h says
                   "str": "Not Supported"}


def test_error_lines(libdir, tmp_path):
    devs = [h100(0, errors={"nvmlDeviceGetPowerUsage": 4, "nvmlDeviceGetFieldValues": 10}), h100(1)]
    system = default_system(errors={"nvmlDeviceGetTemperature": 999, "nvmlSystemGetDriverVersion": 9})
    got = run(libdir, tmp_path, """
        N.nvmlInit()
        h0, h1 = N.nvmlDeviceGetHandleByIndex(0), N.nvmlDeviceGetHandleByIndex(1)
        try:
            N.nvmlDeviceGetPowerUsage(h0)
        except N.NVMLError_NoPermission as e:
            msg = str(e)
        out({"p0": err(N.nvmlDeviceGetPowerUsage, h0), "p1": N.nvmlDeviceGetPowerUsage(h1),
             "msg": msg, "fv": err(N.nvmlDeviceGetFieldValues, h0, [83]),
             "t0": err(N.nvmlDeviceGetTemperature, h0, 0), "t1": err(N.nvmlDeviceGetTemperature, h1, 0),
             "tv": N.nvmlDeviceGetTemperatureV(h1, 0), "drv": err(N.nvmlSystemGetDriverVersion)})
    """, devices=devs, system=system)
    assert got == {"p0": 4, "p1": 412345, "msg": "Insufficient Permissions", "fv": 10,
                   "t0": 999, "t1": 999, "tv": 41, "drv": 9}


def test_lost_device(libdir, tmp_path):
    devs = [h100(0), h100(1, lost=True), h100(2)]
    got = run(libdir, tmp_path, f"""
        N.nvmlInit()
        h2 = N.nvmlDeviceGetHandleByIndex(2)
        try:
            N.nvmlDeviceGetHandleByIndex(1)
        except N.NVMLError_GpuIsLost as e:
            msg = str(e)
        out({{"count": N.nvmlDeviceGetCount(), "byindex": err(N.nvmlDeviceGetHandleByIndex, 1),
              "byuuid": err(N.nvmlDeviceGetHandleByUUID, {devs[1]["uuid"]!r}),
              "bypci": err(N.nvmlDeviceGetHandleByPciBusId, {devs[1]["pci_bus_id"]!r}),
              "msg": msg, "other": N.nvmlDeviceGetUUID(h2), "out_of_range": err(N.nvmlDeviceGetHandleByIndex, 3)}})
    """, devices=devs)
    assert got == {"count": 3, "byindex": 15, "byuuid": 15, "bypci": 15, "msg": "GPU is lost",
                   "other": devs[2]["uuid"], "out_of_range": fakegpu.NVML_ERROR_INVALID_ARGUMENT}


def test_lost_handle_after_lookup_via_error_line(libdir, tmp_path):
    # a GPU that falls off the bus after its handle was taken: per-call errors
    dev = h100(0, errors={"nvmlDeviceGetTemperatureV": 15, "nvmlDeviceGetUUID": 15})
    got = run(libdir, tmp_path, """
        N.nvmlInit()
        h = N.nvmlDeviceGetHandleByIndex(0)
        out([err(N.nvmlDeviceGetTemperatureV, h, 0), err(N.nvmlDeviceGetUUID, h), N.nvmlDeviceGetPowerUsage(h)])
    """, devices=[dev])
    assert got == [15, 15, 412345]


def test_error_strings(libdir, tmp_path):
    got = run(libdir, tmp_path, """
        N.nvmlInit()
        out({c: N.nvmlErrorString(c) for c in (0, 1, 2, 3, 4, 6, 7, 9, 15, 999)})
    """)
    assert got == {"0": "Success", "1": "Uninitialized", "2": "Invalid Argument", "3": "Not Supported",
                   "4": "Insufficient Permissions", "6": "Not Found", "7": "Insufficient Size",
                   "9": "Driver Not Loaded", "15": "GPU is lost", "999": "Unknown Error"}


def test_init_failures(libdir, tmp_path):
    # init_error
    got = run(libdir, tmp_path, """
        try:
            N.nvmlInit()
        except N.NVMLError_DriverNotLoaded as e:
            out([e.value, str(e)])
    """, system=default_system(init_error=9))
    assert got == [9, "Driver Not Loaded"]
    # a scenario that does not parse: UNKNOWN, and a message naming the line
    scen = tmp_path / "bad.txt"
    scen.write_text("device\ntemprature 45\n")
    env = fake_env(libdir, scen)
    proc = subprocess.run([sys.executable, "-c", PRELUDE + "out(err(N.nvmlInit))"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert json.loads(proc.stdout) == 999
    assert "bad.txt:2: unknown key: temprature" in proc.stderr
    # no scenario at all: UNKNOWN, silently
    env = fake_env(libdir, tmp_path / "missing.txt")
    proc = subprocess.run([sys.executable, "-c", PRELUDE + "out(err(N.nvmlInit))"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert (json.loads(proc.stdout), proc.stderr) == (999, "")


def test_uninitialized_and_reinit_rereads(libdir, tmp_path):
    scen = tmp_path / "scenario.txt"
    got = run(libdir, tmp_path, f"""
        N.nvmlInit()
        h = N.nvmlDeviceGetHandleByIndex(0)
        first = N.nvmlDeviceGetTemperature(h, 0)
        N.nvmlShutdown()
        after = [err(N.nvmlDeviceGetTemperature, h, 0), err(N.nvmlDeviceGetCount),
                 err(N.nvmlSystemGetDriverVersion), err(N.nvmlShutdown)]
        open({str(scen)!r}, "a").write("temperature 77\\n")
        N.nvmlInit()
        N.nvmlInit()   # nested init: refcounted, no re-read
        h2 = N.nvmlDeviceGetHandleByIndex(0)
        second = N.nvmlDeviceGetTemperature(h2, 0)
        N.nvmlShutdown()
        still = N.nvmlDeviceGetTemperature(h2, 0)
        N.nvmlShutdown()
        out({{"first": first, "after": after, "second": second, "still": still,
              "same_handle": ctypes.cast(h, ctypes.c_void_p).value == ctypes.cast(h2, ctypes.c_void_p).value}})
    """)
    assert got == {"first": 41, "after": [1, 1, 1, 1], "second": 77, "still": 77, "same_handle": True}


def test_version_mismatch_and_null_arguments(libdir, tmp_path):
    got = run(libdir, tmp_path, """
        N.nvmlInit()
        h = N.nvmlDeviceGetHandleByIndex(0)
        lib = N.nvmlLib
        m = N.c_nvmlMemory_v2_t(); m.version = 1
        t = N.c_nvmlTemperature_v1_t(); t.version = 0x100000C; t.sensorType = 5
        out([lib.nvmlDeviceGetMemoryInfo_v2(h, ctypes.byref(m)),
             lib.nvmlDeviceGetTemperatureV(h, ctypes.byref(t)),
             lib.nvmlDeviceGetPowerUsage(h, None),
             lib.nvmlDeviceGetPowerUsage(ctypes.c_void_p(12345), ctypes.byref(ctypes.c_uint())),
             lib.nvmlDeviceGetName(h, ctypes.create_string_buffer(8), 8)])
    """)
    assert got == [fakegpu.NVML_ERROR_ARGUMENT_VERSION_MISMATCH, fakegpu.NVML_ERROR_INVALID_ARGUMENT,
                   fakegpu.NVML_ERROR_INVALID_ARGUMENT, fakegpu.NVML_ERROR_INVALID_ARGUMENT,
                   fakegpu.NVML_ERROR_INSUFFICIENT_SIZE]


def test_temperature_thresholds_margin_and_tlimit_fields_follow_nvml_h(libdir, tmp_path):
    """nvmlDeviceGetTemperatureThreshold in °C, nvmlDeviceGetMarginTemperature's versioned struct, and
    fields 193-196 as signed ints (offsets from the T.Limit); an A100 answers only the first."""
    got = run(libdir, tmp_path, """
        N.nvmlInit()
        h100, a100 = N.nvmlDeviceGetHandleByIndex(0), N.nvmlDeviceGetHandleByIndex(1)
        lib = N.nvmlLib
        def margin(h, version):
            m = N.c_nvmlMarginTemperature_v1_t(); m.version = version
            return [lib.nvmlDeviceGetMarginTemperature(h, ctypes.byref(m)), m.marginTemperature]
        def tlimit(h):
            return [[v.valueType, v.nvmlReturn, v.value.siVal if v.nvmlReturn == 0 else None]
                    for v in N.nvmlDeviceGetFieldValues(h, [193, 194, 195, 196])]
        out({"h100": [N.nvmlDeviceGetTemperatureThreshold(h100, t) for t in range(4)],
             "h100_margin": N.nvmlDeviceGetMarginTemperature(h100),
             "h100_tlimit": tlimit(h100),
             "a100": [N.nvmlDeviceGetTemperatureThreshold(a100, t) for t in range(4)],
             "a100_margin": err(N.nvmlDeviceGetMarginTemperature, a100),
             "a100_tlimit": [row[1] for row in tlimit(a100)],
             "acoustic": err(N.nvmlDeviceGetTemperatureThreshold, h100, N.NVML_TEMPERATURE_THRESHOLD_ACOUSTIC_CURR),
             "bad_type": err(N.nvmlDeviceGetTemperatureThreshold, h100, N.NVML_TEMPERATURE_THRESHOLD_COUNT),
             "null": [lib.nvmlDeviceGetTemperatureThreshold(h100, 0, None),
                      lib.nvmlDeviceGetMarginTemperature(h100, None)],
             "v1": margin(h100, 0x1000008), "v2": margin(h100, 0x2000008)})
    """, devices=[h100(0, temperature=88), fakegpu.pre_ada(h100(1), fakegpu.A100_THRESHOLDS)])
    assert got == {
        "h100": [92, 89, 95, 87], "h100_margin": -1, "h100_tlimit": [[5, 0, -5], [5, 0, -2], [5, 0, 0], [5, 0, 0]],
        "a100": [92, 89, 95, 85], "a100_margin": fakegpu.NVML_ERROR_NOT_SUPPORTED, "a100_tlimit": [3] * 4,
        "acoustic": fakegpu.NVML_ERROR_NOT_SUPPORTED, "bad_type": fakegpu.NVML_ERROR_INVALID_ARGUMENT,
        "null": [fakegpu.NVML_ERROR_INVALID_ARGUMENT] * 2,
        "v1": [0, -1], "v2": [fakegpu.NVML_ERROR_ARGUMENT_VERSION_MISMATCH, 0]}


def test_handle_by_pci_bus_id(libdir, tmp_path):
    devs = [h100(0), h100(1)]
    got = run(libdir, tmp_path, """
        N.nvmlInit()
        out([N.nvmlDeviceGetIndex(N.nvmlDeviceGetHandleByPciBusId("00000000:2A:00.0")),
             N.nvmlDeviceGetIndex(N.nvmlDeviceGetHandleByPciBusId("0000:2a:00.0")),
             err(N.nvmlDeviceGetHandleByPciBusId, "0000:77:00.0"),
             err(N.nvmlDeviceGetHandleByUUID, "GPU-nope")])
    """, devices=devs)
    assert got == [1, 1, fakegpu.NVML_ERROR_NOT_FOUND, fakegpu.NVML_ERROR_NOT_FOUND]


# --------------------------------------------------------------------------
# field values
# --------------------------------------------------------------------------

def test_field_values_types_and_per_entry_returns(libdir, tmp_path):
    dev = h100(0, fields={
        83: 123456789,
        308: 45.25,                            # '.' => double
        186: Field(400123, type="uint"),
        250: Field(-5, type="sll"),
        251: Field(-7, type="sint"),
        252: Field(65535, type="ushort"),
        253: Field(4000000000, type="ulong"),
        254: Field(error=4),
    })
    got = run(libdir, tmp_path, """
        N.nvmlInit()
        h = N.nvmlDeviceGetHandleByIndex(0)
        before = int(time.time() * 1e6)
        vals = N.nvmlDeviceGetFieldValues(h, [83, 308, 186, 250, 251, 252, 253, 254, 999])
        after = int(time.time() * 1e6)
        member = {0: "dVal", 1: "uiVal", 2: "ulVal", 3: "ullVal", 4: "sllVal", 5: "siVal", 6: "usVal"}
        out({"rows": [[v.fieldId, v.scopeId, v.valueType, v.nvmlReturn,
                       getattr(v.value, member[v.valueType]) if v.nvmlReturn == 0 else None, v.latencyUsec]
                      for v in vals],
             "ts_ok": all(before <= v.timestamp <= after for v in vals)})
    """, devices=[dev])
    assert got["ts_ok"] is True
    assert got["rows"] == [
        [83, 0, 3, 0, 123456789, 0],
        [308, 0, 0, 0, 45.25, 0],
        [186, 0, 1, 0, 400123, 0],
        [250, 0, 4, 0, -5, 0],
        [251, 0, 5, 0, -7, 0],
        [252, 0, 6, 0, 65535, 0],
        [253, 0, 2, 0, 4000000000, 0],
        [254, 0, 3, 4, None, 0],
        [999, 0, 3, 3, None, 0],
    ]


def test_field_scope_lookup_and_sum(libdir, tmp_path):
    dev = h100(0, fields={
        (138, 0): 100, (138, 1): 200, (138, 2): 300,
        91: 18,                                  # unscoped: answers any scope
        (161, 5): 7,
        (308, 0): 40.5, (308, 1): 1.25,
    })
    got = run(libdir, tmp_path, """
        N.nvmlInit()
        h = N.nvmlDeviceGetHandleByIndex(0)
        A = 0xFFFFFFFF
        vals = N.nvmlDeviceGetFieldValues(h, [(138, 1), (138, 2), (138, A), (138, 3), (91, 4), (91, A),
                                              (161, A), (161, 0), (308, A), 138])
        out([[v.scopeId, v.nvmlReturn, v.value.dVal if v.valueType == 0 else v.value.ullVal] for v in vals])
    """, devices=[dev])
    assert got == [
        [1, 0, 200], [2, 0, 300], [0xFFFFFFFF, 0, 600], [3, 3, 0],
        [4, 0, 18], [0xFFFFFFFF, 0, 18],
        [0xFFFFFFFF, 0, 7], [0, 3, 0],
        [0xFFFFFFFF, 0, 41.75],
        [0, 0, 100],   # a bare fieldId has scopeId 0
    ]


# --------------------------------------------------------------------------
# step / tick
# --------------------------------------------------------------------------

def test_step_with_tick_and_reads(libdir, tmp_path):
    dev = h100(0, energy=step(1000, 10), temperature=step(40, -1),
               fields={83: step(5000, 100), (138, 2): Field(1.5, step=0.5)})
    code = """
        N.nvmlInit()
        h = N.nvmlDeviceGetHandleByIndex(0)
        e = [N.nvmlDeviceGetTotalEnergyConsumption(h) for _ in range(3)]
        t = [N.nvmlDeviceGetTemperature(h, 0), N.nvmlDeviceGetTemperatureV(h, 0)]
        f = [[v.value.ullVal, v.value.dVal] for v in N.nvmlDeviceGetFieldValues(h, [83, (138, 2)]) for _ in [0]]
        f2 = N.nvmlDeviceGetFieldValues(h, [83])[0].value.ullVal
        out({"e": e, "t": t, "f83": f[0][0], "f138": f[1][1], "f2": f2})
    """
    got0 = run(libdir, tmp_path, code, devices=[dev])
    assert got0 == {"e": [1000, 1010, 1020], "t": [40, 39], "f83": 5000, "f138": 1.5, "f2": 5100}
    got5 = run(libdir, tmp_path, code, devices=[dev], tick=5)
    assert got5 == {"e": [1050, 1060, 1070], "t": [35, 34], "f83": 5500, "f138": 4.0, "f2": 5600}


def test_step_reads_survive_reinit(libdir, tmp_path):
    dev = h100(0, energy=step(1000, 10), fields={(138, 1): step(0, 7)})
    got = run(libdir, tmp_path, """
        seen = []
        for cycle in range(3):          # a daemon that re-initialises every cycle
            N.nvmlInit()
            h = N.nvmlDeviceGetHandleByIndex(0)
            seen.append([N.nvmlDeviceGetTotalEnergyConsumption(h),
                         N.nvmlDeviceGetFieldValues(h, [(138, 1)])[0].value.ullVal])
            N.nvmlShutdown()
        out(seen)
    """, devices=[dev], tick=1)
    assert got == [[1010, 7], [1020, 14], [1030, 21]]


# --------------------------------------------------------------------------
# processes
# --------------------------------------------------------------------------

def test_running_processes_sizing_protocol(libdir, tmp_path):
    procs = [{"pid": 10, "used_memory": 1 << 30}, {"pid": 11, "used_memory": 2 << 30, "gi": 1, "ci": 0},
             {"pid": 12, "used_memory": 3 << 30, "graphics": True}, {"pid": 13, "used_memory": "na"}]
    devs = [h100(0, processes=procs), h100(1, processes=[])]
    got = run(libdir, tmp_path, """
        N.nvmlInit()
        h, h1 = N.nvmlDeviceGetHandleByIndex(0), N.nvmlDeviceGetHandleByIndex(1)
        fn = N.nvmlLib.nvmlDeviceGetComputeRunningProcesses_v3
        n = ctypes.c_uint(0)
        sizing = [fn(h, ctypes.byref(n), None), n.value]
        n.value = 2
        buf = (N.c_nvmlProcessInfo_v3_t * 3)()
        small = [fn(h, ctypes.byref(n), buf), n.value]
        n.value = 3
        exact = [fn(h, ctypes.byref(n), buf), n.value, ctypes.sizeof(N.c_nvmlProcessInfo_v3_t)]
        n.value = 0
        empty = [fn(h1, ctypes.byref(n), None), n.value]
        rows = lambda ps: [[p.pid, p.usedGpuMemory, p.gpuInstanceId, p.computeInstanceId] for p in ps]
        out({"sizing": sizing, "small": small, "exact": exact, "empty": empty,
             "compute": rows(N.nvmlDeviceGetComputeRunningProcesses(h)),
             "graphics": rows(N.nvmlDeviceGetGraphicsRunningProcesses(h)),
             "none": N.nvmlDeviceGetComputeRunningProcesses(h1)})
    """, devices=devs)
    U = 0xFFFFFFFF
    assert got == {
        "sizing": [7, 3], "small": [7, 3], "exact": [0, 3, 24], "empty": [0, 0],
        "compute": [[10, 1 << 30, U, U], [11, 2 << 30, 1, 0], [13, None, U, U]],
        "graphics": [[12, 3 << 30, U, U]],
        "none": [],
    }


def test_process_utilization_sizing_protocol(libdir, tmp_path):
    samples = [{"pid": 10, "timestamp": 1000, "sm": 50, "mem": 20, "enc": 1, "dec": 2},
               {"pid": 11, "timestamp": 2000, "sm": 60, "mem": 30, "enc": 3, "dec": 4},
               {"pid": 12, "timestamp": 3000, "sm": 70, "mem": 40, "enc": 5, "dec": 6}]
    devs = [h100(0, process_samples=samples), h100(1, process_samples=[]),
            h100(2, mig_mode=(1, 1))]
    got = run(libdir, tmp_path, """
        N.nvmlInit()
        h = N.nvmlDeviceGetHandleByIndex(0)
        fn = N.nvmlLib.nvmlDeviceGetProcessUtilization
        n = ctypes.c_uint(0)
        sizing = [fn(h, None, ctypes.byref(n), ctypes.c_ulonglong(1500)), n.value]
        buf = (N.c_nvmlProcessUtilizationSample_t * 4)()
        n.value = 1
        small = [fn(h, buf, ctypes.byref(n), ctypes.c_ulonglong(0)), n.value]
        rows = lambda ss: [[s.pid, s.timeStamp, s.smUtil, s.memUtil, s.encUtil, s.decUtil] for s in ss]
        out({"sizing": sizing, "small": small,
             "all": rows(N.nvmlDeviceGetProcessUtilization(h, 0)),
             "since": rows(N.nvmlDeviceGetProcessUtilization(h, 2000)),
             "none_newer": err(N.nvmlDeviceGetProcessUtilization, h, 3000),
             "no_samples": err(N.nvmlDeviceGetProcessUtilization, N.nvmlDeviceGetHandleByIndex(1), 0),
             "mig": err(N.nvmlDeviceGetProcessUtilization, N.nvmlDeviceGetHandleByIndex(2), 0),
             "size": ctypes.sizeof(N.c_nvmlProcessUtilizationSample_t)})
    """, devices=devs)
    assert got == {
        "sizing": [7, 2], "small": [7, 3],
        "all": [[10, 1000, 50, 20, 1, 2], [11, 2000, 60, 30, 3, 4], [12, 3000, 70, 40, 5, 6]],
        "since": [[12, 3000, 70, 40, 5, 6]],
        "none_newer": 6, "no_samples": 6, "mig": 3, "size": 32,
    }


def test_accounting(libdir, tmp_path):
    acct = [{"pid": 100, "gpu_util": 90, "mem_util": 45, "max_memory": 5 << 30,
             "start_time": 1_700_000_000_000_000, "time_ms": 0, "is_running": 1},
            {"pid": 101, "gpu_util": 10, "mem_util": 5, "max_memory": 1 << 30,
             "start_time": 1_699_999_000_000_000, "time_ms": 60000, "is_running": 0}]
    devs = [h100(0, accounting_mode=1, accounting=acct), h100(1, accounting_mode=0, accounting=acct),
            h100(2, accounting_mode=None)]
    got = run(libdir, tmp_path, """
        N.nvmlInit()
        h0, h1, h2 = (N.nvmlDeviceGetHandleByIndex(i) for i in range(3))
        s = N.nvmlDeviceGetAccountingStats(h0, 101)
        n = ctypes.c_uint(0)
        sizing = [N.nvmlLib.nvmlDeviceGetAccountingPids(h0, ctypes.byref(n), None), n.value]
        out({"mode": N.nvmlDeviceGetAccountingMode(h0), "buf": N.nvmlDeviceGetAccountingBufferSize(h0),
             "pids": N.nvmlDeviceGetAccountingPids(h0), "sizing": sizing,
             "stats": [s.gpuUtilization, s.memoryUtilization, s.maxMemoryUsage, s.time, s.startTime, s.isRunning],
             "unknown": err(N.nvmlDeviceGetAccountingStats, h0, 4),
             "off_pids": err(N.nvmlDeviceGetAccountingPids, h1),
             "off_stats": err(N.nvmlDeviceGetAccountingStats, h1, 100),
             "absent_mode": err(N.nvmlDeviceGetAccountingMode, h2),
             "absent_pids": err(N.nvmlDeviceGetAccountingPids, h2)})
    """, devices=devs)
    assert got == {"mode": 1, "buf": 1000, "pids": [100, 101], "sizing": [7, 2],
                   "stats": [10, 5, 1 << 30, 60000, 1_699_999_000_000_000, 0],
                   "unknown": 6, "off_pids": 3, "off_stats": 3, "absent_mode": 3, "absent_pids": 3}


# --------------------------------------------------------------------------
# MIG
# --------------------------------------------------------------------------

def test_mig_devices(libdir, tmp_path):
    migs = {0: {"uuid": "MIG-aaaaaaaa-0000-5000-8000-000000000000", "gi": 1, "ci": 0, "profile": "3g.40gb"},
            2: {"uuid": "MIG-bbbbbbbb-0000-5000-8000-000000000000", "gi": 2, "ci": 0}}
    procs = [{"pid": 20, "used_memory": 1 << 30, "gi": 1, "ci": 0},
             {"pid": 21, "used_memory": 2 << 30, "gi": 2, "ci": 0}]
    devs = [h100(0, mig_mode=(1, 1), mig_devices=migs, processes=procs), h100(1)]
    got = run(libdir, tmp_path, """
        N.nvmlInit()
        h = N.nvmlDeviceGetHandleByIndex(0)
        m0 = N.nvmlDeviceGetMigDeviceHandleByIndex(h, 0)
        m2 = N.nvmlDeviceGetMigDeviceHandleByIndex(h, 2)
        parent = N.nvmlDeviceGetDeviceHandleFromMigDeviceHandle(m2)
        byuuid = N.nvmlDeviceGetHandleByUUID("MIG-bbbbbbbb-0000-5000-8000-000000000000")
        addr = lambda x: ctypes.cast(x, ctypes.c_void_p).value
        h1 = N.nvmlDeviceGetHandleByIndex(1)
        out({"mode": N.nvmlDeviceGetMigMode(h), "max": N.nvmlDeviceGetMaxMigDeviceCount(h),
             "max_off": N.nvmlDeviceGetMaxMigDeviceCount(h1),
             "uuids": [N.nvmlDeviceGetUUID(m0), N.nvmlDeviceGetUUID(m2)],
             "ids": [N.nvmlDeviceGetGpuInstanceId(m0), N.nvmlDeviceGetComputeInstanceId(m0),
                     N.nvmlDeviceGetGpuInstanceId(m2), N.nvmlDeviceGetComputeInstanceId(m2)],
             "is_mig": [N.nvmlDeviceIsMigDeviceHandle(m0).value, N.nvmlDeviceIsMigDeviceHandle(h).value],
             "names": [N.nvmlDeviceGetName(m0), N.nvmlDeviceGetName(m2)],
             "parent": addr(parent) == addr(h), "byuuid": addr(byuuid) == addr(m2),
             "procs": [[p.pid for p in N.nvmlDeviceGetComputeRunningProcesses(m)] for m in (m0, m2, h)],
             "empty": err(N.nvmlDeviceGetMigDeviceHandleByIndex, h, 1),
             "beyond": err(N.nvmlDeviceGetMigDeviceHandleByIndex, h, 7),
             "gi_on_gpu": err(N.nvmlDeviceGetGpuInstanceId, h),
             "temp_on_mig": err(N.nvmlDeviceGetTemperature, m0, 0),
             "off": err(N.nvmlDeviceGetMigDeviceHandleByIndex, h1, 0)})
    """, devices=devs)
    assert got == {
        "mode": [1, 1], "max": 7, "max_off": 0,
        "uuids": ["MIG-aaaaaaaa-0000-5000-8000-000000000000", "MIG-bbbbbbbb-0000-5000-8000-000000000000"],
        "ids": [1, 0, 2, 0], "is_mig": [1, 0],
        "names": ["NVIDIA H100 80GB HBM3 MIG 3g.40gb", "NVIDIA H100 80GB HBM3"],
        "parent": True, "byuuid": True,
        "procs": [[20], [21], [20, 21]],
        "empty": 6, "beyond": 2, "gi_on_gpu": 2, "temp_on_mig": 3, "off": 2,
    }


def test_mig_device_memory(libdir, tmp_path):
    migs = {0: {"uuid": "MIG-aaaaaaaa-0000-5000-8000-000000000000", "gi": 1, "ci": 0,
                "memory": (40 << 30, 3 << 30, 1 << 20)},
            1: {"uuid": "MIG-bbbbbbbb-0000-5000-8000-000000000000", "gi": 2, "ci": 0,
                "memory": (20 << 30, 5 << 30)},
            2: {"uuid": "MIG-cccccccc-0000-5000-8000-000000000000", "gi": 3, "ci": 0},
            3: {"uuid": "MIG-dddddddd-0000-5000-8000-000000000000", "gi": 4, "ci": 0,
                "memory": Field(error=999)}}
    devs = [h100(0, mig_mode=(1, 1), mig_devices=migs, memory_total=80 << 30, memory_used=9 << 30)]
    got = run(libdir, tmp_path, """
        N.nvmlInit()
        h = N.nvmlDeviceGetHandleByIndex(0)
        m = [N.nvmlDeviceGetMigDeviceHandleByIndex(h, slot) for slot in range(4)]
        v2 = N.nvmlDeviceGetMemoryInfo(m[0], N.nvmlMemory_v2)
        v1 = N.nvmlDeviceGetMemoryInfo(m[0])
        out({"v2": [v2.total, v2.used, v2.reserved, v2.free], "v1": [v1.total, v1.used, v1.free],
             "other": N.nvmlDeviceGetMemoryInfo(m[1], N.nvmlMemory_v2).used,
             "gpu": N.nvmlDeviceGetMemoryInfo(h, N.nvmlMemory_v2).used,
             "none": err(N.nvmlDeviceGetMemoryInfo, m[2], N.nvmlMemory_v2),
             "failing": [err(N.nvmlDeviceGetMemoryInfo, m[3], N.nvmlMemory_v2),
                         err(N.nvmlDeviceGetMemoryInfo, m[3])]})
    """, devices=devs)
    assert got == {"v2": [40 << 30, 3 << 30, 1 << 20, (37 << 30) - (1 << 20)],
                   "v1": [40 << 30, (3 << 30) + (1 << 20), (37 << 30) - (1 << 20)],
                   "other": 5 << 30, "gpu": 9 << 30, "none": 3, "failing": [999, 999]}


def test_gpu_instances_and_minor_numbers(libdir, tmp_path):
    migs = {0: {"uuid": "MIG-aaaaaaaa-0000-5000-8000-000000000000", "gi": 9, "ci": 0},
            1: {"uuid": "MIG-bbbbbbbb-0000-5000-8000-000000000000", "gi": 3, "ci": 0}}
    # H100 profile ids: 19 is 1g.10gb (one slice), 9 is 3g.40gb (four memory slices)
    devs = [h100(0, minor_number=4, mig_mode=(1, 1), mig_devices=migs,
                 gpu_instances={9: (19, 6, 1), 3: (9, 0, 4)}),
            h100(1, minor_number=0, mig_mode=(0, 0), gpu_instances={1: (0, 0, 8)}),
            h100(2, minor_number=2, mig_mode=(1, 1), gpu_instances={1: (19, 0, 1)},
                 errors={"nvmlDeviceGetGpuInstanceById": 4})]
    calls = tmp_path / "calls.txt"
    got = run(libdir, tmp_path, """
        N.nvmlInit()
        h = [N.nvmlDeviceGetHandleByIndex(i) for i in range(3)]
        addr = lambda x: ctypes.cast(x, ctypes.c_void_p).value
        def info(gi):
            i = N.nvmlGpuInstanceGetInfo(N.nvmlDeviceGetGpuInstanceById(h[0], gi))
            return [addr(i.device) == addr(h[0]), i.id, i.profileId, i.placement.start, i.placement.size]
        mig = N.nvmlDeviceGetMigDeviceHandleByIndex(h[0], 0)
        out({"minors": [N.nvmlDeviceGetMinorNumber(x) for x in h], "gi9": info(9), "gi3": info(3),
             "absent": err(N.nvmlDeviceGetGpuInstanceById, h[0], 5),
             "mig_off": err(N.nvmlDeviceGetGpuInstanceById, h[1], 1),
             "on_mig_handle": err(N.nvmlDeviceGetGpuInstanceById, mig, 9),
             "not_root": err(N.nvmlDeviceGetGpuInstanceById, h[2], 1),
             "foreign": err(N.nvmlGpuInstanceGetInfo, ctypes.cast(h[0], N.c_nvmlGpuInstance_t))})
        N.nvmlShutdown()
    """, devices=devs, calls=calls)
    assert got == {"minors": [4, 0, 2], "gi9": [True, 9, 19, 6, 1], "gi3": [True, 3, 9, 0, 4],
                   "absent": 6, "mig_off": 3, "on_mig_handle": 3, "not_root": 4, "foreign": 2}
    counts = read_calls(calls)
    assert counts[0]["nvmlGpuInstanceGetInfo"] == 2 and counts["system"]["nvmlGpuInstanceGetInfo"] == 1
    assert counts[0]["nvmlDeviceGetGpuInstanceById"] == 4


def test_gpu_instance_lines_are_checked(libdir, tmp_path):
    for bad in ("gpu_instance 1 19 0", "gpu_instance 1 19 0 x", "gpu_instance -1 19 0 1"):
        proc = run(libdir, tmp_path, "N.nvmlInit()", scenario_text=f"device\n{bad}\n", expect_rc=1)
        assert "gpu_instance" in proc.stderr or "bad number" in proc.stderr, (bad, proc.stderr)


# --------------------------------------------------------------------------
# GPM
# --------------------------------------------------------------------------

GPM_PRELUDE = textwrap.dedent("""
    def gpm(s1, s2, ids, version=N.NVML_GPM_METRICS_GET_VERSION):
        mg = N.c_nvmlGpmMetricsGet_t()
        mg.version, mg.numMetrics, mg.sample1, mg.sample2 = version, len(ids), s1, s2
        for i, metric_id in enumerate(ids):
            mg.metrics[i].metricId = metric_id
        N.nvmlGpmMetricsGet(mg)
        return [[mg.metrics[i].nvmlReturn, mg.metrics[i].value] for i in range(len(ids))]

    def sampled(get, *args):
        s = N.nvmlGpmSampleAlloc()
        get(*args, s)
        return s
""")


def test_gpm_support_samples_and_metrics(libdir, tmp_path):
    gpu = fakegpu.with_gpm(h100(0), {2: 45.0, 5: 12.5, 20: 100.0, 3: Field(error=3)})
    calls = tmp_path / "calls.txt"
    got = run(libdir, tmp_path, GPM_PRELUDE + textwrap.dedent("""
        N.nvmlInit()
        h, old = N.nvmlDeviceGetHandleByIndex(0), N.nvmlDeviceGetHandleByIndex(1)
        s1 = sampled(N.nvmlGpmSampleGet, h)
        soon = sampled(N.nvmlGpmSampleGet, h)
        time.sleep(0.15)
        s2 = sampled(N.nvmlGpmSampleGet, h)
        unfilled = N.nvmlGpmSampleAlloc()
        other = N.nvmlGpmSampleAlloc()
        result = {
            "supported": [N.nvmlGpmQueryDeviceSupport(h).isSupportedDevice,
                          N.nvmlGpmQueryDeviceSupport(old).isSupportedDevice],
            "old_gpu": err(N.nvmlGpmSampleGet, old, other),
            "values": gpm(s1, s2, [2, 5, 20, 3, 7]),
            "too_soon": err(gpm, s1, soon, [2]),
            "reversed": err(gpm, s2, s1, [2]),
            "same": err(gpm, s1, s1, [2]),
            "unfilled": err(gpm, s1, unfilled, [2]),
            "version": err(gpm, s1, s2, [2], 2),
            "none": err(gpm, s1, s2, []),
        }
        for s in (s1, soon, s2, unfilled, other):
            N.nvmlGpmSampleFree(s)
        result["freed_twice"] = err(N.nvmlGpmSampleFree, s1)
        result["freed_used"] = err(gpm, s1, s2, [2])
        N.nvmlShutdown()
        out(result)
    """), devices=[gpu, h100(1)], calls=calls)
    assert got == {
        "supported": [1, 0], "old_gpu": 3,
        "values": [[0, 45.0], [0, 12.5], [0, 100.0], [3, 0.0], [3, 0.0]],
        "too_soon": 2, "reversed": 2, "same": 2, "unfilled": 2, "version": 25, "none": 2,
        "freed_twice": 2, "freed_used": 2,
    }
    system = read_call_blocks(calls)[-1]["system"]
    assert system["gpm_samples_live"] == 0 and system["gpm_samples_peak"] == 5
    assert read_calls(calls)[0]["nvmlGpmSampleGet"] == 3


def test_gpm_mig_instances(libdir, tmp_path):
    migs = {0: {"uuid": "MIG-aaaaaaaa-0000-5000-8000-000000000000", "gi": 1, "ci": 0},
            1: {"uuid": "MIG-bbbbbbbb-0000-5000-8000-000000000000", "gi": 2, "ci": 0}}
    gpu = fakegpu.with_gpm(h100(0, mig_mode=(1, 1), mig_devices=migs), {20: 7.0},
                           mig={1: {2: 10.0}, 2: {2: 20.0, 10: Field(error=999)}})
    got = run(libdir, tmp_path, GPM_PRELUDE + textwrap.dedent("""
        N.nvmlInit()
        h, h1 = N.nvmlDeviceGetHandleByIndex(0), N.nvmlDeviceGetHandleByIndex(1)
        m1 = N.nvmlDeviceGetMigDeviceHandleByIndex(h, 1)
        first = [sampled(N.nvmlGpmMigSampleGet, h, 1), sampled(N.nvmlGpmMigSampleGet, h, 2),
                 sampled(N.nvmlGpmSampleGet, m1), sampled(N.nvmlGpmSampleGet, h)]
        time.sleep(0.15)
        second = [sampled(N.nvmlGpmMigSampleGet, h, 1), sampled(N.nvmlGpmMigSampleGet, h, 2),
                  sampled(N.nvmlGpmSampleGet, m1), sampled(N.nvmlGpmSampleGet, h)]
        spare = N.nvmlGpmSampleAlloc()
        out({"gi1": gpm(first[0], second[0], [2]), "gi2": gpm(first[1], second[1], [2, 10]),
             "mig_handle": gpm(first[2], second[2], [2]), "gpu": gpm(first[3], second[3], [20, 2]),
             "mixed": err(gpm, first[0], second[1], [2]),
             "no_gi": err(N.nvmlGpmMigSampleGet, h, 5, spare),
             "mig_off": err(N.nvmlGpmMigSampleGet, h1, 1, spare)})
    """), devices=[gpu, fakegpu.with_gpm(h100(1))])
    assert got == {"gi1": [[0, 10.0]], "gi2": [[0, 20.0], [999, 0.0]], "mig_handle": [[0, 20.0]],
                   "gpu": [[0, 7.0], [3, 0.0]], "mixed": 2, "no_gi": 2, "mig_off": 3}


def test_gpm_scenario_lines_are_checked(libdir, tmp_path):
    for bad in ("gpm_metric 2", "gpm_metric x 4", "gpm_metric 2 error 0", "gpm_mig_metric 2 45.0",
                "gpm_mig_metric -1 2 45.0"):
        proc = run(libdir, tmp_path, "N.nvmlInit()", scenario_text=f"device\nuuid GPU-1\n{bad}\n",
                   expect_rc=1)
        assert "scenario.txt:3: expected `gpm_" in proc.stderr or "bad error code" in proc.stderr, (bad, proc.stderr)


# --------------------------------------------------------------------------
# events
# --------------------------------------------------------------------------

def test_event_sets_register_wait_and_free(libdir, tmp_path):
    fifo = tmp_path / "events"
    os.mkfifo(fifo)
    keep = os.open(fifo, os.O_RDWR | os.O_NONBLOCK)  # holds the FIFO open so the lines stay in it
    os.write(keep, b"1 8 79\n0 1 0\n0 8 94 3 1\n")  # GPU 1 is not registered: dropped
    calls = tmp_path / "calls.txt"
    try:
        got = run(libdir, tmp_path, """
            N.nvmlInit()
            h, h1, h2 = (N.nvmlDeviceGetHandleByIndex(i) for i in range(3))
            s = N.nvmlEventSetCreate()
            result = {"layout": ctypes.sizeof(N.c_nvmlEventData_t),
                      "supported": [N.nvmlDeviceGetSupportedEventTypes(h),
                                    err(N.nvmlDeviceGetSupportedEventTypes, h2)],
                      "unsupported_type": err(N.nvmlDeviceRegisterEvents, h, 0x10, s),
                      "gpu_without_events": err(N.nvmlDeviceRegisterEvents, h2, 0x8, s)}
            N.nvmlDeviceRegisterEvents(h, 0x9, s)
            got = []
            for _ in range(2):
                d = N.nvmlEventSetWait_v2(s, 2000)
                got.append([ctypes.cast(d.device, ctypes.c_void_p).value == ctypes.cast(h, ctypes.c_void_p).value,
                            d.eventType, d.eventData, d.gpuInstanceId, d.computeInstanceId])
            result["events"] = got
            started = time.monotonic()
            result["timeout"] = err(N.nvmlEventSetWait_v2, s, 200)
            result["waited"] = round(time.monotonic() - started, 1)
            N.nvmlEventSetFree(s)
            result["freed_twice"] = err(N.nvmlEventSetFree, s)
            N.nvmlShutdown()
            out(result)
        """, devices=[h100(0), h100(1), h100(2, event_types=None)],
                  system={"event_source": str(fifo)}, calls=calls)
    finally:
        os.close(keep)
    assert got == {"layout": 32, "supported": [0xF, 3], "unsupported_type": 3, "gpu_without_events": 3,
                   "events": [[True, 1, 0, 0xFFFFFFFF, 0xFFFFFFFF], [True, 8, 94, 3, 1]],
                   "timeout": 10, "waited": 0.2, "freed_twice": 2}
    assert read_call_blocks(calls)[-1]["system"]["event_sets_live"] == 0


def test_a_lost_gpu_in_an_event_set_fails_the_wait(libdir, tmp_path):
    got = run(libdir, tmp_path, """
        N.nvmlInit()
        s = N.nvmlEventSetCreate()
        N.nvmlDeviceRegisterEvents(N.nvmlDeviceGetHandleByIndex(0), 0x8, s)
        out({"no_source": err(N.nvmlEventSetWait_v2, s, 50)})
    """, devices=[h100(0)])
    assert got == {"no_source": 10}  # without an event source, every wait times out
    scenario = tmp_path / "scenario.txt"
    got = run(libdir, tmp_path, f"""
        N.nvmlInit()
        s = N.nvmlEventSetCreate()
        N.nvmlDeviceRegisterEvents(N.nvmlDeviceGetHandleByIndex(0), 0x8, s)
        with open({str(scenario)!r}, "a") as f:
            f.write("lost\\n")  # re-read at the next init: GPU 0 is lost from then on
        N.nvmlShutdown(); N.nvmlInit()
        out({{"lost": err(N.nvmlEventSetWait_v2, s, 50)}})
    """, devices=[h100(0)])
    assert got == {"lost": 15}


# --------------------------------------------------------------------------
# PCIe throughput timing
# --------------------------------------------------------------------------

def test_pcie_throughput_really_sleeps(libdir, tmp_path):
    got = run(libdir, tmp_path, """
        N.nvmlInit()
        h = N.nvmlDeviceGetHandleByIndex(0)
        t0 = time.monotonic()
        v = [N.nvmlDeviceGetPcieThroughput(h, c) for c in (0, 1, 0)]
        dt = time.monotonic() - t0
        t1 = time.monotonic()
        N.nvmlDeviceGetPcieReplayCounter(h)
        quick = time.monotonic() - t1
        out({"v": v, "dt": dt, "quick": quick, "bad": err(N.nvmlDeviceGetPcieThroughput, h, 2)})
    """)
    assert got["v"] == [1234567, 2345678, 1234567]
    assert got["dt"] >= 0.060
    assert got["quick"] < 0.020  # one 20 ms sample would exceed this
    assert got["bad"] == fakegpu.NVML_ERROR_INVALID_ARGUMENT


def test_pcie_throughput_threads_are_counted_once_each(libdir, tmp_path):
    calls = tmp_path / "calls.txt"
    run(libdir, tmp_path, """
        import threading
        N.nvmlInit()
        h = N.nvmlDeviceGetHandleByIndex(0)
        N.nvmlDeviceGetPcieThroughput(h, 0)
        N.nvmlDeviceGetPcieThroughput(h, 1)  # the same thread again
        for t in [threading.Thread(target=N.nvmlDeviceGetPcieThroughput, args=(h, 0)) for _ in range(3)]:
            t.start()
            t.join()
        N.nvmlShutdown()
        out({})
    """, calls=calls)
    system = fakegpu.read_call_blocks(calls)[-1]["system"]
    assert system["pcie_throughput_threads"] == 4


# --------------------------------------------------------------------------
# call counts
# --------------------------------------------------------------------------

def test_call_counts_file(libdir, tmp_path):
    calls = tmp_path / "calls.txt"
    devs = [h100(0), h100(1), h100(2, lost=True)]
    code = """
        N.nvmlInit()
        n = N.nvmlDeviceGetCount()
        h0, h1 = N.nvmlDeviceGetHandleByIndex(0), N.nvmlDeviceGetHandleByIndex(1)
        err(N.nvmlDeviceGetHandleByIndex, 2)
        err(N.nvmlDeviceGetHandleByIndex, 9)
        for _ in range(3):
            N.nvmlDeviceGetTemperatureV(h0, 0)
        N.nvmlDeviceGetFieldValues(h1, [83, 91])
        N.nvmlSystemGetDriverVersion()
        N.nvmlShutdown()
        N.nvmlInit()                      # a second session in the same process
        N.nvmlDeviceGetPowerUsage(N.nvmlDeviceGetHandleByIndex(1))
        out(n)                            # exits without nvmlShutdown: the destructor flushes
    """
    assert run(libdir, tmp_path, code, devices=devs, calls=calls) == 3
    blocks = read_call_blocks(calls)
    assert blocks == [
        {0: {"nvmlDeviceGetHandleByIndex_v2": 1, "nvmlDeviceGetTemperatureV": 3},
         1: {"nvmlDeviceGetHandleByIndex_v2": 1, "nvmlDeviceGetFieldValues": 1},
         2: {"nvmlDeviceGetHandleByIndex_v2": 1},
         "system": {"nvmlInitWithFlags": 1, "nvmlShutdown": 1, "nvmlSystemGetDriverVersion": 1,
                    "nvmlDeviceGetCount_v2": 1, "nvmlDeviceGetHandleByIndex_v2": 1}},
        {1: {"nvmlDeviceGetHandleByIndex_v2": 1, "nvmlDeviceGetPowerUsage": 1},
         "system": {"nvmlInitWithFlags": 1}},
    ]
    assert calls.read_text().count("end\n") == 2
    # a second process appends; read_calls sums
    run(libdir, tmp_path, code, devices=devs, calls=calls)
    total = read_calls(calls)
    assert total[0] == {"nvmlDeviceGetHandleByIndex_v2": 2, "nvmlDeviceGetTemperatureV": 6}
    assert total[1]["nvmlDeviceGetPowerUsage"] == 2
    assert total["system"]["nvmlInitWithFlags"] == 4
    assert len(read_call_blocks(calls)) == 4


def test_call_counts_from_parallel_processes_do_not_interleave(libdir, tmp_path):
    calls = tmp_path / "calls.txt"
    scen = tmp_path / "scenario.txt"
    Scenario(devices=[h100(i) for i in range(8)]).write(scen)
    env = fake_env(libdir, scen, calls_path=calls)
    code = PRELUDE + textwrap.dedent("""
        N.nvmlInit()
        for i in range(N.nvmlDeviceGetCount()):
            h = N.nvmlDeviceGetHandleByIndex(i)
            for _ in range(50):
                N.nvmlDeviceGetTemperatureV(h, 0)
                N.nvmlDeviceGetFieldValues(h, [83])
            for f in ("nvmlDeviceGetName", "nvmlDeviceGetUUID", "nvmlDeviceGetSerial"):
                getattr(N, f)(h)
    """)
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env) for _ in range(8)]
    assert [p.wait(timeout=120) for p in procs] == [0] * 8
    blocks = read_call_blocks(calls)
    assert len(blocks) == 8
    for block in blocks:
        assert block["system"] == {"nvmlInitWithFlags": 1, "nvmlDeviceGetCount_v2": 1}
        for i in range(8):
            assert block[i] == {"nvmlDeviceGetHandleByIndex_v2": 1, "nvmlDeviceGetTemperatureV": 50,
                                "nvmlDeviceGetFieldValues": 50, "nvmlDeviceGetName": 1,
                                "nvmlDeviceGetUUID": 1, "nvmlDeviceGetSerial": 1}


def test_threads_share_the_library_safely(libdir, tmp_path):
    calls = tmp_path / "calls.txt"
    got = run(libdir, tmp_path, """
        import threading
        N.nvmlInit()
        hs = [N.nvmlDeviceGetHandleByIndex(i) for i in range(4)]
        bad = []
        def work(h):
            for _ in range(200):
                if N.nvmlDeviceGetTotalEnergyConsumption(h) < 1000 or N.nvmlDeviceGetTemperatureV(h, 0) != 41:
                    bad.append(1)
        def both(fn):
            ts = [threading.Thread(target=fn, args=(hs[i % 4],)) for i in range(8)]
            t0 = time.monotonic()
            [t.start() for t in ts]
            [t.join() for t in ts]
            return time.monotonic() - t0
        both(work)
        # eight 20 ms samples at once: the lock is not held while sleeping
        dt = both(lambda h: N.nvmlDeviceGetPcieThroughput(h, 0))
        out({"bad": len(bad), "parallel_sleep": dt < 0.14,
             "energy": [N.nvmlDeviceGetTotalEnergyConsumption(h) for h in hs]})
        N.nvmlShutdown()
    """, devices=[h100(i, energy=step(1000, 1)) for i in range(4)], calls=calls)
    # 2 threads x 200 reads per device, then one more read each
    assert got == {"bad": 0, "parallel_sleep": True, "energy": [1400] * 4}
    counts = read_calls(calls)
    assert [counts[i]["nvmlDeviceGetTemperatureV"] for i in range(4)] == [400] * 4
    assert [counts[i]["nvmlDeviceGetPcieThroughput"] for i in range(4)] == [2] * 4


def test_no_calls_file_without_env(libdir, tmp_path):
    run(libdir, tmp_path, "N.nvmlInit(); N.nvmlShutdown(); out(1)")
    assert read_calls(tmp_path / "calls.txt") == {}
    assert not (tmp_path / "calls.txt").exists()


# --------------------------------------------------------------------------
# Python-side rendering
# --------------------------------------------------------------------------

def test_render_rejects_unknown_keys_and_drops_none():
    with pytest.raises(ValueError, match="temprature"):
        Scenario(devices=[h100(0, temprature=4)]).render()
    text = Scenario(devices=[h100(0, temperature=None, energy=step(10, 2))],
                    system={"driver_version": "1.2"}).render()
    lines = text.splitlines()
    assert "system driver_version 1.2" in lines
    assert "energy 10 step 2" in lines
    assert "pci_device_id 0x233010de" in lines
    assert not any(line.startswith(("temperature ", "temperature_margin ")) for line in lines)
    assert "system cuda_driver_version" not in text

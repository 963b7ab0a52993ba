"""Device metrics from NVML: identity, thermals, power, energy, memory, utilisation, clocks, settings, errors.

Per device and run: one nvmlDeviceGetFieldValues call for every counter NVML offers as a field, plus the
gauges that have no field (memory, utilisation, clocks, clock-event reasons, performance state, fans).
Static identity comes from the inventory cache (gputext.devices).
"""

from __future__ import annotations

from typing import Dict, Optional, Tuple

import pynvml

from ..devices import CLOCKS, Device, gpu_instances, instance_labels
from ..exposition import clean
from ..nvml import DeviceGone, Nvml

# NVML field ids (nvml.h NVML_FI_DEV_*)
FI_ECC_CURRENT = 1
FI_GPU_TEMP = 308
FI_TOTAL_ENERGY = 83
FI_POWER_INSTANT = 186
FI_POWER_CURRENT_LIMIT = 190

# field id -> (metric key, extra labels, factor to the metric's base unit)
FIELD_METRICS: Dict[int, Tuple[str, Dict[str, str], float]] = {
    FI_GPU_TEMP: ("temperature_celsius", {}, 1.0),
    82: ("memory_temperature_celsius", {}, 1.0),
    FI_TOTAL_ENERGY: ("energy_joules_total", {}, 1e-3),  # mJ
    FI_POWER_INSTANT: ("power_watts", {}, 1e-3),  # mW
    FI_POWER_CURRENT_LIMIT: ("power_limit_watts", {}, 1e-3),  # mW
    FI_ECC_CURRENT: ("ecc_mode", {}, 1.0),
    29: ("retired_pages_total", {"cause": "single_bit_ecc"}, 1.0),
    30: ("retired_pages_total", {"cause": "double_bit_ecc"}, 1.0),
    142: ("remapped_rows_total", {"cause": "correctable"}, 1.0),
    143: ("remapped_rows_total", {"cause": "uncorrectable"}, 1.0),
    144: ("remapped_rows_pending", {}, 1.0),
    145: ("remapped_rows_failed", {}, 1.0),
    # Temperature limits, in °C (static, but in the same call they cost next to nothing)
    193: ("temperature_threshold_celsius", {"threshold": "shutdown"}, 1.0),
    194: ("temperature_threshold_celsius", {"threshold": "slowdown"}, 1.0),
    195: ("temperature_threshold_celsius", {"threshold": "memory_max"}, 1.0),
    196: ("temperature_threshold_celsius", {"threshold": "gpu_max"}, 1.0),
    # Violation (clock event) time counters, in ns. The reason names match clock_event_active's where
    # the two describe the same cause.
    74: ("clock_event_duration_seconds_total", {"reason": "sw_power_cap"}, 1e-9),
    75: ("clock_event_duration_seconds_total", {"reason": "thermal"}, 1e-9),
    76: ("clock_event_duration_seconds_total", {"reason": "sync_boost"}, 1e-9),
    77: ("clock_event_duration_seconds_total", {"reason": "board_limit"}, 1e-9),
    78: ("clock_event_duration_seconds_total", {"reason": "low_utilization"}, 1e-9),
    79: ("clock_event_duration_seconds_total", {"reason": "reliability"}, 1e-9),
    80: ("clock_event_duration_seconds_total", {"reason": "below_applications_clocks"}, 1e-9),
    81: ("clock_event_duration_seconds_total", {"reason": "below_base_clocks"}, 1e-9),
    269: ("clock_event_duration_seconds_total", {"reason": "sw_thermal_slowdown"}, 1e-9),
    270: ("clock_event_duration_seconds_total", {"reason": "hw_thermal_slowdown"}, 1e-9),
    271: ("clock_event_duration_seconds_total", {"reason": "hw_power_brake_slowdown"}, 1e-9),
}

# ECC totals: only meaningful while ECC is on (field 1), so written only then.
ECC_FIELDS: Dict[int, Tuple[str, str]] = {
    3: ("ecc_errors_total", "corrected"),  # volatile single-bit = corrected
    4: ("ecc_errors_total", "uncorrected"),  # volatile double-bit = uncorrected
    5: ("ecc_lifetime_errors_total", "corrected"),  # aggregate
    6: ("ecc_lifetime_errors_total", "uncorrected"),
}

# nvmlComputeMode_t values (nvml.h NVML_COMPUTEMODE_*)
COMPUTE_MODES = ("default", "exclusive_thread", "prohibited", "exclusive_process")

# Where an older driver lacks a field, the function that gives the same value (one more call, only then).
FIELD_FALLBACKS = {
    FI_GPU_TEMP: lambda h: pynvml.nvmlDeviceGetTemperatureV(h, pynvml.NVML_TEMPERATURE_GPU),
    FI_POWER_INSTANT: pynvml.nvmlDeviceGetPowerUsage,
    FI_POWER_CURRENT_LIMIT: pynvml.nvmlDeviceGetEnforcedPowerLimit,
    FI_TOTAL_ENERGY: pynvml.nvmlDeviceGetTotalEnergyConsumption,
}

# nvmlClocksEventReason* bits (nvml.h); every known reason gets a 0/1 series.
CLOCK_EVENT_REASONS = (
    (0x1, "gpu_idle"),
    (0x2, "applications_clocks_setting"),
    (0x4, "sw_power_cap"),
    (0x8, "hw_slowdown"),
    (0x10, "sync_boost"),
    (0x20, "sw_thermal_slowdown"),
    (0x40, "hw_thermal_slowdown"),
    (0x80, "hw_power_brake_slowdown"),
    (0x100, "display_clock_setting"),
    (0x200, "board_limit"),
    (0x400, "reliability"),
)

MHZ = 1e6
PSTATE_UNKNOWN = 32  # NVML_PSTATE_UNKNOWN


def collect(ctx, samples) -> None:
    system, devices = ctx.devices()
    # NVML fields a counters file names (--counters), read in the same call as the catalogue's
    extra_fields = ctx.options.counters.fields if ctx.options.counters is not None else ()
    for dev in devices:
        labels = dev.labels
        if dev.up:
            try:
                _collect_device(ctx, dev, samples, extra_fields)
            except DeviceGone as err:
                dev.error = str(err)
                ctx.warn(f"{dev.name} ({dev.uuid}) stopped answering: {err}")
        if dev.up:
            samples.add("info", 1, {**labels, **_info_labels(dev, system)})
        samples.add("up", 1 if dev.up else 0, labels)


def _info_labels(dev: Device, system) -> Dict[str, str]:
    return {
        "name": dev.info.get("name", ""),
        "pci_bus_id": dev.info.get("pci_bus_id", ""),
        "serial": dev.info.get("serial", ""),
        "vbios_version": dev.info.get("vbios_version", ""),
        "driver_version": system.driver_version,
        "cuda_driver_version": system.cuda_driver_version,
    }


def _collect_device(ctx, dev: Device, samples, extra_fields=()) -> None:
    # Everything is read before anything is added: a device that is lost half way through gives
    # `up 0` and no half set of series.
    nvml: Nvml = ctx.nvml
    h, where = dev.handle, dev.name
    pending = []

    def put(key: str, value, **extra: str) -> None:
        pending.append((key, value, {**dev.labels, **extra}))

    # Only what the detail level writes is read: a value left out costs neither an NVML call nor a sample.
    def wanted(key: str, **labels: str) -> bool:
        return samples.keeps(key, labels)

    field_metrics = {fid: row for fid, row in FIELD_METRICS.items() if wanted(row[0], **row[1])}
    ecc_fields = {fid: row for fid, row in ECC_FIELDS.items() if wanted(row[0], type=row[1])}
    # ECC_CURRENT decides whether the ECC counters mean anything, so it is read with them
    keys = dict.fromkeys([(fid, 0) for fid in (*field_metrics, FI_ECC_CURRENT, *ecc_fields)])
    keys.update(dict.fromkeys(f.key for f in extra_fields))
    fields = nvml.fields(h, keys, device=where)
    for fid, (key, extra, factor) in field_metrics.items():
        value = fields.get((fid, 0))
        if value is None and fid in FIELD_FALLBACKS:
            value = nvml.call(FIELD_FALLBACKS[fid], h, device=where)
        put(key, _scaled(value, factor), **extra)
    if fields.get((FI_ECC_CURRENT, 0)) == 1:
        for fid, (key, kind) in ecc_fields.items():
            put(key, fields.get((fid, 0)), type=kind)

    memory = nvml.call(pynvml.nvmlDeviceGetMemoryInfo, h, pynvml.nvmlMemory_v2, device=where)
    if memory is not None:
        put("memory_total_bytes", memory.total)
        put("memory_used_bytes", memory.used)
        put("memory_free_bytes", memory.free)
        put("memory_reserved_bytes", memory.reserved)

    rates = nvml.call(pynvml.nvmlDeviceGetUtilizationRates, h, device=where)
    if rates is not None:
        put("utilization_ratio", _percent(rates.gpu))
        put("memory_utilization_ratio", _percent(rates.memory))
    for key, fn in (("encoder_utilization_ratio", pynvml.nvmlDeviceGetEncoderUtilization),
                    ("decoder_utilization_ratio", pynvml.nvmlDeviceGetDecoderUtilization)):
        if not wanted(key):
            continue
        answer = nvml.call(fn, h, device=where)  # [utilisation %, sampling period µs]
        if answer is not None:
            put(key, _percent(answer[0]))

    for clock, clock_type in CLOCKS:
        if wanted("clock_hertz", clock=clock):
            put("clock_hertz", _scaled(nvml.call(pynvml.nvmlDeviceGetClockInfo, h, clock_type, device=where),
                                       MHZ), clock=clock)
        put("clock_max_hertz", _scaled(dev.info.get("max_clocks_mhz", {}).get(clock), MHZ), clock=clock)

    reasons = nvml.call(pynvml.nvmlDeviceGetCurrentClocksEventReasons, h, device=where)
    if reasons is not None:
        for bit, reason in CLOCK_EVENT_REASONS:
            if wanted("clock_event_active", reason=reason):
                put("clock_event_active", 1 if reasons & bit else 0, reason=reason)

    if wanted("performance_state"):
        pstate = nvml.call(pynvml.nvmlDeviceGetPerformanceState, h, device=where)
        put("performance_state", None if pstate == PSTATE_UNKNOWN else pstate)
    for fan in range(dev.info.get("fan_count", 0) if wanted("fan_speed_ratio") else 0):
        speed = nvml.call(pynvml.nvmlDeviceGetFanSpeed_v2, h, fan, device=where)
        put("fan_speed_ratio", _percent(speed), fan=str(fan))

    settings = dev.settings
    put("persistence_mode", settings.get("persistence_mode"))
    put("accounting_mode", settings.get("accounting_mode"))
    mode = settings.get("compute_mode")
    if mode is not None and 0 <= mode < len(COMPUTE_MODES):  # a value newer than this table: left out
        for number, name in enumerate(COMPUTE_MODES):
            put("compute_mode", 1 if number == mode else 0, mode=name)
    mig = settings.get("mig_mode")
    if mig:
        put("mig_mode", mig[0])
        put("mig_mode_pending", mig[1])
    mig_memory = wanted("mig_memory_total_bytes") or wanted("mig_memory_used_bytes")
    if mig and mig[0] == 1 and mig_memory:
        for gpu_instance, members in gpu_instances(ctx.mig_devices(dev)):
            # The memory is the GPU instance's, which its compute instances (MIG devices) share:
            # read once, through its first MIG device, and written once, so that sums do not count
            # it twice.
            memory = nvml.call(pynvml.nvmlDeviceGetMemoryInfo, members[0].handle,
                               pynvml.nvmlMemory_v2, device=f"{where} GPU instance {gpu_instance}")
            if memory is not None:
                labels = instance_labels(gpu_instance, members)
                put("mig_memory_total_bytes", memory.total, **labels)
                put("mig_memory_used_bytes", memory.used, **labels)

    for key, value, labels in pending:
        samples.add(key, value, labels)
    for extra in extra_fields:
        scope = {"scope": str(extra.scope)} if extra.scope is not None else {}
        samples.add_extra(extra.name, extra.type, extra.help, fields.get(extra.key), {**dev.labels, **scope})


def _scaled(value, factor: float) -> Optional[float]:
    """Scale after cleaning: a scaled not-available marker would no longer be recognised."""
    value = clean(value)
    return None if value is None else value * factor


def _percent(value) -> Optional[float]:
    return _scaled(value, 0.01)

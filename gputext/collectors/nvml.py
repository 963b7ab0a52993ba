"""Device metrics from NVML: identity, thermals, power, energy, memory, utilisation, clocks, settings, errors.

Per device and run: one nvmlDeviceGetFieldValues call for every counter NVML offers as a field, plus the
gauges that have no field (memory, utilisation, clocks, clock-event reasons, performance state, fans).
Static identity comes from the inventory cache (gputext.devices).
"""

from __future__ import annotations


import pynvml

from .. import shape
from ..devices import CLOCKS, Device, gpu_instances, instance_labels
from ..exposition import DeviceRows, clean
from ..nvml import DeviceGone, Nvml

# NVML field ids (nvml.h NVML_FI_DEV_*)
FI_ECC_CURRENT = 1
FI_GPU_TEMP = 308
FI_TOTAL_ENERGY = 83
FI_POWER_INSTANT = 186
FI_POWER_CURRENT_LIMIT = 190

# field id -> (metric key, extra labels, factor to the metric's base unit)
# (factor 1 as an int: an integer field stays an int, written exactly and cheaply)
FIELD_METRICS: dict[int, tuple[str, dict[str, str], float]] = {
    FI_GPU_TEMP: ("temperature_celsius", {}, 1),
    82: ("memory_temperature_celsius", {}, 1),
    FI_TOTAL_ENERGY: ("energy_joules_total", {}, 1e-3),  # mJ
    FI_POWER_INSTANT: ("power_watts", {}, 1e-3),  # mW
    FI_POWER_CURRENT_LIMIT: ("power_limit_watts", {}, 1e-3),  # mW
    FI_ECC_CURRENT: ("ecc_mode", {}, 1),
    29: ("retired_pages_total", {"cause": "single_bit_ecc"}, 1),
    30: ("retired_pages_total", {"cause": "double_bit_ecc"}, 1),
    142: ("remapped_rows_total", {"cause": "correctable"}, 1),
    143: ("remapped_rows_total", {"cause": "uncorrectable"}, 1),
    144: ("remapped_rows_pending", {}, 1),
    145: ("remapped_rows_failed", {}, 1),
    # "T.Limit temperatures" (Ada and newer): signed offsets from the GPU's T.Limit, the margin at which
    # each threshold is reached, not degrees (the degrees come from THRESHOLDS). Static, but in the same
    # call they cost next to nothing.
    193: ("temperature_tlimit_offset_celsius", {"threshold": "shutdown"}, 1),
    194: ("temperature_tlimit_offset_celsius", {"threshold": "slowdown"}, 1),
    195: ("temperature_tlimit_offset_celsius", {"threshold": "memory_max"}, 1),
    196: ("temperature_tlimit_offset_celsius", {"threshold": "gpu_max"}, 1),
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
ECC_FIELDS: dict[int, tuple[str, str]] = {
    3: ("ecc_errors_total", "corrected"),  # volatile single-bit = corrected
    4: ("ecc_errors_total", "uncorrected"),  # volatile double-bit = uncorrected
    5: ("ecc_lifetime_errors_total", "corrected"),  # aggregate
    6: ("ecc_lifetime_errors_total", "uncorrected"),
}

# nvmlTemperatureThresholds_t values an operator watches, in °C from nvmlDeviceGetTemperatureThreshold; static,
# so read once into the inventory cache. Left out: ACOUSTIC_MIN/CURR/MAX and GPS_CURR, a fan-noise target
# someone sets on workstation boards, its allowed range, and a target nvml.h does not explain.
THRESHOLDS = (("shutdown", pynvml.NVML_TEMPERATURE_THRESHOLD_SHUTDOWN),
              ("slowdown", pynvml.NVML_TEMPERATURE_THRESHOLD_SLOWDOWN),
              ("memory_max", pynvml.NVML_TEMPERATURE_THRESHOLD_MEM_MAX),
              ("gpu_max", pynvml.NVML_TEMPERATURE_THRESHOLD_GPU_MAX))
THRESHOLDS_SHAPE = shape.mapping(shape.count, keys="|".join(name for name, _ in THRESHOLDS))  # as cached
# nvmlDeviceGetMarginTemperature (Ada and newer): the oldest nvidia-ml-py releases that gputext allows (12.535)
# lack it
MARGIN = getattr(pynvml, "nvmlDeviceGetMarginTemperature", None)

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

# [utilisation %, sampling period µs] of the video engines
CODEC_UTILIZATION = (("encoder_utilization_ratio", pynvml.nvmlDeviceGetEncoderUtilization),
                     ("decoder_utilization_ratio", pynvml.nvmlDeviceGetDecoderUtilization))

MHZ = 1_000_000  # an int: clocks in Hz stay exact integers
PSTATE_UNKNOWN = 32  # NVML_PSTATE_UNKNOWN


def collect(ctx, samples) -> None:
    system, devices = ctx.devices()
    # NVML fields a counters file names (--counters), read in the same call as the catalogue's
    extra_fields = ctx.options.counters.fields if ctx.options.counters is not None else ()
    level = samples.level
    for dev in devices:
        rows = device_rows(dev, level)
        if dev.up:
            try:
                _collect_device(ctx, dev, samples, rows, extra_fields)
            except DeviceGone as err:
                dev.error = str(err)
                ctx.warn(f"{dev.name} ({dev.uuid}) stopped answering: {err}")
        if dev.up:
            info = dev.derived("nvml_info", (system.driver_version, system.cuda_driver_version),
                               lambda: rows.get("info", *_info_labels(dev, system)))
            samples.add_row("info", 1, info)
        samples.add_row("up", 1 if dev.up else 0, rows.get("up", dev.info.get("pci_bus_id", "")))


def device_rows(dev: Device, level) -> DeviceRows:
    """The device's label tuples at this level, kept with it (the pcie collector shares them)."""
    return dev.derived("rows", level.key, lambda: DeviceRows(level, (str(dev.index), dev.uuid)))


def _info_labels(dev: Device, system) -> tuple[str, ...]:
    """name, pci_bus_id, serial, vbios_version, driver_version, cuda_driver_version (the catalogue's order)"""
    return (dev.info.get("name", ""), dev.info.get("pci_bus_id", ""), dev.info.get("serial", ""),
            dev.info.get("vbios_version", ""), system.driver_version, system.cuda_driver_version)


class _Plan:
    """What a GPU's collection reads and writes at this level: the field request, and the label values
    of each series the level writes (None where it does not, so that the value is not read). Planned
    once from the device's kept rows and static info, and kept with the device."""

    def __init__(self, dev: Device, rows: DeviceRows, extra_fields):
        metrics = [(fid, key, labels, factor) for fid, (key, extra, factor) in FIELD_METRICS.items()
                   for labels in [rows.get(key, *extra.values())] if labels is not None]
        ecc = [(fid, key, labels) for fid, (key, kind) in ECC_FIELDS.items()
               for labels in [rows.get(key, kind)] if labels is not None]
        # ECC_CURRENT decides whether the ECC counters mean anything, so it is read with them
        keys = dict.fromkeys([(fid, 0) for fid in (*(m[0] for m in metrics), FI_ECC_CURRENT,
                                                   *(e[0] for e in ecc))])
        keys.update(dict.fromkeys(f.key for f in extra_fields))
        self.keys = tuple(keys)
        position = {key: i for i, key in enumerate(self.keys)}
        self.metrics = [(position[fid, 0], fid, key, labels, factor) for fid, key, labels, factor in metrics]
        self.ecc_current = position[FI_ECC_CURRENT, 0]
        self.ecc = [(position[fid, 0], key, labels) for fid, key, labels in ecc]
        self.extras = [(extra, position[extra.key]) for extra in extra_fields]
        self.memory = [(attribute, labels) for attribute in ("total", "used", "free", "reserved")
                       for labels in [rows.get(f"memory_{attribute}_bytes")] if labels is not None]
        self.utilization = rows.get("utilization_ratio")
        self.memory_utilization = rows.get("memory_utilization_ratio")
        self.codecs = [(key, fn, labels) for key, fn in CODEC_UTILIZATION
                       for labels in [rows.get(key)] if labels is not None]
        self.clocks = [(clock_type, labels) for clock, clock_type in CLOCKS
                       for labels in [rows.get("clock_hertz", clock)] if labels is not None]
        # the maximum clocks are static (inventory): their rows are planned with their values
        max_clocks = dev.info.get("max_clocks_mhz", {})
        self.max_clocks = [(labels, _scaled(max_clocks.get(clock), MHZ)) for clock, _ in CLOCKS
                           for labels in [rows.get("clock_max_hertz", clock)] if labels is not None]
        self.thresholds = [(name, labels) for name, _ in THRESHOLDS
                           for labels in [rows.get("temperature_threshold_celsius", name)] if labels is not None]
        self.margin = rows.get("temperature_margin_celsius") if MARGIN is not None else None
        self.reasons = [(bit, labels) for bit, reason in CLOCK_EVENT_REASONS
                        for labels in [rows.get("clock_event_active", reason)] if labels is not None]
        self.performance_state = rows.get("performance_state")
        self.fans = [(fan, labels) for fan in range(dev.info.get("fan_count", 0))
                     for labels in [rows.get("fan_speed_ratio", str(fan))] if labels is not None]


def _collect_device(ctx, dev: Device, samples, rows: DeviceRows, extra_fields=()) -> None:
    # Everything is read before anything is added: a device that is lost half way through gives
    # `up 0` and no half set of series. Only what the detail level writes is read: a value left out
    # costs neither an NVML call nor a sample (its planned labels are None).
    nvml: Nvml = ctx.nvml
    h, where = dev.handle, dev.name
    made_from = (rows, tuple(f.key for f in extra_fields), str(dev.info.get("max_clocks_mhz")),
                 dev.info.get("fan_count"))
    plan = dev.derived("nvml_plan", made_from, lambda: _Plan(dev, rows, extra_fields))
    pending = []  # (key, value, label values)
    put = pending.append

    fields = nvml.field_list(h, plan.keys, device=where)
    for at, fid, key, labels, factor in plan.metrics:
        value = fields[at]
        if value is None and fid in FIELD_FALLBACKS:
            value = clean(nvml.call(FIELD_FALLBACKS[fid], h, device=where))
        put((key, None if value is None else value * factor, labels))
    if fields[plan.ecc_current] == 1:
        for at, key, labels in plan.ecc:
            put((key, fields[at], labels))

    if plan.thresholds:
        thresholds = ctx.static(dev, "temperature_thresholds_celsius", lambda: _read_thresholds(nvml, dev),
                                THRESHOLDS_SHAPE)
        for name, labels in plan.thresholds:
            put(("temperature_threshold_celsius", thresholds.get(name), labels))
    if plan.margin is not None:
        put(("temperature_margin_celsius", nvml.call(MARGIN, h, device=where, signed=True), plan.margin))

    if plan.memory:
        memory = nvml.call(pynvml.nvmlDeviceGetMemoryInfo, h, pynvml.nvmlMemory_v2, device=where)
        if memory is not None:
            for attribute, labels in plan.memory:
                put((f"memory_{attribute}_bytes", clean(getattr(memory, attribute)), labels))

    rates = nvml.call(pynvml.nvmlDeviceGetUtilizationRates, h, device=where)
    if rates is not None:
        if plan.utilization is not None:
            put(("utilization_ratio", _percent(rates.gpu), plan.utilization))
        if plan.memory_utilization is not None:
            put(("memory_utilization_ratio", _percent(rates.memory), plan.memory_utilization))
    for key, fn, labels in plan.codecs:
        answer = nvml.call(fn, h, device=where)  # [utilisation %, sampling period µs]
        if answer is not None:
            put((key, _percent(answer[0]), labels))

    for clock_type, labels in plan.clocks:
        put(("clock_hertz", _scaled(nvml.call(pynvml.nvmlDeviceGetClockInfo, h, clock_type, device=where), MHZ),
             labels))
    for labels, value in plan.max_clocks:
        put(("clock_max_hertz", value, labels))

    reasons = nvml.call(pynvml.nvmlDeviceGetCurrentClocksEventReasons, h, device=where)
    if reasons is not None:
        for bit, labels in plan.reasons:
            put(("clock_event_active", 1 if reasons & bit else 0, labels))

    if plan.performance_state is not None:
        pstate = nvml.call(pynvml.nvmlDeviceGetPerformanceState, h, device=where)
        put(("performance_state", None if pstate == PSTATE_UNKNOWN else clean(pstate), plan.performance_state))
    for fan, labels in plan.fans:
        speed = nvml.call(pynvml.nvmlDeviceGetFanSpeed_v2, h, fan, device=where)
        put(("fan_speed_ratio", _percent(speed), labels))

    _settings(dev, rows, put)
    _mig_memory(ctx, dev, samples, rows, put)

    samples.add_kept(pending)
    for extra, at in plan.extras:
        scope = {"scope": str(extra.scope)} if extra.scope is not None else {}
        samples.add_extra(extra.name, extra.type, extra.help, fields[at], {**dev.labels, **scope})


def _read_thresholds(nvml: Nvml, dev: Device) -> dict[str, int]:
    """The temperature thresholds the GPU answers, by name. Raises DeviceGone."""
    found = {}
    for name, threshold in THRESHOLDS:
        celsius = nvml.call(pynvml.nvmlDeviceGetTemperatureThreshold, dev.handle, threshold, device=dev.name)
        if celsius is not None:
            found[name] = celsius
    return found


def _settings(dev: Device, rows: DeviceRows, put) -> None:
    """The modes an administrator sets (re-read by the inventory every minute)."""
    plan = dev.derived("nvml_settings", rows, lambda: _SettingRows(rows))
    settings = dev.settings
    for key, labels in plan.single:
        put((key, clean(settings.get(key)), labels))
    mode = settings.get("compute_mode")
    if plan.compute_mode and mode is not None and 0 <= mode < len(COMPUTE_MODES):  # newer values: left out
        for number, labels in enumerate(plan.compute_mode):
            if labels is not None:
                put(("compute_mode", 1 if number == mode else 0, labels))
    mig = settings.get("mig_mode")
    if mig:
        for key, labels, value in plan.mig:
            put((key, clean(mig[value]), labels))


class _SettingRows:
    """The label values of the settings' series that the level writes."""

    def __init__(self, rows: DeviceRows):
        self.single = [(key, labels) for key in ("persistence_mode", "accounting_mode")
                       for labels in [rows.get(key)] if labels is not None]
        compute_mode = [rows.get("compute_mode", name) for name in COMPUTE_MODES]
        self.compute_mode = compute_mode if any(labels is not None for labels in compute_mode) else []
        # mig_mode holds [current, pending]
        self.mig = [(key, labels, position) for position, key in enumerate(("mig_mode", "mig_mode_pending"))
                    for labels in [rows.get(key)] if labels is not None]


def _mig_memory(ctx, dev: Device, samples, rows: DeviceRows, put) -> None:
    mig = dev.settings.get("mig_mode")
    wanted = samples.wants("mig_memory_total_bytes") or samples.wants("mig_memory_used_bytes")
    if not (mig and mig[0] == 1 and wanted):
        return
    for gpu_instance, members in gpu_instances(ctx.mig_devices(dev)):
        # The memory is the GPU instance's, which its compute instances (MIG devices) share: read
        # once, through its first MIG device, and written once, so that sums do not count it twice.
        memory = ctx.nvml.call(pynvml.nvmlDeviceGetMemoryInfo, members[0].handle, pynvml.nvmlMemory_v2,
                               device=f"{dev.name} GPU instance {gpu_instance}")
        if memory is not None:
            labels = instance_labels(gpu_instance, members)
            for key, value in (("mig_memory_total_bytes", memory.total), ("mig_memory_used_bytes", memory.used)):
                row = rows.get(key, labels["gpu_instance"], labels["mig_device"])
                if row is not None:
                    put((key, clean(value), row))


def _scaled(value, factor: float) -> float | None:
    """Scale after cleaning: a scaled not-available marker would no longer be recognised."""
    value = clean(value)
    return None if value is None else value * factor


def _percent(value) -> float | None:
    return _scaled(value, 0.01)

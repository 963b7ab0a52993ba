"""The metric catalogue: every series gputext can write, as data.

The collectors emit samples by catalogue key, the renderer takes HELP and TYPE from here, `gputext
metrics` prints this table, docs/reference/metrics.md is generated from it, and the tests check the written
files against it. Adding a metric means adding a row here first.

Names are written without the device prefix: `prefixed` rows get `--prefix` (default `gpu_`) in front,
the self-metrics keep their fixed `gputext_` names. Base units throughout: bytes, seconds, joules, watts,
hertz, celsius; ratios are 0..1; counters end in `_total`.
"""

from __future__ import annotations

from collections import namedtuple

DEVICE_LABELS = ("gpu", "uuid")
# slurm_job: the process's Slurm job ("" outside Slurm); its user and account are on slurm_allocation_info
PROCESS_LABELS = ("pid", "process_name", "pod", "namespace", "container", "slurm_job")
SLURM_LABELS = ("slurm_job", "slurm_user", "slurm_account", "slurm_partition")
POD_LABELS = ("pod", "namespace", "container")
# MIG GPU instance series name it as allocation_info does; GPM series of a whole GPU have them empty
MIG_LABELS = ("gpu_instance", "mig_device")


# The catalogue's rows are namedtuples, not frozen dataclasses: importing dataclasses imports inspect
# (with ast, dis and tokenize), about 15 ms of CPU of every run on a slow core.
# The namings that write dcgm-exporter's names. DCGM_4_8: its names up to 4.8 (DCGM_FI_DEV_SM_CLOCK in MHz),
# what Grafana dashboard 12239 and most rules in the field query. DCGM_4_10: 4.9 renamed its default fields
# to DCGM 4.7's names, some in base units (DCGM_FI_DEV_SM_CLOCK_HERTZ), and 4.10 renamed the PCIe and
# NVLink rates (..._BYTES_PER_SECOND). A counters file may name fields in either spelling.
DCGM_4_8, DCGM_4_10 = "dcgm", "dcgm-4.10"
DCGM_NAMINGS = (DCGM_4_8, DCGM_4_10)


class Dcgm(namedtuple("Dcgm", "name type help factor where default", defaults=(1.0, (), (DCGM_4_8,)))):
    """What dcgm-exporter calls (part of) a row: its field name, type and help as its counters file gives
    them, and the factor from the row's base unit to the unit that name means (joules to mJ, bytes to
    MiB, ratios to percent, hertz to MHz). `where`: the row's label values this name stands for, e.g.
    (("clock", "sm"),); `default`: the namings in whose default counters the name is (dcgm-exporter's
    etc/default-counters.csv of that generation)."""

    __slots__ = ()

    def covers(self, labels) -> bool:
        return all(labels.get(label) == value for label, value in self.where)
XID_LABELS = ("xid", "gpu_instance", "compute_instance")


class Metric(namedtuple("Metric", "key type unit help labels source prefixed dcgm", defaults=(True, ()))):
    """One row: `key`, the name without prefix (temperature_celsius); `type`, gauge or counter; `labels`,
    the label names beyond gpu/uuid for device metrics, all labels for self-metrics; `source`, the
    collector(s) that write it; `prefixed`, False for the gputext_* self-metrics; `dcgm`, dcgm-exporter's
    names for the row's series."""

    __slots__ = ()

    @property
    def gets_pod_labels(self) -> bool:
        """Device series gain pod/namespace/container where exactly one container holds the GPU
        (see gputext.collectors.kubernetes); series that name their own pod do not."""
        return self.prefixed and not set(POD_LABELS) & set(self.labels)

    def name(self, prefix: str) -> str:
        return prefix + self.key if self.prefixed else self.key

    @property
    def all_labels(self) -> tuple[str, ...]:
        return DEVICE_LABELS + self.labels if self.prefixed else self.labels


def _device(key, type_, unit, help_, labels=(), source="nvml", dcgm=()):
    return Metric(key, type_, unit, help_, tuple(labels), source, dcgm=tuple(dcgm))


def _self(key, type_, unit, help_, labels=()):
    return Metric(key, type_, unit, help_, tuple(labels), "gputext", prefixed=False)


G, C = "gauge", "counter"
MIB = 1 << 20


OLD, NEW, NEITHER = (DCGM_4_8,), (DCGM_4_10,), ()


def _dcgm(name, type_, help_, factor=1.0, default=OLD, **where):
    return Dcgm("DCGM_FI_" + name, type_, help_, factor, tuple(where.items()), default)


def _violation(reason, name, what):
    # DCGM's violation counters are in ns (dcgm-exporter's counters file says so since 4.4; "us" before);
    # DCGM 4.6 keeps their names (NVIDIA/go-dcgm pkg/dcgm/dcgm_fields.h)
    return _dcgm(f"DEV_{name}_VIOLATION", C, f"Throttling duration due to {what} (in ns).", 1e9, NEITHER,
                 reason=reason)

# The 4.9+ names, each row with its source beside it. Most are DCGM's own, from the DCGM header that
# go-dcgm vendors (dcgm_fields.h: NVIDIA/go-dcgm pkg/dcgm/dcgm_fields.h, DCGM 4.6, commit b7fa3154):
# "Deprecated: renamed per DCGM Field Naming Standard" aliases (same field id, same unit) and the "base
# unit field IDs (1600-1799)" (also NVIDIA/go-dcgm pkg/dcgm/base_unit_fields_test.go). That 4.9's default
# file uses them: its release notes ("rename the 23 default and profiling-preset fields that DCGM 4.7
# deprecates to their new DCGM 4.7 names"). The release notes cited beside rows are NVIDIA/dcgm-exporter's
# (releases/tag/4.9.0, 4.10.0). Names NVIDIA's material here does not confirm are left out
# (docs/dcgm-exporter.md lists them).

# dcgm-exporter writes the framebuffer fields of a MIG GPU's GPU instances (GPU_I_ID) beside the
# GPU's: under one DCGM name, two rows, the GPU's and its instances'
FB_TOTAL = _dcgm("DEV_FB_TOTAL", G, "Framebuffer memory total (in MiB).", 1 / MIB, default=NEITHER)
FB_USED = _dcgm("DEV_FB_USED", G, "Framebuffer memory used (in MiB).", 1 / MIB)

METRICS: tuple[Metric, ...] = (
    # identity and health
    _device("info", G, "", "GPU identity; the value is always 1.",
            ["name", "pci_bus_id", "serial", "vbios_version", "driver_version", "cuda_driver_version"]),
    _device("up", G, "", "1 when the GPU answered NVML, 0 when it returned an error such as GPU_IS_LOST "
            "(its other series are then left out); pci_bus_id tells which GPU it is where NVML cannot read "
            "the UUID of a GPU lost before gputext first saw it.", ["pci_bus_id"]),
    # thermal and power
    _device("temperature_celsius", G, "celsius", "GPU core temperature.",
            dcgm=[_dcgm("DEV_GPU_TEMP", G, "GPU temperature (in C)."),
                  # new name: dcgm_fields.h: alias of field 150
                  _dcgm("DEV_GPU_TEMP_CELSIUS", G, "GPU temperature (in C).", default=NEW)]),
    _device("memory_temperature_celsius", G, "celsius", "GPU memory (HBM) temperature, where reported.",
            dcgm=[_dcgm("DEV_MEMORY_TEMP", G, "Memory temperature (in C)."),
                  # new name: dcgm_fields.h: alias of field 140
                  _dcgm("DEV_MEMORY_TEMP_CELSIUS", G, "Memory temperature (in C).", default=NEW)]),
    _device("temperature_threshold_celsius", G, "celsius", "GPU temperature at which the GPU shuts down "
            "(shutdown), slows down in hardware (slowdown) or may be held below its base clock (gpu_max), and "
            "memory temperature at which it slows down (memory_max).", ["threshold"]),
    _device("temperature_margin_celsius", G, "celsius", "Degrees the GPU is below its T.Limit, the "
            "temperature its thermal control works to (Ada and newer): it slows down near 0 (at the slowdown "
            "value of temperature_tlimit_offset_celsius) and is negative past it."),
    _device("temperature_tlimit_offset_celsius", G, "celsius", "The thresholds as T.Limit temperatures "
            "(Ada and newer): signed offsets from the T.Limit, not temperatures; the GPU reaches the "
            "threshold when temperature_margin_celsius falls to this value.", ["threshold"]),
    _device("power_watts", G, "watts", "Current power draw of the GPU.",
            dcgm=[_dcgm("DEV_POWER_USAGE", G, "Power draw (in W)."),
                  # new name: dcgm_fields.h: alias of field 155
                  _dcgm("DEV_BOARD_POWER_WATTS", G, "Power draw (in W).", default=NEW)]),
    _device("power_limit_watts", G, "watts", "Power limit currently enforced on the GPU."),
    _device("energy_joules_total", C, "joules", "Energy used by the GPU since the driver was loaded.",
            dcgm=[_dcgm("DEV_TOTAL_ENERGY_CONSUMPTION", C, "Total energy consumption since boot (in mJ).", 1e3),
                  # new name: dcgm_fields.h: base-unit field 1611 (and base_unit_fields_test.go)
                  _dcgm("DEV_GPU_ENERGY_JOULES_TOTAL", C, "Total energy consumption since the driver was "
                        "loaded (in J).", default=NEW)]),
    # memory
    _device("memory_total_bytes", G, "bytes", "Total GPU memory.",
            # DEV_FB_CAPACITY_BYTES: dcgm-exporter 4.9.0 release notes
            dcgm=[FB_TOTAL, _dcgm("DEV_FB_CAPACITY_BYTES", G, "Total GPU memory (in bytes).", default=NEW)]),
    _device("memory_used_bytes", G, "bytes", "GPU memory allocated by processes.", dcgm=[FB_USED]),
    _device("memory_free_bytes", G, "bytes", "GPU memory free for allocation.",
            dcgm=[_dcgm("DEV_FB_FREE", G, "Framebuffer memory free (in MiB).", 1 / MIB)]),
    _device("memory_reserved_bytes", G, "bytes", "GPU memory reserved by the driver and firmware.",
            dcgm=[_dcgm("DEV_FB_RESERVED", G, "Framebuffer memory reserved (in MiB).", 1 / MIB)]),
    _device("mig_memory_total_bytes", G, "bytes", "Memory of the MIG GPU instance (one series per "
            "GPU instance, whatever its compute instances).", MIG_LABELS, dcgm=[FB_TOTAL]),
    _device("mig_memory_used_bytes", G, "bytes", "Memory of the MIG GPU instance allocated by its "
            "processes.", MIG_LABELS, dcgm=[FB_USED]),
    # utilisation, sampled by the driver over its own window
    _device("utilization_ratio", G, "ratio", "Fraction of the last sample period during which a kernel ran.",
            dcgm=[_dcgm("DEV_GPU_UTIL", G, "GPU utilization (in %).", 100)]),
    _device("memory_utilization_ratio", G, "ratio",
            "Fraction of the last sample period during which device memory was read or written.",
            dcgm=[_dcgm("DEV_MEM_COPY_UTIL", G, "Memory utilization (in %).", 100)]),
    _device("encoder_utilization_ratio", G, "ratio", "Video encoder utilisation.",
            dcgm=[_dcgm("DEV_ENC_UTIL", G, "Encoder utilization (in %).", 100)]),
    _device("decoder_utilization_ratio", G, "ratio", "Video decoder utilisation.",
            dcgm=[_dcgm("DEV_DEC_UTIL", G, "Decoder utilization (in %).", 100)]),
    # clocks
    _device("clock_hertz", G, "hertz", "Current clock frequency.", ["clock"],
            dcgm=[_dcgm("DEV_SM_CLOCK", G, "SM clock frequency (in MHz).", 1e-6, clock="sm"),
                  _dcgm("DEV_MEM_CLOCK", G, "Memory clock frequency (in MHz).", 1e-6, clock="memory"),
                  # new name: dcgm_fields.h: base-unit fields 1603 and 1604 (and base_unit_fields_test.go)
                  _dcgm("DEV_SM_CLOCK_HERTZ", G, "SM clock frequency (in Hz).", default=NEW, clock="sm"),
                  _dcgm("DEV_MEMORY_CLOCK_HERTZ", G, "Memory clock frequency (in Hz).", default=NEW,
                        clock="memory")]),
    _device("clock_max_hertz", G, "hertz", "Maximum clock frequency.", ["clock"]),
    _device("clock_event_active", G, "", "1 while the clock-event (throttle) reason holds, else 0.",
            ["reason"]),
    _device("clock_event_duration_seconds_total", C, "seconds",
            "Time clocks were held down by the reason (NVML violation counters).", ["reason"],
            dcgm=[_violation("sw_power_cap", "POWER", "power constraints"),
                  _violation("thermal", "THERMAL", "thermal constraints"),
                  _violation("sync_boost", "SYNC_BOOST", "sync-boost constraints"),
                  _violation("board_limit", "BOARD_LIMIT", "board voltage limits"),
                  _violation("low_utilization", "LOW_UTIL", "low utilization"),
                  _violation("reliability", "RELIABILITY", "board reliability limits")]),
    _device("fan_speed_ratio", G, "ratio", "Fan speed as a fraction of its maximum.", ["fan"]),
    # state and settings
    _device("performance_state", G, "", "Performance state: 0 (P0, maximum) to 15 (P15, minimum)."),
    _device("persistence_mode", G, "", "1 when persistence mode is enabled."),
    _device("accounting_mode", G, "", "1 when per-process accounting is enabled."),
    # enums are state sets (one series per value, 1 for the current one), as node_exporter's systemd units
    _device("compute_mode", G, "", "1 for the GPU's compute mode (default, exclusive_thread, prohibited, "
            "exclusive_process), 0 for the others.", ["mode"]),
    _device("mig_mode", G, "", "1 when MIG mode is enabled."),
    _device("mig_mode_pending", G, "", "MIG mode after the next GPU reset: 1 enabled, 0 disabled (differs "
            "from gpu_mig_mode while a change waits for the reset)."),
    _device("ecc_mode", G, "", "1 when ECC is enabled."),
    # memory errors
    # two metrics, not one with a label: sum() over both would count every error twice
    _device("ecc_errors_total", C, "", "ECC memory errors since the driver was loaded, only where ECC is "
            "enabled.", ["type"],
            dcgm=[_dcgm("DEV_ECC_SBE_VOL_TOTAL", C, "Total number of single-bit volatile ECC errors.",
                        default=NEITHER, type="corrected"),
                  _dcgm("DEV_ECC_DBE_VOL_TOTAL", C, "Total number of double-bit volatile ECC errors.",
                        default=NEITHER, type="uncorrected")]),
    _device("ecc_lifetime_errors_total", C, "", "ECC memory errors over the GPU's life (kept in its "
            "memory across reboots), only where ECC is enabled.", ["type"],
            dcgm=[_dcgm("DEV_ECC_SBE_AGG_TOTAL", C, "Total number of single-bit persistent ECC errors.",
                        default=NEITHER, type="corrected"),
                  _dcgm("DEV_ECC_DBE_AGG_TOTAL", C, "Total number of double-bit persistent ECC errors.",
                        default=NEITHER, type="uncorrected")]),
    _device("retired_pages_total", C, "", "Memory pages retired (pre-Ampere page retirement).", ["cause"],
            dcgm=[_dcgm("DEV_RETIRED_SBE", C, "Total number of retired pages due to single-bit errors.",
                        default=NEITHER, cause="single_bit_ecc"),
                  _dcgm("DEV_RETIRED_DBE", C, "Total number of retired pages due to double-bit errors.",
                        default=NEITHER, cause="double_bit_ecc"),
                  # new name: dcgm_fields.h: aliases of fields 390 and 391
                  _dcgm("DEV_PAGE_RETIRED_SBE_TOTAL", C, "Total number of retired pages due to single-bit "
                        "errors.", default=NEITHER, cause="single_bit_ecc"),
                  _dcgm("DEV_PAGE_RETIRED_DBE_TOTAL", C, "Total number of retired pages due to double-bit "
                        "errors.", default=NEITHER, cause="double_bit_ecc")]),
    _device("remapped_rows_total", C, "", "Memory rows remapped (Ampere and newer).", ["cause"],
            dcgm=[_dcgm("DEV_UNCORRECTABLE_REMAPPED_ROWS", C,
                        "Number of remapped rows for uncorrectable errors", cause="uncorrectable"),
                  _dcgm("DEV_CORRECTABLE_REMAPPED_ROWS", C, "Number of remapped rows for correctable errors",
                        cause="correctable"),
                  # new name: dcgm_fields.h: aliases of fields 393 and 394
                  _dcgm("DEV_ROW_REMAP_UNCORRECTABLE_TOTAL", C, "Number of remapped rows for uncorrectable "
                        "errors", default=NEW, cause="uncorrectable"),
                  _dcgm("DEV_ROW_REMAP_CORRECTABLE_TOTAL", C, "Number of remapped rows for correctable errors",
                        default=NEW, cause="correctable")]),
    _device("remapped_rows_pending", G, "", "1 when a row remapping is pending a GPU reset.",
            dcgm=[_dcgm("DEV_ROW_REMAP_PENDING", G, "Whether remapping of rows is pending", default=NEITHER)]),
    _device("remapped_rows_failed", G, "", "1 when a row remapping has failed.",
            dcgm=[_dcgm("DEV_ROW_REMAP_FAILURE", G, "Whether remapping of rows has failed"),
                  # new name: dcgm_fields.h: alias of field 395
                  _dcgm("DEV_ROW_REMAP_FAILED", G, "Whether remapping of rows has failed", default=NEW)]),
    # NVLink, per link
    _device("nvlink_up", G, "", "1 when the NVLink link is active, else 0.", ["link"], source="nvlink"),
    _device("nvlink_info", G, "", "NVLink link identity and peer; the value is always 1.",
            ["link", "version", "remote_pci_bus_id"], source="nvlink"),
    _device("nvlink_speed_bytes_per_second", G, "bytes_per_second", "Link speed.", ["link"], source="nvlink"),
    _device("nvlink_transmit_bytes_total", C, "bytes", "Data bytes sent over the link.", ["link"],
            source="nvlink"),
    _device("nvlink_receive_bytes_total", C, "bytes", "Data bytes received over the link.", ["link"],
            source="nvlink"),
    _device("nvlink_raw_transmit_bytes_total", C, "bytes",
            "Bytes sent over the link, protocol overhead included.", ["link"], source="nvlink"),
    _device("nvlink_raw_receive_bytes_total", C, "bytes",
            "Bytes received over the link, protocol overhead included.", ["link"], source="nvlink"),
    _device("nvlink_errors_total", C, "", "NVLink errors of all the GPU's links: replays, recoveries and CRC "
            "errors together (per link and type: nvlink_link_errors_total).", source="nvlink"),
    _device("nvlink_link_errors_total", C, "", "NVLink link errors by type.", ["link", "type"], source="nvlink"),
    # PCIe
    _device("pcie_transmit_bytes_total", C, "bytes", "Bytes the GPU sent over PCIe.", source="pcie"),
    _device("pcie_receive_bytes_total", C, "bytes", "Bytes the GPU received over PCIe.", source="pcie"),
    _device("pcie_transmit_bytes_per_second", G, "bytes_per_second",
            "PCIe send rate sampled by the driver over 20 ms, at most --pcie-sample-interval ago; only where "
            "neither the byte counters nor GPM's rate (gpm_pcie_*) are written.",
            source="pcie"),
    _device("pcie_receive_bytes_per_second", G, "bytes_per_second",
            "PCIe receive rate sampled by the driver over 20 ms, at most --pcie-sample-interval ago; only where "
            "neither the byte counters nor GPM's rate (gpm_pcie_*) are written.",
            source="pcie"),
    _device("pcie_replays_total", C, "", "PCIe replays (retransmitted packets).", source="pcie",
            dcgm=[_dcgm("DEV_PCIE_REPLAY_COUNTER", C, "Total number of PCIe retries."),
                  # new name: dcgm_fields.h: alias of field 202
                  _dcgm("DEV_PCIE_REPLAY_TOTAL", C, "Total number of PCIe retries.", default=NEW)]),
    _device("pcie_replay_rollovers_total", C, "", "Times the PCIe replay counter rolled over.", source="pcie"),
    _device("pcie_errors_total", C, "", "PCIe errors by type.", ["type"], source="pcie"),
    _device("pcie_link_generation", G, "", "Current PCIe link generation.", source="pcie"),
    _device("pcie_link_max_generation", G, "", "Highest PCIe generation the GPU and its slot support.",
            source="pcie"),
    _device("pcie_link_width", G, "", "Current PCIe link width (lanes).", source="pcie"),
    _device("pcie_link_max_width", G, "", "Widest PCIe link the GPU and its slot support (lanes).",
            source="pcie"),
    # processes: labels gpu, uuid, pid, process_name and, inside Kubernetes, pod/namespace/container
    _device("process_memory_used_bytes", G, "bytes", "GPU memory used by the process.", PROCESS_LABELS,
            source="processes"),
    _device("process_sm_utilization_ratio", G, "ratio",
            "The process's share of SM time, averaged over the driver's samples since the last run.",
            PROCESS_LABELS, source="processes"),
    _device("process_memory_utilization_ratio", G, "ratio",
            "The process's share of memory-controller time, averaged over the samples since the last run.",
            PROCESS_LABELS, source="processes"),
    _device("process_encoder_utilization_ratio", G, "ratio", "The process's share of the video encoder.",
            PROCESS_LABELS, source="processes"),
    _device("process_decoder_utilization_ratio", G, "ratio", "The process's share of the video decoder.",
            PROCESS_LABELS, source="processes"),
    _device("process_start_time_seconds", G, "seconds", "When the process started on the GPU (Unix time).",
            PROCESS_LABELS, source="processes"),
    _device("process_duration_seconds", G, "seconds",
            "How long an exited process ran on the GPU (driver accounting).", PROCESS_LABELS,
            source="processes"),
    _device("process_active", G, "", "1 while the process runs on the GPU, 0 after it exited (kept for "
            "--retention).", PROCESS_LABELS, source="processes"),
    _device("process_energy_joules_total", C, "joules",
            "Energy of the WHOLE GPU while the process ran (what DCGM calls process energy); processes "
            "sharing a GPU each get the full amount, so these do not add up.",
            PROCESS_LABELS + ("source",), source="processes, dcgm"),
    _device("process_attributed_energy_joules_total", C, "joules",
            "The process's share of the GPU's energy, split by its share of SM utilisation samples in "
            "each interval; with unattributed_energy these add up to the GPU's energy.", PROCESS_LABELS,
            source="processes"),
    _device("unattributed_energy_joules_total", C, "joules",
            "GPU energy no process was attributed (idle power, intervals without samples).",
            source="processes"),
    # Kubernetes
    _device("allocation_info", G, "", "A container the kubelet gave this GPU (every sharer of a "
            "time-sliced GPU or a shared claim) or a MIG device of it (gpu_instance and mig_device, else "
            "empty), through a device plugin (resource: its resource name) or a DRA ResourceClaim (resource: "
            "the driver; claim and claim_namespace, else empty); the value is always 1.",
            ["pod", "namespace", "container", "resource", "gpu_instance", "mig_device", "claim",
             "claim_namespace"], source="kubernetes"),
    # Slurm (docs/slurm.md)
    _device("slurm_allocation_info", G, "", "A Slurm job that holds this GPU (or its MIG GPU instance "
            "gpu_instance, else empty), found from its processes' cgroups, its cgroup v1 devices.list or the "
            "job-mapping directory; user, account and partition where readable, else empty. The value is "
            "always 1.", SLURM_LABELS + ("gpu_instance",), source="slurm"),
    # profiling (GPM, Hopper and newer): averages over gpm_window_seconds, per GPU or MIG GPU instance
    _device("gpm_window_seconds", G, "seconds", "Time between the two GPM samples the profiling ratios "
            "and rates of this GPU or GPU instance average over.", MIG_LABELS, source="gpm"),
    _device("graphics_active_ratio", G, "ratio", "Fraction of time any graphics or compute engine was "
            "active (GPM).", MIG_LABELS, source="gpm",
            dcgm=[_dcgm("PROF_GR_ENGINE_ACTIVE", G, "Ratio of time the graphics engine is active."),
                  # new name: dcgm_fields.h: alias of field 1001
                  _dcgm("PROF_GR_ENGINE_UTIL_RATIO", G, "Ratio of time the graphics engine is active.",
                        default=NEW)]),
    _device("sm_active_ratio", G, "ratio", "Fraction of time the SMs were busy, averaged over all SMs: how "
            "much of the GPU the work fills (GPM).", MIG_LABELS, source="gpm",
            dcgm=[_dcgm("PROF_SM_ACTIVE", G,
                  "The ratio of cycles an SM has at least 1 warp assigned.", default=NEITHER),
                  # new name: dcgm_fields.h: alias of field 1002
                  _dcgm("PROF_SM_UTIL_RATIO", G, "The ratio of cycles an SM has at least 1 warp assigned.",
                        default=NEITHER)]),
    _device("sm_occupancy_ratio", G, "ratio", "Resident warps as a fraction of the SMs' maximum, averaged "
            "over time and SMs (GPM).", MIG_LABELS, source="gpm",
            dcgm=[_dcgm("PROF_SM_OCCUPANCY", G,
                  "The ratio of number of warps resident on an SM.", default=NEITHER),
                  # new name: dcgm_fields.h: alias of field 1003
                  _dcgm("PROF_SM_OCCUPANCY_RATIO", G, "The ratio of number of warps resident on an SM.",
                        default=NEITHER)]),
    _device("integer_active_ratio", G, "ratio", "Fraction of time the SMs ran integer instructions (GPM).",
            MIG_LABELS, source="gpm"),
    _device("tensor_active_ratio", G, "ratio", "Fraction of time the SMs ran any tensor-core instruction "
            "(GPM; DCGM's PIPE_TENSOR_ACTIVE).", MIG_LABELS, source="gpm",
            dcgm=[_dcgm("PROF_PIPE_TENSOR_ACTIVE", G, "Ratio of cycles the tensor (HMMA) pipe is active."),
                  # new name: dcgm_fields.h: alias of field 1004
                  _dcgm("PROF_TENSOR_UTIL_RATIO", G, "Ratio of cycles the tensor (HMMA) pipe is active.",
                        default=NEW)]),
    _device("tensor_pipe_active_ratio", G, "ratio", "Fraction of time the SMs ran tensor instructions of one "
            "kind: dfma (FP64 FMA), hmma (half precision), dmma (FP64 MMA), imma (integer) (GPM).",
            ("pipe",) + MIG_LABELS, source="gpm"),
    _device("dram_active_ratio", G, "ratio", "Device memory bandwidth used, as a fraction of its maximum "
            "(GPM).", MIG_LABELS, source="gpm",
            dcgm=[_dcgm("PROF_DRAM_ACTIVE", G,
                  "Ratio of cycles the device memory interface is active sending or "
                  "receiving data."),
                  # new name: dcgm_fields.h: alias of field 1005
                  _dcgm("PROF_DRAM_UTIL_RATIO", G, "Ratio of cycles the device memory interface is active "
                        "sending or receiving data.", default=NEW)]),
    _device("fp_pipe_active_ratio", G, "ratio", "Fraction of time the SMs ran non-tensor floating-point "
            "instructions of the precision (GPM).", ("precision",) + MIG_LABELS, source="gpm",
            dcgm=[_dcgm("PROF_PIPE_FP64_ACTIVE", G,
                  "Ratio of cycles the fp64 pipes are active.", default=NEITHER, precision="fp64"),
                  _dcgm("PROF_PIPE_FP32_ACTIVE", G,
                        "Ratio of cycles the fp32 pipes are active.", default=NEITHER, precision="fp32"),
                  _dcgm("PROF_PIPE_FP16_ACTIVE", G,
                        "Ratio of cycles the fp16 pipes are active.", default=NEITHER, precision="fp16"),
                  # new name: dcgm_fields.h: aliases of fields 1006-1008
                  _dcgm("PROF_FP64_UTIL_RATIO", G, "Ratio of cycles the fp64 pipes are active.",
                        default=NEITHER, precision="fp64"),
                  _dcgm("PROF_FP32_UTIL_RATIO", G, "Ratio of cycles the fp32 pipes are active.",
                        default=NEITHER, precision="fp32"),
                  _dcgm("PROF_FP16_UTIL_RATIO", G, "Ratio of cycles the fp16 pipes are active.",
                        default=NEITHER, precision="fp16")]),
    _device("nvdec_active_ratio", G, "ratio", "Utilisation of the video decoder engine (GPM).",
            ("engine",) + MIG_LABELS, source="gpm"),
    _device("nvjpg_active_ratio", G, "ratio", "Utilisation of the JPEG decoder engine (GPM).",
            ("engine",) + MIG_LABELS, source="gpm"),
    _device("nvofa_active_ratio", G, "ratio", "Utilisation of the optical flow accelerator engine (GPM).",
            ("engine",) + MIG_LABELS, source="gpm"),
    _device("gpm_pcie_transmit_bytes_per_second", G, "bytes_per_second",
            "PCIe send rate, headers included, averaged over gpm_window_seconds (GPM; whole GPU only).",
            source="gpm",
            dcgm=[_dcgm("PROF_PCIE_TX_BYTES", G,
                  "The rate of data transmitted over the PCIe bus - including both "
                  "protocol headers and data payloads - in bytes per second."),
                  # 4.10 name: dcgm-exporter 4.10.0 release notes
                  _dcgm("PROF_PCIE_TX_BYTES_PER_SECOND", G, "The rate of data transmitted over the PCIe bus, "
                        "protocol headers and data payloads, in bytes per second.", default=NEW)]),
    _device("gpm_pcie_receive_bytes_per_second", G, "bytes_per_second",
            "PCIe receive rate, headers included, averaged over gpm_window_seconds (GPM; whole GPU only).",
            source="gpm",
            dcgm=[_dcgm("PROF_PCIE_RX_BYTES", G,
                  "The rate of data received over the PCIe bus - including both protocol "
                  "headers and data payloads - in bytes per second."),
                  # 4.10 name: dcgm-exporter 4.10.0 release notes
                  _dcgm("PROF_PCIE_RX_BYTES_PER_SECOND", G, "The rate of data received over the PCIe bus, "
                        "protocol headers and data payloads, in bytes per second.", default=NEW)]),
    _device("gpm_nvlink_transmit_bytes_per_second", G, "bytes_per_second",
            "NVLink send rate of all links, averaged over gpm_window_seconds (GPM; whole GPU only).",
            source="gpm",
            dcgm=[_dcgm("PROF_NVLINK_TX_BYTES", G,
                  "The rate of data transmitted over NVLink, not including protocol "
                  "headers, in bytes per second.", default=NEITHER),
                  # 4.10 name: dcgm-exporter 4.10.0 release notes
                  _dcgm("PROF_NVLINK_TX_BYTES_PER_SECOND", G, "The rate of data transmitted over NVLink, not "
                        "including protocol headers, in bytes per second.", default=NEITHER)]),
    _device("gpm_nvlink_receive_bytes_per_second", G, "bytes_per_second",
            "NVLink receive rate of all links, averaged over gpm_window_seconds (GPM; whole GPU only).",
            source="gpm",
            dcgm=[_dcgm("PROF_NVLINK_RX_BYTES", G,
                  "The rate of data received over NVLink, not including protocol headers, "
                  "in bytes per second.", default=NEITHER),
                  # 4.10 name: dcgm-exporter 4.10.0 release notes
                  _dcgm("PROF_NVLINK_RX_BYTES_PER_SECOND", G, "The rate of data received over NVLink, not "
                        "including protocol headers, in bytes per second.", default=NEITHER)]),
    _device("gpm_nvlink_link_transmit_bytes_per_second", G, "bytes_per_second",
            "NVLink send rate of one link, averaged over gpm_window_seconds (GPM).", ["link"], source="gpm"),
    _device("gpm_nvlink_link_receive_bytes_per_second", G, "bytes_per_second",
            "NVLink receive rate of one link, averaged over gpm_window_seconds (GPM).", ["link"], source="gpm"),
    _device("gpm_c2c_transmit_bytes_per_second", G, "bytes_per_second",
            "Chip-to-chip (Grace to GPU) send rate, averaged over gpm_window_seconds (GPM).", source="gpm"),
    _device("gpm_c2c_receive_bytes_per_second", G, "bytes_per_second",
            "Chip-to-chip (Grace to GPU) receive rate, averaged over gpm_window_seconds (GPM).", source="gpm"),
    # XID errors, from the kernel log (collector xid); MIG instances where the record names them, else ""
    _device("xid_errors_total", C, "", "XID errors the driver reported for the GPU in this boot, by code "
            "(and MIG GPU/compute instance), from the kernel log.", XID_LABELS, source="xid"),
    _device("xid_last_time_seconds", G, "seconds", "When the GPU's last XID of the code happened (Unix "
            "time, from the kernel log record).", XID_LABELS, source="xid"),
    _device("xid_info", G, "", "What an XID code the GPU had means and what to do; the value is always 1.",
            ["xid", "description", "action", "severity"], source="xid"),
    # gputext about itself
    _self("gputext_collector_success", G, "", "1 when the collector ran without error, 0 when it failed.",
          ["collector"]),
    _self("gputext_collector_duration_seconds", G, "seconds", "Time the collector took in this run.",
          ["collector"]),
    _self("gputext_build_info", G, "", "gputext version; the value is always 1.", ["version"]),
    _self("gputext_processes_dropped", G, "",
          "Process series left out this run because the GPU had more than --max-processes.", DEVICE_LABELS),
)

BY_KEY: dict[str, Metric] = {m.key: m for m in METRICS}

# --- detail levels -------------------------------------------------------------------------------------
# Every series is stored by the fleet's Prometheus, so `--detail standard` (the default) writes what an
# operator watches every day, at most 80 series per GPU on an 8 x H100 node with 18 NVLink links
# (docs/reference/metrics.md, tests/test_detail.py); `--detail full` writes every row, for debugging a
# node. A series means the same at both levels: standard leaves series out, it never folds them into a
# name of full's (the per-GPU NVLink error sum has a name of its own and is written at both).
STANDARD, FULL = "standard", "full"
DETAILS = (STANDARD, FULL)

FULL_ONLY = frozenset({
    "temperature_tlimit_offset_celsius", "power_limit_watts", "memory_free_bytes", "memory_reserved_bytes",
    "memory_utilization_ratio",
    "encoder_utilization_ratio", "decoder_utilization_ratio", "clock_max_hertz",
    "clock_event_duration_seconds_total", "fan_speed_ratio", "performance_state", "persistence_mode",
    "accounting_mode", "compute_mode", "mig_mode", "mig_mode_pending", "ecc_mode", "ecc_lifetime_errors_total",
    "retired_pages_total", "remapped_rows_total",
    "nvlink_info", "nvlink_speed_bytes_per_second", "nvlink_raw_transmit_bytes_total",
    "nvlink_raw_receive_bytes_total", "nvlink_link_errors_total",
    "pcie_replay_rollovers_total", "pcie_errors_total", "pcie_link_generation", "pcie_link_max_generation",
    "pcie_link_width", "pcie_link_max_width",
    "process_encoder_utilization_ratio", "process_decoder_utilization_ratio",
    # GPM: standard keeps SM active and occupancy, tensor and DRAM activity, and their window
    "graphics_active_ratio", "integer_active_ratio", "tensor_pipe_active_ratio", "fp_pipe_active_ratio",
    "nvdec_active_ratio", "nvjpg_active_ratio", "nvofa_active_ratio", "gpm_pcie_transmit_bytes_per_second",
    "gpm_pcie_receive_bytes_per_second", "gpm_nvlink_transmit_bytes_per_second",
    "gpm_nvlink_receive_bytes_per_second", "gpm_nvlink_link_transmit_bytes_per_second",
    "gpm_nvlink_link_receive_bytes_per_second", "gpm_c2c_transmit_bytes_per_second",
    "gpm_c2c_receive_bytes_per_second",
    "gputext_collector_duration_seconds",
})
# Rows that standard writes for some values of one label only: key -> (label, values).
STANDARD_SUBSET: dict[str, tuple[str, frozenset[str]]] = {
    "clock_hertz": ("clock", frozenset({"sm"})),
    "clock_event_active": ("reason", frozenset({"hw_thermal_slowdown", "hw_power_brake_slowdown"})),
    "ecc_errors_total": ("type", frozenset({"uncorrected"})),
    "temperature_threshold_celsius": ("threshold", frozenset({"slowdown"})),
}


def written_at(detail: str, key: str) -> bool:
    """Whether the detail level writes any series of `key` (a collector may skip reading what it does not)."""
    return detail == FULL or key not in FULL_ONLY


def detail_of(metric: Metric) -> str:
    """The level that writes the row, as the metric reference says it: `standard`, `full`, or
    `standard: clock=sm` (the rest of the row at full)."""
    if metric.key in FULL_ONLY:
        return FULL
    if metric.key in STANDARD_SUBSET:
        label, values = STANDARD_SUBSET[metric.key]
        return f"{STANDARD}: {label}={'|'.join(sorted(values))}"
    return STANDARD

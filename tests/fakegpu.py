"""Build and drive the fake ``libnvidia-ml.so.1`` in ``tests/fake_nvml``.

Typical use::

    libdir = build_fake_nvml(tmp_path / "lib")
    Scenario(devices=[h100(0, temperature=45), h100(1, lost=True)]).write(tmp_path / "gpus.txt")
    env = fake_env(libdir, tmp_path / "gpus.txt", calls_path=tmp_path / "calls.txt", tick=3)
    subprocess.run([sys.executable, "-m", "gputext", ...], env=env)
    counts = read_calls(tmp_path / "calls.txt")   # {0: {"nvmlDeviceGetName": 1, ...}, "system": {...}}

Device dicts use the scenario keys of ``tests/fake_nvml/README.md``; a key set
to ``None`` is left out of the file, so the fake answers NOT_SUPPORTED for it.
Value forms: numbers, ``step(base, s)``, or raw strings ("0x4", "10 step 2");
``mig_mode``/``ecc_mode`` take ``(current, pending)`` or "C P"; indexed keys
(``fan_speed``, ``nvlink_*``) take ``{index: value}``; ``ecc_errors`` takes
``{(type, counter): value}``; ``fields`` takes ``{id or (id, scope): value}``
where value is a number, ``step(...)``, ``Field(...)`` or ``(value, type[, step])``;
``processes``/``process_samples``/``accounting`` take lists of dicts (see
:func:`h100`); ``mig_devices`` takes ``{slot: {"uuid", "gi", "ci"[, "profile", "memory"]}}``, where
``memory`` is ``(total, used[, reserved])`` in bytes or ``Field(error=CODE)``; ``gpu_instances`` takes
``{gpu instance id: (profile id, placement start, placement size)}``;
``gpm_metrics`` takes ``{GPM metric id: value or Field(error=CODE)}`` and ``gpm_mig_metrics``
``{gpu instance id: {metric id: ...}}`` (with ``gpm_supported: 1``, see :func:`with_gpm`);
``errors`` takes ``{c_function_name: code}``; ``lost`` a bool; ``extra`` raw lines.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import uuid as _uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

FAKE_NVML_DIR = Path(__file__).resolve().parent / "fake_nvml"
LIB_NAME = "libnvidia-ml.so.1"
CFLAGS = ["-shared", "-fPIC", "-O2", "-Wall", "-Wextra", f"-Wl,-soname,{LIB_NAME}"]

# nvmlReturn_t codes, for tests
NVML_SUCCESS = 0
NVML_ERROR_UNINITIALIZED = 1
NVML_ERROR_INVALID_ARGUMENT = 2
NVML_ERROR_NOT_SUPPORTED = 3
NVML_ERROR_NO_PERMISSION = 4
NVML_ERROR_NOT_FOUND = 6
NVML_ERROR_INSUFFICIENT_SIZE = 7
NVML_ERROR_DRIVER_NOT_LOADED = 9
NVML_ERROR_TIMEOUT = 10
NVML_ERROR_GPU_IS_LOST = 15
NVML_ERROR_ARGUMENT_VERSION_MISMATCH = 25
NVML_ERROR_UNKNOWN = 999

SCOPE_ALL = 0xFFFFFFFF  # scopeId that asks for the sum over all scoped entries


class FakeNvmlBuildError(RuntimeError):
    """The C compiler failed on tests/fake_nvml/*.c."""


# --------------------------------------------------------------------------
# build
# --------------------------------------------------------------------------

def _compiler() -> list[str]:
    return shlex.split(os.environ.get("CC") or "cc")


def compile_fake_nvml(dest_dir: Path) -> subprocess.CompletedProcess:
    """Compile into ``dest_dir/libnvidia-ml.so.1``; returns the compiler run
    (its stderr holds any warnings).  Raises FakeNvmlBuildError on failure."""
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    sources = sorted(str(p) for p in FAKE_NVML_DIR.glob("*.c"))
    if not sources:
        raise FakeNvmlBuildError(f"no C sources in {FAKE_NVML_DIR}")
    out = dest_dir / LIB_NAME
    tmp = dest_dir / f".{LIB_NAME}.{os.getpid()}.tmp"
    cmd = [*_compiler(), *CFLAGS, "-o", str(tmp), *sources, "-lpthread"]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True)
    except OSError as exc:
        raise FakeNvmlBuildError(f"cannot run C compiler {cmd[0]!r}: {exc}") from exc
    if proc.returncode != 0:
        tmp.unlink(missing_ok=True)
        raise FakeNvmlBuildError(
            f"building the fake NVML failed (exit {proc.returncode}):\n"
            f"$ {shlex.join(cmd)}\n{proc.stderr}"
        )
    os.replace(tmp, out)  # atomic, so parallel builders never see half a file
    return proc


def build_fake_nvml(dest_dir: Path) -> Path:
    """Compile tests/fake_nvml/*.c into ``dest_dir/libnvidia-ml.so.1`` and
    return ``dest_dir`` (the directory to put first on LD_LIBRARY_PATH)."""
    compile_fake_nvml(dest_dir)
    return Path(dest_dir)


# --------------------------------------------------------------------------
# scenario values
# --------------------------------------------------------------------------

@dataclass(frozen=True)
class Step:
    """A value that reads as ``base + step * tick`` (see README)."""
    base: int | float
    step: int | float

    def render(self) -> str:
        return f"{_num(self.base)} step {_num(self.step)}"


def step(base: int | float, s: int | float) -> Step:
    return Step(base, s)


@dataclass(frozen=True)
class Field:
    """A field-value entry: ``Field(12.5, type="dbl")``, ``Field(7, step=1)``,
    or ``Field(error=4)`` for an entry whose nvmlReturn is 4."""
    value: int | float | None = None
    type: str | None = None  # dbl|uint|ulong|ull|sll|sint|ushort
    step: int | float | None = None
    error: int | None = None

    def render(self) -> str:
        if self.error is not None:
            return f"error {self.error}"
        if self.value is None:
            raise ValueError("Field needs a value or an error")
        parts = [_num(self.value)]
        if self.type:
            parts.append(self.type)
        if self.step is not None:
            parts += ["step", _num(self.step)]
        return " ".join(parts)


def _num(v: Any) -> str:
    if isinstance(v, bool):
        return "1" if v else "0"
    if isinstance(v, float):
        r = repr(v)
        return r if ("." in r or "e" in r or "n" in r) else r + ".0"
    if isinstance(v, int):
        return str(v)
    raise TypeError(f"not a number: {v!r}")


def _raw(v: str) -> str:
    if "\n" in v or "#" in v or not v.strip():
        raise ValueError(f"bad raw value {v!r}")
    return v.strip()


def _val(v: Any) -> str:
    """A number, a Step, or a raw string such as "0x4" or "10 step 2"."""
    if isinstance(v, Step):
        return v.render()
    if isinstance(v, str):
        return _raw(v)
    return _num(v)


def _field_val(v: Any) -> str:
    """A number, Step, Field, raw string, or a tuple (value, type[, step])."""
    if isinstance(v, Field):
        return v.render()
    if isinstance(v, tuple):
        return Field(*v).render()
    return _val(v)


def _gpm_val(v: Any) -> str:
    if isinstance(v, Field):
        if v.error is None:
            raise ValueError("a GPM metric is a number or Field(error=CODE)")
        return f"error {int(v.error)}"
    return _num(float(v))


def _text(v: Any, key: str) -> str:
    s = str(v)
    if "\n" in s or not s.strip():
        raise ValueError(f"{key}: bad string value {v!r}")
    return s


# --------------------------------------------------------------------------
# rendering
# --------------------------------------------------------------------------

SYSTEM_STRING_KEYS = ("driver_version", "nvml_version", "event_source")
SYSTEM_NUMBER_KEYS = ("cuda_driver_version", "init_error")

DEVICE_STRING_KEYS = ("uuid", "name", "serial", "vbios_version", "pci_bus_id")
DEVICE_NUMBER_KEYS = (
    "brand", "minor_number", "architecture", "pci_device_id", "pci_sub_system_id",
    "temperature", "temperature_margin", "memory_total", "memory_used", "memory_free", "memory_reserved",
    "utilization_gpu", "utilization_memory", "encoder_utilization", "decoder_utilization",
    "clock_graphics", "clock_sm", "clock_memory", "clock_video",
    "max_clock_graphics", "max_clock_sm", "max_clock_memory", "max_clock_video",
    "clocks_event_reasons", "pstate", "fan_count", "persistence_mode", "accounting_mode",
    "compute_mode", "mig_max", "gpm_supported", "event_types", "power_usage", "power_limit", "energy",
    "pcie_gen", "pcie_gen_max", "pcie_width", "pcie_width_max",
    "pcie_tx_kbps", "pcie_rx_kbps", "pcie_replays",
)
_HEX_KEYS = ("pci_device_id", "pci_sub_system_id", "clocks_event_reasons", "event_types")
DEVICE_PAIR_KEYS = ("mig_mode", "ecc_mode")  # (current, pending)
DEVICE_INDEXED_KEYS = ("fan_speed", "temperature_threshold", "nvlink_state", "nvlink_version",
                       "nvlink_remote_type")
DEVICE_OTHER_KEYS = (
    "nvlink_remote_pci", "ecc_errors", "fields", "processes", "process_samples",
    "accounting", "mig_devices", "gpu_instances", "gpm_metrics", "gpm_mig_metrics", "errors", "lost", "extra",
)
DEVICE_KEYS = frozenset(
    DEVICE_STRING_KEYS + DEVICE_NUMBER_KEYS + DEVICE_PAIR_KEYS + DEVICE_INDEXED_KEYS + DEVICE_OTHER_KEYS
)
SYSTEM_KEYS = frozenset(SYSTEM_STRING_KEYS + SYSTEM_NUMBER_KEYS + ("errors", "extra"))


def _render_errors(errors: Mapping[str, int] | None, prefix: str) -> list[str]:
    return [f"{prefix}error {fn} {int(code)}" for fn, code in (errors or {}).items() if code is not None]


def render_system(system: Mapping[str, Any]) -> list[str]:
    unknown = set(system) - SYSTEM_KEYS
    if unknown:
        raise ValueError(f"unknown system keys: {sorted(unknown)}")
    lines = []
    for k in SYSTEM_STRING_KEYS:
        if system.get(k) is not None:
            lines.append(f"system {k} {_text(system[k], k)}")
    for k in SYSTEM_NUMBER_KEYS:
        if system.get(k) is not None:
            lines.append(f"system {k} {_val(system[k])}")
    lines += _render_errors(system.get("errors"), "system ")
    lines += [f"system {line}" for line in system.get("extra") or ()]
    return lines


def render_device(dev: Mapping[str, Any]) -> list[str]:
    unknown = set(dev) - DEVICE_KEYS
    if unknown:
        raise ValueError(f"unknown device keys: {sorted(unknown)}")
    lines = ["device"]
    g = dev.get
    for k in DEVICE_STRING_KEYS:
        if g(k) is not None:
            lines.append(f"{k} {_text(g(k), k)}")
    for k in DEVICE_NUMBER_KEYS:
        v = g(k)
        if v is not None:
            if k in _HEX_KEYS and isinstance(v, int) and not isinstance(v, bool) and v >= 0:
                lines.append(f"{k} {v:#x}")
            else:
                lines.append(f"{k} {_val(v)}")
    for k in DEVICE_PAIR_KEYS:
        v = g(k)
        if isinstance(v, str):
            lines.append(f"{k} {_raw(v)}")
        elif v is not None:
            cur, pend = v
            lines.append(f"{k} {_num(cur)} {_val(pend)}")
    for k in DEVICE_INDEXED_KEYS:
        for idx, v in sorted((g(k) or {}).items()):
            if v is not None:
                lines.append(f"{k} {int(idx)} {_val(v)}")
    for link, v in sorted((g("nvlink_remote_pci") or {}).items()):
        if v is None:
            continue
        if isinstance(v, (tuple, list)):
            lines.append(f"nvlink_remote_pci {int(link)} {v[0]} {_num(v[1])}")
        else:
            lines.append(f"nvlink_remote_pci {int(link)} {v}")
    for (etype, counter), v in sorted((g("ecc_errors") or {}).items()):
        if v is not None:
            lines.append(f"ecc_errors {int(etype)} {int(counter)} {_val(v)}")
    for fid, v in (g("fields") or {}).items():
        if v is None:
            continue
        ident = f"{int(fid[0])}:{int(fid[1])}" if isinstance(fid, tuple) else str(int(fid))
        lines.append(f"field {ident} {_field_val(v)}")
    for p in g("processes") or ():
        line = f"process {int(p['pid'])} {p['used_memory'] if p['used_memory'] == 'na' else int(p['used_memory'])}"
        if p.get("graphics"):
            line += " graphics"
        if p.get("gi") is not None:
            line += f" gi {int(p['gi'])}"
        if p.get("ci") is not None:
            line += f" ci {int(p['ci'])}"
        lines.append(line)
    for s in g("process_samples") or ():
        lines.append(
            "process_sample {pid} {timestamp} {sm} {mem} {enc} {dec}".format(
                **{k: int(s.get(k, 0)) for k in ("pid", "timestamp", "sm", "mem", "enc", "dec")}
            )
        )
    for a in g("accounting") or ():
        lines.append(
            "accounting {pid} {gpu_util} {mem_util} {max_memory} {start_time} {time_ms} {is_running}".format(
                **{k: int(a[k]) for k in ("pid", "gpu_util", "mem_util", "max_memory",
                                          "start_time", "time_ms", "is_running")}
            )
        )
    for idx, m in sorted((g("mig_devices") or {}).items()):
        if m is None:
            continue
        line = f"mig_device {int(idx)} {m['uuid']} {int(m['gi'])} {int(m['ci'])}"
        if m.get("profile"):
            line += f" {m['profile']}"
        lines.append(line)
        memory = m.get("memory")
        if isinstance(memory, Field):
            lines.append(f"mig_memory {int(idx)} error {int(memory.error)}")
        elif memory is not None:
            lines.append(f"mig_memory {int(idx)} " + " ".join(str(int(v)) for v in memory))
    for gi, (profile_id, start, size) in sorted((g("gpu_instances") or {}).items()):
        lines.append(f"gpu_instance {int(gi)} {int(profile_id)} {int(start)} {int(size)}")
    for fid, v in (g("gpm_metrics") or {}).items():
        lines.append(f"gpm_metric {int(fid)} {_gpm_val(v)}")
    for gi, metrics in sorted((g("gpm_mig_metrics") or {}).items()):
        for fid, v in metrics.items():
            lines.append(f"gpm_mig_metric {int(gi)} {int(fid)} {_gpm_val(v)}")
    lines += _render_errors(g("errors"), "")
    if g("lost"):
        lines.append("lost")
    lines += list(g("extra") or ())
    return lines


def render_scenario(system: Mapping[str, Any] | None, devices: Iterable[Mapping[str, Any]]) -> str:
    """Scenario file text for a system dict and a list of device dicts."""
    lines = ["# generated by tests/fakegpu.py"]
    lines += render_system(system or {})
    for dev in devices:
        lines += render_device(dev)
    return "\n".join(lines) + "\n"


class Scenario:
    """``Scenario(devices=[h100(0), h100(1)], system=default_system()).write(path)``.

    ``system=None`` uses :func:`default_system`; pass ``{}`` for a system
    section with no keys at all."""

    def __init__(self, devices: Iterable[Mapping[str, Any]] = (), system: Mapping[str, Any] | None = None):
        self.devices = list(devices)
        self.system = default_system() if system is None else dict(system)

    def render(self) -> str:
        return render_scenario(self.system, self.devices)

    def write(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(self.render())
        os.replace(tmp, path)
        return path


# --------------------------------------------------------------------------
# realistic defaults
# --------------------------------------------------------------------------

def default_system(**overrides: Any) -> dict[str, Any]:
    system = {
        "driver_version": "580.159.04",
        "cuda_driver_version": 13000,
        "nvml_version": "13.580.159.04",
    }
    system.update(overrides)
    return system


# PCI bus ids of the eight GPUs of an HGX H100 board
_HGX_BUSES = (0x18, 0x2A, 0x3A, 0x5D, 0x9A, 0xAB, 0xBA, 0xDB)
# NVSwitch PCI ids and the 5/4/4/5 split of a GPU's 18 links over 4 switches
_NVSWITCH_BUS = ("00000000:05:00.0", "00000000:06:00.0", "00000000:07:00.0", "00000000:08:00.0")
_LINK_SWITCH = (0,) * 5 + (1,) * 4 + (2,) * 4 + (3,) * 5
NVSWITCH_PCI_DEVICE_ID = 0x22A310DE
H100_NVLINKS = 18
GiB = 1 << 30
MiB = 1 << 20


# nvmlNvlinkVersion_t: what nvmlDeviceGetNvLinkVersion and field 166 answer (NVLink 4.0 is 6, not 4)
NVLINK_VERSION_4_0 = 6

# nvmlTemperatureThresholds_t -> °C from nvmlDeviceGetTemperatureThreshold, as nvidia-smi -q shows them
# ("GPU Shutdown Temp" ...); 0 SHUTDOWN, 1 SLOWDOWN, 2 MEM_MAX (memory sensor), 3 GPU_MAX (max operating)
H100_THRESHOLDS = {0: 92, 1: 89, 2: 95, 3: 87}
A100_THRESHOLDS = {0: 92, 1: 89, 2: 95, 3: 85}  # A100 SXM4: no T.Limit fields, no margin
T4_THRESHOLDS = {0: 96, 1: 93, 3: 85}  # T4: GDDR6 without a memory sensor, so no MEM_MAX
# Ada and newer: the T.Limit (where the GPU's thermal control aims), and the T.Limit fields 193-196
# (SHUTDOWN, SLOWDOWN, MEM_MAX, GPU_MAX) as offsets from it, consistent with H100_THRESHOLDS:
# 87 - (-5) = 92, 87 - (-2) = 89, 87 - 0 = 87 (nvidia-smi's "GPU Slowdown T.Limit Temp: -2 C" on an H100)
H100_TLIMIT = 87
H100_TLIMIT_OFFSETS = {193: -5, 194: -2, 195: 0, 196: 0}


def pre_ada(dev: dict[str, Any], thresholds: Mapping[int, int]) -> dict[str, Any]:
    """The device as an Ampere or older GPU answers temperatures: the absolute thresholds given, and
    neither the T.Limit fields (193-196) nor nvmlDeviceGetMarginTemperature."""
    dev = dict(dev, temperature_threshold=dict(thresholds), temperature_margin=None)
    dev["fields"] = {fid: value for fid, value in dev["fields"].items() if fid not in H100_TLIMIT_OFFSETS}
    return dev


def h100_uuid(index: int) -> str:
    return "GPU-" + str(_uuid.uuid5(_uuid.NAMESPACE_URL, f"fakegpu/h100/{index}"))


def h100(index: int = 0, **overrides: Any) -> dict[str, Any]:
    """A complete H100 80GB HBM3 SXM5 under load: every key populated but the fan count (it has none),
    ECC on, MIG off, accounting off, 18 active NVLink 4 links to 4 NVSwitches,
    one compute process.  Keyword arguments replace top-level keys (``None``
    removes a key, which makes the fake answer NOT_SUPPORTED for it)."""
    total = 81559 * MiB
    reserved = 542 * MiB
    used = 40 * GiB + 517 * MiB
    energy_mj = 31_536_000_000 + index * 1_000_000
    bus = _HGX_BUSES[index % 8]
    pid = 4242 + index
    links = range(H100_NVLINKS)
    # the field values follow the function keys they duplicate, overridden or not
    power_mw = overrides.get("power_usage", 412_345)
    limit_mw = overrides.get("power_limit", 700_000)
    celsius = overrides.get("temperature", 41)
    # The fields an H100 on an R580 driver answers, as nvml.h describes them; values agree with the
    # function keys below (power_usage, power_limit, temperature, pcie_replays).
    fields: dict[Any, Any] = {
        1: Field(1, type="uint"),           # ECC_CURRENT
        3: 0, 4: 0, 5: 0, 6: 0,             # ECC SBE/DBE volatile/aggregate totals
        74: 1_250_000_000,                  # PERF_POLICY_POWER (violation time, ns)
        76: 0, 77: 0, 78: 3_600_000_000_000, 79: 0, 80: 0, 81: 0,
        269: 0, 270: 0, 271: 0,             # clock event reasons sw/hw thermal, power brake (ns)
        82: 52,                             # MEMORY_TEMP
        83: energy_mj,                      # TOTAL_ENERGY_CONSUMPTION (mJ)
        91: H100_NVLINKS,                   # NVLINK_LINK_COUNT
        94: Field(0, type="uint"),          # PCIE_REPLAY_COUNTER
        95: Field(0, type="uint"),          # PCIE_REPLAY_ROLLOVER_COUNTER
        142: Field(0, type="uint"), 143: Field(0, type="uint"),   # REMAPPED_COR / _UNC
        144: Field(0, type="uint"), 145: Field(0, type="uint"),   # REMAPPED_PENDING / _FAILURE
        # TEMPERATURE_SHUTDOWN/SLOWDOWN/MEM_MAX/GPU_MAX_TLIMIT: "T.Limit temperatures", signed offsets
        # from the GPU's T.Limit (the margin at which each threshold is reached), not degrees
        **{fid: Field(offset, type="sint") for fid, offset in H100_TLIMIT_OFFSETS.items()},
        169: 0, 173: 0, 174: 0, 175: 0, 176: 0, 177: 0, 178: 0, 179: 0, 180: 0, 181: 0, 182: 0,
        186: Field(power_mw, type="uint") if power_mw is not None else None,  # POWER_INSTANT (mW)
        190: Field(limit_mw, type="uint") if limit_mw is not None else None,  # POWER_CURRENT_LIMIT (mW)
        197: 123_456_789_012,               # PCIE_COUNT_TX_BYTES
        198: 234_567_890_123,               # PCIE_COUNT_RX_BYTES
        308: Field(celsius, type="dbl") if isinstance(celsius, (int, float)) else None,  # GPU_TEMP
    }
    for link in links:
        fields[(164, link)] = Field(26_562, type="uint")  # NVLINK_GET_SPEED (MBps), NVLink 4
        fields[(165, link)] = Field(1, type="uint")       # NVLINK_GET_STATE: active
        fields[(166, link)] = Field(NVLINK_VERSION_4_0, type="uint")  # NVLINK_GET_VERSION
        fields[(138, link)] = 1_000_000 + link * 1000   # THROUGHPUT_DATA_TX (KiB)
        fields[(139, link)] = 2_000_000 + link * 1000   # THROUGHPUT_DATA_RX (KiB)
        fields[(140, link)] = 1_100_000 + link * 1000   # THROUGHPUT_RAW_TX (KiB)
        fields[(141, link)] = 2_200_000 + link * 1000   # THROUGHPUT_RAW_RX (KiB)
        fields[(161, link)] = 0                         # ERROR_DL_REPLAY
        fields[(162, link)] = 0                         # ERROR_DL_RECOVERY
        fields[(163, link)] = 0                         # ERROR_DL_CRC
    dev: dict[str, Any] = {
        "uuid": h100_uuid(index),
        "name": "NVIDIA H100 80GB HBM3",
        "serial": str(1654922000000 + index),
        "vbios_version": "96.00.99.00.01",
        "brand": 14,            # NVML_BRAND_NVIDIA
        "minor_number": index,
        "architecture": 9,      # NVML_DEVICE_ARCH_HOPPER
        "pci_bus_id": f"{index // 8:08X}:{bus:02X}:00.0",
        "pci_device_id": 0x233010DE,
        "pci_sub_system_id": 0x16C110DE,
        "temperature": celsius,
        "temperature_threshold": dict(H100_THRESHOLDS),
        # nvmlDeviceGetMarginTemperature: degrees left to the T.Limit (H100: 87 °C)
        "temperature_margin": H100_TLIMIT - celsius if isinstance(celsius, int) else None,
        "memory_total": total,
        "memory_used": used,
        "memory_reserved": reserved,
        "memory_free": total - reserved - used,
        "utilization_gpu": 87,
        "utilization_memory": 43,
        "encoder_utilization": 0,
        "decoder_utilization": 0,
        "clock_graphics": 1980,
        "clock_sm": 1980,
        "clock_memory": 2619,
        "clock_video": 1755,
        "max_clock_graphics": 1980,
        "max_clock_sm": 1980,
        "max_clock_memory": 2619,
        "max_clock_video": 1755,
        "clocks_event_reasons": 0,
        # NVML events it can send: single and double bit ECC, P-state, XID (nvmlEventType*)
        "event_types": 0xF,
        "pstate": 0,
        # a passively cooled SXM board: nvmlDeviceGetNumFans answers NOT_SUPPORTED ("if the device does
        # not have a fan", nvml.h), not a count of 0
        "fan_count": None,
        "fan_speed": {},
        "persistence_mode": 1,
        "accounting_mode": 0,
        "compute_mode": 0,
        "mig_mode": (0, 0),
        "mig_max": None,
        "power_usage": power_mw,
        "power_limit": limit_mw,
        "energy": energy_mj,
        "ecc_mode": (1, 1),
        "ecc_errors": {(0, 0): 0, (0, 1): 0, (1, 0): 0, (1, 1): 0},
        "pcie_gen": 5,
        "pcie_gen_max": 5,
        "pcie_width": 16,
        "pcie_width_max": 16,
        "pcie_tx_kbps": 1_234_567,
        "pcie_rx_kbps": 2_345_678,
        "pcie_replays": 0,
        "nvlink_state": {link: 1 for link in links},
        "nvlink_version": {link: NVLINK_VERSION_4_0 for link in links},
        "nvlink_remote_type": {link: 2 for link in links},  # NVML_NVLINK_DEVICE_TYPE_SWITCH
        "nvlink_remote_pci": {link: (_NVSWITCH_BUS[_LINK_SWITCH[link]], NVSWITCH_PCI_DEVICE_ID) for link in links},
        "fields": fields,
        "processes": [{"pid": pid, "used_memory": 40 * GiB}],
        "process_samples": [
            {"pid": pid, "timestamp": 1_760_000_000_000_000, "sm": 85, "mem": 40, "enc": 0, "dec": 0},
        ],
        "accounting": [
            {"pid": pid, "gpu_util": 85, "mem_util": 40, "max_memory": 40 * GiB,
             "start_time": 1_759_996_400_000_000, "time_ms": 0, "is_running": 1},
        ],
        "mig_devices": {},
        "errors": {},
        "lost": False,
    }
    dev.update(overrides)
    return dev


# GPM metric ids (nvml.h NVML_GPM_METRIC_*) that tests set, and what an H100 training job shows
GPM_SM_ACTIVE, GPM_SM_OCCUPANCY, GPM_TENSOR_ACTIVE, GPM_DRAM_ACTIVE = 2, 3, 5, 10
H100_GPM = {
    1: 92.0, GPM_SM_ACTIVE: 80.0, GPM_SM_OCCUPANCY: 35.5, 4: 12.0, GPM_TENSOR_ACTIVE: 40.0,
    6: 0.0, 7: 38.0, 8: 0.0, 9: 2.0, GPM_DRAM_ACTIVE: 30.0, 11: 0.5, 12: 9.0, 13: 4.0,
    20: 2384.0, 21: 8680.0,                              # PCIe TX/RX, MiB/s
    **{30 + k: 0.0 for k in range(7)}, **{40 + k: 0.0 for k in range(7)}, 50: 0.0,  # NVDEC, NVJPG, NVOFA
    60: 18000.0, 61: 18900.0,                            # NVLink total RX/TX, MiB/s
    **{62 + 2 * link: 1000.0 + link for link in range(H100_NVLINKS)},  # per-link RX
    **{63 + 2 * link: 1050.0 + link for link in range(H100_NVLINKS)},  # per-link TX
}


def with_gpm(dev: dict[str, Any], metrics: Mapping[int, Any] | None = None,
             mig: Mapping[int, Mapping[int, Any]] | None = None) -> dict[str, Any]:
    """The device with GPM supported and `metrics` (default H100_GPM) as its whole-GPU values;
    ``mig={gi: {id: value}}`` for its GPU instances."""
    dev = dict(dev)
    dev["gpm_supported"] = 1
    dev["gpm_metrics"] = dict(H100_GPM if metrics is None else metrics)
    if mig:
        dev["gpm_mig_metrics"] = {gi: dict(values) for gi, values in mig.items()}
    return dev


# --------------------------------------------------------------------------
# environment and call counts
# --------------------------------------------------------------------------

def fake_env(libdir: str | os.PathLike, scenario_path: str | os.PathLike,
             calls_path: str | os.PathLike | None = None, tick: int | None = None,
             base: Mapping[str, str] | None = None) -> dict[str, str]:
    """A copy of ``os.environ`` (or ``base``) that makes ``CDLL("libnvidia-ml.so.1")``
    load the fake from ``libdir`` and points it at the scenario."""
    env = dict(os.environ if base is None else base)
    env.pop("KUBERNETES_SERVICE_HOST", None)  # a node of its own, even where the tests run in a pod
    old = env.get("LD_LIBRARY_PATH")
    env["LD_LIBRARY_PATH"] = str(Path(libdir).resolve()) + (os.pathsep + old if old else "")
    env["FAKE_NVML_SCENARIO"] = str(Path(scenario_path).resolve())
    if calls_path is not None:
        env["FAKE_NVML_CALLS"] = str(Path(calls_path).resolve())
    else:
        env.pop("FAKE_NVML_CALLS", None)
    if tick is not None:
        env["FAKE_NVML_TICK"] = str(int(tick))
    else:
        env.pop("FAKE_NVML_TICK", None)
    return env


def read_call_blocks(calls_path: str | os.PathLike) -> list[dict[Any, dict[str, int]]]:
    """Each block the fake appended (one per nvmlShutdown / process exit)."""
    path = Path(calls_path)
    if not path.exists():
        return []
    blocks: list[dict[Any, dict[str, int]]] = []
    cur: dict[Any, dict[str, int]] = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if parts == ["end"]:
            blocks.append(cur)
            cur = {}
        elif parts[0] == "device" and len(parts) == 4:
            cur.setdefault(int(parts[1]), {})[parts[2]] = int(parts[3])
        elif parts[0] == "system" and len(parts) == 3:
            cur.setdefault("system", {})[parts[1]] = int(parts[2])
        else:
            raise ValueError(f"{path}:{n}: bad call-count line {line!r}")
    if cur:
        raise ValueError(f"{path}: last block has no 'end' line")
    return blocks


def read_calls(calls_path: str | os.PathLike) -> dict[Any, dict[str, int]]:
    """Call counts summed over every block: ``{device_index: {function: count},
    "system": {function: count}}``; ``{}`` if the file does not exist."""
    total: dict[Any, dict[str, int]] = {}
    for block in read_call_blocks(calls_path):
        for who, fns in block.items():
            row = total.setdefault(who, {})
            for fn, c in fns.items():
                row[fn] = row.get(fn, 0) + c
    return total

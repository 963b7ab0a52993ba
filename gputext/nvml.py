"""The one path to NVML.

Every NVML call goes through `Nvml.call` or `Nvml.fields`. What a device does not support (or a driver
too old to have the function) becomes None, never a number; the "value not available" sentinels NVML
returns in place of an error become None too. A device that stopped answering raises DeviceGone, which the
collectors turn into `gpu_up 0` for that device alone.
"""

from __future__ import annotations

import sys
from typing import Any, Callable, Dict, Iterable, Optional, Tuple

import pynvml

from .exposition import clean

# Codes that mean "this value does not exist here": leave it out, say nothing.
_ABSENT = {
    pynvml.NVML_ERROR_NOT_SUPPORTED,
    pynvml.NVML_ERROR_NOT_FOUND,
    pynvml.NVML_ERROR_FUNCTION_NOT_FOUND,  # the installed driver predates the function
    pynvml.NVML_ERROR_ARGUMENT_VERSION_MISMATCH,  # ... or the struct version
    pynvml.NVML_ERROR_NO_DATA,
    pynvml.NVML_ERROR_INVALID_ARGUMENT,  # e.g. a fan or link index the board does not have
}
# Codes that mean the device as a whole is unusable until someone acts.
_GONE = {pynvml.NVML_ERROR_GPU_IS_LOST, pynvml.NVML_ERROR_RESET_REQUIRED}

# nvmlValueType_t -> the member of the c_nvmlValue_t union that holds the value
_VALUE_MEMBER = {0: "dVal", 1: "uiVal", 2: "ulVal", 3: "ullVal", 4: "sllVal", 5: "siVal", 6: "usVal"}

FieldKey = Tuple[int, int]  # (field id, scope id)


class NvmlUnavailable(Exception):
    """NVML cannot be used at all on this machine; the message says what to do."""


class DeviceGone(Exception):
    """The device answered with an error that makes all its values meaningless (GPU_IS_LOST, ...)."""


def _init_advice(err: Exception) -> str:
    code = getattr(err, "value", None)
    if code == pynvml.NVML_ERROR_LIBRARY_NOT_FOUND:
        return ("NVML library libnvidia-ml.so.1 not found: install the NVIDIA driver, or put the directory "
                "holding libnvidia-ml.so.1 on LD_LIBRARY_PATH")
    if code == pynvml.NVML_ERROR_DRIVER_NOT_LOADED:
        return "the NVIDIA kernel driver is not loaded: check 'lsmod | grep nvidia' and 'dmesg'"
    if code == pynvml.NVML_ERROR_NO_PERMISSION:
        return "no permission to open /dev/nvidia*: run gputext as root or as a user who can open them"
    if code == pynvml.NVML_ERROR_LIB_RM_VERSION_MISMATCH:
        return ("the NVML library and the loaded kernel driver are different versions: reboot, or reload "
                "the nvidia modules, after a driver upgrade")
    return f"NVML failed to initialise: {err}"


class Nvml:
    """An initialised NVML session. Warnings go through `warn` (one line each, once per kind)."""

    def __init__(self, warn: Callable[[str], None] = lambda msg: print(f"gputext: {msg}", file=sys.stderr)):
        self._warn = warn
        self._warned: set = set()
        self.started = False

    def start(self) -> None:
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError as err:
            raise NvmlUnavailable(_init_advice(err)) from err
        except OSError as err:  # a broken library file: ctypes raises before pynvml can classify it
            raise NvmlUnavailable(f"cannot load libnvidia-ml.so.1: {err}") from err
        self.started = True

    def stop(self) -> None:
        if self.started:
            self.started = False
            try:
                pynvml.nvmlShutdown()
            except pynvml.NVMLError:
                pass

    def call(self, fn: Callable, *args: Any, device: str = "") -> Any:
        """fn(*args), or None where the value does not exist. Raises DeviceGone.

        Numbers come back cleaned of NVML's not-available markers; structs are returned as they are and
        their members pass through exposition.clean when they become samples."""
        try:
            result = fn(*args)
            if isinstance(result, int) and clean(result) is None:
                return None
            return result
        except pynvml.NVMLError as err:
            code = err.value
            if code in _ABSENT:
                return None
            if code in _GONE:
                raise DeviceGone(str(err)) from err
            self.warn_once((fn.__name__, code), f"{device}: {fn.__name__} failed: {err}")
            return None

    def fields(self, handle: Any, keys: Iterable[FieldKey], device: str = "") -> Dict[FieldKey, float]:
        """Read many field values in one nvmlDeviceGetFieldValues call; absent ones are left out."""
        keys = list(keys)
        if not keys:
            return {}
        raw = self.call(pynvml.nvmlDeviceGetFieldValues, handle, keys, device=device)
        if raw is None:
            return {}
        values = {}
        for (field_id, scope_id), entry in zip(keys, raw):
            if entry.nvmlReturn in _GONE:
                raise DeviceGone(f"field {field_id}: NVML error {entry.nvmlReturn}")
            if entry.nvmlReturn != pynvml.NVML_SUCCESS:
                continue
            member = _VALUE_MEMBER.get(entry.valueType)
            if member is None:
                continue
            value = clean(getattr(entry.value, member))
            if value is not None:
                values[(field_id, scope_id)] = value
        return values

    def warn_once(self, kind: Any, message: str) -> None:
        if kind not in self._warned:
            self._warned.add(kind)
            self._warn(message)


def text(value: Any) -> str:
    """NVML strings arrive as str or bytes depending on the pynvml version."""
    if value is None:
        return ""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)

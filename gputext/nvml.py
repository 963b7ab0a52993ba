"""The one path to NVML.

Every NVML call goes through `Nvml.call` or `Nvml.fields`. What a device does not support (or a driver
too old to have the function) becomes None, never a number; the "value not available" sentinels NVML
returns in place of an error become None too. A device that stopped answering raises DeviceGone, which the
collectors turn into `gpu_up 0` for that device alone.
"""

from __future__ import annotations

import ctypes
import math
import struct
from collections.abc import Callable, Iterable

import pynvml

from .exposition import NOT_AVAILABLE, clean
from .terminal import complain

# Codes that mean "this value does not exist here": leave it out, say nothing.
_ABSENT = {
    pynvml.NVML_ERROR_NOT_SUPPORTED,
    pynvml.NVML_ERROR_FUNCTION_NOT_FOUND,  # the installed driver predates the function
    pynvml.NVML_ERROR_ARGUMENT_VERSION_MISMATCH,  # ... or the struct version
    pynvml.NVML_ERROR_NO_DATA,
    pynvml.NVML_ERROR_INVALID_ARGUMENT,  # e.g. a fan or link index the board does not have
}
# Codes that mean the device as a whole is unusable until someone acts.
_GONE = {pynvml.NVML_ERROR_GPU_IS_LOST, pynvml.NVML_ERROR_RESET_REQUIRED}

# Field values are decoded straight from the returned array's bytes: going through pynvml's struct
# objects costs four Python-level __getattribute__ calls per entry, thousands per run on an NVLink node.
# Offsets come from pynvml's own c_nvmlFieldValue_t, so the layout is always the one pynvml passed.
_FIELD = pynvml.c_nvmlFieldValue_t
_FIELD_SIZE = ctypes.sizeof(_FIELD)
_RETURN_OFFSET = _FIELD.nvmlReturn.offset
_TYPE_OFFSET = _FIELD.valueType.offset
_VALUE_OFFSET = _FIELD.value.offset
_KEY = struct.Struct("=II")  # fieldId, scopeId: the first two members
assert _FIELD.fieldId.offset == 0 and _FIELD.scopeId.offset == 4
# one returned entry's valueType, skipping the rest: read once per request, to learn the types
_TYPE = struct.Struct(f"={_TYPE_OFFSET}xI{_FIELD_SIZE - _TYPE_OFFSET - 4}x")
_VALUE_SIZE = ctypes.sizeof(pynvml.c_nvmlValue_t)
assert _RETURN_OFFSET == _TYPE_OFFSET + 4 and _VALUE_OFFSET >= _RETURN_OFFSET + 4
# nvmlValueType_t -> the C type the c_nvmlValue_t union holds, as a struct code of standard size ("=")
_VALUE_CODE = {0: "d", 1: "I", 2: "Q" if ctypes.sizeof(ctypes.c_ulong) == 8 else "I", 3: "Q", 4: "q",
               5: "i", 6: "H"}
_DOUBLE = 0  # NVML_VALUE_TYPE_DOUBLE: the one type that can be NaN or infinite
# NVML_VALUE_TYPE_SIGNED_LONG_LONG and _SIGNED_INT: -1 is a value there (a T.Limit offset of -1 °C), not
# NVML_VALUE_NOT_AVAILABLE, which marks the unsigned types' values
_SIGNED = (4, 5)


class _Answer:
    """How to read the answer to one request (a key list) in a single struct call: one format for the
    whole array, built from the value types its entries had the last time. The types of a GPU's fields
    do not change, so each cycle is one unpack; an answer with other types (checked every time, in one
    tuple comparison) makes a new _Answer."""

    def __init__(self, types: tuple[int, ...]):
        self.types = types
        parts, self.bits, self.known, self.doubles, self.signed = [], [], [], [], []
        for position, value_type in enumerate(types):
            code = _VALUE_CODE.get(value_type)
            if code is None:  # a type newer than this table: its entries are left out
                code = f"{_VALUE_SIZE}s"
            else:
                self.known.append(position)
                if value_type == _DOUBLE:
                    self.doubles.append(position)
                elif value_type in _SIGNED:
                    self.signed.append(position)
            size = struct.calcsize("=" + code)
            self.bits.append(size * 8)
            parts.append(f"{_TYPE_OFFSET}xII{_VALUE_OFFSET - _RETURN_OFFSET - 4}x{code}"
                         f"{_VALUE_SIZE - size}x{_FIELD_SIZE - _VALUE_OFFSET - _VALUE_SIZE}x")
        self.all_known = len(self.known) == len(types)
        self.format = struct.Struct("=" + "".join(parts))

    def values(self, keys: tuple["FieldKey", ...], flat: tuple) -> list[float | None]:
        """The value of each entry, in request order, cleaned as exposition.clean does (None where
        the entry failed, has a type newer than this module or holds a not-available marker, which a
        signed type does not have); `flat` is
        (valueType, nvmlReturn, value) per entry, as self.format unpacks them. Raises DeviceGone."""
        statuses, raw = flat[1::3], flat[2::3]
        # exposition.clean on each: the not-available markers out (integer types stay ints, doubles
        # floats), then (doubles only: an integer type is always finite) NaN and infinities out
        if statuses.count(pynvml.NVML_SUCCESS) == len(statuses) and self.all_known:
            values = [None if value in NOT_AVAILABLE else value for value in raw]
        else:
            for key, status in zip(keys, statuses):
                if status in _GONE:
                    raise DeviceGone(f"field {key[0]}: NVML error {status}")
            known = set(self.known)
            values = [None if status != pynvml.NVML_SUCCESS or position not in known or value in NOT_AVAILABLE
                      else value for position, (status, value) in enumerate(zip(statuses, raw))]
        for position in self.doubles:
            value = values[position]
            if value is not None and not math.isfinite(value):
                values[position] = None
        for position in self.signed:
            if statuses[position] == pynvml.NVML_SUCCESS:
                values[position] = raw[position]
        return values


FieldKey = tuple[int, int]  # (field id, scope id)


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

    def __init__(self, warn: Callable[[str], None] = complain):
        self._warn = warn
        self._warned: set = set()
        self._requests: dict[tuple[FieldKey, ...], bytes] = {}  # see _request
        self._answers: dict[tuple[FieldKey, ...], _Answer] = {}  # see _Answer, per request
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

    def call(self, fn: Callable, *args: object, device: str = "", not_found: object = None,
             no_function: object = None, signed: bool = False) -> object:
        """fn(*args), or None where the value does not exist. Raises DeviceGone.

        For queries that list things (samples, records), NVML answers NOT_FOUND when there are none:
        `not_found` is returned then (say, []) so that "none" stays apart from "cannot be asked".
        `no_function` is returned where the driver predates the function (FUNCTION_NOT_FOUND), for a
        caller that tells a person so.

        Numbers come back cleaned of NVML's not-available markers, except where `signed` says the answer
        is a signed number (a margin), for which -1 is a value; structs are returned as they are and their
        members pass through exposition.clean when they become samples."""
        try:
            result = fn(*args)
            if not signed and isinstance(result, int) and clean(result) is None:
                return None
            return result
        except pynvml.NVMLError as err:
            code = err.value
            # NOT_FOUND: nothing of the kind (no samples, no such link); pynvml raises NVMLError(0)
            # when a sizing call finds nothing to size
            if code in (pynvml.NVML_ERROR_NOT_FOUND, pynvml.NVML_SUCCESS):
                return not_found
            if code == pynvml.NVML_ERROR_FUNCTION_NOT_FOUND:
                return no_function
            if code in _ABSENT:
                return None
            if code in _GONE:
                raise DeviceGone(str(err)) from err
            self.warn_once((fn.__name__, code), f"{device}: {fn.__name__} failed: {err}")
            return None

    def fields(self, handle: object, keys: Iterable[FieldKey], device: str = "",
               widths: dict[FieldKey, int] | None = None) -> dict[FieldKey, float]:
        """Read many field values in one nvmlDeviceGetFieldValues call; absent ones are left out.
        If `widths` is given, it receives the bit width of each value's C type (for counters that wrap)."""
        keys = tuple(keys)
        values = self.field_list(handle, keys, device)
        found = {key: value for key, value in zip(keys, values) if value is not None}
        if widths is not None and found:
            bits = self._answers[keys].bits
            widths.update((key, width) for key, value, width in zip(keys, values, bits) if value is not None)
        return found

    def field_list(self, handle: object, keys: tuple[FieldKey, ...], device: str = "") -> list[float | None]:
        """fields() as a list in the order of `keys`, None where absent: for a collector that keeps the
        position of each key (the NVLink collector's 108 a GPU), which is cheaper than a dict of tuples."""
        if not keys:
            return []
        raw = self.call(nvmlDeviceGetFieldValues, handle, self._request(keys), len(keys), device=device)
        if raw is None:
            return [None] * len(keys)
        data = bytes(raw)
        answer = self._answers.get(keys)
        flat = answer.format.unpack(data) if answer is not None else None
        if flat is None or flat[0::3] != answer.types:
            answer = self._answers[keys] = _Answer(tuple(t for (t,) in _TYPE.iter_unpack(data)))
            flat = answer.format.unpack(data)
        return answer.values(keys, flat)

    def _request(self, keys: tuple[FieldKey, ...]) -> bytes:
        """The request array of `keys` as bytes, built once per key list: the same fields are asked of
        every GPU and every cycle, and filling pynvml's structs member by member costs a Python-level
        attribute write per field."""
        request = self._requests.get(keys)
        if request is None:
            buffer = bytearray(_FIELD_SIZE * len(keys))
            for index, (field_id, scope) in enumerate(keys):
                _KEY.pack_into(buffer, index * _FIELD_SIZE, field_id, scope)
            request = self._requests[keys] = bytes(buffer)
        return request

    def warn_once(self, kind: object, message: str) -> None:
        if kind not in self._warned:
            self._warned.add(kind)
            self._warn(message)


_FIELD_ARRAYS: dict[int, type] = {}  # count -> the ctypes array type of that many field values


def nvmlDeviceGetFieldValues(handle: object, request: bytes, count: int) -> object:
    """pynvml's nvmlDeviceGetFieldValues on a ready request (see Nvml._request): the same C call, the same
    errors (NVMLError), without rebuilding the array."""
    array = _FIELD_ARRAYS.get(count)
    if array is None:  # ctypes keeps array types only weakly: made anew, each costs a type's creation
        array = _FIELD_ARRAYS[count] = _FIELD * count
    values = array.from_buffer_copy(request)
    fn = pynvml._nvmlGetFunctionPointer("nvmlDeviceGetFieldValues")
    pynvml._nvmlCheckReturn(fn(handle, ctypes.c_int32(count), ctypes.byref(values)))
    return values




def text(value: object) -> str:
    """NVML strings arrive as str or bytes depending on the pynvml version."""
    if value is None:
        return ""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)

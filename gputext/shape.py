"""What gputext's own JSON files (state.json, inventory.json) must hold, checked when they are read.

Anyone with write access to the state directory can put anything there, and a file from another version
may differ; gputext reads the numbers back into what it writes, so each one is checked like any other
input. A shape is a function that raises `Invalid` (saying where and what) unless a value fits it; the
owner of each part of a file declares its shape beside the code that writes it, and the reader checks the
part once, when it is read, so the code that uses it can trust its types.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping

Shape = Callable[[object, str], None]

# Counts are written as float64 samples: above 2^53 they are no longer exact.
MAX_COUNT = 1 << 53
# Times, joules and microseconds stay far below this; anything above it was not written by gputext.
MAX_NUMBER = 1e18
# A string gputext writes into these files (a UUID, a process name, a message) is far shorter.
MAX_TEXT = 64 * 1024


class Invalid(ValueError):
    """A value does not have the shape its reader needs; the message says where."""


def _fail(where: str, what: str) -> None:
    raise Invalid(f"{where or 'the document'}: {what}")


def text(value: object, where: str) -> None:
    if not isinstance(value, str) or len(value) > MAX_TEXT:
        _fail(where, "not a string")


def natural(maximum: int) -> Shape:
    """An integer from 0 to `maximum`."""
    def check(value: object, where: str) -> None:
        if type(value) is not int or not 0 <= value <= maximum:
            _fail(where, f"not an integer from 0 to {maximum}")
    return check


count = natural(MAX_COUNT)  # a count, exact as a float64 sample


def number(value: object, where: str) -> None:
    """A finite number of a sane size (JSON's NaN and Infinity, and 1e400, are not)."""
    # (abs() first: an integer of 400 digits has no float, and math.isfinite would raise OverflowError)
    if type(value) not in (int, float) or not abs(value) <= MAX_NUMBER or not math.isfinite(value):
        _fail(where, "not a finite number")


def flag(value: object, where: str) -> None:
    if type(value) is not int or value not in (0, 1):
        _fail(where, "not 0 or 1")


def boolean(value: object, where: str) -> None:
    if type(value) is not bool:
        _fail(where, "not true or false")


def anything(value: object, where: str) -> None:
    """Any JSON value: for what is only compared for equality (a cache key)."""


def optional(shape: Shape) -> Shape:
    def check(value: object, where: str) -> None:
        if value is not None:
            shape(value, where)
    return check


def list_of(shape: Shape) -> Shape:
    def check(value: object, where: str) -> None:
        if not isinstance(value, list):
            _fail(where, "not a list")
        for index, item in enumerate(value):
            shape(item, f"{where}[{index}]")
    return check


def tuple_of(*shapes: Shape) -> Shape:
    """A list of exactly these items."""
    def check(value: object, where: str) -> None:
        if not isinstance(value, list) or len(value) != len(shapes):
            _fail(where, f"not a list of {len(shapes)}")
        for index, (item, shape) in enumerate(zip(value, shapes)):
            shape(item, f"{where}[{index}]")
    return check


def mapping(values: Shape, keys: str = r".*") -> Shape:
    """An object whose keys all match the regular expression `keys` and whose values have `values`."""
    pattern = re.compile(keys, re.DOTALL)

    def check(value: object, where: str) -> None:
        if not isinstance(value, dict):
            _fail(where, "not an object")
        for key, item in value.items():
            if not pattern.fullmatch(key):
                _fail(where, f"unexpected key {key[:80]!r}")
            values(item, f"{where}.{key[:80]}")
    return check


def record(required: Mapping[str, Shape] = {}, optional: Mapping[str, Shape] = {},  # noqa: B006 - read only
           patterns: Mapping[str, Shape] = {}) -> Shape:  # noqa: B006
    """An object with the `required` keys, any of the `optional` ones, and any key that matches one of
    the regular expressions of `patterns`; no other."""
    compiled = [(re.compile(key), shape) for key, shape in patterns.items()]

    def check(value: object, where: str) -> None:
        if not isinstance(value, dict):
            _fail(where, "not an object")
        for key, shape in required.items():
            if key not in value:
                _fail(where, f"no {key!r}")
        for key, item in value.items():
            shape = required.get(key) or optional.get(key) or next(
                (shape for pattern, shape in compiled if pattern.fullmatch(key)), None)
            if shape is None:
                _fail(where, f"unexpected key {key[:80]!r}")
            shape(item, f"{where}.{key}" if where else key)
    return check


def where(shape: Shape, test: Callable[[object], bool], what: str) -> Shape:
    """`shape`, and `test` true of the value: for what one value says about another."""
    def check(value: object, where_: str) -> None:
        shape(value, where_)
        if not test(value):
            _fail(where_, what)
    return check

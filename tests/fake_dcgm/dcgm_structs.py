"""Fake dcgm_structs: the constants and error classes gputext relies on, with DCGM's values."""

DCGM_ST_OK = 0
DCGM_ST_NO_DATA = -14
DCGM_ST_CONNECTION_NOT_VALID = -21
DCGM_INT64_BLANK = 0x7FF0000000000010
DCGM_GROUP_ALL_GPUS = 0x7FFFFFFF


class DCGMError(Exception):
    def __init__(self, value):
        super().__init__(value)
        self.value = value

    def __str__(self):
        return {DCGM_ST_NO_DATA: "No data is available",
                DCGM_ST_CONNECTION_NOT_VALID: "The connection to the host engine is not valid any longer"}.get(
            self.value, f"DCGM error {self.value}")


_classes = {}


def dcgmExceptionClass(value):
    """The DCGMError subclass for one status, raised without arguments, as the real bindings do."""
    if value not in _classes:
        def __init__(self):
            DCGMError.__init__(self, value)
        _classes[value] = type(f"DCGMError_{abs(value)}", (DCGMError,), {"__init__": __init__})
    return _classes[value]

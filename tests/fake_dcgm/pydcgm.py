"""Fake pydcgm: DcgmHandle connects to the (fake) host engine."""

import dcgm_structs
from _fake import config, log


class DcgmHandle:
    def __init__(self, handle=None, ipAddress=None, opMode=None, persistAfterDisconnect=False,
                 unixSocketPath=None, timeoutMs=0):
        log(call="connect", ipAddress=ipAddress, persistAfterDisconnect=persistAfterDisconnect)
        if config().get("refuse"):
            raise dcgm_structs.dcgmExceptionClass(dcgm_structs.DCGM_ST_CONNECTION_NOT_VALID)()
        self.handle = 1

    def Shutdown(self):
        log(call="shutdown")

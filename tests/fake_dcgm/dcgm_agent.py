"""Fake dcgm_agent: PID watches and PID info, in the shapes of dcgm_structs.c_dcgmPidInfo_v2."""

from types import SimpleNamespace

import dcgm_structs
from _fake import config, log


def dcgmWatchPidFields(dcgm_handle, groupId, updateFreq, maxKeepAge, maxKeepSamples):
    log(call="watch", group=groupId, updateFreq=updateFreq, maxKeepAge=maxKeepAge, maxKeepSamples=maxKeepSamples)
    return dcgm_structs.DCGM_ST_OK


def dcgmGetPidInfo(dcgm_handle, groupId, pid):
    log(call="pidinfo", group=groupId, pid=pid)
    entries = config().get("pids", {}).get(str(pid))
    if entries is None:
        raise dcgm_structs.dcgmExceptionClass(dcgm_structs.DCGM_ST_NO_DATA)()
    gpus = [SimpleNamespace(gpuId=gpu, energyConsumed=dcgm_structs.DCGM_INT64_BLANK if mj == "blank" else mj)
            for gpu, mj in entries]
    total = sum(g.energyConsumed for g in gpus if g.energyConsumed < dcgm_structs.DCGM_INT64_BLANK)
    padding = [SimpleNamespace(gpuId=0, energyConsumed=0)] * (16 - len(gpus))  # the struct's fixed array
    return SimpleNamespace(pid=pid, numGpus=len(gpus), gpus=gpus + padding,
                           summary=SimpleNamespace(energyConsumed=total))

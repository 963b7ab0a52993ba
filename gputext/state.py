"""What one run leaves for the next: a small versioned JSON file, read and written under a lock.

`state.json` in the state directory holds named sections (per-process records and energy samples, the
kubelet's answer, ...). A run that needs it takes `state.json.lock` (gputext.locks), reads the file, and at
the end writes it atomically and releases the lock, so overlapping runs (a timer and a person) never lose
each other's updates. A file that is not valid JSON or not ours (another version) is moved aside with a
warning and the run starts afresh. Where the directory cannot be written, or another run holds the lock
too long, the state is unavailable: the metrics that need it are left out and stderr says why, once.
"""

from __future__ import annotations

import functools
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

from .textfile import write_atomically

STATE_VERSION = 1
STATE_FILE = "state.json"
LOCK_TIMEOUT_SECONDS = 2.0

BOOT_ID_PATH = "/proc/sys/kernel/random/boot_id"


@functools.lru_cache(maxsize=None)
def boot_id() -> str:
    """This boot's random ID: what was seen or said "this boot" is keyed by it ("" where unreadable).
    Read once per process: no process outlives its boot (the repeating mode asks every cycle)."""
    try:
        with open(BOOT_ID_PATH) as f:
            return f.read().strip()
    except OSError:
        return ""


class StateUnavailable(Exception):
    """No state this run; the message says why."""


class State:
    def __init__(self, directory: Path | None, warn: Callable[[str], None],
                 lock_timeout: float = LOCK_TIMEOUT_SECONDS, note: Callable[[str], None] | None = None):
        """`warn` is told of events (a file moved aside, a failed write); `note` of the lasting
        condition "no state", which the repeating mode meets every cycle (default: `warn`)."""
        self.directory = directory
        self.path = directory / STATE_FILE if directory else None
        self._warn = warn
        self._note = note or warn
        self._lock_timeout = lock_timeout
        self._lock = None
        self._sections: dict[str, object] | None = None
        self._read: bytes | None = None  # the file as loaded: close() does not rewrite it unchanged
        self._error: StateUnavailable | None = None

    def section(self, name: str) -> dict[str, object]:
        """The named section, a dict the caller may change; it is saved at close(). Raises
        StateUnavailable (each time, warning once) where there is no usable state."""
        if self._sections is None:
            self._open()
        return self._sections.setdefault(name, {})

    def _open(self) -> None:
        if self._error is not None:
            raise self._error
        try:
            self._sections = self._lock_and_load()
        except StateUnavailable as err:
            self._error = err
            self._note(f"no state this run, metrics that need it are left out: {err}")
            raise

    def _lock_and_load(self) -> dict[str, object]:
        if self.path is None:
            raise StateUnavailable("no state directory")
        from .locks import FileLock, LockTimeout, LockUnavailable

        try:
            os.makedirs(self.directory, mode=0o755, exist_ok=True)
            lock = FileLock(self.path.with_name(STATE_FILE + ".lock"))
            lock.acquire(self._lock_timeout)
        except LockTimeout:
            raise StateUnavailable(f"another gputext run holds {self.path}.lock") from None
        except LockUnavailable as err:
            raise StateUnavailable(err.strerror) from None
        except OSError as err:
            raise StateUnavailable(f"cannot use {self.directory}: {err.strerror or err}") from None
        self._lock = lock
        if not os.access(self.directory, os.W_OK):
            self._release()
            raise StateUnavailable(f"{self.directory} is not writable")
        return self._load()

    def _load(self) -> dict[str, object]:
        try:
            with open(self.path, "rb") as f:
                read = f.read()
            document = json.loads(read)
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as err:
            return self._move_aside(f"unreadable ({err})")
        if not isinstance(document, dict) or document.get("version") != STATE_VERSION \
                or not isinstance(document.get("sections"), dict):
            return self._move_aside(f"not a gputext state file of version {STATE_VERSION}")
        self._read = read
        return document["sections"]

    def _move_aside(self, why: str) -> dict[str, object]:
        aside = self.path.with_name(f"{STATE_FILE}.bad-{int(time.time())}")
        try:
            os.replace(self.path, aside)
            self._warn(f"state file {self.path} {why}: moved to {aside.name}, starting afresh")
        except OSError as err:
            self._warn(f"state file {self.path} {why} and cannot be moved aside ({err.strerror}): ignored")
        return {}

    def close(self) -> None:
        """Write the state (if it was used) and release the lock; a later section() opens it afresh
        (the repeating mode takes the lock once per cycle, so a run by hand can slip in between)."""
        if self._sections is not None and self._lock is not None:
            payload = json.dumps({"version": STATE_VERSION, "sections": self._sections},
                                 separators=(",", ":")).encode()
            try:
                if payload != self._read:  # a run that changed nothing (a cached kubelet answer) skips the write
                    # Not fsynced: only a power loss or a kernel crash can lose or tear it, and what it
                    # holds belongs to the boot that ends there (a torn file is moved aside, see _load).
                    write_atomically(self.path, payload, mode=0o600, durable=False)
            except OSError as err:
                self._warn(f"cannot write state file {self.path}: {err.strerror or err}")
        self._release()
        self._sections = self._error = self._read = None

    def _release(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

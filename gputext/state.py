"""What one run leaves for the next: a small versioned JSON file, read and written under a lock.

`state.json` in the state directory holds named sections (per-process records and energy samples, the
kubelet's answer, ...). A run that needs it takes `state.json.lock` (gputext.locks), reads the file, and
at the end writes it atomically and releases the lock, so overlapping runs (a timer and a person) never
lose each other's updates. A file that is not valid JSON or not ours (another version) is moved aside with
a warning and the run starts afresh; a section whose content does not have the shape its owner declares
(gputext.shape) is dropped and started afresh, the others kept. A file that cannot be read (EMFILE,
EACCES) is left as it is: an OS error says nothing about its content. Where the directory cannot be
written, or another run holds the lock too long, the state is unavailable: the metrics that need it are
left out and stderr says why, once.
"""

from __future__ import annotations

import functools
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

from .readfile import STATE_FILE_LIMIT, read_bounded, read_bounded_text
from .shape import Invalid, Shape
from .textfile import write_atomically

STATE_VERSION = 1
STATE_FILE = "state.json"
LOCK_TIMEOUT_SECONDS = 2.0

BOOT_ID = "sys/kernel/random/boot_id"  # under /proc


@functools.lru_cache(maxsize=None)
def boot_id(proc: Path) -> str:
    """This boot's random ID, from `proc` (the host's /proc, under --host-root): what was seen or said
    "this boot" is keyed by it ("" where unreadable). Read once per process: no process outlives its boot
    (the repeating mode asks every cycle)."""
    try:
        return read_bounded_text(proc / BOOT_ID, 4096, "replace").strip()
    except (OSError, ValueError):
        return ""


def move_aside(path: Path, what: str, why: str, warn: Callable[[str], None]) -> None:
    """Rename a file of gputext's that it cannot use to <name>.bad-<time>, for a person to look at (the
    run then starts it afresh), and say so."""
    aside = path.with_name(f"{path.name}.bad-{int(time.time())}")
    try:
        os.replace(path, aside)
        warn(f"{what} {path} {why}: moved to {aside.name}, starting afresh")
    except OSError as err:
        warn(f"{what} {path} {why} and cannot be moved aside ({err.strerror}): ignored")


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
        self._checked: set[str] = set()  # the sections checked against their shape since the file was read

    def section(self, name: str, shape: Shape) -> dict[str, object]:
        """The named section, a dict the caller may change; it is saved at close(). The first time a
        run asks for it, the section as read is checked against `shape` (gputext.shape): one that does
        not fit is dropped and started afresh, with a warning, and the other sections are kept. Raises
        StateUnavailable (each time, warning once) where there is no usable state."""
        if self._sections is None:
            self._open()
        if name not in self._checked:
            self._checked.add(name)
            try:
                shape(self._sections.get(name, {}), name)
            except Invalid as err:
                kept = self._keep_aside(name, self._sections.pop(name, {}))
                self._warn(f"state file {self.path}: {err}; its section {name!r} is not what this version "
                           f"writes: {kept}, started afresh, the other sections are kept")
        return self._sections.setdefault(name, {})

    def _keep_aside(self, name: str, content: object) -> str:
        """Write a section that does not fit to state.json.bad-<section>-<time>, for a person to look at,
        as a whole file that does not fit is moved aside; what became of it, for the warning."""
        aside = self.path.with_name(f"{STATE_FILE}.bad-{name}-{int(time.time())}")
        try:
            payload = json.dumps(content, separators=(",", ":")).encode()
            write_atomically(aside, payload, mode=0o600, durable=False)
        except (OSError, ValueError, RecursionError) as err:
            return f"not kept ({getattr(err, 'strerror', None) or type(err).__name__})"
        return f"kept in {aside.name}"

    def _open(self) -> None:
        if self._error is not None:
            raise self._error
        self._checked = set()
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
        try:
            if not os.access(self.directory, os.W_OK):
                raise StateUnavailable(f"{self.directory} is not writable")
            return self._load()
        except BaseException:
            self._release()  # else this run's next section() would wait on its own lock
            raise

    def _load(self) -> dict[str, object]:
        try:
            read = read_bounded(self.path, STATE_FILE_LIMIT)
        except FileNotFoundError:
            return {}
        except OSError as err:  # EMFILE, EACCES, EIO: nothing wrong with the file itself, so it stays
            raise StateUnavailable(f"cannot read {self.path}: {err.strerror or err}") from None
        except ValueError as err:  # not a regular file, or too large
            return self._move_aside(f"unusable ({err})")
        try:
            document = json.loads(read)
        except (ValueError, RecursionError) as err:  # RecursionError: nested deeper than the parser goes
            return self._move_aside(f"unreadable ({type(err).__name__}: {str(err)[:200]})")
        if not isinstance(document, dict) or document.get("version") != STATE_VERSION \
                or not isinstance(document.get("sections"), dict):
            return self._move_aside(f"not a gputext state file of version {STATE_VERSION}")
        self._read = read
        return document["sections"]

    def _move_aside(self, why: str) -> dict[str, object]:
        move_aside(self.path, "state file", why, self._warn)
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

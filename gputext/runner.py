"""Collect and write, once or every interval, without two gputext runs ever writing one file at once.

A run that writes a file holds `.<name>.lock` beside it (gputext.locks; node_exporter ignores the name) while
it collects and writes, so a timer, a cron job and a person can overlap safely: whoever comes second waits
up to --lock-timeout, then leaves the file to the holder and exits 2. `--out -` takes no lock.

The repeating mode keeps one NVML session and the device inventory for its whole life, holds the output
lock only during each cycle (a person can slip a run in between), and stops on SIGTERM or SIGINT between
writes, never in the middle of one (a write holds those signals back, see gputext.textfile).
"""

from __future__ import annotations

import signal
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

from .locks import FileLock, LockTimeout, LockUnavailable
from .run import Context, collect
from .textfile import Destination, write_atomically, write_through

# the exit codes of `gputext collect` (README, --help): file written; written without NVML; not written
EXIT_OK, EXIT_NO_NVML, EXIT_NOT_WRITTEN = 0, 1, 2


class OutputLocked(Exception):
    """Another gputext run holds the output file's lock."""


class Output:
    """Where collections go: a file replaced atomically under its lock, or a descriptor, FIFO or character
    device written straight through (no lock: nothing is replaced)."""

    def __init__(self, destination: Destination, lock_timeout: float):
        self.destination = destination
        self.lock_timeout = lock_timeout
        self._lock = None

    @property
    def target(self) -> Optional[Path]:
        """The file replaced by each write; None where writes go straight through."""
        return self.destination.path if self.destination.kind == "file" else None

    @contextmanager
    def held(self) -> Iterator[None]:
        target = self.target
        if target is None:
            yield
            return
        if self._lock is None:
            self._lock = FileLock(target.parent / f".{target.name}.lock")
        try:
            self._lock.acquire(self.lock_timeout)
        except LockTimeout:
            raise OutputLocked(f"another gputext run is writing {target} (it held the lock for more than "
                               f"{self.lock_timeout:g}s); the file is left to it") from None
        try:
            yield
        finally:
            self._lock.release()

    def write(self, data: bytes) -> None:
        """Raises OSError where the file cannot be written; the previous file then stays as it was."""
        if self.target is None:
            write_through(self.destination, data)
        else:
            write_atomically(self.target, data)


def not_written(output: Output, err: OSError) -> str:
    if isinstance(err, LockUnavailable):
        return f"{err.strerror}; {output.destination.named} is not written (the previous file is unchanged)"
    if output.target is None:
        return f"cannot write {output.destination.named}: {err.strerror or err}"
    return f"cannot write {output.destination.named}: {err.strerror or err}; the previous file is unchanged"


def once(ctx: Context, output: Output) -> int:
    """One collection, written; its exit code. Raises OutputLocked or OSError (not written)."""
    with output.held():
        try:
            result = collect(ctx)
        finally:
            ctx.end_cycle()
        output.write(result.render(ctx.options.prefix))
    return EXIT_NO_NVML if result.nvml_unavailable else EXIT_OK


def repeat(ctx: Context, output: Output, interval: float, count: int = 0, duration: float = 0.0) -> int:
    """Collect every `interval` seconds until count cycles, duration or a signal; returns the exit code
    of the last cycle."""
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGTERM, signal.SIGINT)}
    started = time.monotonic()
    next_tick = started
    cycles, code = 0, EXIT_OK
    try:
        while not stop.is_set():
            try:
                code = once(ctx, output)
            except OutputLocked:
                raise
            except OSError as err:
                ctx.warn(not_written(output, err))
                code = EXIT_NOT_WRITTEN
            except Exception as err:  # noqa: BLE001 - one bad cycle must not end a long-running collector
                ctx.warn(f"cycle failed: {type(err).__name__}: {err}")
                code = EXIT_NOT_WRITTEN
            cycles += 1
            next_tick = max(next_tick + interval, time.monotonic())  # missed ticks are skipped, not bunched
            if (count and cycles >= count) or (duration and next_tick - started > duration):
                break
            stop.wait(next_tick - time.monotonic())
            ctx.new_cycle()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return code

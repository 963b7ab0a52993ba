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
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .locks import FileLock, LockTimeout, LockUnavailable
from .run import Context, collect
from .textfile import Destination, write_atomically, write_through

# the exit codes of `gputext collect` (docs/guarantees.md, --help): file written; written without NVML; not written
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
    def target(self) -> Path | None:
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
    of the last cycle. Between cycles it waits on NVML events (gputext.events) where the GPUs have
    them: an XID or ECC error starts the next cycle at once, though not sooner than EARLIEST_SECONDS
    after the previous one started (a storm of events must not become a storm of cycles), and the
    regular ticks go on as before."""
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGTERM, signal.SIGINT)}
    started = time.monotonic()
    next_tick = started
    cycles, code = 0, EXIT_OK
    watch = None
    try:
        # registered before the first cycle reads the kernel log, so that no XID falls between the two
        watch = _watch(ctx, None)
        while not stop.is_set():
            cycle_started = time.monotonic()
            code = _cycle(ctx, output)
            cycles += 1
            if cycle_started >= next_tick:  # a regular cycle, not one an event brought forward
                next_tick = max(next_tick + interval, time.monotonic())  # missed ticks are skipped
            if (count and cycles >= count) or (duration and next_tick - started > duration):
                break
            watch = _watch(ctx, watch)
            if watch is None:
                stop.wait(next_tick - time.monotonic())
            else:
                watch = _wait_for_events(ctx, watch, stop, next_tick,
                                         cycle_started + min(interval, EARLIEST_SECONDS))
            ctx.new_cycle()
    finally:
        if watch is not None:
            watch.close()
        ctx.xid_events = None
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return code


# An event starts a cycle at once, but no sooner than this after the previous cycle started.
EARLIEST_SECONDS = 1.0


def _cycle(ctx: Context, output: Output) -> int:
    try:
        return once(ctx, output)
    except OutputLocked:
        raise
    except OSError as err:
        ctx.warn(not_written(output, err))
    except Exception as err:  # noqa: BLE001 - one bad cycle must not end a long-running collector
        ctx.warn(f"cycle failed: {type(err).__name__}: {err}")
    return EXIT_NOT_WRITTEN


def _watch(ctx: Context, watch):
    """The NVML event watch for the GPUs of the cycle that just ended, where the collectors that write
    what events announce (xid, nvml) run."""
    chosen = ctx.options.collectors
    if chosen and "xid" not in chosen and "nvml" not in chosen:
        return None
    from .events import watch as watch_events

    watch = watch_events(ctx, watch)
    ctx.xid_events = (ctx.xid_events or []) if watch is not None else None
    return watch


def _wait_for_events(ctx: Context, watch, stop: threading.Event, next_tick: float, earliest: float):
    """Wait on the event set until the next tick, or until an event (and `earliest`) has come; the
    watch to go on with (None once it broke: the rest of this wait, and the cycles until a new one
    works, sleep)."""
    from .events import SLICE_SECONDS, WatchBroken

    woken = False
    while not stop.is_set():
        until = earliest if woken else next_tick
        left = until - time.monotonic()
        if left <= 0:
            return watch
        try:
            xids, arrived = watch.wait(min(left, SLICE_SECONDS))
        except WatchBroken as err:
            ctx.note_once(f"NVML events stopped ({err}): waiting for the next cycle instead", per_boot=False)
            watch.close()  # the XID events it had received stay for the next cycle to count
            stop.wait(next_tick - time.monotonic())
            return None
        ctx.xid_events.extend(xids)
        woken = woken or arrived > 0
    return watch

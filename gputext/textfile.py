"""Write a file so that readers see the old content or the new one, never a part.

node_exporter's textfile collector reads every `*.prom` file in its directory whenever Prometheus scrapes,
possibly while we write. So the new content goes to a temp file in the same directory whose name does not
end in `.prom` (node_exporter ignores it), is fsynced, made 0644 (node_exporter runs as another user,
and mkstemp's 0600 would lock it out), renamed over the target, and the directory is fsynced so the rename
survives a crash. Termination signals are held back while the temp file exists, so a SIGTERM from systemd
lands between writes, not in the middle of one. A temp file left by a run that was SIGKILLed is removed by
the next run that writes the same target.
"""

from __future__ import annotations

import os
import signal
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

_HELD_SIGNALS = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP}
TEMP_SUFFIX = ".tmp"


def _temp_prefix(target: Path) -> str:
    return f".{target.name}."


def _remove_stale_temps(target: Path) -> None:
    """Remove temp files of `target` whose writer (PID in the name) no longer runs."""
    prefix = _temp_prefix(target)
    try:
        names = os.listdir(target.parent)
    except OSError:
        return
    for name in names:
        if not (name.startswith(prefix) and name.endswith(TEMP_SUFFIX)):
            continue
        pid_text = name[len(prefix):].split(".", 1)[0]
        if pid_text.isdigit() and int(pid_text) != os.getpid() and _pid_alive(int(pid_text)):
            continue
        try:
            os.unlink(target.parent / name)
        except OSError:
            pass


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


@contextmanager
def _signals_held() -> Iterator[None]:
    """Defer SIGTERM/SIGINT/SIGHUP until the block ends (main thread only)."""
    try:
        old = signal.pthread_sigmask(signal.SIG_BLOCK, _HELD_SIGNALS)
    except (ValueError, OSError):  # not the main thread, or no sigmask on this platform
        yield
        return
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def write_atomically(target: Path, data: bytes, mode: int = 0o644) -> None:
    """Replace `target` with `data`. On any error the old file is untouched and no temp file is left."""
    directory = target.parent
    _remove_stale_temps(target)
    with _signals_held():
        fd, temp_name = tempfile.mkstemp(dir=directory, prefix=f"{_temp_prefix(target)}{os.getpid()}.",
                                         suffix=TEMP_SUFFIX)
        try:
            try:
                os.fchmod(fd, mode)
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(temp_name, target)
        except BaseException:
            try:
                os.unlink(temp_name)
            except OSError:
                pass
            raise
    _fsync_directory(directory)


def _fsync_directory(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems refuse fsync on directories; the rename itself is still atomic
    finally:
        os.close(fd)

"""One writer per run directory: an OS-level lock on ``DIR/.lock``.

Every command that writes a run (``train``, ``demo``, ``eval``, ``report``) holds
``fcntl.flock(LOCK_EX | LOCK_NB)`` on ``DIR/.lock`` for as long as it writes. The file holds the
holder's PID, command line and start time, so a second process is refused with one line naming
them (``RunLocked``, a :class:`ConfigError`: exit 2) instead of interleaving its writes with the
first's. The kernel drops a flock when its process dies, however it dies: a lock left by a killed
process never blocks anyone, and there is no stale-lock guessing by PID.

The lock and the run's files are never followed through a link nor waited on: ``.lock`` is opened
with ``O_NOFOLLOW | O_NONBLOCK`` and must be a regular file, and once the lock is held every file
the commands write in the directory (:func:`check_run_files`) must be absent or a regular file
that is not a link. A planted link or FIFO is refused with one line naming it (exit 2), before
anything is written: a link to a file outside the run is never overwritten through it.

The holder unlinks ``.lock`` before it lets go, so a finished run leaves no lock file behind. A
process that opened the file just before it was unlinked finds, once it holds the flock, that
the path no longer names its file, and tries again.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shlex
import stat
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from parity.config import ConfigError
from parity.safeio import check_not_link, file_kind

LOCK_FILE = ".lock"
_HOLDER_BYTES = 4096  # what is read of a holder's record: a lock file is never large


class RunLocked(ConfigError):
    """Another live process holds the run directory's lock."""


def _holder(path: Path) -> str:
    """The holder's record in words, escaped (the file is read, not trusted)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        with os.fdopen(fd, "rb") as f:
            text = f.read(_HOLDER_BYTES).decode("utf-8", errors="replace")
        info = json.loads(text)
        if not isinstance(info, dict):
            raise ValueError
        pid, command, since = info["pid"], info.get("command"), info.get("since")
        if isinstance(pid, bool) or not isinstance(pid, int):
            raise ValueError
        return f"PID {pid} ({str(command)[:200]!r}, since {str(since)[:40]})"
    except (OSError, ValueError, TypeError, KeyError):
        return "another process (still starting)"


def _make_dirs(directory: Path) -> list[Path]:
    """``mkdir -p``; returns the directories it created, deepest last."""
    created: list[Path] = []
    for path in reversed((directory, *directory.parents)):
        if not path.exists():
            try:
                path.mkdir()
                created.append(path)
            except FileExistsError:
                pass
    return created


def acquire(directory: Path, field: str = "out", command: str | None = None) -> int:
    """Take ``directory``'s lock (the directory must exist); returns the open descriptor.

    Raises :class:`RunLocked` naming the holder when another live process has it.
    """
    path = directory / LOCK_FILE
    while True:
        fd = _open_lock(path, field)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RunLocked(
                field,
                f"{str(directory)!r} is in use by {_holder(path)}; wait for it to finish or stop it "
                "(a lock of a process that died never blocks)",
            ) from None
        except BaseException:
            os.close(fd)
            raise
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # unlinked by its last holder between our open and flock: take the new one
    record = {
        "pid": os.getpid(),
        "command": command if command is not None else shlex.join(["maml-parity", *sys.argv[1:]]),
        "since": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
    HELD[Path(directory)] = fd
    return fd


# The locks this process holds (directory -> descriptor): a hard exit (parity.startup.hard_exit,
# Ctrl-C during start-up) releases them, since os._exit runs no finally block.
HELD: dict[Path, int] = {}


def release_all() -> None:
    """Release every lock this process holds (for an exit that skips the ``run_lock`` blocks)."""
    for directory, fd in list(HELD.items()):
        with contextlib.suppress(OSError):
            release(directory, fd)


def _open_lock(path: Path, field: str) -> int:
    """``.lock`` opened for reading and writing, created if absent: never through a link, never
    waiting on a FIFO, and only a regular file; else one line naming it."""
    where = repr(str(path))
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK, 0o666)
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise ConfigError(
                field, f"{where} is a symbolic link, not a lock file; remove it (nothing was written)"
            ) from None
        raise ConfigError(field, f"cannot open {where} ({err.strerror or err})") from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or info.st_nlink > 1:  # the holder's record would land in another file
        os.close(fd)
        what = file_kind(info.st_mode) if not stat.S_ISREG(info.st_mode) else f"a file with {info.st_nlink} hard links"
        raise ConfigError(field, f"{where} is {what}, not a lock file; remove it (nothing was written)")
    return fd


# What the commands write in a run directory: checked once the lock is held, before any work.
RUN_FILE_SUFFIXES = (".json", ".jsonl", ".npz", ".safetensors", ".md", ".png", ".pdf", ".svg")


def check_run_files(directory: Path, field: str = "out") -> None:
    """Every file in ``directory`` a command may write (a name ending in one of
    :data:`RUN_FILE_SUFFIXES`) is a regular file and not a symbolic link; else one line naming it."""
    try:
        entries = list(os.scandir(directory))
    except OSError as err:
        raise ConfigError(field, f"cannot read {str(directory)!r} ({err.strerror or err})") from None
    for entry in sorted(entries, key=lambda e: e.name):
        if entry.name.endswith(RUN_FILE_SUFFIXES) and not entry.name.startswith("."):
            check_not_link(entry.path, field)


def release(directory: Path, fd: int) -> None:
    """Unlink ``directory/.lock`` (while still holding it), then let go."""
    HELD.pop(Path(directory), None)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(directory / LOCK_FILE)
    os.close(fd)


@contextlib.contextmanager
def run_lock(directory: Path, field: str = "out", command: str | None = None) -> Iterator[Path]:
    """Hold ``directory``'s lock for the block, creating the directory if needed.

    Directories this call created are removed again if the block fails and leaves them empty, so
    a refused run leaves nothing behind.
    """
    created = _make_dirs(directory)
    try:
        fd = acquire(directory, field, command)
    except BaseException:
        _remove_empty(created)
        raise
    try:
        check_run_files(directory, field)
        yield directory
    except BaseException:
        release(directory, fd)
        _remove_empty(created)
        raise
    release(directory, fd)


def _remove_empty(created: list[Path]) -> None:
    for path in reversed(created):
        try:
            path.rmdir()
        except OSError:
            return

"""What is checked before a command does any work, and how the process ends.

- :func:`check_environment`: ``PYTHONIOENCODING`` (stdout must print this program's output),
  ``JAX_ENABLE_X64`` (a boolean word, the ones JAX accepts), ``JAX_PLATFORMS`` (names JAX knows,
  and a backend that starts): one line each, exit 2, before anything is read or written.
- :func:`start_distributed`: the JAX multi-host start-up with flags checked (``--process-id <
  --num-processes``, neither without ``--coordinator``), a bounded wait, and Ctrl-C answered.
  ``jax.distributed.initialize`` blocks in C++ (no Ctrl-C) and aborts the process with a C++
  stack trace when its own timeout runs out; so it runs in a daemon thread with a longer timeout
  than ours, and the main thread waits, interruptibly, for at most ours.
- :func:`install_interrupt_handler`: Ctrl-C raised where it cannot be swallowed (not inside a gc
  callback), with a watchdog.
- :func:`hard_exit`: flush and ``os._exit``. After Ctrl-C during a JAX compilation, the XLA
  compiler's threads are still running when the interpreter finalises, and the process dies with
  SIGSEGV after printing "interrupted" (measured: the KeyboardInterrupt is raised from
  ``backend.compile_and_load``; 19 native threads alive; the crash has no Python frame). The
  command line therefore leaves with ``os._exit(130)`` once every file is closed (the with-blocks
  have unwound by then; every file is written atomically). :func:`exit_quietly_on_interrupt` does the same
  for a Ctrl-C that arrives while the interpreter shuts down after a finished command.
"""

from __future__ import annotations

import contextlib
import gc
import os
import re
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

from parity import environment
from parity.config import ConfigError
from parity.safeio import printable

# Characters this program prints (tables, α, ±, arrows in the help): stdout must encode them.
PRINTED_CHARACTERS = "α±—←→≥×…"
DEFAULT_INIT_TIMEOUT_S = 120


def hard_exit(status: int, message: str | None = None) -> None:
    """Print ``message`` (one line on stderr), flush both streams, and end the process now."""
    if message is not None:
        try:
            print(message, file=sys.stderr)
        except (OSError, ValueError):
            pass
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    from parity.runlock import release_all

    release_all()  # os._exit runs no finally block: a held run lock is let go here
    os._exit(status)


def install_interrupt_handler(grace_s: float = 5.0) -> None:
    """Ctrl-C for a command-line run: a KeyboardInterrupt, raised where it cannot be swallowed.

    Python raises KeyboardInterrupt in whatever frame runs when the signal is handled; inside a
    ``gc`` callback (JAX registers ``_xla_gc_callback``) it is printed as "Exception ignored" and
    dropped, and training goes on (measured: 3 of 4 Ctrl-Cs shortly after compilation under load).
    So inside a gc callback the handler asks again 50 ms later instead of raising; and once
    interrupted, a watchdog ends the process with 130 after ``grace_s`` seconds should the
    KeyboardInterrupt be swallowed anywhere else (a ``__del__``) — resume copes with what it leaves.
    """
    armed: list[threading.Timer] = []

    def later(delay: float, action: Callable[..., Any], *args: Any) -> None:
        timer = threading.Timer(delay, action, args)
        timer.daemon = True
        timer.start()
        if action is hard_exit:
            armed.append(timer)

    def handler(signum: int, frame: Any) -> None:
        if _STARTING or in_import(frame):
            # A KeyboardInterrupt raised into a module being imported (a framework's native
            # libraries half loaded) or a backend starting aborted the process with SIGABRT
            # (1 Ctrl-C in 22 during the import); nothing is being written yet: end here.
            hard_exit(130, "maml-parity: interrupted")
        callbacks = {getattr(cb, "__code__", None) for cb in gc.callbacks}
        if frame is not None and frame.f_code in callbacks:
            later(0.05, os.kill, os.getpid(), signal.SIGINT)
            return
        if not armed:
            later(grace_s, hard_exit, 130, "maml-parity: interrupted")
        raise KeyboardInterrupt

    try:
        signal.signal(signal.SIGINT, handler)
    except ValueError:  # not the main thread
        pass


_STARTING: list[bool] = []  # non-empty inside starting()


@contextlib.contextmanager
def starting() -> Iterator[None]:
    """A start-up section (frameworks imported, backends started): Ctrl-C ends the process at once
    with 130 and one line, instead of a KeyboardInterrupt raised into native start-up code."""
    _STARTING.append(True)
    try:
        yield
    finally:
        _STARTING.pop()


def in_import(frame: Any) -> bool:
    """Whether ``frame`` or a caller of it is executing an import (a module body being run)."""
    while frame is not None:
        if frame.f_code.co_filename.startswith("<frozen importlib._bootstrap"):
            return True
        frame = frame.f_back
    return False


def exit_quietly_on_interrupt() -> None:
    """From now on Ctrl-C ends the process at once with status 130, no traceback (interpreter
    shutdown after a command: a KeyboardInterrupt there prints a traceback and exits 0)."""

    def handler(signum: int, frame: Any) -> None:
        hard_exit(130, "maml-parity: interrupted")

    try:
        signal.signal(signal.SIGINT, handler)
    except ValueError:  # not the main thread
        pass


def check_environment(frameworks: tuple[str, ...] = ()) -> None:
    """The environment a command runs in, checked before any work; raises :class:`ConfigError`.
    ``frameworks``: the built-in twins the command will use. Every framework's variables are
    declared by its package (:mod:`parity.environment`); those a command's twins read are checked,
    and the ones the command line reads itself (a launcher's rank and world size) always."""
    encoding = getattr(sys.stdout, "encoding", None) or "utf-8"
    try:
        PRINTED_CHARACTERS.encode(encoding)
    except (UnicodeEncodeError, LookupError):
        field = "PYTHONIOENCODING" if os.environ.get("PYTHONIOENCODING") else "encoding"
        raise ConfigError(
            field,
            f"standard output encodes {printable(encoding)!r}, which cannot print this program's output "
            "(alpha, +-); set PYTHONIOENCODING=utf-8",
        ) from None
    with starting():  # a framework may be imported and its backend started: Ctrl-C ends at once
        environment.check(frameworks)


# --- distributed start-up ---------------------------------------------------------------------------


def check_distributed_flags(coordinator: str | None, num_processes: int | None, process_id: int | None) -> None:
    if coordinator is None:
        given = [
            flag for flag, v in (("--num-processes", num_processes), ("--process-id", process_id)) if v is not None
        ]
        if given:
            raise ConfigError("coordinator", f"{' and '.join(given)} need --coordinator HOST:PORT (a multi-host run)")
        return
    if not re.fullmatch(r"[^\s:]+:[0-9]{1,5}", coordinator) or not 0 < int(coordinator.rsplit(":", 1)[1]) < 65536:
        raise ConfigError("coordinator", f"must be HOST:PORT with a port 1..65535, got {printable(coordinator)!r}")
    if (num_processes is None) != (process_id is None):
        raise ConfigError("coordinator", "give both --num-processes and --process-id with --coordinator")
    if num_processes is not None and process_id is not None and process_id >= num_processes:
        raise ConfigError(
            "process_id", f"must be below --num-processes {num_processes} (0..{num_processes - 1}), got {process_id}"
        )


def start_distributed(
    coordinator: str,
    num_processes: int | None,
    process_id: int | None,
    timeout_s: float = DEFAULT_INIT_TIMEOUT_S,
    initialize: Callable[..., None] | None = None,
) -> None:
    """Join a multi-host run, waiting at most ``timeout_s`` seconds for every process (the
    rendezvous of the framework whose package declares ``JOINS_COORDINATOR``; parity.environment).

    No answer in time: one line and exit 2. Ctrl-C while waiting: exit 130. Both leave through
    :func:`hard_exit`, since the thread stuck in C++ cannot be stopped.
    """
    check_distributed_flags(coordinator, num_processes, process_id)
    if initialize is None:
        initialize = environment.coordinator_join()
    done = threading.Event()
    failure: list[BaseException] = []

    def run() -> None:
        try:
            initialize(
                coordinator_address=coordinator,
                num_processes=num_processes,
                process_id=process_id,
                initialization_timeout=int(timeout_s) + 600,  # ours ends first: JAX's aborts the process
            )
        except BaseException as err:  # handed to the main thread
            failure.append(err)
        finally:
            done.set()

    threading.Thread(target=run, name="maml-parity-distributed-init", daemon=True).start()
    try:
        finished = done.wait(timeout_s)
    except KeyboardInterrupt:
        hard_exit(130, "maml-parity: interrupted")
        raise  # not reached
    if not finished:
        hard_exit(
            2,
            f"maml-parity: error: coordinator: no answer from {printable(coordinator)!r} within {timeout_s:g} s "
            f"({num_processes} processes expected; is every process started, and the address reachable?) "
            "(--init-timeout S sets the wait)",
        )
    if failure:
        first = str(failure[0]).strip().splitlines()[0] if str(failure[0]).strip() else type(failure[0]).__name__
        raise ConfigError("coordinator", f"could not join {printable(coordinator)!r}: {printable(first, 200)}")

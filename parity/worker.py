"""Run an implementation that is not a built-in in a worker process: user code is untrusted.

A user's implementation can call ``sys.exit`` or ``os._exit``, die by a signal, hang, print on
standard output, change directory or leave a thread running. None of that may reach the process
that compares and reports: :func:`load` returns, for anything but a built-in
(``parity.registry.BUILTINS``, which stay in-process), a :class:`RemoteImpl` whose methods run in a
child process (``python -c 'parity.worker.serve()'``, its own session, so a Ctrl-C reaches only the
command). NumPy arrays go in and out, pickled over a pipe.

Inside the worker, file descriptor 1 (standard output) is a pipe whose lines are copied to standard
error labelled ``[NAME stdout]``: a print never corrupts ``check --json -``. Every call has a time
limit (a case's calls share one, :meth:`RemoteImpl.begin_case`); past it the worker is killed. Any
exception of the implementation, ``BaseException`` subclasses and ``SystemExit`` included, comes
back as an exception of the same type name (:class:`RemoteError`); the worker's death or a hang
raises :class:`WorkerError` saying what happened. A worker that died is started afresh for the
next case. This guards against accidents, not against malice: the worker runs as the same user.
"""

from __future__ import annotations

import atexit
import os
import pickle
import select
import signal
import struct
import subprocess
import sys
import threading
import time
import weakref
from pathlib import Path
from typing import Any

from parity.config import ConfigError

DEFAULT_TIMEOUT = 300.0  # seconds per case (check --case-timeout; the plugin's maml_parity_case_timeout)
# What the worker forwards: the contract's method and its optional capabilities (parity.contract).
METHODS = ("meta_value_and_grad", "supports", "train_trajectory", "stability_gains", "trace", "prepare")
_HEADER = struct.Struct("!Q")
_LIVE: weakref.WeakSet[RemoteImpl] = weakref.WeakSet()


class WorkerError(Exception):
    """The worker process exited, was killed or did not answer in time (the message says which)."""


class RemoteError(Exception):
    """An exception raised by the implementation in the worker; subclasses carry its type's name."""


def remote_exception(type_name: str, message: str) -> RemoteError:
    """An exception whose type is named like the implementation's (``RuntimeError``, ``SystemExit``),
    so that a FAIL row reads as it would in-process."""
    cls = type(type_name if type_name.isidentifier() else "RemoteError", (RemoteError,), {})
    return cls(message)


def load(spec: str, timeout: float = DEFAULT_TIMEOUT) -> Any:
    """The implementation a SPEC names (``parity.registry``): a built-in in-process, anything else
    in a worker. Errors while loading (an import that fails, exits or hangs) are ConfigError("impl")."""
    from parity.registry import BUILTINS, resolve, split_spec

    where, _ = split_spec(spec)
    if where in BUILTINS:
        return resolve(spec)
    return RemoteImpl(spec, timeout)


def check_timeout(value: Any, field: str = "case_timeout") -> float:
    """A time limit in seconds: a finite number > 0."""
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        raise ConfigError(field, f"must be a number of seconds > 0, got {value!r}") from None
    if not (seconds > 0 and seconds < float("inf")):
        raise ConfigError(field, f"must be a number of seconds > 0, got {value!r}")
    return seconds


def _absolute(spec: str) -> str:
    """A file SPEC with its path made absolute now, before any user code can change directory."""
    where, sep, device = spec.rpartition("@") if "@" in spec else (spec, "", "")
    file_name, colon, attribute = where.rpartition(":")
    if colon and file_name.endswith(".py"):
        where = f"{Path(file_name).absolute()}:{attribute}"
    return f"{where}{sep}{device}"


class RemoteImpl:
    """An implementation running in a worker process; it has exactly the capabilities the
    implementation has (``getattr(impl, "trace", None)`` is None when it has no ``trace``)."""

    def __init__(self, spec: str, timeout: float = DEFAULT_TIMEOUT):
        self.__dict__.update(spec=spec, timeout=check_timeout(timeout), _proc=None, _deadline=None, _failure=None)
        info = self._start()
        self.__dict__.update(name=info["name"], _methods=set(info["methods"]), _attributes=set(info["attributes"]))
        if "framework" in info:
            self.__dict__["framework"] = info["framework"]
        _LIVE.add(self)

    def __repr__(self) -> str:
        return f"<RemoteImpl {self.spec} in a worker>"

    def __getattr__(self, attribute: str) -> Any:
        if attribute in self.__dict__.get("_methods", ()):
            return lambda *args: self._call(attribute, *args)
        if attribute in self.__dict__.get("_attributes", ()):
            return self._call("__getattr__", attribute)
        raise AttributeError(attribute)

    def __setattr__(self, attribute: str, value: Any) -> None:
        if attribute in self.__dict__.get("_attributes", ()):
            self._call("__setattr__", attribute, value)
        else:
            self.__dict__[attribute] = value

    # --- the case's time limit -------------------------------------------------------------------

    def begin_case(self) -> None:
        """Start a case: its calls share one time limit; a worker that failed in the last case is replaced."""
        self.__dict__.update(_deadline=time.monotonic() + self.timeout, _failure=None)

    def _remaining(self) -> float:
        deadline = self._deadline if self._deadline is not None else time.monotonic() + self.timeout
        return deadline - time.monotonic()

    # --- the process ---------------------------------------------------------------------------------

    def _start(self) -> dict[str, Any]:
        root = str(Path(__file__).resolve().parent.parent)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}
        proc = subprocess.Popen(
            [sys.executable, "-c", "from parity.worker import serve; serve()"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            start_new_session=True,  # a Ctrl-C reaches the command, which ends its workers itself
        )
        self.__dict__["_proc"] = proc
        deadline = time.monotonic() + self.timeout
        try:
            self._send(("load", _absolute(self.spec), list(sys.path)), deadline)
            reply = self._receive(deadline, "while loading it")
        except WorkerError as err:
            self._kill()
            raise ConfigError("impl", f"{self.spec!r}: {err}") from None
        if reply[0] == "config_error":
            self._kill()
            raise ConfigError(reply[1], reply[2])
        if reply[0] != "ok":
            self._kill()
            raise ConfigError("impl", f"{self.spec!r}: loading it failed ({reply[1]}: {reply[2]})")
        info: dict[str, Any] = reply[1]
        return info

    def _call(self, method: str, *args: Any) -> Any:
        if self._failure is not None:
            raise WorkerError(f"{self._failure} (earlier in this case)")
        if self._proc is None or self._proc.poll() is not None:
            self._start()
        deadline = time.monotonic() + max(self._remaining(), 0.0)
        try:
            self._send((method, *args), deadline)
            reply = self._receive(deadline, f"in {method}()")
        except WorkerError as err:
            self._kill()
            self.__dict__["_failure"] = str(err)
            raise
        if reply[0] == "ok":
            return reply[1]
        raise remote_exception(reply[1], reply[2])

    def _send(self, message: Any, deadline: float) -> None:
        assert self._proc is not None and self._proc.stdin is not None
        data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
        data = _HEADER.pack(len(data)) + data
        fd = self._proc.stdin.fileno()
        os.set_blocking(fd, False)
        while data:
            left = deadline - time.monotonic()
            if left <= 0:
                raise self._timed_out("while taking its input")
            if not select.select([], [fd], [], left)[1]:
                continue
            try:
                data = data[os.write(fd, data) :]
            except BlockingIOError:
                continue
            except (BrokenPipeError, OSError):
                raise self._ended("while taking its input") from None

    def _receive(self, deadline: float, doing: str) -> Any:
        assert self._proc is not None and self._proc.stdout is not None
        fd = self._proc.stdout.fileno()
        buffer = b""
        need = _HEADER.size
        while len(buffer) < need:
            left = deadline - time.monotonic()
            if left <= 0:
                raise self._timed_out(doing)
            if not select.select([fd], [], [], left)[0]:
                continue
            chunk = os.read(fd, max(need - len(buffer), 1 << 16))
            if not chunk:
                raise self._ended(doing)
            buffer += chunk
            if need == _HEADER.size and len(buffer) >= need:
                need += _HEADER.unpack(buffer[: _HEADER.size])[0]
        return pickle.loads(buffer[_HEADER.size : need])

    def _timed_out(self, doing: str) -> WorkerError:
        limit = self.timeout
        self._kill()
        return WorkerError(f"timed out {doing}: the limit of {limit:g} s per case (--case-timeout) passed; stopped")

    def _ended(self, doing: str) -> WorkerError:
        assert self._proc is not None
        try:
            status = self._proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._kill()
            return WorkerError(f"closed its pipe {doing} (the worker was stopped)")
        if status < 0:
            try:
                signame = signal.Signals(-status).name
            except ValueError:
                signame = f"signal {-status}"
            return WorkerError(f"the worker was killed by {signame} {doing}")
        return WorkerError(
            f"the worker exited with status {status} {doing} (os._exit or a crash in the implementation)"
        )

    def _kill(self) -> None:
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # its own session: threads and children go with it
            except ProcessLookupError:
                pass
            proc.wait()
        for pipe in (proc.stdin, proc.stdout):
            if pipe is not None:
                try:
                    pipe.close()
                except OSError:
                    pass
        self.__dict__["_proc"] = None

    def close(self) -> None:
        """End the worker (a thread the implementation left running cannot keep it alive)."""
        self._kill()

    def __del__(self) -> None:
        try:
            self._kill()
        except Exception:  # at interpreter shutdown the modules it needs may be gone
            pass


@atexit.register
def _close_all() -> None:
    for impl in list(_LIVE):
        impl.close()


# --- the worker's side ------------------------------------------------------------------------------


def serve() -> None:
    """The worker: load the implementation, then answer calls until the pipe closes. Never returns."""
    requests = os.fdopen(os.dup(0), "rb")
    replies = os.fdopen(os.dup(1), "wb")
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)  # the implementation cannot read the requests
    label = ["worker"]
    _relabel_stdout(label)
    _exit_with_parent()
    impl: Any = None
    try:
        while True:
            header = requests.read(_HEADER.size)
            if len(header) < _HEADER.size:
                break
            request = pickle.loads(requests.read(_HEADER.unpack(header)[0]))
            if request[0] == "load":
                impl, reply = _load(request[1], request[2])
                if impl is not None:
                    label[0] = impl.name
            else:
                reply = _answer(impl, request[0], request[1:])
            _flush_stdout()
            data = pickle.dumps(reply, protocol=pickle.HIGHEST_PROTOCOL)
            replies.write(_HEADER.pack(len(data)) + data)
            replies.flush()
    finally:
        _flush_stdout()
        os._exit(0)  # a non-daemon thread of the implementation must not keep the worker alive


def _load(spec: str, path: list[str]) -> tuple[Any, tuple[Any, ...]]:
    sys.path[:] = path
    try:
        from parity.registry import resolve

        impl = resolve(spec)
    except ConfigError as err:
        return None, ("config_error", err.field, str(err).partition(": ")[2])
    except BaseException as err:  # user code: SystemExit and the like are results
        return None, ("error", type(err).__name__, _message(err))
    info: dict[str, Any] = {
        "name": impl.name,
        "methods": [m for m in METHODS if callable(getattr(impl, m, None))],
        "attributes": [a for a in ("precision",) if hasattr(impl, a)],
    }
    if isinstance(getattr(impl, "framework", None), str):
        info["framework"] = impl.framework
    return impl, ("ok", info)


def _answer(impl: Any, method: str, args: tuple[Any, ...]) -> tuple[Any, ...]:
    try:
        if method == "__setattr__":
            setattr(impl, *args)
            return ("ok", None)
        if method == "__getattr__":
            return ("ok", _plain(getattr(impl, args[0]), args[0], impl, strict=False))
        if method not in METHODS:
            return ("error", "WorkerError", f"no method {method!r}")
        value = getattr(impl, method)(*args)
        if method == "supports":
            return ("ok", None if value is None else str(value))
        return ("ok", _plain(value, method, impl, strict=method == "meta_value_and_grad"))
    except BaseException as err:  # the implementation's failure is a result
        return ("error", type(err).__name__, _message(err, method))


def _message(err: BaseException, method: str = "") -> str:
    if isinstance(err, SystemExit):
        where = f" inside {method}" if method else " while it was imported"
        return f"sys.exit({err.code!r}) called{where}"
    return str(err)


def _plain(value: Any, path: str, impl: Any, strict: bool) -> Any:
    """What may cross the pipe: containers, NumPy, plain numbers and text. Anything else is NumPy
    by ``np.asarray`` (a trace's tensors), except in the contract's result, which must be NumPy."""
    import numpy as np

    from parity.contract import ContractError, describe

    if isinstance(value, dict):
        return {k: _plain(v, f"{path}/{k}", impl, strict) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_plain(v, f"{path}[{i}]", impl, strict) for i, v in enumerate(value))
    if value is None or isinstance(value, np.ndarray | np.generic | bool | int | float | str):
        return value
    if not strict:
        array = np.asarray(value)
        if array.dtype != object:
            return array
    what = "a NumPy array" if strict else "NumPy-convertible"
    raise ContractError(f"{describe(impl)}: {path} must be {what}, got {type(value).__name__}")


def _flush_stdout() -> None:
    try:
        sys.stdout.flush()
    except Exception:  # the implementation may have replaced or closed it
        pass


def _relabel_stdout(label: list[str]) -> None:
    """File descriptor 1 becomes a pipe; its lines go to standard error as ``[NAME stdout] line``."""
    read_end, write_end = os.pipe()
    os.dup2(write_end, 1)
    os.close(write_end)

    def copy() -> None:
        with os.fdopen(read_end, "rb") as lines:
            for line in lines:
                os.write(2, f"[{label[0]} stdout] ".encode() + line.rstrip(b"\n") + b"\n")

    threading.Thread(target=copy, daemon=True).start()


def _exit_with_parent() -> None:
    """The worker ends when the command does, even in the middle of a call (it runs in its own session)."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()

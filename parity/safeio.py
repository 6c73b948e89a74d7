"""Reading files that may be hostile, and checking paths that will be written, before any work.

- :func:`open_regular`: every file the program reads or writes is opened through it: without
  blocking (a FIFO with no writer would hang ``open``), and refused with one line unless it is a
  regular file; for writing, also without following a symbolic link (``O_NOFOLLOW``), so a link
  planted where a run file belongs never makes a command write through it.
- :func:`read_text_capped`: a text file read with a size cap (``--config /dev/zero`` ends at once).
- :func:`check_npz_entries`: an ``.npz``'s zip members checked by name and by the size their
  ``.npy`` headers declare *before* anything is inflated (a 2 GB all-zero entry compresses to 2 MB).
- :func:`check_output_file`, :func:`check_output_dir`: a path the command will write, refused now
  (empty name, unknown extension, a directory, a parent that is a file or not writable) rather
  than after the work. Writability is tried with a real temporary file, removed at once; messages
  name the path given, never the temporary.
- :func:`printable`: a string read from a file, escaped for a one-line message.
- :func:`file_mode`: ``0o666 & ~umask``, the mode ``open()`` would give a new file (``mkstemp``
  creates 0600; atomic writes chmod their temporary to this).
"""

from __future__ import annotations

import errno
import fcntl
import lzma
import os
import stat
import struct
import tempfile
import zipfile
import zlib
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from parity.config import ConfigError

# What zipfile and NumPy's readers raise on a damaged archive (golden files use it too).
NPZ_ERRORS = (
    OSError,
    ValueError,
    EOFError,
    KeyError,
    IndexError,
    TypeError,
    OverflowError,
    NotImplementedError,
    RuntimeError,
    SyntaxError,  # a damaged .npy header is parsed as a Python literal
    struct.error,
    zlib.error,
    lzma.LZMAError,
    zipfile.BadZipFile,
    zipfile.LargeZipFile,
)
CONFIG_MAX_BYTES = 1 << 20  # a config is a few hundred bytes; a MiB is generous
IMAGE_SUFFIXES = (".png", ".pdf", ".svg")


def printable(value: Any, limit: int = 80) -> str:
    """``value`` as text safe for one line of a terminal: control characters, newlines and escape
    codes shown as escapes, cut to ``limit`` characters."""
    text = str(value)
    out = "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text[:limit])
    return out + ("…" if len(text) > limit else "")


_KINDS = {
    stat.S_IFIFO: "a FIFO (named pipe)",
    stat.S_IFSOCK: "a socket",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFDIR: "a directory",
    stat.S_IFLNK: "a symbolic link",
}


def file_kind(mode: int) -> str:
    """What a file of ``st_mode`` ``mode`` is, in words ("a FIFO (named pipe)", ...)."""
    return _KINDS.get(stat.S_IFMT(mode), "not a regular file")


def open_regular(
    path: str | os.PathLike[str],
    field: str,
    write: bool = False,
    append: bool = False,
    devices: bool = False,
) -> int:
    """Open ``path`` and return the descriptor, or raise a :class:`ConfigError` naming ``field``
    and the file. Only a regular file is accepted (``devices``: a character device too, for a
    config read with a cap). The open never blocks (``O_NONBLOCK``, cleared afterwards): a FIFO is
    refused at once, not waited on. ``write``: create it, or truncate it (``append``: add to it),
    never through a symbolic link (``O_NOFOLLOW``) nor into a file with other hard links (its
    other names would change too); a read follows links to a regular file.
    """
    where = repr(str(path))
    flags = os.O_CLOEXEC | os.O_NONBLOCK
    if write:
        flags |= os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | (os.O_APPEND if append else 0)
    else:
        flags |= os.O_RDONLY
    try:
        fd = os.open(path, flags, 0o666)
    except OSError as err:
        if err.errno == errno.ELOOP and write:
            raise ConfigError(
                field, f"{where} is a symbolic link; a run's files are never written through one (remove it)"
            ) from None
        if err.errno == errno.ENXIO:  # O_WRONLY | O_NONBLOCK on a FIFO nobody reads
            raise ConfigError(field, f"{where} is a FIFO (named pipe), not a regular file; refused") from None
        raise ConfigError(field, f"cannot {'write' if write else 'read'} {where} ({err.strerror or err})") from None
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode) and not write:  # the wording of open()'s own error, which users know
            raise ConfigError(field, f"cannot read {where} (Is a directory)")
        if not (stat.S_ISREG(mode) or (devices and stat.S_ISCHR(mode))):
            done = "nothing was written" if write else "refused unread"
            raise ConfigError(field, f"{where} is {file_kind(mode)}, not a regular file; {done}")
        links = os.fstat(fd).st_nlink
        if write and links > 1:  # written in place, another name's contents would change too
            raise ConfigError(field, f"{where} has {links} hard links; it is never written in place (copy it first)")
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
        if write and not append:
            os.ftruncate(fd, 0)
    except BaseException:
        os.close(fd)
        raise
    return fd


def check_not_link(path: str | os.PathLike[str], field: str) -> None:
    """``path`` is absent or a regular file that is not a symbolic link; else a :class:`ConfigError`
    (a file the program will replace or write, checked before any work)."""
    try:
        mode = os.lstat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):  # absent (a parent that is a file is named elsewhere)
        return
    except OSError as err:
        raise ConfigError(field, f"cannot write {str(path)!r} ({err.strerror or err})") from None
    if stat.S_ISLNK(mode):
        raise ConfigError(
            field, f"{str(path)!r} is a symbolic link; it is never written through (remove it, or give the file itself)"
        )
    if not stat.S_ISREG(mode) and not stat.S_ISDIR(mode):  # a directory has its own message where it matters
        raise ConfigError(field, f"{str(path)!r} is {file_kind(mode)}, not a regular file; nothing was written")


def read_bytes_capped(
    path: str | os.PathLike[str], field: str, max_bytes: int, what: str, devices: bool = False
) -> bytes:
    """A regular file's bytes (:func:`open_regular`), at most ``max_bytes`` of them read (a larger
    file is refused, not read until memory runs out), or a :class:`ConfigError` naming ``field``;
    ``what`` the file should have been. ``devices``: a character device is read too (with the cap)."""
    where = repr(str(path))
    fd = open_regular(path, field, devices=devices)
    try:
        with os.fdopen(fd, "rb") as f:
            data = f.read(max_bytes + 1)
    except OSError as err:
        raise ConfigError(field, f"cannot read {where} ({err.strerror or err})") from None
    if len(data) > max_bytes:
        raise ConfigError(field, f"{where} is larger than {max_bytes} bytes; not {what}")
    return data


def read_text_capped(path: str | os.PathLike[str], field: str, max_bytes: int = CONFIG_MAX_BYTES) -> str:
    """A UTF-8 text file of at most ``max_bytes`` bytes, or a :class:`ConfigError` naming ``field``."""
    where = repr(str(path))
    # A character device is read with the cap (``--config /dev/zero`` is "larger than"), a FIFO refused.
    data = read_bytes_capped(path, field, max_bytes, "a config file", devices=True)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(field, f"{where} is not a UTF-8 text file (a JSON object is needed)") from None


def check_npz_entries(
    path: str | os.PathLike[str] | BinaryIO,
    allowed_keys: Collection[str] | Callable[[str], bool],
    max_bytes: int,
    field: str = "golden",
    error: Callable[[str], ConfigError] | None = None,
    name: str | None = None,
    what: str = ".npz file",
) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Look inside an ``.npz`` without inflating it: every member must be ``<key>.npy`` with an
    allowed key, a non-object dtype, and a declared size (shape × itemsize) of at most ``max_bytes``;
    all members together at most ``max_bytes`` as well. Returns ``key → (shape, dtype)``.

    Only each member's ``.npy`` header (a few hundred bytes) is decompressed. Raises ``error(msg)``
    (default: ``ConfigError(field, msg)``); messages name the file (``name`` for an open file) and
    the entry.
    """
    fail = error or (lambda message: ConfigError(field, message))
    allowed = allowed_keys if callable(allowed_keys) else set(allowed_keys).__contains__
    where = name if name is not None else str(path)
    out: dict[str, tuple[tuple[int, ...], np.dtype]] = {}
    total = 0
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
            if len(members) > 10_000:
                raise fail(f"{where}: {len(members)} entries; not a golden file")
            for info in members:
                name = info.filename
                if not name.endswith(".npy"):
                    raise fail(f"{where}: entry {printable(name, 60)!r} is not an .npy array")
                key = name[: -len(".npy")]
                if not allowed(key):
                    raise fail(f"{where}: unexpected entry {printable(key, 60)!r}")
                with archive.open(info) as member:
                    version = np.lib.format.read_magic(member)
                    if version == (1, 0):
                        shape, _, dtype = np.lib.format.read_array_header_1_0(member)
                    elif version == (2, 0):
                        shape, _, dtype = np.lib.format.read_array_header_2_0(member)
                    else:
                        raise fail(f"{where}: entry {printable(key, 60)!r} has .npy version {version}")
                if dtype.hasobject:
                    raise fail(f"{where}: entry {printable(key, 60)!r} holds Python objects; refused unread")
                size = int(np.prod(shape, dtype=np.float64)) * dtype.itemsize
                total += size
                if size > max_bytes or total > max_bytes:
                    raise fail(
                        f"{where}: entry {printable(key, 60)!r} declares {size} bytes ({dtype}{list(shape)}), "
                        f"more than the {max_bytes} bytes its layout allows; refused before inflating it"
                    )
                out[key] = (tuple(shape), dtype)
    except ConfigError:
        raise
    except FileNotFoundError:
        raise fail(f"{where}: no such file") from None
    except NPZ_ERRORS as err:
        raise fail(f"{where}: not a readable {what} ({type(err).__name__}: {printable(err, 120)})") from None
    return out


def read_npz_capped(
    path: str | os.PathLike[str],
    allowed_keys: Collection[str] | Callable[[str], bool],
    max_bytes: int,
    error: Callable[[str], ConfigError],
    what: str = ".npz file",
) -> dict[str, np.ndarray]:
    """Every array of an ``.npz``, read the one safe way: a regular file (:func:`open_regular`: a
    FIFO is refused, not waited on), its entries checked by :func:`check_npz_entries` (names, no
    objects, declared sizes within ``max_bytes``) before one of them is inflated, nothing unpickled.
    Checked and read through one descriptor, so the file checked is the file read. Any failure is
    ``error(message)``, the message naming the file and saying it is not a readable ``what``."""
    where = str(path)
    if not os.path.lexists(path):
        raise error(f"{where}: no such file")
    if os.path.isdir(path):
        raise error(f"{where}: is a directory, not a {what}")
    try:
        fd = open_regular(path, "golden")
    except ConfigError as err:
        raise error(str(err).split(": ", 1)[1]) from None  # the message names the file already
    try:
        with os.fdopen(fd, "rb") as file:
            check_npz_entries(file, allowed_keys, max_bytes, error=error, name=where, what=what)
            file.seek(0)
            with np.load(file, allow_pickle=False) as data:
                return {key: data[key] for key in data.files}
    except ConfigError:
        raise
    except NPZ_ERRORS as err:
        raise error(f"{where}: not a readable {what} ({type(err).__name__}: {printable(err, 120)})") from None


# --- paths the command will write ------------------------------------------------------------


def _nearest_existing(path: Path) -> Path:
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return Path(".")


def _probe_dir(directory: Path, field: str, shown: str) -> None:
    """Create and remove a temporary file in ``directory``; errors name ``shown``, not the temporary."""
    try:
        fd, tmp = tempfile.mkstemp(prefix=".maml-parity-probe.", dir=directory)
    except OSError as err:
        raise ConfigError(field, f"cannot write {shown!r} ({err.strerror or err})") from None
    os.close(fd)
    os.unlink(tmp)


def _check_parents(path: Path, field: str, shown: str) -> None:
    """Every existing ancestor is a directory; the nearest one can be written into."""
    for parent in path.parents:
        if parent.exists() and not parent.is_dir():
            raise ConfigError(field, f"cannot write {shown!r}: {str(parent)!r} is not a directory")
    existing = _nearest_existing(path.parent)
    if existing.is_dir():
        _probe_dir(existing, field, shown)


def check_output_file(path: str, field: str, suffixes: Collection[str] | None = None) -> Path:
    """A file the command will write, checked before any work: a name, a known suffix, not a
    directory, in a folder that exists or can be made and can be written. Nothing is left behind."""
    if not path or not Path(path).name or path.endswith(os.sep):
        raise ConfigError(field, f"must be a file name, got {path!r}")
    out = Path(path)
    if suffixes is not None and out.suffix.lower() not in suffixes:
        raise ConfigError(field, f"must be a file name ending in {' or '.join(suffixes)}, got {path!r}")
    if out.is_dir():
        raise ConfigError(field, f"{path!r} is a directory; give a file name")
    check_not_link(out, field)  # a link is not written through, a FIFO not waited on
    _check_parents(out, field, path)
    if out.exists() and not os.access(out, os.W_OK):
        raise ConfigError(field, f"cannot write {path!r} (Permission denied)")
    return out


def check_output_dir(path: str, field: str = "out") -> Path:
    """A directory the command will write into, checked before any work: a non-empty name, not (under)
    a file, writable (tried), or creatable under a writable folder. Nothing is left behind."""
    if not path or not path.strip():
        raise ConfigError(field, f"must be a directory name, got {path!r}")
    out = Path(path)
    for candidate in (out, *out.parents):
        if candidate.exists() and not candidate.is_dir():
            raise ConfigError(field, f"{str(candidate)!r} exists and is not a directory")
    existing = _nearest_existing(out)
    _probe_dir(existing, field, path)
    return out


def file_mode() -> int:
    """``0o666 & ~umask``: what ``open(path, "w")`` gives a new file."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # no /proc: read it the old way (and put it back)
    os.umask(mask)
    return 0o666 & ~mask

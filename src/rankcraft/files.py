"""Files: atomic writes, strict JSON, and the lock of a directory that one process writes at a time.

Atomic writes: every write goes to a temporary file in the same directory, is flushed to disk, then renamed over the
target, so a crash leaves either the old or the new file, never half of one. A full disk (``ENOSPC``) or an exceeded
quota (``EDQUOT``) during a write is a :class:`~rankcraft.errors.RankcraftError` naming the file ("No space left on
device while writing PATH"); the temporary file is removed and the old file, if any, is left as it was.

JSON: files and lines written here are strict JSON (RFC 8259): a NaN or infinite number is written as ``null``
(:func:`json_safe`), never as the bare ``NaN``/``Infinity`` that Python's ``json`` writes by default and that other
parsers reject. :func:`read_json` reads a JSON file, and a missing or invalid one is a ConfigError naming the file.

Locks: :class:`DirectoryLock` holds an exclusive ``flock`` on ``DIR/.lock`` so that a second process that wants to
write into the same directory fails at once, naming the directory and the holder's pid.
"""

from __future__ import annotations

import errno
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

from rankcraft.errors import ConfigError, RankcraftError

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: DirectoryLock is a no-op there
    fcntl = None  # type: ignore[assignment]

#: errno values that mean "the disk (or the user's quota) is full"
_DISK_FULL = {errno.ENOSPC: "No space left on device", getattr(errno, "EDQUOT", -1): "Disk quota exceeded"}


# --------------------------------------------------------------------------------------------- atomic writes
def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temporary file in the same directory, fsync, rename)."""
    path = Path(path)
    tmp: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        try:
            view = memoryview(data)
            while view:
                n = os.write(fd, view)
                view = view[n:]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        tmp = None
        _fsync_dir(path.parent)
    except OSError as exc:
        if exc.errno in _DISK_FULL:
            raise RankcraftError(f"{_DISK_FULL[exc.errno]} while writing {path}") from None
        raise
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)


def _fsync_dir(directory: Path) -> None:
    """Make a rename durable (best effort: some file systems cannot fsync a directory)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as indented strict JSON (NaN/±inf become ``null``, see :func:`json_safe`)."""
    atomic_write_text(path, dumps_json(obj, indent=2) + "\n")


# --------------------------------------------------------------------------------------------- strict JSON
def json_safe(obj: Any) -> Any:
    """``obj`` with every NaN/±inf float replaced by ``None`` (recursively through dicts, lists and tuples).

    NumPy/torch scalars become Python numbers, arrays and tensors lists, paths strings; anything else is returned as
    it is (``json.dumps`` then reports what it cannot serialise)."""
    if isinstance(obj, bool) or obj is None or isinstance(obj, (str, int)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "tolist") and callable(obj.tolist):  # numpy scalar/array, torch tensor
        return json_safe(obj.tolist())
    if hasattr(obj, "item") and callable(obj.item):
        return json_safe(obj.item())
    return obj


def dumps_json(obj: Any, *, indent: int | None = None) -> str:
    """``json.dumps`` of :func:`json_safe` (obj): always strict JSON (raises on values JSON cannot hold)."""
    return json.dumps(json_safe(obj), indent=indent, allow_nan=False, default=_json_default)


def dumps_json_line(obj: Any) -> str:
    """One line of a JSON-lines file (no trailing newline): strict JSON, NaN/±inf as ``null``."""
    return dumps_json(obj)


def _json_default(o: Any) -> Any:
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def read_text(path: str | Path, what: str) -> str:
    """A text file's content (UTF-8). A missing, unreadable or undecodable file is a :class:`ConfigError` naming
    the file and ``what`` it should be (``"schema file"``, ``"run config"``)."""
    path = Path(path)
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: {what} not found") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a directory, not a {what}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read {what} ({exc})") from None


def read_json(path: str | Path, what: str = "JSON file") -> Any:
    """Parse a JSON file. A missing, unreadable or invalid file is a :class:`ConfigError` naming the file, ``what``
    it should be (e.g. ``"run config"``) and, for invalid JSON, the line and column."""
    path = Path(path)
    text = read_text(path, what)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: {what} is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") \
            from None


# --------------------------------------------------------------------------------------------- directory lock
class DirectoryLock:
    """An exclusive, non-blocking lock on a directory for the lifetime of a ``with`` block (or between
    :meth:`acquire` and :meth:`release`).

    >>> with DirectoryLock("runs/dnn"):      # creates runs/dnn if needed
    ...     ...                              # a second process gets a RankcraftError at once

    The lock is ``flock(LOCK_EX | LOCK_NB)`` on ``DIR/.lock``, which holds the holder's pid. The kernel drops it when
    the holder exits, however it exits (even ``kill -9``), so a stale ``.lock`` file never blocks anyone; the file
    itself is left in place (deleting it would let two processes lock two different files). Two locks on the same
    directory in one process also exclude each other. On platforms without ``fcntl`` the lock does nothing.
    """

    FILENAME = ".lock"

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        self.path = self.directory / self.FILENAME
        self._fd: int | None = None

    @property
    def locked(self) -> bool:
        return self._fd is not None

    def acquire(self) -> "DirectoryLock":
        if self._fd is not None:
            raise RuntimeError(f"{self.directory}: lock already held by this DirectoryLock")
        if fcntl is None:  # pragma: no cover
            return self
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise RankcraftError(f"{self.directory}: cannot create the lock file {self.path.name} "
                                 f"({exc.strerror or exc})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = _read_pid(fd)
            os.close(fd)
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise RankcraftError(f"{self.directory}: cannot lock ({exc.strerror or exc})") from None
            if holder == os.getpid():
                who = f"this process (pid {holder})"
            else:
                who = f"another rankcraft process (pid {holder if holder is not None else 'unknown'})"
            raise RankcraftError(f"{self.directory} is in use by {who}") from None
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
        except OSError:  # the pid is informative only
            pass
        self._fd = fd
        return self

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_UN)
            finally:
                os.close(fd)

    def __enter__(self) -> "DirectoryLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    def __del__(self):  # a lock object dropped without release() must not keep the directory locked
        try:
            self.release()
        except Exception:
            pass


def _read_pid(fd: int) -> int | None:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        text = os.read(fd, 64).decode().strip()
        return int(text) if text else None
    except (OSError, ValueError, UnicodeDecodeError):
        return None

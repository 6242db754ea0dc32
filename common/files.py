"""Files written so that a crash (or a power cut, or a full disk) leaves the old file or the new
one, never half, and that other users may read but never change.

The one way chemgap writes state: a temp file in the same directory, flushed and fsynced,
``os.replace`` onto the target, then the directory fsynced so the rename itself is durable.
A write that fails (a full disk among other causes) removes its temp file and leaves the target
as it was.

Permissions: chemgap never creates a file or directory that the group or others may write
(users share runs read-only). :func:`restrict_umask` adds ``0o022`` to the process umask (the
CLI applies it at start-up, :class:`chemgap.agent.store.RunStore` when a run is created or
opened, so Ray workers started later inherit it); :func:`atomic_write` sets the mode of what it
writes explicitly (``0o644`` less the umask) whatever the process umask.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

__all__ = [
    "NO_GROUP_WRITE",
    "atomic_write",
    "atomic_write_text",
    "current_umask",
    "file_mode",
    "is_disk_full",
    "make_dirs",
    "raise_if_disk_full",
    "restrict_umask",
    "why_unwritable",
]

NO_GROUP_WRITE = 0o022  # the bits chemgap always clears: write by group and by others
_DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
# the texts a full disk leaves in an error that lost its errno (one from a Ray worker, SQLite's)
_DISK_FULL_TEXTS = ("No space left on device", "[Errno 28]", "database or disk is full")


def current_umask() -> int:
    """This process's umask (read from ``/proc`` where it can be, without changing it)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o077)  # no /proc: set and restore (not atomic, but brief)
    os.umask(mask)
    return mask


def restrict_umask() -> int:
    """Add group/world write (``0o022``) to the process umask; returns the umask now in force.

    Files and directories created afterwards, by this process and by the processes it starts
    (SQLite's journal, ``torch.save``, a local Ray instance's workers), are never group or world
    writable; read permissions stay as the user's umask gives them.
    """
    mask = current_umask() | NO_GROUP_WRITE
    os.umask(mask)
    return mask


def file_mode() -> int:
    """The mode for a new file: ``0o644`` less the umask (never group/world writable)."""
    return 0o666 & ~(current_umask() | NO_GROUP_WRITE)


def make_dirs(path: str | Path) -> Path:
    """``mkdir -p`` whose every new directory is ``0o755`` less the umask (never group/world
    writable, whatever the process umask).

    Args:
        path: the directory to make (missing parents are made too).

    Returns:
        ``path`` as a Path.
    """
    path = Path(path)
    missing = []
    for p in (path, *path.parents):
        if p.is_dir():
            break
        missing.append(p)
    for p in reversed(missing):
        with contextlib.suppress(FileExistsError):
            p.mkdir(mode=0o755)
    if not path.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, "not a directory", str(path))
    return path


def is_disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` (or an exception it was raised from or during) is a full disk or quota.

    An ``OSError`` with ``ENOSPC``/``EDQUOT``, SQLite's ``SQLITE_FULL``, or (for errors that
    crossed a process boundary or a C++ layer and lost their errno) their text.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in _DISK_FULL_ERRNOS:
            return True
        if getattr(current, "sqlite_errorname", None) == "SQLITE_FULL":
            return True
        if any(text in str(current) for text in _DISK_FULL_TEXTS):
            return True
        current = current.__cause__ or current.__context__
    return False


def _as_target_error(exc: BaseException, path: Path) -> OSError | None:
    """The error to raise for a failed write of ``path``: a full disk as ``ENOSPC`` naming the
    target (torch and SQLite bury it), an ``OSError`` about the temp file renamed to the target;
    None to re-raise ``exc`` as it is.
    """
    if isinstance(exc, OSError) and exc.errno in _DISK_FULL_ERRNOS:
        return OSError(exc.errno, os.strerror(exc.errno), str(path))
    if isinstance(exc, Exception) and is_disk_full(exc):
        return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
    if isinstance(exc, OSError) and exc.errno:
        name = Path(str(exc.filename)).name if exc.filename is not None else None
        if name is None or (name.startswith(f".{path.name}.") and name.endswith(".tmp")):
            return OSError(exc.errno, exc.strerror or os.strerror(exc.errno), str(path))
    return None


def atomic_write(
    path: str | Path, write: Callable[[IO[Any]], None], *, binary: bool = False
) -> None:
    """Write ``path`` atomically: ``write(handle)`` fills a temp file that then replaces it.

    The file gets mode ``0o644`` less the umask (see :func:`file_mode`). On any failure the temp
    file is removed and ``path`` is left as it was; a full disk is raised as
    ``OSError(ENOSPC)`` naming ``path`` (whatever layer hit it), as is any ``OSError`` about the
    temp file.

    Args:
        path: the target file.
        write: fills the open temp file (text, or bytes with ``binary``).
        binary: open the temp file in binary mode.

    Raises:
        OSError: the directory cannot be written (read-only, missing) or the disk is full.
    """
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        target = _as_target_error(exc, path)
        if target is None:
            raise
        raise target from exc
    try:
        os.fchmod(fd, file_mode())
        with os.fdopen(fd, "wb" if binary else "w") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        target = _as_target_error(exc, path)
        if target is None:
            raise
        raise target from exc
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_write`)."""
    atomic_write(path, lambda handle: handle.write(text))


def raise_if_disk_full(exc: BaseException, path: str | Path) -> None:
    """Raise ``OSError(ENOSPC)`` naming ``path`` when ``exc`` (SQLite's "database or disk is
    full", say) is a full disk; return otherwise.
    """
    if is_disk_full(exc):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path)) from exc


def why_unwritable(path: str | Path) -> str | None:
    """Why this process cannot create files in directory ``path`` (None when it can).

    Args:
        path: an existing directory.

    Returns:
        ``"a read-only file system"``, ``"no write permission for this user"`` or None.
    """
    with contextlib.suppress(OSError):
        if os.statvfs(path).f_flag & os.ST_RDONLY:
            return "a read-only file system"
    if not os.access(path, os.W_OK | os.X_OK):
        return "no write permission for this user"
    return None

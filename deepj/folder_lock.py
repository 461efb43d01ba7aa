"""One process at a time in a folder: an advisory lock on `FOLDER/.lock`, held for the holder's life.

`fcntl.flock`: the kernel drops it when the holder ends in any way (kill -9 included), so a lock is never stale. The
holder writes a line naming itself into the file, for the message a second process gets. Used by training (its run
folder) and preprocessing (its output folder).
"""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path

LOCK = ".lock"


class FolderBusy(Exception):
    """Another process holds the folder; the message is the line it wrote ("" if it has not written one yet)."""


def lock_folder(folder: Path, holder: str) -> int | None:
    """Lock `folder/.lock` and write `holder` into it; returns the descriptor to keep open (closing it releases the
    lock), or None on a file system without locks (some NFS mounts: the caller warns). Raises FolderBusy."""
    path = Path(folder) / LOCK
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            line = (os.pread(fd, 4096, 0).decode("utf-8", "replace").strip().splitlines() or [""])[0]
            os.close(fd)
            raise FolderBusy(line) from None
        except OSError as e:
            os.close(fd)
            if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                raise
            return None
        # A holder that removes the file as it ends (unlock_folder(remove=True)) may have removed the one we opened
        # before we locked it: then lock the new one.
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{holder}\n".encode(), 0)
    return fd


def unlock_folder(folder: Path, fd: int, remove: bool = False) -> None:
    """Release a lock from `lock_folder`; `remove` deletes the file first (while still held, see lock_folder)."""
    if remove:
        try:
            (Path(folder) / LOCK).unlink(missing_ok=True)
        except OSError:
            pass
    os.close(fd)

"""The partial file: writing, hashing, truncating, finishing. Blocking, for worker threads.

This module owns ``<dest>.part``'s file descriptor, the running SHA-256 of its
contents and its size. Every method blocks (disk I/O, hashing of megabyte batches;
hashlib releases the GIL, so a worker thread hashes while the event loop receives) and
is meant for ``trio.to_thread.run_sync``. While a body streams, three methods may run
at the same time in three threads because they touch disjoint state:
:meth:`PartFile.append` (descriptor and size), :meth:`PartFile.hash` (the hash) and
:meth:`PartFile.sync_data` (fdatasync and its drop mark). OS errors become
:class:`DownloadError` with a reason a person can act on (disk full, permission,
read-only file system), never a traceback. It must not know about HTTP.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import shutil
import threading
from collections.abc import Sequence
from pathlib import Path

from trio_fwagent.download.model import DownloadError, human_size

__all__ = ["PartFile", "Stopped", "check_free_space", "fsync_directory", "os_error"]

_REHASH_BLOCK = 1 << 20
# Indirections so a unit test can make writes fail (ENOSPC) or reads slow without
# touching the os module.
_os_write = os.write
_os_read = os.read

_ERRNO_TEXT = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EROFS: "read-only file system",
    errno.ENOENT: "directory does not exist",
    errno.EISDIR: "is a directory",
    errno.EIO: "I/O error",
}


class Stopped(Exception):
    """A blocking method gave up because its ``stop`` event was set."""


def os_error(action: str, path: Path, exc: OSError) -> DownloadError:
    """Translate an OSError into a permanent DownloadError naming the file and the cause."""
    text = _ERRNO_TEXT.get(exc.errno or 0) or exc.strerror or str(exc)
    return DownloadError(f"cannot {action} {path}: {text}", permanent=True)


def check_free_space(directory: Path, needed: int, reusable: int = 0) -> None:
    """Raise a permanent DownloadError when ``needed`` bytes will not fit.

    Args:
        directory: Where the file is written.
        needed: Bytes still to write.
        reusable: Bytes of the partial file that will be overwritten (already allocated).
    """
    try:
        free = shutil.disk_usage(directory).free
    except OSError as exc:
        raise os_error("check free space in", directory, exc) from exc
    if needed > free + reusable:
        raise DownloadError(
            f"not enough free space in {directory}: {human_size(needed)} needed, "
            f"{human_size(free + reusable)} available",
            permanent=True,
        )


def fsync_directory(directory: Path) -> None:
    """Make a rename in ``directory`` durable (best effort on odd file systems)."""
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class PartFile:
    """``<dest>.part`` open for appending, with the SHA-256 of everything in it.

    Use :meth:`open` to create or continue one; it re-hashes the kept prefix from disk
    (a hash state cannot be saved across processes).
    """

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd = fd
        self._hash = hashlib.sha256()
        self.size = 0
        self._dropped = 0

    @classmethod
    def open(cls, path: Path, keep: int, stop: threading.Event | None = None) -> PartFile:
        """Open or create ``path`` (0600), keep its first ``keep`` bytes and hash them.

        Re-hashing a large prefix from slow storage can take a while: setting ``stop``
        (from another thread) ends it within one block, the file closed.

        Raises:
            DownloadError: The file cannot be created, read or truncated.
            Stopped: ``stop`` was set.
        """
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise os_error("create", path, exc) from exc
        part = cls(path, fd)
        try:
            os.fchmod(fd, 0o600)
            os.ftruncate(fd, keep)
            part._rehash(keep, stop)
        except OSError as exc:
            part.close()
            raise os_error("prepare", path, exc) from exc
        except BaseException:
            part.close()
            raise
        return part

    def _rehash(self, keep: int, stop: threading.Event | None) -> None:
        os.lseek(self._fd, 0, os.SEEK_SET)
        while self.size < keep:
            if stop is not None and stop.is_set():
                raise Stopped(f"stopped re-hashing {self.path}")
            block = _os_read(self._fd, min(_REHASH_BLOCK, keep - self.size))
            if not block:
                raise OSError(errno.EIO, "partial file shrank while re-hashing")
            self._hash.update(block)
            self.size += len(block)

    def restart(self) -> None:
        """Throw the contents away: truncate to 0 and reset the hash."""
        try:
            os.ftruncate(self._fd, 0)
            os.lseek(self._fd, 0, os.SEEK_SET)
        except OSError as exc:
            raise os_error("truncate", self.path, exc) from exc
        self._hash = hashlib.sha256()
        self.size = 0
        self._dropped = 0

    def write(self, chunks: Sequence[bytes]) -> None:
        """Append and hash a batch of chunks (:meth:`append` then :meth:`hash`).

        Raises:
            DownloadError: Disk full, permission or other write error (permanent).
        """
        self.append(chunks)
        self.hash(chunks)

    def append(self, chunks: Sequence[bytes]) -> None:
        """Append a batch of chunks without hashing them (pair with :meth:`hash`).

        Raises:
            DownloadError: Disk full, permission or other write error (permanent).
        """
        for chunk in chunks:
            view = memoryview(chunk)
            try:
                while view:
                    written = _os_write(self._fd, view)
                    view = view[written:]
                    self.size += written
            except OSError as exc:
                raise os_error("write", self.path, exc) from exc

    def hash(self, chunks: Sequence[bytes]) -> None:
        """Add a batch to the running SHA-256; may run in another thread beside :meth:`append`."""
        for chunk in chunks:
            self._hash.update(chunk)

    def sync_data(self, upto: int) -> None:
        """Make the file's data durable and drop its first ``upto`` bytes from the page cache.

        Meant for a second worker thread while :meth:`write` goes on in the first: without
        it, a large download stays dirty in the page cache until the final fsync, which
        then takes seconds, and fills memory on small devices. Dropping clean pages is
        best effort (``posix_fadvise``).

        Raises:
            DownloadError: The kernel reported a write error (for example ENOSPC on a
                file system with delayed allocation).
        """
        try:
            os.fdatasync(self._fd)
        except OSError as exc:
            raise os_error("write", self.path, exc) from exc
        advise = getattr(os, "posix_fadvise", None)
        if advise is not None and upto > self._dropped:
            with contextlib.suppress(OSError):
                advise(self._fd, self._dropped, upto - self._dropped, os.POSIX_FADV_DONTNEED)
            self._dropped = upto

    def hexdigest(self) -> str:
        """SHA-256 of the bytes written so far."""
        return self._hash.hexdigest()

    def finish(self) -> str:
        """Flush to disk and return the SHA-256 of the whole file."""
        try:
            os.fsync(self._fd)
        except OSError as exc:
            raise os_error("flush", self.path, exc) from exc
        return self._hash.hexdigest()

    def close(self) -> None:
        """Close the descriptor (idempotent)."""
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            os.close(fd)

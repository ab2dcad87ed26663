"""Whole-file SHA-256, for checking a file that is already on disk.

Owns only the blocking helper; the downloader hashes incrementally while it writes and
never needs it. Callers on the event loop run it with ``trio.to_thread.run_sync``.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

_READ_SIZE = 1 << 20


def file_sha256(path: Path) -> str:
    """Returns the lowercase hex SHA-256 of ``path``'s content, read in 1 MiB pieces.

    Raises:
        OSError: the file cannot be read.
    """
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(_READ_SIZE):
            digest.update(chunk)
    return digest.hexdigest()

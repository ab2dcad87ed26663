"""The sidecar: a small JSON file beside ``<dest>.part`` saying what the partial file is.

This module owns the sidecar's format (url, ETag, Last-Modified, expected length,
offset, expected SHA-256) and its atomic, 0600 reading and writing. A missing or
corrupt sidecar reads as None (the partial file is then thrown away, never trusted).
Blocking: call from a worker thread. It must not decide anything about resuming; that
is :mod:`trio_fwagent.download.decisions`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from trio_fwagent.download.decisions import Validators

__all__ = ["Sidecar", "load_sidecar", "remove_quietly", "save_sidecar", "sidecar_path"]

log = logging.getLogger(__name__)

_FORMAT = 1


@dataclass(frozen=True, slots=True)
class Sidecar:
    """What ``<dest>.part`` holds.

    Attributes:
        url: The URL the bytes came from (as given by the caller).
        sha256: Expected checksum, when the caller gave one.
        etag: ETag of the file version the bytes belong to.
        last_modified: Last-Modified of that version.
        length: Full file size, when known.
        offset: Bytes written when the sidecar was saved (a hint; the file size rules).
    """

    url: str
    sha256: str | None
    etag: str | None
    last_modified: str | None
    length: int | None
    offset: int

    @property
    def validators(self) -> Validators:
        """The validators to resume with."""
        return Validators(etag=self.etag, last_modified=self.last_modified, length=self.length)

    def to_json(self) -> str:
        """Serialise, with a format number."""
        return json.dumps({"format": _FORMAT, **asdict(self)}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Sidecar:
        """Parse; raises ValueError on anything unexpected."""
        data: Any = json.loads(text)
        if not isinstance(data, dict) or data.get("format") != _FORMAT:
            raise ValueError("not a sidecar of a known format")

        def opt_str(key: str) -> str | None:
            value = data.get(key)
            if value is not None and not isinstance(value, str):
                raise ValueError(f"{key} is not a string")
            return value

        def opt_int(key: str) -> int | None:
            value = data.get(key)
            if value is not None and (type(value) is not int or value < 0):
                raise ValueError(f"{key} is not a non-negative integer")
            return value

        url, offset = opt_str("url"), opt_int("offset")
        if url is None or offset is None:
            raise ValueError("url and offset are required")
        return cls(
            url=url,
            sha256=opt_str("sha256"),
            etag=opt_str("etag"),
            last_modified=opt_str("last_modified"),
            length=opt_int("length"),
            offset=offset,
        )


def sidecar_path(part: Path) -> Path:
    """``<dest>.part`` -> ``<dest>.part.json``."""
    return part.with_name(part.name + ".json")


def load_sidecar(path: Path) -> Sidecar | None:
    """Read a sidecar; None when missing or unreadable (logged)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as exc:
        log.warning("cannot read download sidecar %s: %s", path, exc)
        return None
    try:
        return Sidecar.from_json(text)
    except ValueError as exc:
        log.warning("ignoring corrupt download sidecar %s: %s", path, exc)
        return None


def save_sidecar(path: Path, sidecar: Sidecar) -> None:
    """Write atomically (temp file, rename), mode 0600. Raises OSError."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, sidecar.to_json().encode())
    finally:
        os.close(fd)
    os.replace(tmp, path)


def remove_quietly(*paths: Path) -> None:
    """Delete files that may not exist."""
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()

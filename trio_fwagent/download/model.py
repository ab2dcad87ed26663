"""The values the downloader exchanges with its callers: policy in, progress and results out.

This module owns the public value types of :mod:`trio_fwagent.download` (retry policy,
progress reports, the result and the one exception type). It holds no logic beyond
formatting and must not import the I/O parts of the package.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["DownloadError", "DownloadResult", "Progress", "RetryPolicy"]


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How hard to try before giving up.

    Attributes:
        max_attempts: Attempts in a row that made no progress before giving up (None:
            unlimited). An attempt that brought new bytes resets the count and the
            backoff, so a long download over a link that drops every few megabytes
            still finishes, while a server that never delivers anything new fails.
        base_delay: First backoff cap in seconds; the cap doubles per failure.
        max_delay: Upper bound of the backoff cap in seconds.
        give_up_after: Seconds since the start of the call after which no new attempt
            is started (None: no bound). A Retry-After that reaches past it gives up
            at once.
    """

    max_attempts: int | None = 20
    base_delay: float = 0.5
    max_delay: float = 30.0
    give_up_after: float | None = None


@dataclass(frozen=True, slots=True)
class Progress:
    """A progress report: at most about ten per second, and one at the end.

    Attributes:
        done: Bytes of the file on disk so far (drops to 0 on a restart).
        total: Size of the file when the server told us, else None.
        rate: Recent network receive rate in bytes per second.
        resumes: Times the download continued from a partial file with a Range request.
        restarts: Times a partial file was thrown away and the download began again.
        attempt: Number of the current HTTP request (1-based).
    """

    done: int
    total: int | None
    rate: float
    resumes: int
    restarts: int
    attempt: int


@dataclass(frozen=True, slots=True)
class DownloadResult:
    """A verified file in its final place.

    Attributes:
        path: The destination path.
        size: File size in bytes.
        sha256: Lowercase hex SHA-256 of the file.
        bytes_received: Body bytes received over the network by this call.
        resumes: See :class:`Progress`.
        restarts: See :class:`Progress`.
        elapsed: Seconds this call took.
    """

    path: Path
    size: int
    sha256: str
    bytes_received: int
    resumes: int
    restarts: int
    elapsed: float


class DownloadError(Exception):
    """A download did not produce a verified file.

    Attributes:
        reason: One line a person can act on; also ``str(error)``.
        permanent: True when trying again will not help (HTTP 404, checksum mismatch,
            disk full); False when a later call may succeed (retries exhausted on a
            flaky network). The partial file is kept unless the checksum was wrong.
        status_code: The HTTP status behind the failure, when there was one.
    """

    def __init__(self, reason: str, *, permanent: bool, status_code: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.permanent = permanent
        self.status_code = status_code

    def __str__(self) -> str:
        return self.reason

    def __repr__(self) -> str:
        return (
            f"DownloadError({self.reason!r}, permanent={self.permanent!r}, "
            f"status_code={self.status_code!r})"
        )


def human_size(n: int) -> str:
    """Format a byte count for people: ``1.5 GiB``."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(size) < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")  # pragma: no cover

"""Pure resume and retry decisions of the downloader: no I/O, no clock, no randomness.

This module owns the rules of DESIGN.md "Downloads": which headers a request at offset N
carries, what a response to it means (write the body from N, restart from byte 0 on
this very body, request again from 0, complete, retry later, fail for good), whether a
partial file left by an earlier run may be continued, and the retry budget with capped
exponential backoff and full jitter. Callers pass in the time and a random source. It
must not touch sockets, files or Trio.
"""

from __future__ import annotations

import email.utils
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from http import HTTPStatus

from trio_fwagent.download.model import RetryPolicy

__all__ = [
    "Complete",
    "ContentRange",
    "Decision",
    "Fail",
    "Refetch",
    "ResumePoint",
    "Retry",
    "RetryBudget",
    "Validators",
    "Write",
    "decide",
    "describe_status",
    "parse_content_range",
    "parse_retry_after",
    "request_headers",
    "resume_point",
]


@dataclass(frozen=True, slots=True)
class Validators:
    """What identifies one version of the remote file.

    Attributes:
        etag: The ETag header as sent (``"abc"`` strong, ``W/"abc"`` weak).
        last_modified: The Last-Modified header as sent.
        length: Full size of the file, when known.
    """

    etag: str | None = None
    last_modified: str | None = None
    length: int | None = None

    @property
    def if_range(self) -> str | None:
        """The If-Range value: a strong ETag, else Last-Modified, else None."""
        if self.etag is not None and not self.etag.startswith("W/"):
            return self.etag
        return self.last_modified


@dataclass(frozen=True, slots=True)
class ContentRange:
    """A parsed ``Content-Range: bytes first-last/total`` (last/first None for ``*/total``)."""

    first: int | None
    last: int | None
    total: int | None


@dataclass(frozen=True, slots=True)
class Write:
    """Stream this response's body into the partial file, starting at byte ``start``.

    ``start == 0`` while the partial file is not empty means a restart: truncate and
    reset the hash first; ``restart_reason`` then says why.
    """

    start: int
    validators: Validators
    restart_reason: str | None = None


@dataclass(frozen=True, slots=True)
class Refetch:
    """This body is unusable: discard the partial file and ask again from byte 0."""

    reason: str


@dataclass(frozen=True, slots=True)
class Complete:
    """The partial file already holds the whole file (416 at offset == length)."""


@dataclass(frozen=True, slots=True)
class Retry:
    """A transient failure: try again after a backoff (at least ``retry_after`` seconds)."""

    reason: str
    retry_after: float | None = None
    status_code: int | None = None


@dataclass(frozen=True, slots=True)
class Fail:
    """A permanent failure: trying again will not help."""

    reason: str
    status_code: int | None = None


Decision = Write | Refetch | Complete | Retry | Fail

_RETRYABLE = frozenset({408, 429})
_CONTENT_RANGE = re.compile(r"^\s*bytes\s+(?:(\d+)-(\d+)|\*)/(\d+|\*)\s*$", re.IGNORECASE)


def request_headers(offset: int, known: Validators) -> dict[str, str]:
    """Headers for a GET that continues at ``offset`` (0: the whole file)."""
    headers = {"Accept-Encoding": "identity"}
    if offset > 0:
        headers["Range"] = f"bytes={offset}-"
        if_range = known.if_range
        if if_range is not None:
            headers["If-Range"] = if_range
    return headers


def describe_status(status: int, url: str) -> str:
    """``HTTP 404 Not Found from http://...``."""
    try:
        phrase = " " + HTTPStatus(status).phrase
    except ValueError:
        phrase = ""
    return f"HTTP {status}{phrase} from {url}"


def parse_content_range(value: str | None) -> ContentRange | None:
    """Parse a byte Content-Range; None when absent or malformed (incl. last < first)."""
    if value is None:
        return None
    match = _CONTENT_RANGE.match(value)
    if match is None:
        return None
    first_s, last_s, total_s = match.groups()
    total = None if total_s == "*" else int(total_s)
    if first_s is None:
        return None if total is None else ContentRange(None, None, total)
    first, last = int(first_s), int(last_s)
    if last < first or (total is not None and last >= total):
        return None
    return ContentRange(first, last, total)


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a Retry-After header (delta seconds or HTTP date).

    Args:
        value: The header value, or None.
        now: The current time as a Unix timestamp (for the HTTP-date form).

    Returns:
        Seconds (never negative), or None when absent or unparseable.
    """
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(int(value))
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - now)


def _validators_from(headers: Mapping[str, str], length: int | None) -> Validators:
    return Validators(
        etag=headers.get("etag"), last_modified=headers.get("last-modified"), length=length
    )


def _content_length(headers: Mapping[str, str]) -> int | None:
    value = headers.get("content-length")
    if value is None or not value.strip().isdigit():
        return None
    return int(value)


def _changed(known: Validators, new: Validators) -> str | None:
    """Why ``new`` names another version of the file than ``known`` (None: same, or unknown)."""
    if known.etag is not None and new.etag is not None and known.etag != new.etag:
        return f"ETag changed from {known.etag} to {new.etag}"
    if (
        known.last_modified is not None
        and new.last_modified is not None
        and known.last_modified != new.last_modified
    ):
        return f"Last-Modified changed from {known.last_modified} to {new.last_modified}"
    if known.length is not None and new.length is not None and known.length != new.length:
        return f"length changed from {known.length} to {new.length}"
    return None


def decide(
    offset: int,
    known: Validators,
    status: int,
    headers: Mapping[str, str],
    *,
    url: str,
    now: float,
) -> Decision:
    """Decide what a response means for a GET sent with :func:`request_headers`.

    Args:
        offset: The offset the request asked to continue at (0: whole file).
        known: Validators remembered from earlier responses.
        status: The response status code.
        headers: Response headers (looked up case-insensitively).
        url: The URL for messages (already stripped of secrets).
        now: Current Unix time, for Retry-After dates.

    Returns:
        One of :class:`Write`, :class:`Refetch`, :class:`Complete`, :class:`Retry`,
        :class:`Fail`.
    """
    h = {k.lower(): v for k, v in headers.items()}
    if status in _RETRYABLE or 500 <= status <= 599:
        return Retry(
            describe_status(status, url),
            retry_after=parse_retry_after(h.get("retry-after"), now),
            status_code=status,
        )
    if status == 200:
        new = _validators_from(h, _content_length(h))
        if offset == 0:
            return Write(0, new)
        why = _changed(known, new) or "the server ignored the Range request (HTTP 200)"
        return Write(0, new, restart_reason=why)
    if status == 206:
        return _decide_partial(offset, known, h)
    if status == 416:
        crange = parse_content_range(h.get("content-range"))
        total = crange.total if crange is not None else known.length
        if offset > 0 and total == offset and known.length == offset:
            # (A 416 is not subject to If-Range, but may still carry validators.)
            changed = _changed(known, _validators_from(h, None))
            if changed is None:
                return Complete()
            return Refetch(f"file changed on the server: {changed}")
        if known.length is None:
            # Without a length recorded before, "416 at my offset" only says the file on
            # the server is as long as our prefix now, not that the prefix is that file.
            return Refetch(f"HTTP 416 for a Range from byte {offset}, and no length was known")
        return Refetch(f"HTTP 416 for a Range from byte {offset} (server length {total})")
    if 400 <= status <= 499:
        return Fail(describe_status(status, url), status_code=status)
    return Fail(f"unexpected {describe_status(status, url)}", status_code=status)


def _decide_partial(offset: int, known: Validators, h: Mapping[str, str]) -> Decision:
    crange = parse_content_range(h.get("content-range"))
    if crange is None or crange.first is None:
        return Refetch(f"HTTP 206 with unusable Content-Range {h.get('content-range')!r}")
    if crange.first != offset:
        return Refetch(f"HTTP 206 starts at byte {crange.first}, asked for {offset}")
    if crange.total is None:
        # Without the total, the end of this body says nothing about the end of the file:
        # a resumed download could be taken as complete while short (and requests of the
        # te/ dialect carry no sha256 to catch it). Start again without a Range.
        return Refetch("HTTP 206 without the file's total length")
    new = _validators_from(h, crange.total)
    why = _changed(known, new)
    if why is not None:
        return Refetch(f"file changed on the server: {why}")
    merged = replace(
        new,
        etag=new.etag if new.etag is not None else known.etag,
        last_modified=new.last_modified if new.last_modified is not None else known.last_modified,
    )
    return Write(offset, merged)


@dataclass(frozen=True, slots=True)
class ResumePoint:
    """Where a new call continues from what an earlier run left on disk.

    Attributes:
        offset: Bytes of the partial file to keep (0: start afresh).
        validators: Validators to send with the first Range request.
        discarded: Why an existing partial file is thrown away, else None.
    """

    offset: int
    validators: Validators
    discarded: str | None = None


def resume_point(
    *,
    part_size: int,
    saved_url: str | None,
    saved_sha256: str | None,
    saved: Validators | None,
    url: str,
    sha256: str | None,
) -> ResumePoint:
    """Decide whether a partial file from an earlier run can be continued.

    The partial file's size is the truth for the offset (it is written sequentially);
    the sidecar only says which file it belongs to. A partial file without a sidecar,
    for another checksum, for another URL (unless the same checksum names it), or
    longer than the file is thrown away.

    Args:
        part_size: Current size of ``<dest>.part`` (0 when missing).
        saved_url: URL recorded in the sidecar (None: no usable sidecar).
        saved_sha256: Checksum recorded in the sidecar.
        saved: Validators recorded in the sidecar.
        url: URL of this call.
        sha256: Expected checksum of this call.
    """
    if part_size == 0:
        return ResumePoint(0, Validators())
    if saved_url is None or saved is None:
        return ResumePoint(0, Validators(), "partial file without a readable sidecar")
    if saved_sha256 is not None and sha256 is not None and saved_sha256 != sha256:
        return ResumePoint(0, Validators(), "partial file is for another checksum")
    if saved_url != url:
        if saved_sha256 is None or saved_sha256 != sha256:
            return ResumePoint(0, Validators(), "partial file is for another URL")
        # Same content from another server: keep the bytes, not the other server's validators.
        saved = Validators(length=saved.length)
    if saved.length is not None and part_size > saved.length:
        return ResumePoint(0, Validators(), "partial file is longer than the file")
    return ResumePoint(part_size, saved)


class RetryBudget:
    """Capped exponential backoff with full jitter, reset whenever an attempt made progress.

    Pure: the caller reports failures and progress and passes the time in.

    Args:
        policy: The limits.
        started_at: Time the download started, on the same clock as later ``now`` values.
        random: A source of floats in [0, 1) for the jitter.
    """

    def __init__(
        self, policy: RetryPolicy, *, started_at: float, random: Callable[[], float]
    ) -> None:
        self._policy = policy
        self._started_at = started_at
        self._random = random
        self._failures = 0

    @property
    def failures(self) -> int:
        """Failed attempts since the last progress."""
        return self._failures

    def progressed(self) -> None:
        """An attempt brought new bytes: forget earlier failures."""
        self._failures = 0

    def failed(self, now: float, *, retry_after: float | None = None) -> float | None:
        """Record a failed attempt.

        Returns:
            Seconds to wait before the next attempt, or None to give up.
        """
        policy = self._policy
        self._failures += 1
        if policy.max_attempts is not None and self._failures >= policy.max_attempts:
            return None
        cap = min(policy.max_delay, policy.base_delay * 2.0 ** (self._failures - 1))
        delay = self._random() * cap
        if retry_after is not None:
            delay = max(delay, retry_after)
        if policy.give_up_after is not None and (
            now + delay - self._started_at > policy.give_up_after
        ):
            return None
        return delay

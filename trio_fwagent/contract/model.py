"""Dialect-neutral data model of the thin-edge firmware contract.

Owns the request (:class:`FirmwareRequest`), the outgoing message
(:class:`StatusMessage`), the error for a bad request (:class:`InvalidRequest`), the
:class:`Dialect` protocol both topic dialects implement, and the shared validation of
values that arrive from the network (ids, names, versions, URLs, checksums, child ids).

It is pure: no I/O, no clock, no MQTT client. It must not know how an operation runs,
where files live, or how anything is published; the dialect modules build on it.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol
from urllib.parse import urlsplit

__all__ = [
    "MAX_PAYLOAD_BYTES",
    "MAX_REASON_CHARS",
    "MAX_TEXT_CHARS",
    "MAX_URL_CHARS",
    "Dialect",
    "FirmwareRequest",
    "InvalidRequest",
    "Status",
    "StatusMessage",
    "check_child_id",
]

Status = Literal["executing", "successful", "failed"]

#: Requests larger than this are rejected before they are decoded.
MAX_PAYLOAD_BYTES = 64 * 1024
#: Longest accepted id, name or version (characters).
MAX_TEXT_CHARS = 256
#: Longest accepted URL (characters).
MAX_URL_CHARS = 4096
#: A failure reason is cut to this many characters before it is published.
MAX_REASON_CHARS = 2000

_SHA256_RE = re.compile(r"[0-9a-fA-F]{64}")
_FORBIDDEN_IN_CHILD_ID = frozenset("/+#")


class InvalidRequest(Exception):
    """A request that cannot be acted on (bad JSON, a missing or malformed field).

    Attributes:
        op_id: The operation id when it could be read from the request (so a ``failed``
            status can be sent back), else ``None``.
        reason: One line naming the problem, e.g. ``field 'sha256' must be 64 hex
            characters``.
        fields: String fields that could be read (used by the ``te/`` dialect to echo
            name, version and remoteUrl in its ``failed`` answer). Empty when unknown.
    """

    def __init__(
        self, op_id: str | None, reason: str, *, fields: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(reason)
        self.op_id = op_id
        self.reason = reason
        self.fields: Mapping[str, str] = dict(fields or {})

    def __str__(self) -> str:
        return self.reason

    def __repr__(self) -> str:
        return f"InvalidRequest(op_id={self.op_id!r}, reason={self.reason!r})"


@dataclass(frozen=True, slots=True)
class FirmwareRequest:
    """One firmware update request, whatever dialect it arrived in.

    Attributes:
        dialect: ``"legacy"`` or ``"te"``: which :class:`Dialect` answers it.
        child_id: The child device the request is for.
        op_id: The operation id (legacy ``id`` field; ``te/`` command id topic level).
        attempt: Legacy ``attempt`` (>= 1); always 1 for ``te/``.
        name: Firmware name (data, never a path).
        version: Firmware version (data, never a path).
        url: The http(s) URL to download (``te/``: ``tedgeUrl`` if given, else
            ``remoteUrl``).
        sha256: Expected SHA-256 of the file, lowercase hex, or ``None`` when the
            request carries none (``te/``).
        topic: The MQTT topic the request arrived on.
        extra: Dialect-specific string fields to carry along (``te/``: the original
            command fields, echoed back in every status).
    """

    dialect: str
    child_id: str
    op_id: str
    attempt: int
    name: str
    version: str
    url: str
    sha256: str | None
    topic: str
    extra: Mapping[str, str] = field(default_factory=dict, hash=False)

    @property
    def key(self) -> str:
        """What tells this child's operations apart: see :func:`operation_key`."""
        return operation_key(self.dialect, self.op_id)

    def to_json(self) -> dict[str, Any]:
        """Return a JSON-ready dict (for the journal); inverse of :meth:`from_json`."""
        return {
            "dialect": self.dialect,
            "child_id": self.child_id,
            "op_id": self.op_id,
            "attempt": self.attempt,
            "name": self.name,
            "version": self.version,
            "url": self.url,
            "sha256": self.sha256,
            "topic": self.topic,
            "extra": dict(self.extra),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> FirmwareRequest:
        """Rebuild a request from :meth:`to_json` output.

        Raises:
            ValueError: ``data`` is not what :meth:`to_json` produces.
        """
        if not isinstance(data, Mapping):
            raise ValueError("request record must be an object")
        strings = ("dialect", "child_id", "op_id", "name", "version", "url", "topic")
        values: dict[str, Any] = {}
        for key in strings:
            value = data.get(key)
            if not isinstance(value, str):
                raise ValueError(f"request record field {key!r} must be a string")
            values[key] = value
        attempt = data.get("attempt")
        if type(attempt) is not int or attempt < 1:
            raise ValueError("request record field 'attempt' must be an integer >= 1")
        sha256 = data.get("sha256")
        if sha256 is not None and not (isinstance(sha256, str) and _SHA256_RE.fullmatch(sha256)):
            raise ValueError("request record field 'sha256' must be 64 hex characters or null")
        extra = data.get("extra", {})
        if not isinstance(extra, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in extra.items()
        ):
            raise ValueError("request record field 'extra' must map strings to strings")
        return cls(
            attempt=attempt,
            sha256=sha256.lower() if sha256 is not None else None,
            extra=dict(extra),
            **values,
        )


@dataclass(frozen=True, slots=True)
class StatusMessage:
    """An MQTT message the agent should publish (status, registration, twin).

    Attributes:
        topic: Where to publish.
        payload: Exact bytes to publish (UTF-8 JSON, or empty to clear a retained topic).
        retain: The retain flag.
        qos: QoS level (always 1 in this contract).
    """

    topic: str
    payload: bytes
    retain: bool
    qos: int = 1


class Dialect(Protocol):
    """One way thin-edge talks firmware updates over MQTT."""

    name: str

    def subscriptions(self, child_id: str) -> list[str]:
        """Topic filters to subscribe to (QoS 1) for ``child_id``'s requests."""
        ...

    def parse(self, child_id: str, topic: str, payload: bytes) -> FirmwareRequest | None:
        """Turn a received message into a request.

        Returns:
            The request, or ``None`` when the message is not a command for us (ignore
            it silently: an empty retained clear, our own echoed status, another topic).

        Raises:
            InvalidRequest: The message is a command but cannot be acted on.
        """
        ...

    def status(
        self, request: FirmwareRequest, status: Status, reason: str | None = None
    ) -> StatusMessage:
        """Build the status message for ``request`` (``reason`` only for ``failed``)."""
        ...

    def invalid(self, child_id: str, topic: str, error: InvalidRequest) -> StatusMessage | None:
        """Build a ``failed`` answer to a bad request, or ``None`` if it cannot be addressed."""
        ...


# --- validation helpers shared by the dialects (not part of the public API) ---


def check_child_id(child_id: str) -> str:
    """Return ``child_id`` if it can be used as one MQTT topic level.

    Raises:
        ValueError: Empty, too long, or contains ``/``, ``+``, ``#`` or control
            characters (a local configuration mistake, not a network error).
    """
    if not isinstance(child_id, str) or not child_id:
        raise ValueError("child id must be a non-empty string")
    if len(child_id) > MAX_TEXT_CHARS:
        raise ValueError(f"child id is too long (max {MAX_TEXT_CHARS} characters)")
    if any(c in _FORBIDDEN_IN_CHILD_ID for c in child_id) or _has_bad_chars(child_id):
        raise ValueError(
            f"child id {child_id!r} must not contain '/', '+', '#' or control characters"
        )
    return child_id


def _has_bad_chars(text: str) -> bool:
    """True if ``text`` has control characters or lone surrogates (not valid UTF-8 text)."""
    return any(unicodedata.category(c) in ("Cc", "Cs") for c in text)


def decode_object(payload: bytes, op_id: str | None = None) -> dict[str, Any]:
    """Decode a bounded UTF-8 JSON object or raise :class:`InvalidRequest`."""
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise InvalidRequest(
            op_id, f"payload is too large ({len(payload)} bytes, max {MAX_PAYLOAD_BYTES})"
        )
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidRequest(op_id, "payload is not valid UTF-8") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidRequest(
            op_id, f"payload is not valid JSON: {exc.msg} at char {exc.pos}"
        ) from None
    except (ValueError, RecursionError):
        # Integers beyond Python's digit limit; nesting deeper than the parser's stack.
        raise InvalidRequest(op_id, "payload is not valid JSON") from None
    if not isinstance(data, dict):
        raise InvalidRequest(op_id, "payload must be a JSON object")
    return data


def operation_key(dialect: str, op_id: str) -> str:
    """The id of an operation within its dialect, unique per child.

    With ``dialect = both`` a legacy ``id`` and a ``te/`` command id may be equal strings
    and still be two operations. Legacy keys are the bare id (so journal records written
    before ``te/`` existed keep their names); others are prefixed with the dialect and a
    NUL, which no valid id contains.
    """
    return op_id if dialect == "legacy" else f"{dialect}\0{op_id}"


def readable_id(value: object) -> str | None:
    """Return ``value`` if it is usable as an operation id, else ``None``."""
    if (
        isinstance(value, str)
        and value
        and len(value) <= MAX_TEXT_CHARS
        and not _has_bad_chars(value)
    ):
        return value
    return None


def require_text(
    data: Mapping[str, Any], key: str, op_id: str | None, *, allow_empty: bool = True
) -> str:
    """Return the string field ``key`` or raise :class:`InvalidRequest` naming it."""
    if key not in data:
        raise InvalidRequest(op_id, f"field {key!r} is missing")
    value = data[key]
    if not isinstance(value, str):
        raise InvalidRequest(op_id, f"field {key!r} must be a string")
    if not value and not allow_empty:
        raise InvalidRequest(op_id, f"field {key!r} must not be empty")
    if len(value) > MAX_TEXT_CHARS:
        raise InvalidRequest(op_id, f"field {key!r} is too long (max {MAX_TEXT_CHARS} characters)")
    if _has_bad_chars(value):
        raise InvalidRequest(op_id, f"field {key!r} contains control characters")
    return value


def require_url(data: Mapping[str, Any], key: str, op_id: str | None) -> str:
    """Return the http(s) URL field ``key`` or raise :class:`InvalidRequest` naming it."""
    if key not in data:
        raise InvalidRequest(op_id, f"field {key!r} is missing")
    value = data[key]
    if not isinstance(value, str):
        raise InvalidRequest(op_id, f"field {key!r} must be a string")
    check_url(value, key, op_id)
    return value


def check_url(value: str, key: str, op_id: str | None) -> None:
    """Raise :class:`InvalidRequest` unless ``value`` is an http(s) URL with a host."""
    if len(value) > MAX_URL_CHARS:
        raise InvalidRequest(op_id, f"field {key!r} is too long (max {MAX_URL_CHARS} characters)")
    bad = InvalidRequest(op_id, f"field {key!r} must be an http or https URL with a host")
    if _has_bad_chars(value) or any(c.isspace() for c in value):
        raise bad
    try:
        parts = urlsplit(value)
        port = parts.port  # raises ValueError for a malformed port
    except ValueError:
        raise bad from None
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname or port == 0:
        raise bad
    try:
        parts.hostname.encode("idna")  # as the resolver will: every label 1-63 characters
    except UnicodeError:
        raise InvalidRequest(
            op_id,
            f"field {key!r} has an invalid host name {parts.hostname!r} (a dot-separated "
            "label is empty, over 63 characters or not encodable)",
        ) from None


def require_sha256(data: Mapping[str, Any], key: str, op_id: str | None) -> str:
    """Return the SHA-256 field ``key`` in lowercase or raise :class:`InvalidRequest`."""
    if key not in data:
        raise InvalidRequest(op_id, f"field {key!r} is missing")
    value = data[key]
    if not isinstance(value, str) or not _SHA256_RE.fullmatch(value):
        raise InvalidRequest(op_id, f"field {key!r} must be 64 hex characters")
    return value.lower()


def clean_reason(reason: str) -> str:
    """Make a failure reason safe to publish: bounded, valid UTF-8, one logical message."""
    # Lone surrogates would make invalid UTF-8 (and thin-edge's JSON parser rejects them).
    reason = reason.encode("utf-8", "replace").decode("utf-8")
    if len(reason) > MAX_REASON_CHARS:
        reason = reason[: MAX_REASON_CHARS - 1] + "\u2026"
    return reason


def dumps(obj: Mapping[str, Any]) -> bytes:
    """Compact UTF-8 JSON, key order as given (payloads are compared byte by byte)."""
    text = json.dumps(obj, ensure_ascii=False, separators=(",", ":"))
    return text.encode("utf-8", "replace")

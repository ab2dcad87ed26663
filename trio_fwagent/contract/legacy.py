"""The legacy ``tedge/{child}/commands/...`` firmware dialect (the user document's contract).

Owns the exact topics and JSON of c8y-firmware-plugin's child-device protocol: requests
on ``tedge/{child}/commands/req/firmware_update``, answers ``{"id", "status"[, "reason"]}``
on ``tedge/{child}/commands/res/firmware_update``, QoS 1, never retained.

Pure (no I/O). It must not decide what to do with a request (dedupe, timing): that is
the operation layer's job.
"""

from __future__ import annotations

from typing import Any, NoReturn

from trio_fwagent.contract.model import (
    FirmwareRequest,
    InvalidRequest,
    Status,
    StatusMessage,
    check_child_id,
    clean_reason,
    decode_object,
    dumps,
    readable_id,
    require_sha256,
    require_text,
    require_url,
)

__all__ = ["LEGACY", "LegacyDialect", "request_topic", "response_topic"]

_VALID_STATUSES = ("executing", "successful", "failed")


def request_topic(child_id: str) -> str:
    """``tedge/{child}/commands/req/firmware_update`` (ValueError for a bad child id)."""
    return f"tedge/{check_child_id(child_id)}/commands/req/firmware_update"


def response_topic(child_id: str) -> str:
    """``tedge/{child}/commands/res/firmware_update`` (ValueError for a bad child id)."""
    return f"tedge/{check_child_id(child_id)}/commands/res/firmware_update"


class LegacyDialect:
    """c8y-firmware-plugin's ``tedge/...`` request/response protocol."""

    name = "legacy"

    def subscriptions(self, child_id: str) -> list[str]:
        """The request topic of ``child_id``."""
        return [request_topic(child_id)]

    def parse(self, child_id: str, topic: str, payload: bytes) -> FirmwareRequest | None:
        """Parse a request; ``None`` if ``topic`` is not ``child_id``'s request topic.

        Unknown fields are ignored. A missing ``attempt`` counts as 1.

        Raises:
            InvalidRequest: Bad JSON or a missing/malformed field; ``op_id`` is set when
                the ``id`` field could be read.
        """
        if topic != request_topic(child_id):
            return None
        data = decode_object(payload)
        op_id = readable_id(data.get("id"))
        if op_id is None:
            _raise_bad_id(data)
        attempt = _attempt(data, op_id)
        return FirmwareRequest(
            dialect=self.name,
            child_id=child_id,
            op_id=op_id,
            attempt=attempt,
            name=require_text(data, "name", op_id),
            version=require_text(data, "version", op_id),
            url=require_url(data, "url", op_id),
            sha256=require_sha256(data, "sha256", op_id),
            topic=topic,
        )

    def status(
        self, request: FirmwareRequest, status: Status, reason: str | None = None
    ) -> StatusMessage:
        """``{"id","status"}`` (+ ``"reason"`` for ``failed``) on the response topic."""
        return _status_message(request.child_id, request.op_id, status, reason)

    def invalid(self, child_id: str, topic: str, error: InvalidRequest) -> StatusMessage | None:
        """``failed`` with ``invalid request: ...`` when the request's id was readable."""
        if error.op_id is None:
            return None
        return _status_message(child_id, error.op_id, "failed", f"invalid request: {error.reason}")


def _status_message(child_id: str, op_id: str, status: Status, reason: str | None) -> StatusMessage:
    if status not in _VALID_STATUSES:
        raise ValueError(f"unknown status {status!r}")
    body: dict[str, Any] = {"id": op_id, "status": status}
    if status == "failed":
        # thin-edge shows the reason to the user; never send an empty one.
        body["reason"] = clean_reason(reason or "firmware update failed")
    return StatusMessage(topic=response_topic(child_id), payload=dumps(body), retain=False, qos=1)


def _raise_bad_id(data: dict[str, Any]) -> NoReturn:
    if "id" not in data:
        raise InvalidRequest(None, "field 'id' is missing")
    # Reuse the text checks for a precise reason; an empty string fails there too.
    require_text(data, "id", None, allow_empty=False)
    raise InvalidRequest(None, "field 'id' is not a usable operation id")


def _attempt(data: dict[str, Any], op_id: str) -> int:
    value = data.get("attempt", 1)
    # bool is an int subclass in Python but not a JSON integer.
    if type(value) is not int or value < 1:
        raise InvalidRequest(op_id, "field 'attempt' must be an integer >= 1")
    return value


LEGACY = LegacyDialect()

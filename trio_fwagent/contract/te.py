"""The thin-edge 1.x ``te/device/{child}///cmd/firmware_update/{cmd_id}`` dialect.

Owns the exact topics and JSON of the ``te/`` command API: a command arrives retained
with ``{"status":"init","name","version","remoteUrl"[,"tedgeUrl"]}``; the child answers
retained on the same topic, echoing the command's fields with its own ``status``
(+ ``reason``). Also builds the retained registration messages (child device, firmware
capability) and the firmware twin.

Pure (no I/O). It must not decide what to do with a request; an empty payload (the
requester clearing the topic) and any status other than ``init`` (including our own
echoed answers) are simply not requests.
"""

from __future__ import annotations

from typing import Any

from trio_fwagent.contract.model import (
    MAX_URL_CHARS,
    FirmwareRequest,
    InvalidRequest,
    Status,
    StatusMessage,
    check_child_id,
    check_url,
    clean_reason,
    decode_object,
    dumps,
    readable_id,
    require_sha256,
    require_text,
)

__all__ = [
    "TE",
    "TeDialect",
    "capability_topic",
    "command_topic",
    "registration_messages",
    "twin_message",
]

_VALID_STATUSES = ("executing", "successful", "failed")
# Fields we set ourselves in an answer; never echoed from the command.
_OWN_FIELDS = ("status", "reason")


def device_topic(child_id: str) -> str:
    """``te/device/{child}//`` (ValueError for a bad child id)."""
    return f"te/device/{check_child_id(child_id)}//"


def capability_topic(child_id: str) -> str:
    """``te/device/{child}///cmd/firmware_update`` (ValueError for a bad child id)."""
    return f"te/device/{check_child_id(child_id)}///cmd/firmware_update"


def command_topic(child_id: str, cmd_id: str) -> str:
    """``te/device/{child}///cmd/firmware_update/{cmd_id}``."""
    if not cmd_id or any(c in cmd_id for c in "/+#"):
        raise ValueError(f"command id {cmd_id!r} cannot be a topic level")
    return f"{capability_topic(child_id)}/{cmd_id}"


def twin_topic(child_id: str) -> str:
    """``te/device/{child}///twin/firmware`` (ValueError for a bad child id)."""
    return f"te/device/{check_child_id(child_id)}///twin/firmware"


def registration_messages(child_id: str) -> list[StatusMessage]:
    """Retained messages that register ``child_id`` and declare firmware support.

    Returns:
        ``{"@type":"child-device"}`` on ``te/device/{child}//`` and ``{}`` on
        ``te/device/{child}///cmd/firmware_update``, both retained, QoS 1.
    """
    return [
        StatusMessage(device_topic(child_id), dumps({"@type": "child-device"}), retain=True),
        StatusMessage(capability_topic(child_id), b"{}", retain=True),
    ]


def twin_message(request: FirmwareRequest) -> StatusMessage:
    """Retained ``{"name","version","url"}`` on the child's firmware twin topic.

    The URL reported is the command's ``remoteUrl`` (the cloud's), falling back to the
    URL that was downloaded.
    """
    url = request.extra.get("remoteUrl", request.url)
    body = {"name": request.name, "version": request.version, "url": url}
    return StatusMessage(twin_topic(request.child_id), dumps(body), retain=True)


class TeDialect:
    """thin-edge 1.x ``te/`` command protocol for ``firmware_update``."""

    name = "te"

    def subscriptions(self, child_id: str) -> list[str]:
        """``te/device/{child}///cmd/firmware_update/+``."""
        return [f"{capability_topic(child_id)}/+"]

    def parse(self, child_id: str, topic: str, payload: bytes) -> FirmwareRequest | None:
        """Parse an ``init`` command; ``None`` for anything that is not a new command.

        ``None`` is returned for another topic, an empty payload (the requester clearing
        the topic) and any status other than ``init`` (our own answers come back here).
        The download URL is ``tedgeUrl`` when present, else ``remoteUrl``; ``sha256`` is
        used only if the command carries one. The command's string fields are kept in
        ``extra`` and echoed in every answer.

        Raises:
            InvalidRequest: An ``init`` command (or an unreadable payload) that cannot be
                acted on; ``op_id`` is the command id from the topic.
        """
        prefix = capability_topic(child_id) + "/"
        if not topic.startswith(prefix):
            return None
        cmd_id = topic[len(prefix) :]
        if not cmd_id or "/" in cmd_id:
            return None
        if not payload:
            return None
        op_id = readable_id(cmd_id)
        data = decode_object(payload, op_id)
        if op_id is None:
            raise InvalidRequest(None, "command id in the topic is not a usable operation id")
        if "status" not in data:
            raise InvalidRequest(op_id, "field 'status' is missing")
        if not isinstance(data["status"], str):
            raise InvalidRequest(op_id, "field 'status' must be a string")
        if data["status"] != "init":
            return None
        fields = {k: v for k, v in data.items() if isinstance(v, str) and k not in _OWN_FIELDS}
        try:
            return self._request(child_id, topic, op_id, data, fields)
        except InvalidRequest as exc:
            raise InvalidRequest(exc.op_id, exc.reason, fields=fields) from None

    def _request(
        self,
        child_id: str,
        topic: str,
        op_id: str,
        data: dict[str, Any],
        fields: dict[str, str],
    ) -> FirmwareRequest:
        name = require_text(data, "name", op_id)
        version = require_text(data, "version", op_id)
        # An absent, null or empty tedgeUrl means: download from the cloud directly.
        url_key = "tedgeUrl" if data.get("tedgeUrl") not in (None, "") else "remoteUrl"
        for key in ("remoteUrl", "tedgeUrl"):
            value = data.get(key)
            if value is not None and not isinstance(value, str):
                raise InvalidRequest(op_id, f"field {key!r} must be a string")
            if isinstance(value, str) and len(value) > MAX_URL_CHARS:
                raise InvalidRequest(
                    op_id, f"field {key!r} is too long (max {MAX_URL_CHARS} characters)"
                )
        url = data.get(url_key)
        if url is None:
            raise InvalidRequest(op_id, "field 'remoteUrl' is missing")
        check_url(url, url_key, op_id)
        sha256 = require_sha256(data, "sha256", op_id) if data.get("sha256") is not None else None
        return FirmwareRequest(
            dialect=self.name,
            child_id=child_id,
            op_id=op_id,
            attempt=1,
            name=name,
            version=version,
            url=url,
            sha256=sha256,
            topic=topic,
            extra=fields,
        )

    def status(
        self, request: FirmwareRequest, status: Status, reason: str | None = None
    ) -> StatusMessage:
        """Retained answer on the command topic echoing the command's fields."""
        echo: dict[str, str] = {k: v for k, v in request.extra.items() if k not in _OWN_FIELDS}
        echo.setdefault("name", request.name)
        echo.setdefault("version", request.version)
        echo.setdefault("remoteUrl", request.url)
        return _answer(command_topic(request.child_id, request.op_id), echo, status, reason)

    def invalid(self, child_id: str, topic: str, error: InvalidRequest) -> StatusMessage | None:
        """Retained ``failed`` on the command topic (echoing what could be read)."""
        if error.op_id is None:
            return None
        echo = {k: v for k, v in error.fields.items() if k not in _OWN_FIELDS}
        return _answer(
            command_topic(child_id, error.op_id), echo, "failed", f"invalid request: {error.reason}"
        )


def _answer(topic: str, echo: dict[str, str], status: Status, reason: str | None) -> StatusMessage:
    if status not in _VALID_STATUSES:
        raise ValueError(f"unknown status {status!r}")
    body: dict[str, Any] = {"status": status, **echo}
    if status == "failed":
        body["reason"] = clean_reason(reason or "firmware update failed")
    return StatusMessage(topic=topic, payload=dumps(body), retain=True, qos=1)


TE = TeDialect()

"""A simulated thin-edge ``c8y-firmware-plugin``: the requesting side of the legacy contract.

Owns the plugin role for tests and the demo: it publishes a firmware update request on
``tedge/{child}/commands/req/firmware_update`` (QoS 1, not retained, like the real
plugin), collects the responses from ``tedge/{child}/commands/res/firmware_update`` and
checks each one the way the real plugin does (a known status, a matching string id, a
string reason), recording violations instead of raising. It talks MQTT only through
:class:`trio_fwagent.mqtt.MqttClient` and knows nothing about the agent's internals.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import trio

from trio_fwagent.mqtt import Message, MqttClient

__all__ = ["FINAL_STATUSES", "SimulatedPlugin", "StatusReceived", "UpdateOutcome"]

FINAL_STATUSES = frozenset({"successful", "failed"})
_KNOWN_STATUSES = frozenset({"executing", "successful", "failed"})


@dataclass(frozen=True, slots=True)
class StatusReceived:
    """One response the plugin received for its operation.

    Attributes:
        status: The ``status`` field (``executing``, ``successful`` or ``failed``).
        reason: The ``reason`` field, if any.
        elapsed: Seconds since the request was first published.
        payload: The raw payload, for tests that look closer.
    """

    status: str
    reason: str | None
    elapsed: float
    payload: bytes


@dataclass(frozen=True, slots=True)
class UpdateOutcome:
    """How one firmware update operation ended, as the plugin saw it.

    Attributes:
        op_id: The operation id that was sent.
        final: ``successful`` or ``failed``.
        reason: The final message's reason (for ``failed``).
        statuses: Every valid response for this id, in arrival order.
        violations: Responses the real plugin would have rejected, described.
        attempts: How many times the request was published (1 unless re-sent).
        elapsed: Seconds from the first request to the final status.
    """

    op_id: str
    final: str
    reason: str | None
    statuses: tuple[StatusReceived, ...]
    violations: tuple[str, ...]
    attempts: int
    elapsed: float


@dataclass(slots=True)
class _Progress:
    statuses: list[StatusReceived] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    attempts: int = 0


def request_payload(
    op_id: str, name: str, version: str, url: str, sha256: str, attempt: int = 1
) -> bytes:
    """The JSON request the real plugin sends (field order as in the document)."""
    body = {
        "id": op_id,
        "attempt": attempt,
        "name": name,
        "version": version,
        "url": url,
        "sha256": sha256,
    }
    return json.dumps(body).encode()


def check_response(payload: bytes) -> tuple[dict[str, Any] | None, str | None]:
    """Apply the real plugin's response checks.

    Returns:
        ``(fields, None)`` for an acceptable response, ``(None, problem)`` otherwise.
    """
    try:
        data = json.loads(payload)
    except (UnicodeDecodeError, ValueError):
        return None, f"not JSON: {payload[:80]!r}"
    if not isinstance(data, dict):
        return None, "not a JSON object"
    if not isinstance(data.get("id"), str):
        return None, "missing or non-string id"
    if data.get("status") not in _KNOWN_STATUSES:
        return None, f"unknown status {data.get('status')!r}"
    if "reason" in data and not isinstance(data["reason"], str):
        return None, "non-string reason"
    return data, None


class SimulatedPlugin:
    """Sends firmware update requests for one child and follows their responses.

    Args:
        client: A running :class:`MqttClient` (its ``run`` started by the caller).
        child_id: The child device to address.
        resend_after: Re-publish the request (``attempt`` + 1, same id), as thin-edge
            does after a restart, when no response arrived within this many seconds;
            None never re-sends.
        clock: Monotonic clock (``trio.current_time`` by default).
    """

    def __init__(
        self,
        client: MqttClient,
        child_id: str,
        *,
        resend_after: float | None = None,
        clock: Callable[[], float] = trio.current_time,
    ) -> None:
        self.client = client
        self.child_id = child_id
        self.resend_after = resend_after
        self._clock = clock

    @property
    def request_topic(self) -> str:
        """Where requests for this child are published."""
        return f"tedge/{self.child_id}/commands/req/firmware_update"

    @property
    def response_topic(self) -> str:
        """Where this child's responses arrive."""
        return f"tedge/{self.child_id}/commands/res/firmware_update"

    async def update(
        self,
        *,
        name: str,
        version: str,
        url: str,
        sha256: str,
        op_id: str | None = None,
        on_status: Callable[[StatusReceived], None] | None = None,
    ) -> UpdateOutcome:
        """Request a firmware update and wait for its final status.

        Bound the wait with a cancel scope at the call site (thin-edge's own default
        operation timeout is one hour).

        Args:
            name: Firmware name.
            version: Firmware version.
            url: Where the agent should download the image.
            sha256: The image's SHA-256 (lowercase hex).
            op_id: The operation id (default: a random nanoid-like string).
            on_status: Called with each valid response for this operation as it arrives.

        Returns:
            The outcome once ``successful`` or ``failed`` arrived.
        """
        op_id = op_id or secrets.token_urlsafe(15)
        progress = _Progress()
        started = self._clock()
        async with (
            self.client.subscribe(self.response_topic, qos=1) as messages,
            trio.open_nursery() as nursery,
        ):
            await self._publish(op_id, name, version, url, sha256, progress)
            if self.resend_after is not None:
                nursery.start_soon(self._resend, op_id, name, version, url, sha256, progress)
            final = await self._follow(messages, op_id, started, progress, on_status)
            nursery.cancel_scope.cancel()
        return UpdateOutcome(
            op_id=op_id,
            final=final.status,
            reason=final.reason,
            statuses=tuple(progress.statuses),
            violations=tuple(progress.violations),
            attempts=progress.attempts,
            elapsed=final.elapsed,
        )

    async def _publish(
        self, op_id: str, name: str, version: str, url: str, sha256: str, progress: _Progress
    ) -> None:
        progress.attempts += 1
        payload = request_payload(op_id, name, version, url, sha256, progress.attempts)
        await self.client.publish(self.request_topic, payload, qos=1)

    async def _resend(
        self, op_id: str, name: str, version: str, url: str, sha256: str, progress: _Progress
    ) -> None:
        assert self.resend_after is not None
        while not progress.statuses:
            await trio.sleep(self.resend_after)
            if not progress.statuses:
                await self._publish(op_id, name, version, url, sha256, progress)

    async def _follow(
        self,
        messages: trio.MemoryReceiveChannel[Message],
        op_id: str,
        started: float,
        progress: _Progress,
        on_status: Callable[[StatusReceived], None] | None,
    ) -> StatusReceived:
        async for message in messages:
            data, problem = check_response(message.payload)
            if data is None:
                progress.violations.append(problem or "invalid")
                continue
            if data["id"] != op_id:
                continue  # another operation's response
            status = StatusReceived(
                status=data["status"],
                reason=data.get("reason"),
                elapsed=self._clock() - started,
                payload=message.payload,
            )
            progress.statuses.append(status)
            if on_status is not None:
                on_status(status)
            if status.status in FINAL_STATUSES:
                return status
        raise RuntimeError("the MQTT subscription ended before a final status arrived")

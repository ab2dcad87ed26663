"""Exception types of the MQTT layer.

Owns the error vocabulary shared by the sans-IO codec (``packets``), the session state
machine (``session``) and the Trio client. Remote misbehaviour (:class:`ProtocolError`)
and local mistakes (:class:`MqttUsageError`) are kept apart on purpose, so callers can
tell "the broker sent garbage" from "we called the API wrongly". This module must not
import anything from the rest of the package.
"""

from __future__ import annotations

__all__ = [
    "ConnectionLost",
    "ConnectionRefused",
    "MqttError",
    "MqttUsageError",
    "NeedMoreData",
    "PacketTooLarge",
    "ProtocolError",
]


class MqttError(Exception):
    """Base class of every MQTT error raised by this package."""


class ProtocolError(MqttError):
    """The peer broke the MQTT 3.1.1 protocol (malformed bytes, unexpected packet)."""


class PacketTooLarge(ProtocolError):
    """An inbound packet announced a size above the configured maximum."""


class MqttUsageError(MqttError, ValueError):
    """A local mistake: an invalid topic, QoS, packet id or a call in the wrong state."""


class NeedMoreData(Exception):
    """The decoder needs more bytes before it can return a complete packet."""


class ConnectionRefused(MqttError):
    """The broker answered CONNECT with a non-zero CONNACK return code.

    Attributes:
        return_code: The CONNACK return code (1..5 in MQTT 3.1.1).
    """

    _REASONS = {
        1: "unacceptable protocol version",
        2: "identifier rejected",
        3: "server unavailable",
        4: "bad user name or password",
        5: "not authorized",
    }

    def __init__(self, return_code: int) -> None:
        self.return_code = return_code
        reason = self._REASONS.get(return_code, "unknown reason")
        super().__init__(f"connection refused by broker: {reason} (code {return_code})")


class ConnectionLost(MqttError):
    """The transport to the broker went away."""

"""Sans-IO MQTT 3.1.1 codec: packet dataclasses, ``encode``, ``decode``, ``PacketDecoder``.

Owns the wire format of all 14 MQTT 3.1.1 control packets and the topic rules (name and
filter validation, :func:`topic_matches`). It is pure: bytes in, packets out, no sockets,
no ``await``, no clock, no session state (packet id allocation and acknowledgements
belong to :mod:`trio_fwagent.mqtt.session`).

Errors follow one rule: bytes from the peer that break the spec raise
:class:`~trio_fwagent.mqtt.errors.ProtocolError` (or its subclass ``PacketTooLarge``);
a packet that cannot be encoded because the caller built it wrongly raises
:class:`~trio_fwagent.mqtt.errors.MqttUsageError`; an incomplete packet raises
:class:`~trio_fwagent.mqtt.errors.NeedMoreData`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, TypeAlias, assert_never

from trio_fwagent.mqtt.errors import MqttUsageError, NeedMoreData, PacketTooLarge, ProtocolError

__all__ = [
    "DEFAULT_MAX_PACKET_SIZE",
    "MAX_REMAINING_LENGTH",
    "ConnAck",
    "Connect",
    "Disconnect",
    "OversizedPublish",
    "Packet",
    "PacketDecoder",
    "PingReq",
    "PingResp",
    "PubAck",
    "PubComp",
    "PubRec",
    "PubRel",
    "Publish",
    "SubAck",
    "Subscribe",
    "UnsubAck",
    "Unsubscribe",
    "Will",
    "check_topic_filter",
    "check_topic_name",
    "decode",
    "encode",
    "topic_matches",
]

#: Default cap on one inbound packet, fixed header included. Firmware requests and status
#: messages are small JSON documents; a peer announcing more than this is cut off from
#: the header alone, before any body is buffered.
DEFAULT_MAX_PACKET_SIZE: Final = 1024 * 1024
_UNLIMITED: Final = 1 << 30  # above any 4-byte remaining length
#: Largest remaining length four variable-length bytes can express (spec 2.2.3).
MAX_REMAINING_LENGTH: Final = 268_435_455

_PROTOCOL_NAME: Final = b"\x00\x04MQTT"
_PROTOCOL_LEVEL: Final = 4
_SUBACK_CODES: Final = frozenset((0x00, 0x01, 0x02, 0x80))

# Control packet types (spec 2.2.1).
_CONNECT: Final = 1
_CONNACK: Final = 2
_PUBLISH: Final = 3
_PUBACK: Final = 4
_PUBREC: Final = 5
_PUBREL: Final = 6
_PUBCOMP: Final = 7
_SUBSCRIBE: Final = 8
_SUBACK: Final = 9
_UNSUBSCRIBE: Final = 10
_UNSUBACK: Final = 11
_PINGREQ: Final = 12
_PINGRESP: Final = 13
_DISCONNECT: Final = 14


# --------------------------------------------------------------------------- packets


@dataclass(frozen=True, slots=True)
class Will:
    """Last Will message the broker publishes if the client vanishes."""

    topic: str
    payload: bytes
    qos: int = 0
    retain: bool = False


@dataclass(frozen=True, slots=True)
class Connect:
    """CONNECT: the first packet a client sends (protocol "MQTT", level 4)."""

    client_id: str
    keepalive: int
    clean_session: bool
    will: Will | None = None
    username: str | None = None
    password: bytes | None = None


@dataclass(frozen=True, slots=True)
class ConnAck:
    """CONNACK: the broker's answer to CONNECT (return code 0 = accepted)."""

    session_present: bool
    return_code: int


@dataclass(frozen=True, slots=True)
class Publish:
    """PUBLISH: an application message (``packet_id`` is set iff ``qos`` > 0)."""

    topic: str
    payload: bytes
    qos: int = 0
    retain: bool = False
    dup: bool = False
    packet_id: int | None = None


@dataclass(frozen=True, slots=True)
class PubAck:
    """PUBACK: acknowledges a QoS 1 PUBLISH."""

    packet_id: int


@dataclass(frozen=True, slots=True)
class PubRec:
    """PUBREC: first answer to a QoS 2 PUBLISH."""

    packet_id: int


@dataclass(frozen=True, slots=True)
class PubRel:
    """PUBREL: releases a QoS 2 message after PUBREC."""

    packet_id: int


@dataclass(frozen=True, slots=True)
class PubComp:
    """PUBCOMP: completes the QoS 2 exchange."""

    packet_id: int


@dataclass(frozen=True, slots=True)
class Subscribe:
    """SUBSCRIBE: one or more ``(topic_filter, requested_qos)`` pairs."""

    packet_id: int
    topics: tuple[tuple[str, int], ...]


@dataclass(frozen=True, slots=True)
class SubAck:
    """SUBACK: granted QoS per filter, in order (0x80 = refused)."""

    packet_id: int
    return_codes: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    """UNSUBSCRIBE: one or more topic filters."""

    packet_id: int
    topics: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class UnsubAck:
    """UNSUBACK: acknowledges an UNSUBSCRIBE."""

    packet_id: int


@dataclass(frozen=True, slots=True)
class PingReq:
    """PINGREQ: keep-alive probe from the client."""


@dataclass(frozen=True, slots=True)
class PingResp:
    """PINGRESP: the broker's answer to PINGREQ."""


@dataclass(frozen=True, slots=True)
class Disconnect:
    """DISCONNECT: clean goodbye from the client (the Will is discarded)."""


Packet: TypeAlias = (
    Connect
    | ConnAck
    | Publish
    | PubAck
    | PubRec
    | PubRel
    | PubComp
    | Subscribe
    | SubAck
    | Unsubscribe
    | UnsubAck
    | PingReq
    | PingResp
    | Disconnect
)


# --------------------------------------------------------------------------- topic rules


def _string_problem(value: str) -> str | None:
    if "\x00" in value:
        return "string contains U+0000"
    return None


def _topic_name_problem(topic: str) -> str | None:
    if not topic:
        return "topic name is empty"
    if "+" in topic or "#" in topic:
        return f"topic name {topic!r} contains a wildcard"
    return _string_problem(topic)


def _topic_filter_problem(topic_filter: str) -> str | None:
    if not topic_filter:
        return "topic filter is empty"
    if "+" in topic_filter or "#" in topic_filter:
        levels = topic_filter.split("/")
        last = len(levels) - 1
        for i, level in enumerate(levels):
            if "+" in level and level != "+":
                return f"'+' must occupy a whole level in {topic_filter!r}"
            if "#" in level and (level != "#" or i != last):
                return f"'#' must be the whole last level in {topic_filter!r}"
    return _string_problem(topic_filter)


def check_topic_name(topic: str) -> None:
    """Check that ``topic`` is a valid topic name to publish to.

    Raises:
        MqttUsageError: The name is empty, has a wildcard or contains U+0000.
    """
    problem = _topic_name_problem(topic)
    if problem is not None:
        raise MqttUsageError(problem)


def check_topic_filter(topic_filter: str) -> None:
    """Check that ``topic_filter`` is a valid subscription filter.

    Raises:
        MqttUsageError: The filter is empty, misuses ``+``/``#`` or contains U+0000.
    """
    problem = _topic_filter_problem(topic_filter)
    if problem is not None:
        raise MqttUsageError(problem)


def topic_matches(topic_filter: str, topic: str) -> bool:
    """Return whether ``topic`` matches ``topic_filter`` (spec 4.7).

    ``+`` matches exactly one level, ``#`` the parent level and everything below it.
    A filter starting with a wildcard does not match a topic starting with ``$``.
    The filter is assumed valid (see :func:`check_topic_filter`).
    """
    if topic.startswith("$") and topic_filter[:1] in ("+", "#"):
        return False
    filter_levels = topic_filter.split("/")
    topic_levels = topic.split("/")
    for i, level in enumerate(filter_levels):
        if level == "#":
            return True
        if i >= len(topic_levels):
            return False
        if level != "+" and level != topic_levels[i]:
            return False
    return len(filter_levels) == len(topic_levels)


# --------------------------------------------------------------------------- encoding


def _usage(condition: bool, message: str) -> None:
    if not condition:
        raise MqttUsageError(message)


def _check_packet_id(packet_id: int | None) -> int:
    _usage(
        isinstance(packet_id, int) and 1 <= packet_id <= 0xFFFF,
        f"packet id must be 1..65535, got {packet_id!r}",
    )
    assert packet_id is not None
    return packet_id


def _check_qos(qos: int) -> None:
    _usage(qos in (0, 1, 2) and isinstance(qos, int), f"QoS must be 0, 1 or 2, got {qos!r}")


def _put_bytes(out: bytearray, data: bytes) -> None:
    _usage(len(data) <= 0xFFFF, f"field of {len(data)} bytes exceeds 65535")
    out += len(data).to_bytes(2, "big")
    out += data


def _put_str(out: bytearray, value: str) -> None:
    problem = _string_problem(value)
    _usage(problem is None, problem or "")
    try:
        data = value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise MqttUsageError(f"string is not valid UTF-8: {exc}") from None
    _put_bytes(out, data)


def _frame(first_byte: int, body: bytes | bytearray) -> bytes:
    length = len(body)
    _usage(length <= MAX_REMAINING_LENGTH, f"packet body of {length} bytes is too large")
    header = bytearray((first_byte,))
    while True:
        byte = length & 0x7F
        length >>= 7
        if length:
            header.append(byte | 0x80)
        else:
            header.append(byte)
            break
    header += body
    return bytes(header)


def _encode_connect(packet: Connect) -> bytes:
    _usage(0 <= packet.keepalive <= 0xFFFF, f"keepalive must be 0..65535, got {packet.keepalive}")
    _usage(
        bool(packet.client_id) or packet.clean_session,
        "an empty client id requires clean_session=True",
    )
    _usage(
        packet.password is None or packet.username is not None,
        "a password requires a username in MQTT 3.1.1",
    )
    flags = 0x02 if packet.clean_session else 0
    body = bytearray(_PROTOCOL_NAME)
    will = packet.will
    if will is not None:
        _check_qos(will.qos)
        check_topic_name(will.topic)
        flags |= 0x04 | (will.qos << 3) | (0x20 if will.retain else 0)
    if packet.username is not None:
        flags |= 0x80
    if packet.password is not None:
        flags |= 0x40
    body += bytes((_PROTOCOL_LEVEL, flags))
    body += packet.keepalive.to_bytes(2, "big")
    _put_str(body, packet.client_id)
    if will is not None:
        _put_str(body, will.topic)
        _put_bytes(body, bytes(will.payload))
    if packet.username is not None:
        _put_str(body, packet.username)
    if packet.password is not None:
        _put_bytes(body, bytes(packet.password))
    return _frame(_CONNECT << 4, body)


def _encode_connack(packet: ConnAck) -> bytes:
    _usage(0 <= packet.return_code <= 5, f"CONNACK return code must be 0..5: {packet.return_code}")
    _usage(
        not (packet.session_present and packet.return_code),
        "session_present must be False when the connection is refused",
    )
    return bytes((_CONNACK << 4, 2, int(packet.session_present), packet.return_code))


def _encode_publish(packet: Publish) -> bytes:
    _check_qos(packet.qos)
    check_topic_name(packet.topic)
    body = bytearray()
    _put_str(body, packet.topic)
    if packet.qos:
        body += _check_packet_id(packet.packet_id).to_bytes(2, "big")
    else:
        _usage(packet.packet_id is None, "a QoS 0 PUBLISH has no packet id")
        _usage(not packet.dup, "DUP must be 0 for a QoS 0 PUBLISH")
    body += packet.payload
    first = (_PUBLISH << 4) | (0x08 if packet.dup else 0) | (packet.qos << 1) | int(packet.retain)
    return _frame(first, body)


def _encode_ack(first_byte: int, packet_id: int) -> bytes:
    return bytes((first_byte, 2)) + _check_packet_id(packet_id).to_bytes(2, "big")


def _encode_subscribe(packet: Subscribe) -> bytes:
    _usage(len(packet.topics) > 0, "SUBSCRIBE needs at least one topic filter")
    body = bytearray(_check_packet_id(packet.packet_id).to_bytes(2, "big"))
    for topic_filter, qos in packet.topics:
        check_topic_filter(topic_filter)
        _check_qos(qos)
        _put_str(body, topic_filter)
        body.append(qos)
    return _frame((_SUBSCRIBE << 4) | 0x02, body)


def _encode_suback(packet: SubAck) -> bytes:
    _usage(len(packet.return_codes) > 0, "SUBACK needs at least one return code")
    body = bytearray(_check_packet_id(packet.packet_id).to_bytes(2, "big"))
    for code in packet.return_codes:
        _usage(code in _SUBACK_CODES, f"invalid SUBACK return code {code!r}")
        body.append(code)
    return _frame(_SUBACK << 4, body)


def _encode_unsubscribe(packet: Unsubscribe) -> bytes:
    _usage(len(packet.topics) > 0, "UNSUBSCRIBE needs at least one topic filter")
    body = bytearray(_check_packet_id(packet.packet_id).to_bytes(2, "big"))
    for topic_filter in packet.topics:
        check_topic_filter(topic_filter)
        _put_str(body, topic_filter)
    return _frame((_UNSUBSCRIBE << 4) | 0x02, body)


def encode(packet: Packet) -> bytes:
    """Encode one packet to its wire bytes.

    Raises:
        MqttUsageError: The packet breaks the spec (bad topic, QoS, packet id, length...).
    """
    match packet:
        case Publish():
            return _encode_publish(packet)
        case PubAck():
            return _encode_ack(_PUBACK << 4, packet.packet_id)
        case PubRec():
            return _encode_ack(_PUBREC << 4, packet.packet_id)
        case PubRel():
            return _encode_ack((_PUBREL << 4) | 0x02, packet.packet_id)
        case PubComp():
            return _encode_ack(_PUBCOMP << 4, packet.packet_id)
        case Connect():
            return _encode_connect(packet)
        case ConnAck():
            return _encode_connack(packet)
        case Subscribe():
            return _encode_subscribe(packet)
        case SubAck():
            return _encode_suback(packet)
        case Unsubscribe():
            return _encode_unsubscribe(packet)
        case UnsubAck():
            return _encode_ack(_UNSUBACK << 4, packet.packet_id)
        case PingReq():
            return bytes((_PINGREQ << 4, 0))
        case PingResp():
            return bytes((_PINGRESP << 4, 0))
        case Disconnect():
            return bytes((_DISCONNECT << 4, 0))
        case _:
            assert_never(packet)


# --------------------------------------------------------------------------- decoding

# Required low nibble of the first byte per packet type; PUBLISH (3) carries flags.
_FIXED_FLAGS: Final = {
    _CONNECT: 0,
    _CONNACK: 0,
    _PUBACK: 0,
    _PUBREC: 0,
    _PUBREL: 2,
    _PUBCOMP: 0,
    _SUBSCRIBE: 2,
    _SUBACK: 0,
    _UNSUBSCRIBE: 2,
    _UNSUBACK: 0,
    _PINGREQ: 0,
    _PINGRESP: 0,
    _DISCONNECT: 0,
}
# Exact remaining length of the packets whose body has a fixed size.
_FIXED_LENGTH: Final = {
    _CONNACK: 2,
    _PUBACK: 2,
    _PUBREC: 2,
    _PUBREL: 2,
    _PUBCOMP: 2,
    _UNSUBACK: 2,
    _PINGREQ: 0,
    _PINGRESP: 0,
    _DISCONNECT: 0,
}


class _Reader:
    """Cursor over one complete packet body; any overrun is a malformed packet."""

    __slots__ = ("_data", "_end", "pos")

    def __init__(self, data: memoryview, start: int, end: int) -> None:
        self._data = data
        self.pos = start
        self._end = end

    @property
    def remaining(self) -> int:
        return self._end - self.pos

    def byte(self) -> int:
        if self.pos >= self._end:
            raise ProtocolError("packet body is shorter than its fields")
        value = self._data[self.pos]
        self.pos += 1
        return value

    def uint16(self) -> int:
        if self.pos + 2 > self._end:
            raise ProtocolError("packet body is shorter than its fields")
        value = (self._data[self.pos] << 8) | self._data[self.pos + 1]
        self.pos += 2
        return value

    def packet_id(self) -> int:
        value = self.uint16()
        if value == 0:
            raise ProtocolError("packet id 0 is invalid")
        return value

    def binary(self) -> bytes:
        length = self.uint16()
        return self.rest(length)

    def rest(self, length: int | None = None) -> bytes:
        if length is None:
            length = self._end - self.pos
        if self.pos + length > self._end:
            raise ProtocolError("field length runs past the end of the packet")
        value = bytes(self._data[self.pos : self.pos + length])
        self.pos += length
        return value

    def string(self) -> str:
        raw = self.binary()
        try:
            value = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ProtocolError(f"invalid UTF-8 string: {exc}") from None
        if "\x00" in value:
            raise ProtocolError("string contains U+0000")
        return value

    def finish(self) -> None:
        if self.pos != self._end:
            raise ProtocolError(f"{self._end - self.pos} unexpected bytes at end of packet")


def _protocol(condition: bool, message: str) -> None:
    if not condition:
        raise ProtocolError(message)


def _decode_connect(r: _Reader) -> Connect:
    _protocol(r.rest(6) == _PROTOCOL_NAME, "protocol name is not 'MQTT'")
    level = r.byte()
    _protocol(level == _PROTOCOL_LEVEL, f"unsupported protocol level {level}")
    flags = r.byte()
    _protocol(not flags & 0x01, "reserved CONNECT flag is set")
    will_flag = bool(flags & 0x04)
    will_qos = (flags >> 3) & 0x03
    will_retain = bool(flags & 0x20)
    _protocol(will_qos != 3, "will QoS 3 is invalid")
    _protocol(will_flag or not (will_qos or will_retain), "will QoS/retain without a will")
    has_username, has_password = bool(flags & 0x80), bool(flags & 0x40)
    _protocol(has_username or not has_password, "password flag without username flag")
    keepalive = r.uint16()
    client_id = r.string()
    will = None
    if will_flag:
        topic = r.string()
        problem = _topic_name_problem(topic)
        _protocol(problem is None, f"invalid will topic: {problem}")
        will = Will(topic=topic, payload=r.binary(), qos=will_qos, retain=will_retain)
    username = r.string() if has_username else None
    password = r.binary() if has_password else None
    r.finish()
    return Connect(
        client_id=client_id,
        keepalive=keepalive,
        clean_session=bool(flags & 0x02),
        will=will,
        username=username,
        password=password,
    )


def _decode_connack(r: _Reader) -> ConnAck:
    flags = r.byte()
    _protocol(flags & 0xFE == 0, "reserved CONNACK flags are set")
    code = r.byte()
    _protocol(code <= 5, f"unknown CONNACK return code {code}")
    _protocol(not (flags and code), "session present on a refused connection")
    return ConnAck(session_present=bool(flags), return_code=code)


def _decode_publish(flags: int, r: _Reader) -> Publish:
    qos = (flags >> 1) & 0x03
    dup = bool(flags & 0x08)
    _protocol(qos != 3, "PUBLISH with QoS 3")
    _protocol(bool(qos) or not dup, "DUP set on a QoS 0 PUBLISH")
    topic = r.string()
    problem = _topic_name_problem(topic)
    _protocol(problem is None, f"invalid PUBLISH topic: {problem}")
    packet_id = r.packet_id() if qos else None
    return Publish(
        topic=topic,
        payload=r.rest(),
        qos=qos,
        retain=bool(flags & 0x01),
        dup=dup,
        packet_id=packet_id,
    )


def _decode_subscribe(r: _Reader) -> Subscribe:
    packet_id = r.packet_id()
    topics: list[tuple[str, int]] = []
    while r.remaining:
        topic_filter = r.string()
        problem = _topic_filter_problem(topic_filter)
        _protocol(problem is None, f"invalid SUBSCRIBE filter: {problem}")
        qos = r.byte()
        _protocol(qos <= 2, f"invalid requested QoS byte {qos:#04x}")
        topics.append((topic_filter, qos))
    _protocol(bool(topics), "SUBSCRIBE without topic filters")
    return Subscribe(packet_id=packet_id, topics=tuple(topics))


def _decode_suback(r: _Reader) -> SubAck:
    packet_id = r.packet_id()
    codes = r.rest()
    _protocol(bool(codes), "SUBACK without return codes")
    for code in codes:
        _protocol(code in _SUBACK_CODES, f"invalid SUBACK return code {code:#04x}")
    return SubAck(packet_id=packet_id, return_codes=tuple(codes))


def _decode_unsubscribe(r: _Reader) -> Unsubscribe:
    packet_id = r.packet_id()
    topics: list[str] = []
    while r.remaining:
        topic_filter = r.string()
        problem = _topic_filter_problem(topic_filter)
        _protocol(problem is None, f"invalid UNSUBSCRIBE filter: {problem}")
        topics.append(topic_filter)
    _protocol(bool(topics), "UNSUBSCRIBE without topic filters")
    return Unsubscribe(packet_id=packet_id, topics=tuple(topics))


def _decode_body(packet_type: int, flags: int, r: _Reader) -> Packet:
    packet: Packet
    if packet_type == _PUBLISH:
        return _decode_publish(flags, r)  # the payload is the rest: nothing to finish
    if packet_type == _PUBACK:
        packet = PubAck(r.packet_id())
    elif packet_type == _PUBREC:
        packet = PubRec(r.packet_id())
    elif packet_type == _PUBREL:
        packet = PubRel(r.packet_id())
    elif packet_type == _PUBCOMP:
        packet = PubComp(r.packet_id())
    elif packet_type == _CONNECT:
        return _decode_connect(r)
    elif packet_type == _CONNACK:
        packet = _decode_connack(r)
    elif packet_type == _SUBSCRIBE:
        return _decode_subscribe(r)
    elif packet_type == _SUBACK:
        return _decode_suback(r)
    elif packet_type == _UNSUBSCRIBE:
        return _decode_unsubscribe(r)
    elif packet_type == _UNSUBACK:
        packet = UnsubAck(r.packet_id())
    elif packet_type == _PINGREQ:
        packet = PingReq()
    elif packet_type == _PINGRESP:
        packet = PingResp()
    else:
        packet = Disconnect()
    r.finish()
    return packet


def _decode_header(view: memoryview, max_packet_size: int) -> tuple[int, int, int, int]:
    """Parse the fixed header; return (type, flags, header length, remaining length).

    Everything that can be judged from the header is judged here, before the body has
    arrived: unknown type, reserved flags, an over-long length, an oversized packet.
    """
    size = len(view)
    if not size:
        raise NeedMoreData
    first = view[0]
    packet_type, flags = first >> 4, first & 0x0F
    if packet_type == 0 or packet_type == 15:
        raise ProtocolError(f"reserved packet type {packet_type}")
    if packet_type != _PUBLISH and _FIXED_FLAGS[packet_type] != flags:
        raise ProtocolError(f"invalid fixed header flags {flags:#06b} for type {packet_type}")
    remaining = 0
    index = 1
    while True:
        if index >= size:
            raise NeedMoreData
        byte = view[index]
        remaining |= (byte & 0x7F) << (7 * (index - 1))
        index += 1
        if not byte & 0x80:
            break
        if index == 5:
            raise ProtocolError("remaining length is longer than 4 bytes")
    expected = _FIXED_LENGTH.get(packet_type)
    if expected is not None and remaining != expected:
        raise ProtocolError(f"remaining length {remaining} is invalid for type {packet_type}")
    if index + remaining > max_packet_size:
        raise PacketTooLarge(
            f"packet of {index + remaining} bytes exceeds the limit of {max_packet_size}"
        )
    return packet_type, flags, index, remaining


def decode(
    buf: bytes | bytearray | memoryview, *, max_packet_size: int = DEFAULT_MAX_PACKET_SIZE
) -> tuple[Packet, int]:
    """Decode the first packet in ``buf``.

    Args:
        buf: Bytes received so far; only the first packet is decoded.
        max_packet_size: Largest accepted packet, fixed header included.

    Returns:
        The packet and the number of bytes it used from ``buf``.

    Raises:
        NeedMoreData: ``buf`` holds only part of a packet.
        PacketTooLarge: The header announces a packet above ``max_packet_size``.
        ProtocolError: The bytes break the MQTT 3.1.1 spec.
    """
    with memoryview(buf) as view:
        packet_type, flags, header_len, remaining = _decode_header(view, max_packet_size)
        end = header_len + remaining
        if len(view) < end:
            raise NeedMoreData
        packet = _decode_body(packet_type, flags, _Reader(view, header_len, end))
    return packet, end


@dataclass(frozen=True, slots=True)
class OversizedPublish:
    """A PUBLISH above the size limit, skipped without buffering its payload.

    Not a packet: what :class:`PacketDecoder` reports instead of one, so that the session
    can still acknowledge it. Failing the connection instead would not help: with a
    persistent session the broker re-sends the same message after every reconnect.
    """

    topic: str
    qos: int
    packet_id: int | None
    size: int


class PacketDecoder:
    """Incremental decoder: feed received bytes, take complete packets out.

    Bytes are kept in one ``bytearray`` with a read offset, so feeding a large packet in
    many small pieces costs linear time: the header is re-read on each attempt, the body
    is only parsed once it is complete, and consumed bytes are dropped in bulk. A PUBLISH
    above ``max_packet_size`` is reported as :class:`OversizedPublish` once its topic and
    packet id have arrived, and its payload is discarded as it comes.

    Args:
        max_packet_size: Largest accepted packet, fixed header included.
    """

    __slots__ = ("_buf", "_max_packet_size", "_pos", "_skip")

    def __init__(self, max_packet_size: int = DEFAULT_MAX_PACKET_SIZE) -> None:
        self._buf = bytearray()
        self._pos = 0
        self._max_packet_size = max_packet_size
        self._skip = 0

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Append bytes received from the peer."""
        if self._pos and self._pos * 2 >= len(self._buf):
            # Compact only when more than half is consumed: amortised linear cost.
            del self._buf[: self._pos]
            self._pos = 0
        self._buf += data

    def next_packet(self) -> Packet | OversizedPublish | None:
        """Return the next complete packet, or None if more bytes are needed.

        Raises:
            PacketTooLarge: The next packet (not a PUBLISH) announces more than the limit.
            ProtocolError: The peer sent malformed bytes; the stream is unusable.
        """
        if self._skip:
            dropped = min(self._skip, len(self._buf) - self._pos)
            self._pos += dropped
            self._skip -= dropped
            if self._skip:
                return None
        if self._pos >= len(self._buf):
            return None
        # Release every view explicitly: a live export would stop the bytearray from
        # resizing, even one kept alive by a traceback.
        with memoryview(self._buf) as whole, whole[self._pos :] as view:
            try:
                packet, used = decode(view, max_packet_size=self._max_packet_size)
            except NeedMoreData:
                return None
            except PacketTooLarge:
                if view[0] >> 4 != _PUBLISH:
                    raise
                oversized = self._oversized_publish(view)
                if oversized is None:
                    return None
                skipped, used = oversized
                self._skip = skipped.size - used
                self._pos += used
                return skipped
        self._pos += used
        return packet

    @staticmethod
    def _oversized_publish(view: memoryview) -> tuple[OversizedPublish, int] | None:
        """An oversized PUBLISH's topic and packet id (None: need more bytes), and how
        many of its bytes are buffered."""
        _, flags, header_len, remaining = _decode_header(view, _UNLIMITED)
        qos = (flags >> 1) & 0x03
        if qos == 3:
            raise ProtocolError("PUBLISH with QoS 3")
        need = header_len + 2
        if len(view) < need:
            return None
        topic_len = int.from_bytes(view[header_len:need], "big")
        need += topic_len + (2 if qos else 0)
        if need > header_len + remaining:
            raise ProtocolError("PUBLISH variable header longer than the packet")
        if len(view) < need:
            return None
        try:
            topic = bytes(view[header_len + 2 : header_len + 2 + topic_len]).decode()
        except UnicodeDecodeError:
            raise ProtocolError("PUBLISH topic is not valid UTF-8") from None
        packet_id = int.from_bytes(view[need - 2 : need], "big") if qos else None
        size = header_len + remaining
        return OversizedPublish(topic, qos, packet_id, size), min(len(view), size)

    def clear(self) -> None:
        """Forget buffered bytes (the connection they belonged to is gone)."""
        self._buf.clear()
        self._pos = 0

    @property
    def buffered(self) -> int:
        """Number of received bytes not yet returned as packets."""
        return len(self._buf) - self._pos

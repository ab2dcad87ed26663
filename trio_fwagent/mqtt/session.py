"""Sans-IO MQTT 3.1.1 client session: the state machine between bytes and events.

Owns the protocol state of one client across connections: the CONNECT/CONNACK
handshake, packet id allocation, acknowledgements in both directions (PUBACK, the QoS 2
PUBREC/PUBREL/PUBCOMP exchange, SUBACK, UNSUBACK), the QoS 1/2 outbox with its in-flight
window and its re-send after a reconnect, and QoS 2 duplicate suppression. It performs
no I/O and reads no clock: the Trio client feeds it received bytes, sends what
:meth:`ClientSession.data_to_send` returns, and schedules keep-alive pings itself.
It must not know about sockets, tasks, timeouts or application topics.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Sequence
from dataclasses import dataclass, replace
from enum import Enum, auto
from typing import Final, TypeAlias

from trio_fwagent.mqtt.errors import ConnectionRefused, MqttUsageError, ProtocolError
from trio_fwagent.mqtt.packets import (
    DEFAULT_MAX_PACKET_SIZE,
    ConnAck,
    Connect,
    Disconnect,
    OversizedPublish,
    Packet,
    PacketDecoder,
    PingReq,
    PingResp,
    PubAck,
    PubComp,
    Publish,
    PubRec,
    PubRel,
    SubAck,
    Subscribe,
    UnsubAck,
    Unsubscribe,
    Will,
    encode,
)

__all__ = [
    "AckToken",
    "ClientSession",
    "Connected",
    "Event",
    "MessageDropped",
    "MessageReceived",
    "PongReceived",
    "PublishAcknowledged",
    "SubscribeAcknowledged",
    "UnsubscribeAcknowledged",
]

_MAX_PACKET_ID: Final = 0xFFFF
_DUP_BIT: Final = 0x08


# --------------------------------------------------------------------------- events


@dataclass(frozen=True, slots=True)
class Connected:
    """The broker accepted the connection (CONNACK return code 0)."""

    session_present: bool


@dataclass(frozen=True, slots=True)
class AckToken:
    """What :meth:`ClientSession.acknowledge` needs to PUBACK one QoS 1 message."""

    connection: int
    packet_id: int


@dataclass(frozen=True, slots=True)
class MessageReceived:
    """An application message arrived (a QoS 2 message is reported once).

    ``ack_token`` is set for a QoS 1 message of a session with ``manual_ack``: its PUBACK
    waits for :meth:`ClientSession.acknowledge`.
    """

    topic: str
    payload: bytes
    qos: int
    retain: bool
    dup: bool
    ack_token: AckToken | None = None


@dataclass(frozen=True, slots=True)
class PublishAcknowledged:
    """The broker took responsibility for our QoS 1 (PUBACK) or QoS 2 (PUBCOMP) message."""

    packet_id: int


@dataclass(frozen=True, slots=True)
class SubscribeAcknowledged:
    """SUBACK: granted QoS per requested filter, in order (0x80 = refused)."""

    packet_id: int
    granted: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class UnsubscribeAcknowledged:
    """UNSUBACK for one of our UNSUBSCRIBE packets."""

    packet_id: int


@dataclass(frozen=True, slots=True)
class PongReceived:
    """PINGRESP: the broker answered a keep-alive ping."""


@dataclass(frozen=True, slots=True)
class MessageDropped:
    """An inbound message above ``max_packet_size``: acknowledged to the broker (so it is
    not re-sent forever) but not delivered."""

    topic: str
    qos: int
    size: int


Event: TypeAlias = (
    Connected
    | MessageReceived
    | PublishAcknowledged
    | SubscribeAcknowledged
    | UnsubscribeAcknowledged
    | PongReceived
    | MessageDropped
)


# --------------------------------------------------------------------------- state


class _State(Enum):
    DISCONNECTED = auto()  # no transport
    CONNECTING = auto()  # CONNECT queued, waiting for CONNACK
    CONNECTED = auto()
    CLOSING = auto()  # DISCONNECT queued; input is ignored until connection_lost()


@dataclass(slots=True)
class _Outgoing:
    """One QoS 1/2 message we published and the broker has not yet acknowledged."""

    packet_id: int
    qos: int
    wire: bytes  # the encoded PUBLISH with DUP=0
    sent: bool = False  # sent at least once, on any connection: re-send with DUP=1
    released: bool = False  # QoS 2: PUBREC received, PUBREL is what gets (re-)sent
    on_wire: bool = False  # sent on the current connection (counts against max_inflight)


@dataclass(slots=True)
class _PendingAck:
    packet_id: int
    acknowledged: bool = False


class ClientSession:
    """MQTT 3.1.1 client state machine: bytes in, events out, bytes to send.

    The session outlives connections: call :meth:`start_connection` when a transport is
    up and :meth:`connection_lost` when it is gone; unacknowledged QoS 1/2 messages are
    kept and re-sent, in publish order, after the next CONNACK.

    Args:
        client_id: MQTT client identifier.
        keepalive: Keep-alive interval in seconds announced in CONNECT (0 = off).
        clean_session: Ask the broker to drop any stored session.
        will: Last Will published by the broker if the connection dies uncleanly.
        username: Optional user name.
        password: Optional password (requires a username in MQTT 3.1.1).
        max_packet_size: Largest inbound packet accepted, fixed header included.
        max_inflight: Most QoS 1/2 messages sent and not yet acknowledged at one time;
            later ones wait in the outbox.
        manual_ack: Do not PUBACK a received QoS 1 message until :meth:`acknowledge` is
            called with its token (PUBACKs still go out in arrival order). A message not
            acknowledged when its connection ends is re-sent by the broker after the next
            connect (persistent session): "received" can then mean "handled".

    Raises:
        MqttUsageError: The CONNECT these settings describe is invalid.
    """

    def __init__(
        self,
        *,
        client_id: str,
        keepalive: int,
        clean_session: bool = False,
        will: Will | None = None,
        username: str | None = None,
        password: bytes | None = None,
        max_packet_size: int = DEFAULT_MAX_PACKET_SIZE,
        max_inflight: int = 100,
        manual_ack: bool = False,
    ) -> None:
        if max_inflight < 1:
            raise MqttUsageError(f"max_inflight must be at least 1, got {max_inflight}")
        connect = Connect(
            client_id=client_id,
            keepalive=keepalive,
            clean_session=clean_session,
            will=will,
            username=username,
            password=password,
        )
        self._connect_bytes = encode(connect)  # validates the settings once, up front
        self._clean_session = clean_session
        self._max_inflight = max_inflight
        self._decoder = PacketDecoder(max_packet_size)
        self._out = bytearray()
        self._state = _State.DISCONNECTED
        self._next_id = 1
        self._outbox: OrderedDict[int, _Outgoing] = OrderedDict()
        self._unsent: deque[int] = deque()  # outbox ids not yet sent on this connection
        self._inflight = 0
        self._pending_subscribe: dict[int, int] = {}  # packet id -> number of filters
        self._pending_unsubscribe: set[int] = set()
        self._inbound_qos2: set[int] = set()  # delivered, waiting for PUBREL
        self._carried: list[Event] = []  # outcomes from a batch that ended in an error
        self._manual_ack = manual_ack
        self._connection = 0  # counts transports, so a token outliving its one is ignored
        self._to_ack: deque[_PendingAck] = deque()  # received QoS 1 messages, in order

    # ------------------------------------------------------------------ properties

    @property
    def connected(self) -> bool:
        """True between an accepted CONNACK and the loss (or close) of the connection."""
        return self._state is _State.CONNECTED

    @property
    def outbox_size(self) -> int:
        """Number of QoS 1/2 messages published and not yet acknowledged."""
        return len(self._outbox)

    # ------------------------------------------------------------------ connection

    def start_connection(self) -> None:
        """A new transport is up: queue CONNECT and wait for CONNACK."""
        if self._state is not _State.DISCONNECTED:
            self.connection_lost()
        if self._clean_session:
            self._inbound_qos2.clear()
        self._connection += 1
        self._to_ack.clear()
        self._state = _State.CONNECTING
        self._out += self._connect_bytes

    def connection_lost(self) -> None:
        """The transport is gone: keep the outbox, forget partial input and unsent bytes.

        Safe to call more than once.
        """
        self._state = _State.DISCONNECTED
        self._decoder.clear()
        self._out.clear()
        self._pending_subscribe.clear()
        self._pending_unsubscribe.clear()
        self._to_ack.clear()  # the broker re-sends those messages after the next connect
        for entry in self._outbox.values():
            entry.on_wire = False
        self._inflight = 0
        self._unsent = deque(self._outbox)

    def data_to_send(self) -> bytes:
        """Return and clear the bytes waiting to be written to the transport."""
        data = bytes(self._out)
        self._out.clear()
        return data

    def receive_data(self, data: bytes) -> list[Event]:
        """Feed bytes from the transport; return what happened, queue the answers.

        Raises:
            ConnectionRefused: The broker refused the connection in its CONNACK.
            PacketTooLarge: An inbound packet is above ``max_packet_size``.
            ProtocolError: The broker sent malformed bytes or an unexpected packet.
            MqttUsageError: No connection was started.

        After an exception the connection is unusable: close it, call
        :meth:`connection_lost` and reconnect. Messages and acknowledgements decoded
        before the error in the same call are not lost; they are returned by the first
        ``receive_data`` call on the next connection.
        """
        if self._state is _State.DISCONNECTED:
            raise MqttUsageError("receive_data() without start_connection()")
        if self._state is _State.CLOSING:
            return []
        events: list[Event] = self._carried
        self._carried = []
        self._decoder.feed(data)
        try:
            while (packet := self._decoder.next_packet()) is not None:
                self._handle(packet, events)
        except (ProtocolError, ConnectionRefused):
            self._carried = [
                e for e in events if isinstance(e, MessageReceived | PublishAcknowledged)
            ]
            self.connection_lost()
            raise
        return events

    # ------------------------------------------------------------------ commands

    def publish(
        self, topic: str, payload: bytes, *, qos: int = 0, retain: bool = False
    ) -> int | None:
        """Publish a message; QoS 1/2 messages are kept until acknowledged.

        Returns:
            The packet id for QoS 1/2 (see :class:`PublishAcknowledged`), None for QoS 0.

        Raises:
            MqttUsageError: Invalid topic, QoS or payload; QoS 0 while not connected;
                all 65535 packet ids in use.
        """
        if qos == 0:
            wire = encode(Publish(topic, bytes(payload), 0, retain))
            if self._state is not _State.CONNECTED:
                raise MqttUsageError("not connected")
            self._out += wire
            return None
        packet_id = self._allocate_id()
        wire = encode(Publish(topic, bytes(payload), qos, retain, False, packet_id))
        self._outbox[packet_id] = _Outgoing(packet_id, qos, wire)
        self._unsent.append(packet_id)
        if self._state is _State.CONNECTED:
            self._pump()
        return packet_id

    def subscribe(self, topics: Sequence[tuple[str, int]]) -> int:
        """Queue a SUBSCRIBE for ``(topic_filter, qos)`` pairs; return its packet id.

        Raises:
            MqttUsageError: Not connected, or an invalid filter or QoS.
        """
        self._require_connected()
        packet_id = self._allocate_id()
        self._out += encode(Subscribe(packet_id, tuple((t, q) for t, q in topics)))
        self._pending_subscribe[packet_id] = len(topics)
        return packet_id

    def unsubscribe(self, topics: Sequence[str]) -> int:
        """Queue an UNSUBSCRIBE for ``topics``; return its packet id.

        Raises:
            MqttUsageError: Not connected, or an invalid filter.
        """
        self._require_connected()
        packet_id = self._allocate_id()
        self._out += encode(Unsubscribe(packet_id, tuple(topics)))
        self._pending_unsubscribe.add(packet_id)
        return packet_id

    def acknowledge(self, token: AckToken) -> bool:
        """Queue the PUBACK of a message received with ``token`` (``manual_ack``).

        PUBACKs leave in the order the messages arrived: this one waits until every
        earlier one was acknowledged too.

        Returns:
            False if the message's connection is gone (the broker will re-send the
            message, which then needs its own acknowledgement), else True.
        """
        return self._settle(token, send=True)

    def abandon(self, token: AckToken) -> bool:
        """Give up a message received with ``token`` (``manual_ack``) without a PUBACK.

        The broker re-sends it after the next connect (persistent session); later
        messages' PUBACKs no longer wait for it.

        Returns:
            False if the message's connection is gone, else True.
        """
        return self._settle(token, send=False)

    def _settle(self, token: AckToken, *, send: bool) -> bool:
        if token.connection != self._connection or self._state is not _State.CONNECTED:
            return False
        for index, entry in enumerate(self._to_ack):
            if entry.packet_id == token.packet_id and not entry.acknowledged:
                if send:
                    entry.acknowledged = True
                else:
                    del self._to_ack[index]
                break
        else:
            return True  # already settled
        self._send_ready_acks()
        return True

    def _send_ready_acks(self) -> None:
        while self._to_ack and self._to_ack[0].acknowledged:
            self._out += encode(PubAck(self._to_ack.popleft().packet_id))

    def ping(self) -> None:
        """Queue a PINGREQ; the answer is a :class:`PongReceived` event.

        Raises:
            MqttUsageError: Not connected.
        """
        self._require_connected()
        self._out += encode(PingReq())

    def disconnect(self) -> None:
        """Queue DISCONNECT if a connection is up; further input is ignored.

        The outbox is kept. Without a connection this does nothing.
        """
        if self._state is _State.CONNECTED or self._state is _State.CONNECTING:
            self._out += encode(Disconnect())
            self._state = _State.CLOSING

    # ------------------------------------------------------------------ internals

    def _require_connected(self) -> None:
        if self._state is not _State.CONNECTED:
            raise MqttUsageError("not connected")

    def _allocate_id(self) -> int:
        for _ in range(_MAX_PACKET_ID):
            packet_id = self._next_id
            self._next_id = packet_id % _MAX_PACKET_ID + 1
            if (
                packet_id not in self._outbox
                and packet_id not in self._pending_subscribe
                and packet_id not in self._pending_unsubscribe
                and PublishAcknowledged(packet_id) not in self._carried  # not yet reported
            ):
                return packet_id
        raise MqttUsageError("all 65535 packet ids are in flight")

    def _pump(self) -> None:
        """Send outbox entries, in order, while the in-flight window has room."""
        while self._unsent and self._inflight < self._max_inflight:
            entry = self._outbox.get(self._unsent.popleft())
            if entry is None or entry.on_wire:
                continue  # acknowledged meanwhile
            if entry.released:
                self._out += encode(PubRel(entry.packet_id))
            elif entry.sent:
                self._out.append(entry.wire[0] | _DUP_BIT)
                self._out += memoryview(entry.wire)[1:]
            else:
                self._out += entry.wire
            entry.sent = True
            entry.on_wire = True
            self._inflight += 1

    def _acknowledged(self, entry: _Outgoing, events: list[Event]) -> None:
        del self._outbox[entry.packet_id]
        if entry.on_wire:
            self._inflight -= 1
        events.append(PublishAcknowledged(entry.packet_id))
        self._pump()

    def _handle(self, packet: Packet | OversizedPublish, events: list[Event]) -> None:
        if isinstance(packet, OversizedPublish):
            if self._state is _State.CONNECTING:
                raise ProtocolError("expected CONNACK, got an oversized PUBLISH")
            self._handle_oversized(packet, events)
            return
        if self._state is _State.CONNECTING:
            if not isinstance(packet, ConnAck):
                raise ProtocolError(f"expected CONNACK, got {type(packet).__name__}")
            self._handle_connack(packet, events)
            return
        match packet:
            case Publish():
                self._handle_publish(packet, events)
            case PubAck(packet_id):
                entry = self._outbox.get(packet_id)
                if entry is not None and entry.qos == 1:
                    self._acknowledged(entry, events)
                # else: a late or duplicate PUBACK, harmless
            case PubRec(packet_id):
                entry = self._outbox.get(packet_id)
                if entry is not None and entry.qos == 2:
                    entry.released = True
                    self._out += encode(PubRel(packet_id))
            case PubComp(packet_id):
                entry = self._outbox.get(packet_id)
                if entry is not None and entry.released:
                    self._acknowledged(entry, events)
            case PubRel(packet_id):
                # Answer even an unknown id: the broker may re-send PUBREL after we
                # already completed (spec 4.3.3).
                self._inbound_qos2.discard(packet_id)
                self._out += encode(PubComp(packet_id))
            case SubAck(packet_id, codes):
                expected = self._pending_subscribe.pop(packet_id, None)
                if expected is not None:
                    if expected != len(codes):
                        raise ProtocolError(
                            f"SUBACK has {len(codes)} return codes for {expected} filters"
                        )
                    events.append(SubscribeAcknowledged(packet_id, codes))
            case UnsubAck(packet_id):
                if packet_id in self._pending_unsubscribe:
                    self._pending_unsubscribe.discard(packet_id)
                    events.append(UnsubscribeAcknowledged(packet_id))
            case PingResp():
                events.append(PongReceived())
            case _:
                raise ProtocolError(f"unexpected {type(packet).__name__} from the broker")

    def _handle_connack(self, packet: ConnAck, events: list[Event]) -> None:
        if packet.return_code != 0:
            raise ConnectionRefused(packet.return_code)
        self._state = _State.CONNECTED
        if not packet.session_present:
            # The broker forgot the session: an id it re-uses is a new message. Our own
            # outbox is still re-sent below, so nothing we published is lost.
            self._inbound_qos2.clear()
        events.append(Connected(packet.session_present))
        self._pump()

    def _handle_oversized(self, packet: OversizedPublish, events: list[Event]) -> None:
        """Acknowledge as if delivered (the broker would re-send it forever), report it."""
        events.append(MessageDropped(packet.topic, packet.qos, packet.size))
        if packet.packet_id is None:
            return
        if packet.qos == 1:
            if self._manual_ack:  # in its turn: PUBACKs keep the order of arrival
                self._to_ack.append(_PendingAck(packet.packet_id, acknowledged=True))
                self._send_ready_acks()
            else:
                self._out += encode(PubAck(packet.packet_id))
        else:
            self._inbound_qos2.add(packet.packet_id)
            self._out += encode(PubRec(packet.packet_id))

    def _handle_publish(self, packet: Publish, events: list[Event]) -> None:
        message = MessageReceived(
            packet.topic, packet.payload, packet.qos, packet.retain, packet.dup
        )
        packet_id = packet.packet_id
        if packet.qos == 0:
            events.append(message)
        elif packet.qos == 1:
            assert packet_id is not None
            if self._manual_ack:
                token = AckToken(self._connection, packet_id)
                events.append(replace(message, ack_token=token))
                self._to_ack.append(_PendingAck(packet_id))
            else:
                events.append(message)
                self._out += encode(PubAck(packet_id))
        else:
            assert packet_id is not None
            if packet_id not in self._inbound_qos2:
                self._inbound_qos2.add(packet_id)
                events.append(message)
            self._out += encode(PubRec(packet_id))

"""A tiny pure-Trio MQTT 3.1.1 broker on loopback: the demo's fallback when mosquitto is absent.

Owns just enough broker to run the demo and simple tests anywhere: CONNECT (clean and
persistent sessions: subscriptions and queued QoS 1 messages survive a reconnect with
``clean_session=False``), SUBSCRIBE/UNSUBSCRIBE with ``+`` and ``#``, PUBLISH at QoS 0
and 1 (QoS 2 is accepted and delivered at QoS 1), retained messages, the Will, PINGREQ
and DISCONNECT, over plain TCP and over WebSocket (subprotocol ``mqtt``). It reuses the
project's codec (:mod:`trio_fwagent.mqtt.packets`) and nothing else of the client.

It is not a production broker: no authentication, no TLS, no keep-alive enforcement,
and a QoS 1 message in flight to a subscriber whose connection breaks is not re-sent.
It listens on 127.0.0.1 only and must never be used beyond tests and the demo.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass, field
from functools import partial

import trio
import trio_websocket

from trio_fwagent.mqtt.errors import MqttError
from trio_fwagent.mqtt.packets import (
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
    topic_matches,
)

__all__ = ["MiniBroker"]

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
_OUTGOING_BUFFER = 1024
_QUEUED_WHILE_OFFLINE = 1000


class _Closed(Exception):
    """The connection ended (peer closed, misbehaved, or was taken over)."""


class _Link:
    """One client connection as a byte pipe (TCP stream or WebSocket)."""

    def __init__(
        self,
        stream: trio.abc.Stream | None = None,
        ws: trio_websocket.WebSocketConnection | None = None,
    ) -> None:
        self._stream = stream
        self._ws = ws

    async def receive(self) -> bytes:
        try:
            if self._stream is not None:
                return bytes(await self._stream.receive_some(65536))
            assert self._ws is not None
            message = await self._ws.get_message()
        except (
            trio.BrokenResourceError,
            trio.ClosedResourceError,
            trio_websocket.ConnectionClosed,
        ):
            return b""
        if isinstance(message, str):
            raise _Closed("text WebSocket message")
        return message or await self.receive()

    async def send(self, data: bytes) -> None:
        try:
            if self._stream is not None:
                await self._stream.send_all(data)
            else:
                assert self._ws is not None
                await self._ws.send_message(data)
        except (
            trio.BrokenResourceError,
            trio.ClosedResourceError,
            trio_websocket.ConnectionClosed,
        ):
            raise _Closed("send failed") from None


@dataclass(slots=True)
class _Session:
    client_id: str
    persistent: bool
    subscriptions: dict[str, int] = field(default_factory=dict)
    offline: deque[Publish] = field(default_factory=lambda: deque(maxlen=_QUEUED_WHILE_OFFLINE))
    outgoing: trio.MemorySendChannel[bytes] | None = None
    scope: trio.CancelScope | None = None
    next_id: int = 0

    def packet_id(self) -> int:
        self.next_id = self.next_id % 0xFFFF + 1
        return self.next_id


class MiniBroker:
    """An in-process MQTT broker for the demo and tests (see the module docstring).

    Start it with ``await nursery.start(broker.run)``; then ``tcp_port`` (and
    ``ws_port`` when ``websockets`` is true) are set. Cancel the nursery to stop it.

    Args:
        websockets: Also listen for MQTT over WebSocket (any path) on ``ws_port``.
    """

    def __init__(self, *, websockets: bool = True) -> None:
        self.host = HOST
        self.websockets = websockets
        self.tcp_port = 0
        self.ws_port = 0
        self._sessions: dict[str, _Session] = {}
        self._retained: dict[str, Publish] = {}
        self._anonymous = 0

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen until cancelled; ``task_status.started()`` once every listener is up."""
        async with trio.open_nursery() as nursery:
            listeners = await trio.open_tcp_listeners(0, host=HOST)
            self.tcp_port = listeners[0].socket.getsockname()[1]
            nursery.start_soon(partial(trio.serve_listeners, self._serve_tcp, listeners))
            if self.websockets:
                server: trio_websocket.WebSocketServer = await nursery.start(
                    partial(
                        trio_websocket.serve_websocket,
                        self._serve_ws,
                        HOST,
                        0,
                        ssl_context=None,
                        max_message_size=1 << 24,
                    )
                )
                self.ws_port = server.port
            task_status.started()

    async def _serve_tcp(self, stream: trio.SocketStream) -> None:
        async with stream:
            await self._serve(_Link(stream=stream))

    async def _serve_ws(self, request: trio_websocket.WebSocketRequest) -> None:
        ws = await request.accept(
            subprotocol="mqtt" if "mqtt" in request.proposed_subprotocols else None
        )
        await self._serve(_Link(ws=ws))

    async def _serve(self, link: _Link) -> None:
        decoder = PacketDecoder()
        session: _Session | None = None
        will: Will | None = None
        clean_exit = False
        send, receive = trio.open_memory_channel[bytes](_OUTGOING_BUFFER)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._writer, link, receive, nursery.cancel_scope)
            try:
                while data := await link.receive():
                    decoder.feed(data)
                    while (packet := decoder.next_packet()) is not None:
                        if session is None:
                            if not isinstance(packet, Connect):
                                raise _Closed("first packet is not CONNECT")
                            session = self._connect(packet, send, nursery.cancel_scope)
                            will = packet.will
                        elif isinstance(packet, Disconnect):
                            clean_exit = True
                            raise _Closed("disconnect")
                        elif isinstance(packet, OversizedPublish):
                            raise _Closed(f"PUBLISH of {packet.size} bytes is too large")
                        else:
                            self._handle(session, packet, send)
            except (_Closed, MqttError) as why:
                log.debug("mini broker: connection ended: %s", why)
            finally:
                nursery.cancel_scope.cancel()
                if session is not None and session.outgoing is send:
                    session.outgoing = None
                    session.scope = None
                    if not session.persistent:
                        self._sessions.pop(session.client_id, None)
                    if will is not None and not clean_exit:
                        self._route(Publish(will.topic, will.payload, will.qos, will.retain))

    async def _writer(
        self,
        link: _Link,
        receive: trio.MemoryReceiveChannel[bytes],
        scope: trio.CancelScope,
    ) -> None:
        try:
            async for data in receive:
                await link.send(data)
        except _Closed:
            scope.cancel()

    def _connect(
        self, packet: Connect, send: trio.MemorySendChannel[bytes], scope: trio.CancelScope
    ) -> _Session:
        client_id = packet.client_id
        if not client_id:
            self._anonymous += 1
            client_id = f"anonymous-{self._anonymous}"
        old = self._sessions.get(client_id)
        if old is not None and old.scope is not None:
            old.scope.cancel()  # session takeover: the older connection goes
        if old is None or packet.clean_session:
            old = _Session(client_id, persistent=not packet.clean_session)
            present = False
        else:
            present = True
        session = old
        session.persistent = not packet.clean_session
        session.outgoing = send
        session.scope = scope
        self._sessions[client_id] = session
        send.send_nowait(encode(ConnAck(session_present=present, return_code=0)))
        while session.offline:
            self._deliver(session, session.offline.popleft())
        return session

    def _handle(
        self, session: _Session, packet: Packet, send: trio.MemorySendChannel[bytes]
    ) -> None:
        if isinstance(packet, Publish):
            if packet.qos == 1 and packet.packet_id is not None:
                send.send_nowait(encode(PubAck(packet.packet_id)))
            elif packet.qos == 2 and packet.packet_id is not None:
                send.send_nowait(encode(PubRec(packet.packet_id)))
            self._route(packet)
        elif isinstance(packet, PubRel):
            send.send_nowait(encode(PubComp(packet.packet_id)))
        elif isinstance(packet, Subscribe):
            granted = tuple(min(qos, 1) for _, qos in packet.topics)
            send.send_nowait(encode(SubAck(packet.packet_id, granted)))
            for (topic_filter, _), qos in zip(packet.topics, granted, strict=True):
                session.subscriptions[topic_filter] = qos
                for retained in list(self._retained.values()):
                    if topic_matches(topic_filter, retained.topic):
                        self._deliver(session, retained, retain=True)
        elif isinstance(packet, Unsubscribe):
            for topic_filter in packet.topics:
                session.subscriptions.pop(topic_filter, None)
            send.send_nowait(encode(UnsubAck(packet.packet_id)))
        elif isinstance(packet, PingReq):
            send.send_nowait(encode(PingResp()))
        # PubAck/PubRec/PubComp from subscribers: nothing is tracked (see module docs).

    def _route(self, message: Publish) -> None:
        if message.retain:
            if message.payload:
                self._retained[message.topic] = message
            else:
                self._retained.pop(message.topic, None)
        for session in list(self._sessions.values()):
            if any(topic_matches(f, message.topic) for f in session.subscriptions):
                self._deliver(session, message)

    def _deliver(self, session: _Session, message: Publish, *, retain: bool = False) -> None:
        granted = max(
            (q for f, q in session.subscriptions.items() if topic_matches(f, message.topic)),
            default=0,
        )
        qos = min(message.qos, granted)
        if session.outgoing is None:
            if qos and session.persistent:
                session.offline.append(message)
            return
        packet = Publish(
            message.topic,
            message.payload,
            qos=qos,
            retain=retain,
            packet_id=session.packet_id() if qos else None,
        )
        try:
            session.outgoing.send_nowait(encode(packet))
        except trio.WouldBlock:
            log.warning("mini broker: client %s is too slow, message dropped", session.client_id)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
